"""The paper's figures from a run: matplotlib, written as PNG (small, committable) and PDF.

Each plot is a registered function `(run, ctx) -> Figure | None`: None means the
run does not cover what the figure shows (a single eps gives no eps sweep), and the
reason is reported instead of drawing an empty or invented figure. Figures that
need per-sample values (branch confidences, features, detection scores) read them
from the cached artifacts the result rows point to.

Every figure shows each victim encoder of the run in its own panel(s), or only
`ctx.encoder` when one is chosen (`daebench plots --encoder`), and its titles name
the encoder, D_d, eps and the threat scenario. `draw` renders a figure in the
report style (9 pt text at least, for a page); `write_plots` saves PNGs at `PNG_DPI`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from daebench.registry import Registry  # noqa: E402
from daebench.results import RunRecord  # noqa: E402
from daebench.report.tables import BASELINE, TableContext, _family, _pick, _select, victim_label  # noqa: E402
from daebench.store import ArtifactStore  # noqa: E402


class NotCovered(Exception):
    """The run has no data for this figure; the message says what is missing."""


PlotFn = Callable[[RunRecord, TableContext], plt.Figure]
PLOTS: Registry[PlotFn] = Registry("plot")
register_plot = PLOTS.register

#: the PNGs' resolution: a 7-inch (page-wide) figure is 1050 px, and 9 pt text is 19 px high
PNG_DPI = 150
#: the report style: no text under 9 pt (ticks, legends, annotations included)
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11, "axes.spines.top": False,
         "axes.spines.right": False}
PAGE_WIDTH = 10.5  # inches: the widest a figure gets (1575 px at PNG_DPI)


def draw(run: RunRecord, name: str, ctx: TableContext) -> plt.Figure:
    """One registered figure, drawn in the report style (raises NotCovered)."""
    with plt.rc_context(STYLE):
        return PLOTS.get(name)(run, ctx)


# -- shared helpers --------------------------------------------------------------------------------------
def _store(run: RunRecord) -> ArtifactStore:
    from daebench.paths import default_cache

    root = run.cache_dir or default_cache()
    if not Path(root).is_dir():
        raise NotCovered(f"the run's artifact store {root} is not here (its per-sample values are needed)")
    return ArtifactStore(root)


def _victims(df: pd.DataFrame, ctx: TableContext) -> list[tuple[str, pd.DataFrame]]:
    """(encoder name, its rows) for each victim encoder, or only the one `ctx.encoder` names."""
    df = df.assign(_victim=df["encoder"].fillna(victim_label(df)) if "encoder" in df else victim_label(df))
    names = list(dict.fromkeys(df._victim))
    wanted = getattr(ctx, "encoder", None)
    if wanted is not None:
        if wanted not in names:
            raise NotCovered(f"no cell of encoder {wanted!r} here (encoders: {', '.join(map(str, names)) or 'none'})")
        names = [wanted]
    return [(str(n), df[df._victim == n].drop(columns="_victim")) for n in names]


def _defenses(df: pd.DataFrame, ctx: TableContext) -> list[str]:
    present = list(dict.fromkeys(df.defense))
    return [d for d in (BASELINE, ctx.defense) if d in present] or present[:1]


def _eps_text(eps: float | None) -> str:
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return "any ε"
    x = float(eps) * 255
    return f"ε = {round(x)}/255" if abs(x - round(x)) < 1e-6 else f"ε = {float(eps):.3g}"


def _scenario_text(df: pd.DataFrame) -> str:
    scenarios = list(dict.fromkeys(df["scenario"].dropna())) if "scenario" in df else []
    return ", ".join(str(s).replace("_", "-") for s in scenarios) or "scenario unrecorded"


def _panels(n: int, ncols: int, width: float, height: float, **kw) -> tuple[plt.Figure, list[plt.Axes]]:
    """n panels of width x height inches, ncols to a row; the unused ones hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained", **kw)
    flat = axes.ravel().tolist()
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def _legend_below(fig: plt.Figure, handles: list, labels: list[str], ncols: int | None = None) -> None:
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols or min(len(labels), 4), frameon=False)


def _branch_names(store: ArtifactStore, evaluate_meta: dict, count: int) -> list[str]:
    """What each branch is, from the fusion the defended model recorded: MPAE = the victim then
    its partners, BMP (the benign branch) last; a single branch is the (defended) victim."""
    from daebench.defenses.base import Fusion

    names = ["victim"] + [f"branch {i}" for i in range(1, count)]
    clean = evaluate_meta.get("inputs", {}).get("clean")
    fusion = Fusion.recorded(store.load_meta("features", clean)) if clean and store.exists("features", clean) else None
    if fusion is not None:
        partners = [i for i in fusion.mpae[1:] if i < count]
        for k, i in enumerate(partners):
            names[i] = "partner" if len(partners) == 1 else f"partner {k + 1}"
        if fusion.mpae and fusion.mpae[0] < count:
            names[fusion.mpae[0]] = "victim"
        if fusion.bmp is not None and fusion.bmp < count:
            names[fusion.bmp] = "BMP"
    return names


def _branch_colour(name: str) -> str:
    if name == "victim":
        return "C0"
    if name == "BMP":
        return "C3"
    if name.startswith("partner"):
        k = int(name.split()[-1]) if name[-1].isdigit() else 1
        return ["C1", "C2", "C4", "C5", "C6"][(k - 1) % 5]
    return f"C{7 + int(name.split()[-1]) % 3}"


# -- Figure 2: per-branch confidences --------------------------------------------------------------
@register_plot("confidence")
def plot_confidence(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Figure 2: each branch's max-softmax confidence on benign vs adversarial test images,
    one row per (victim encoder, defense), one column per D_d."""
    df = _select(run.results, ctx)
    if df.empty:
        raise NotCovered(f"no cell with attack {ctx.attack}")
    victims = _victims(df, ctx)
    store = _store(run)
    datasets = list(dict.fromkeys(df.D_d))
    rows = [(enc, defense, sub) for enc, sub in victims for defense in _defenses(sub, ctx)]
    fig, axes = plt.subplots(len(rows), len(datasets), figsize=(min(3.6 * len(datasets), PAGE_WIDTH), 2.5 * len(rows) + 0.6),
                             squeeze=False, sharex=True, layout="constrained")
    bins = np.linspace(0, 1, 26)
    seen: dict[str, Line2D] = {}
    for i, (enc, defense, sub) in enumerate(rows):
        for j, d_d in enumerate(datasets):
            ax = axes[i][j]
            cell = sub[(sub.defense == defense) & (sub.D_d == d_d)]
            if cell.empty:
                ax.set_axis_off()
                continue
            art = store.load("evaluate", cell.key.iloc[0])
            count = len([k for k in art.tensors if k.startswith("confidence_clean_branch")])
            names = _branch_names(store, art.meta, count)
            for b, branch in enumerate(names):
                for which, style in (("clean", "-"), ("adv", "--")):
                    conf = art.tensors[f"confidence_{which}_branch{b}"].float().numpy()
                    label = f"{branch}, {'benign' if which == 'clean' else 'adversarial'}"
                    ax.hist(conf, bins=bins, histtype="step", linestyle=style, linewidth=1.3,
                            color=_branch_colour(branch), density=True)
                    seen.setdefault(label, Line2D([], [], color=_branch_colour(branch), linestyle=style))
            ax.set_title(f"{defense} · {enc}\nD_f = {cell.D_f.iloc[0]}, D_d = {d_d}")
            ax.set_ylabel("density")
            ax.set_xlim(0, 1)
    for ax in axes[-1]:  # the x axis is shared: labelled once, under each column
        ax.set_xlabel("max softmax confidence")
    # one legend column per branch (benign above adversarial), in the order victim, partners, BMP
    order = sorted(seen, key=lambda label: (label.startswith("BMP"), list(seen).index(label)))
    columns = len(order) // 2
    _legend_below(fig, [seen[k] for k in order], order, ncols=min(columns, 4) if columns > 1 else len(order))
    fig.suptitle(f"Per-branch confidence, benign vs adversarial ({ctx.attack}, {_eps_text(ctx.eps)}, "
                 f"{_scenario_text(df)})")
    return fig


# -- Figure S1-style bars and the heatmap ---------------------------------------------------------
MAX_BARS = 36  # bars in one panel before its attacks wrap onto another panel


@register_plot("bars")
def plot_bars(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Figure S1 style: BA and RA per attack, one bar per defense, one panel per (victim, D_d);
    a long row of attacks wraps onto further panels."""
    df = _select(run.results, ctx, attack=False)
    if df.empty:
        raise NotCovered("no semi-black-box cell at this eps")
    victims = _victims(df, ctx)
    defenses = list(dict.fromkeys(df.defense))
    attacks = list(dict.fromkeys(df.attack.dropna()))
    groups = ["BA", *attacks]
    chunks = math.ceil(len(groups) / max(1, MAX_BARS // len(defenses)))
    parts = [list(p) for p in np.array_split(np.array(groups, dtype=object), chunks)]  # balanced: 4, 3, 3, 3
    per_panel = len(parts[0])
    panels = [(enc, d_d, c, parts[c], sub) for enc, sub in victims for d_d in dict.fromkeys(sub.D_d) for c in range(chunks)]
    bars = per_panel * len(defenses)
    width = min(PAGE_WIDTH, max(3.4, 0.17 * bars + 0.4 * per_panel + 0.9))
    ncols = max(1, min(3, int(PAGE_WIDTH // width)))
    fig, axes = _panels(len(panels), ncols, width, 2.7)
    bar_w = 0.8 / len(defenses)
    rotate = per_panel > 6 or max(map(len, attacks), default=0) * per_panel > 12 * width
    for ax, (enc, d_d, c, chunk, sub) in zip(axes, panels):
        cell = sub[sub.D_d == d_d]
        for k, defense in enumerate(defenses):
            rows = cell[cell.defense == defense].drop_duplicates("attack").set_index("attack")
            values = [(rows.BA.iloc[0] if len(rows) else np.nan) if g == "BA" else rows.RA.get(g, np.nan) for g in chunk]
            drawn = ax.bar(np.arange(len(chunk)) + (k - (len(defenses) - 1) / 2) * bar_w, np.multiply(values, 100),
                           bar_w, label=defense, color=f"C{k % 10}")
            if bars <= 12:  # few bars: their values on top
                ax.bar_label(drawn, fmt="%.0f", padding=1)
        labels = [g if g == "BA" else f"RA {g}" if rotate else f"RA\n{g}" for g in chunk]
        ax.set_xticks(np.arange(len(chunk)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.5, per_panel - 0.5)  # the same bar width in every panel
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(f"{enc}\nD_d = {d_d}" + (f" (part {c + 1}/{chunks})" if chunks > 1 else ""))
    handles = [Patch(color=f"C{k % 10}") for k in range(len(defenses))]
    _legend_below(fig, handles, defenses, ncols=math.ceil(len(defenses) / math.ceil(len(defenses) / 8)))
    fig.suptitle(f"BA and RA (%) under each attack, one bar per defense ({_eps_text(ctx.eps)}, {_scenario_text(df)})")
    return fig


@register_plot("heatmap")
def plot_heatmap(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """RA (%) of every defense (rows) under every attack (columns), one panel per (victim, D_d)."""
    df = _select(run.results, ctx, attack=False)
    if df.empty:
        raise NotCovered("no semi-black-box cell at this eps")
    victims = _victims(df, ctx)
    defenses, attacks = list(dict.fromkeys(df.defense)), list(dict.fromkeys(df.attack.dropna()))
    panels = [(enc, d_d, sub) for enc, sub in victims for d_d in dict.fromkeys(sub.D_d)]
    label_w = 0.09 * max(map(len, defenses)) + 0.4
    width = min(PAGE_WIDTH, 0.8 * len(attacks) + label_w + 0.3)
    ncols = max(1, min(3, int((PAGE_WIDTH - 0.8) // width)))
    upright = len(attacks) * max(map(len, attacks)) <= 26
    fig, axes = _panels(len(panels), ncols, width,
                        0.42 * len(defenses) + (0.3 if upright else 0.1 * max(map(len, attacks))) + 1.2)
    im = None
    for ax, (enc, d_d, sub) in zip(axes, panels):
        grid = sub[sub.D_d == d_d].pivot_table(index="defense", columns="attack", values="RA", aggfunc="first")
        grid = grid.reindex(index=defenses, columns=attacks).mul(100)
        im = ax.imshow(grid.values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(grid.values):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.1f}", ha="center", va="center", color="white" if v < 50 else "black")
        upright = len(attacks) * max(map(len, attacks)) <= 26  # a few short names fit level
        ax.set_xticks(range(len(attacks)), attacks, rotation=0 if upright else 45, ha="center" if upright else "right")
        ax.set_yticks(range(len(defenses)), defenses)
        ax.set_xlabel("attack")
        ax.set_ylabel("defense")
        ax.set_title(f"{enc}\nD_d = {d_d}")
        ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.9, label="RA (%)")
    fig.suptitle(f"RA (%) of each defense under each attack ({_eps_text(ctx.eps)}, {_scenario_text(df)})")
    return fig


# -- sweeps ------------------------------------------------------------------------------------------
def _sweep_figure(panels: list[tuple[str, pd.DataFrame]], x: str, xlabel: str, ylabel: str, series: str,
                  title: str) -> plt.Figure:
    """One panel per victim; in each, one line per `series` value of `value` (%) against x."""
    fig, axes = _panels(len(panels), 3, 3.5, 2.8)
    names = list(dict.fromkeys(n for _, data in panels for n in data[series]))
    for ax, (panel_title, data) in zip(axes, panels):
        for name, rows in data.groupby(series, sort=False):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows["value"] * 100, marker="o", color=f"C{names.index(name) % 10}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{k % 10}", marker="o") for k in range(len(names))]
    _legend_below(fig, handles, [str(n) for n in names], ncols=min(len(names), 5))
    fig.suptitle(title)
    return fig


@register_plot("eps_sweep")
def plot_eps_sweep(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Table S4 as lines: RA against the perturbation budget, one line per defense, one panel per victim."""
    df = _pick(_select(run.results, ctx, eps=False), "D_d", ctx.downstream)
    if df.eps.nunique() < 2:
        raise NotCovered("the run has a single eps")
    df = df.assign(eps255=df.eps * 255, value=df.RA)
    swept = df.groupby(["encoder", "defense"] if "encoder" in df else ["defense"]).eps.transform("nunique") >= 2
    df = df[swept]  # a defense at a single eps is no line
    if df.empty:
        raise NotCovered("no defense of any victim encoder has more than one eps")
    panels = [(f"{enc}\nD_d = {ctx.downstream}", sub) for enc, sub in _victims(df, ctx)]
    return _sweep_figure(panels, "eps255", "ε (x/255)", "RA (%)", "defense",
                         f"RA (%) vs the perturbation budget ({ctx.attack}, {_scenario_text(df)})")


@register_plot("param_sweep")
def plot_param_sweep(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Table S5 as lines: BA and RA against the swept defense parameter (the paper: lambda), one
    panel per victim; only the variants that differ from "ours" in that parameter alone."""
    if ctx.sweep is None or "defense_params" not in run.results:
        raise NotCovered("no defense parameter varies in the run")
    df = _family(_pick(_select(run.results, ctx), "D_d", ctx.downstream), ctx.defense)
    ours = df.loc[df.defense == ctx.defense, "defense_params"]
    if len(ours):
        base = {k: v for k, v in json.loads(ours.iloc[0]).items() if k != ctx.sweep}
        df = df[df.defense_params.map(lambda p: {k: v for k, v in json.loads(p).items() if k != ctx.sweep} == base)]
    df = df.assign(x=df.defense_params.map(lambda p: json.loads(p).get(ctx.sweep))).dropna(subset=["x"])
    xlabel = ctx.sweep
    if df.x.map(lambda v: isinstance(v, list)).any():  # a list of encoders (Figure S2): their number
        df, xlabel = df.assign(x=df.x.map(len)), f"number of {ctx.sweep}"
    if df.x.nunique() < 2:
        raise NotCovered(f"{ctx.sweep} takes a single value in the run")
    long = df.melt(id_vars=[c for c in df.columns if c not in ("BA", "RA")], value_vars=["BA", "RA"], var_name="metric")
    panels = [(f"{enc}\nD_d = {ctx.downstream}", sub) for enc, sub in _victims(long, ctx)]
    family = df.defense_name.iloc[0] if "defense_name" in df else ctx.defense
    return _sweep_figure(panels, "x", xlabel, "accuracy (%)", "metric",
                         f"BA / RA (%) of {family} vs {ctx.sweep} ({ctx.attack}, {_eps_text(ctx.eps)}, "
                         f"{_scenario_text(df)})")


# -- Figure 3: t-SNE of features ------------------------------------------------------------------------
@register_plot("tsne")
def plot_tsne(run: RunRecord, ctx: TableContext, points: int = 400) -> plt.Figure:
    """Figure 3 style: t-SNE of benign and adversarial test features of the victim branch (the
    first), one row per victim encoder, one column per defense (the baseline and "ours")."""
    from sklearn.manifold import TSNE

    df = _pick(_select(run.results, ctx), "D_d", ctx.downstream)
    if df.empty:
        raise NotCovered(f"no cell with attack {ctx.attack} on {ctx.downstream}")
    victims = _victims(df, ctx)
    store = _store(run)
    cells = [(enc, defense, sub) for enc, sub in victims for defense in _defenses(sub, ctx)]
    ncols = max(len(_defenses(sub, ctx)) for _, sub in victims)
    fig, axes = _panels(len(cells), ncols, 3.3, 3.2)
    rng = np.random.default_rng(0)
    classes = 0
    for ax, (enc, defense, sub) in zip(axes, cells):
        inputs = store.load_meta("evaluate", sub[sub.defense == defense].key.iloc[0])["inputs"]
        clean, adv = store.load("features", inputs["clean"]), store.load("features", inputs["adv"])
        labels = clean.tensors["labels"].numpy()
        classes = max(classes, int(clean.meta.get("num_classes", labels.max() + 1)))
        idx = np.sort(rng.choice(len(labels), size=min(points, len(labels)), replace=False))
        feats = np.concatenate([clean.tensors["branch0"].numpy()[idx], adv.tensors["branch0"].numpy()[idx]])
        emb = TSNE(n_components=2, perplexity=min(30, (2 * len(idx) - 1) / 3), init="pca",
                   random_state=0).fit_transform(feats)
        n = len(idx)
        cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo", max(classes, 1))
        kw = {"c": labels[idx], "cmap": cmap, "vmin": -0.5, "vmax": classes - 0.5}
        ax.scatter(emb[:n, 0], emb[:n, 1], s=7, marker="o", **kw)
        ax.scatter(emb[n:, 0], emb[n:, 1], s=12, marker="x", linewidths=0.8, **kw)
        ax.set_title(f"{defense} · {enc}\nD_d = {ctx.downstream}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(True)
    marks = [Line2D([], [], color="0.3", marker="o", linestyle="", markersize=5),
             Line2D([], [], color="0.3", marker="x", linestyle="", markersize=6)]
    if classes <= 20:
        swatches = [Line2D([], [], color=cmap(c), marker="o", linestyle="", markersize=6) for c in range(classes)]
        fig.legend(marks + swatches, ["benign", "adversarial"] + [f"class {c}" for c in range(classes)],
                   loc="outside lower center", ncols=6, frameon=False)
    else:  # too many classes for a legend: a colour bar keyed by class
        fig.legend(marks, ["benign", "adversarial"], loc="outside lower center", ncols=2, frameon=False)
        fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(-0.5, classes - 0.5), cmap), ax=axes, label="class")
    fig.suptitle(f"t-SNE of victim-branch features ({ctx.attack}, {_eps_text(ctx.eps)}, {_scenario_text(df)})")
    return fig


# -- detection ROC ---------------------------------------------------------------------------------------
@register_plot("roc")
def plot_roc(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """The detector's ROC (adversarial = positive) from the per-sample detection scores of the
    evaluations, one curve per attack, one panel per (victim, D_d); the AUROC in the legend and
    the detector's own threshold marked. Only defenses that detect (ZePAD) have one."""
    from sklearn.metrics import roc_auc_score, roc_curve

    df = _select(run.results, ctx, attack=False)
    score_cols = [c for c in ("detection_accuracy", "detection_auroc") if c in df]
    detecting = df[df[score_cols].notna().any(axis=1)] if score_cols else df.iloc[0:0]
    if detecting.empty:
        raise NotCovered("no defense in the run has a detector (no detection scores at this eps); the ROC needs one "
                         "that flags DAEs, such as zepad")
    labels = list(dict.fromkeys(detecting.defense))
    defense = ctx.defense if ctx.defense in labels else labels[0]
    df = detecting[detecting.defense == defense]
    store = _store(run)
    victims = _victims(df, ctx)
    panels = [(enc, d_d, sub[sub.D_d == d_d]) for enc, sub in victims for d_d in dict.fromkeys(sub.D_d)]
    per_victim = max(len(set(sub.D_d)) for _, sub in victims)
    fig, axes = _panels(len(panels), per_victim if per_victim <= 3 else 3, 3.4, 3.5)
    attacks = list(dict.fromkeys(df.attack))
    for ax, (enc, d_d, cells) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="chance (AUROC 0.5)")
        for _, row in cells.iterrows():
            art = store.load("evaluate", row.key)
            if "detection_score_clean" not in art.tensors:
                raise NotCovered(f"the evaluation of {defense} ({row.attack}, {d_d}) holds no per-sample detection "
                                 f"scores; re-evaluate it with this version")
            clean = art.tensors["detection_score_clean"].double().numpy()
            adv = art.tensors["detection_score_adv"].double().numpy()
            truth = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
            fpr, tpr, _ = roc_curve(truth, np.r_[clean, adv])
            auc = roc_auc_score(truth, np.r_[clean, adv])
            colour = f"C{attacks.index(row.attack) % 10}"
            ax.plot(fpr, tpr, color=colour, label=f"{row.attack} (AUROC {auc:.3f})")
            if "flagged_clean" in art.tensors:  # the detector's operating point at its threshold
                ax.plot(art.tensors["flagged_clean"].float().mean().item(), art.tensors["flagged_adv"].float().mean().item(),
                        marker="o", color=colour, markersize=6, linestyle="")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (benign flagged)")
        ax.set_ylabel("true positive rate (DAE flagged)")
        ax.set_title(f"{defense} · {enc}\nD_d = {d_d}")
        ax.legend(loc="lower right", framealpha=0.9, edgecolor="none", borderaxespad=0.2)
    fig.suptitle(f"DAE detection ROC ({_eps_text(ctx.eps)}, {_scenario_text(df)}; dot = the detector's threshold)")
    return fig


def write_plots(run: RunRecord, out_dir: Path, names: list[str] | None = None,
                **context: str | float | None) -> tuple[list[Path], dict[str, str]]:
    """Each figure as PNG + PDF; returns the files and, per skipped figure, why.
    `context` as `TableContext.defaults`, plus `encoder` (unset: every victim encoder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = TableContext.defaults(run.results, **context)
    written, skipped = [], {}
    for name in names or PLOTS.names():
        try:
            fig = draw(run, name, ctx)
        except NotCovered as why:
            skipped[name] = str(why)
            continue
        for suffix, dpi in ((".png", PNG_DPI), (".pdf", None)):
            path = out_dir / f"{name}{suffix}"
            fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if suffix == ".pdf" else None)
            written.append(path)
        plt.close(fig)
    return written, skipped
