"""The paper's figures from a run: matplotlib, written as PNG (small, committable) and PDF.

Each plot is a registered function `(run, ctx) -> Figure | None`: None means the
run does not cover what the figure shows (a single eps gives no eps sweep), and the
reason is reported instead of drawing an empty or invented figure. Figures that
need per-sample values (branch confidences, features) read them from the cached
artifacts the result rows point to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from daebench.registry import Registry  # noqa: E402
from daebench.results import RunRecord  # noqa: E402
from daebench.report.tables import BASELINE, TableContext, _family, _pick, _select, victim_label  # noqa: E402
from daebench.store import ArtifactStore  # noqa: E402


class NotCovered(Exception):
    """The run has no data for this figure; the message says what is missing."""


PlotFn = Callable[[RunRecord, TableContext], plt.Figure]
PLOTS: Registry[PlotFn] = Registry("plot")
register_plot = PLOTS.register


def _store(run: RunRecord) -> ArtifactStore:
    from daebench.paths import default_cache

    root = run.cache_dir or default_cache()
    if not Path(root).is_dir():
        raise NotCovered(f"the run's artifact store {root} is not here (its per-sample values are needed)")
    return ArtifactStore(root)


def _one_victim(df: pd.DataFrame) -> pd.DataFrame:
    """Figures read one victim encoder: the first in the run."""
    return df[df.encoder == df.encoder.iloc[0]] if "encoder" in df and len(df) else df


def _defenses(df: pd.DataFrame, ctx: TableContext) -> list[str]:
    present = list(dict.fromkeys(df.defense))
    return [d for d in (BASELINE, ctx.defense) if d in present] or present[:1]


# -- Figure 2: per-branch confidences --------------------------------------------------------------
@register_plot("confidence")
def plot_confidence(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Figure 2: each branch's max-softmax confidence on benign vs adversarial test images."""
    df = _one_victim(_select(run.results, ctx))
    if df.empty:
        raise NotCovered(f"no cell with attack {ctx.attack}")
    store = _store(run)
    defenses, datasets = _defenses(df, ctx), list(dict.fromkeys(df.D_d))
    fig, axes = plt.subplots(len(defenses), len(datasets), figsize=(3.6 * len(datasets), 2.6 * len(defenses)),
                             squeeze=False, sharex=True)
    bins = np.linspace(0, 1, 26)
    for i, defense in enumerate(defenses):
        for j, d_d in enumerate(datasets):
            ax = axes[i][j]
            rows = df[(df.defense == defense) & (df.D_d == d_d)]
            if rows.empty:
                ax.set_axis_off()
                continue
            art = store.load("evaluate", rows.key.iloc[0])
            branches = sorted({k.rsplit("_", 1)[1] for k in art.tensors if k.startswith("confidence_clean_")})
            for b, branch in enumerate(branches):
                colour = f"C{b}"
                for which, style in (("clean", "-"), ("adv", "--")):
                    conf = art.tensors[f"confidence_{which}_{branch}"].float().numpy()
                    ax.hist(conf, bins=bins, histtype="step", linestyle=style, color=colour, density=True,
                            label=f"{branch} {'benign' if which == 'clean' else 'adversarial'}")
            ax.set_title(f"{defense}: D_f={rows.D_f.iloc[0]}, D_d={d_d}", fontsize=8)
            if i == len(defenses) - 1:
                ax.set_xlabel("max softmax confidence", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(f"Per-branch confidence, benign vs adversarial ({ctx.attack})", fontsize=9)
    return fig


# -- Figure S1-style bars and the heatmap ---------------------------------------------------------
@register_plot("bars")
def plot_bars(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Figure S1 style: BA and RA per attack, one bar per defense, for each D_d."""
    df = _one_victim(_select(run.results, ctx, attack=False))
    if df.empty:
        raise NotCovered("no semi-black-box cell at this eps")
    datasets = list(dict.fromkeys(df.D_d))
    defenses = list(dict.fromkeys(df.defense))
    attacks = list(dict.fromkeys(df.attack))
    groups = ["BA", *attacks]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(5.0, 0.9 * len(groups) * max(1, len(defenses)) / 2 + 2),
                                                         2.8 * len(datasets)), squeeze=False)
    width = 0.8 / len(defenses)
    for ax, d_d in zip(axes[:, 0], datasets):
        sub = df[df.D_d == d_d]
        for k, defense in enumerate(defenses):
            rows = sub[sub.defense == defense].set_index("attack")
            values = [rows.BA.iloc[0] if len(rows) else np.nan] + [rows.RA.get(a, np.nan) for a in attacks]
            ax.bar(np.arange(len(groups)) + (k - (len(defenses) - 1) / 2) * width, np.multiply(values, 100),
                   width, label=defense, color=f"C{k}")
        ax.set_xticks(np.arange(len(groups)), ["BA"] + [f"RA\n{a}" for a in attacks], fontsize=7)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"D_d = {d_d}", fontsize=9)
        ax.legend(fontsize=7, ncols=min(4, len(defenses)))
    fig.tight_layout()
    return fig


@register_plot("heatmap")
def plot_heatmap(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """RA (%) of every defense (rows) under every attack (columns), one panel per D_d."""
    df = _one_victim(_select(run.results, ctx, attack=False))
    if df.empty:
        raise NotCovered("no semi-black-box cell at this eps")
    datasets = list(dict.fromkeys(df.D_d))
    defenses, attacks = list(dict.fromkeys(df.defense)), list(dict.fromkeys(df.attack))
    fig, axes = plt.subplots(1, len(datasets), figsize=(1.1 * len(attacks) * len(datasets) + 3, 0.5 * len(defenses) + 1.8),
                             squeeze=False, layout="constrained")
    for ax, d_d in zip(axes[0], datasets):
        grid = df[df.D_d == d_d].pivot_table(index="defense", columns="attack", values="RA", aggfunc="first")
        grid = grid.reindex(index=defenses, columns=attacks).mul(100)
        im = ax.imshow(grid.values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(grid.values):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white" if v < 50 else "black")
        ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(defenses)), defenses, fontsize=7)
        ax.set_title(f"RA (%), D_d = {d_d}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


# -- sweeps ------------------------------------------------------------------------------------------
def _sweep_figure(data: pd.DataFrame, x: str, xlabel: str, series: str, metrics: list[str], title: str) -> plt.Figure:
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for k, (name, rows) in enumerate(data.groupby(series, sort=False)):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows[metric] * 100, marker="o", color=f"C{k}", label=str(name))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (%)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@register_plot("eps_sweep")
def plot_eps_sweep(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Table S4 as lines: RA against the perturbation budget, one line per defense."""
    df = _one_victim(_pick(_select(run.results, ctx, eps=False), "D_d", ctx.downstream))
    if df.eps.nunique() < 2:
        raise NotCovered("the run has a single eps")
    df = df.assign(eps255=df.eps * 255)
    return _sweep_figure(df, "eps255", "eps (x/255)", "defense", ["RA"], f"RA vs eps ({ctx.attack}, D_d={ctx.downstream})")


@register_plot("param_sweep")
def plot_param_sweep(run: RunRecord, ctx: TableContext) -> plt.Figure:
    """Table S5 as lines: BA and RA against the swept defense parameter (the paper: lambda)."""
    if ctx.sweep is None or "defense_params" not in run.results:
        raise NotCovered("no defense parameter varies in the run")
    df = _family(_pick(_select(run.results, ctx), "D_d", ctx.downstream), ctx.defense)
    df = df.assign(value=df.defense_params.map(lambda p: json.loads(p).get(ctx.sweep)), victim=victim_label(df))
    df = df.dropna(subset=["value"])
    if df.value.nunique() < 2:
        raise NotCovered(f"{ctx.sweep} takes a single value in the run")
    return _sweep_figure(df, "value", ctx.sweep, "victim", ["BA", "RA"], f"BA / RA vs {ctx.sweep}")


# -- Figure 3: t-SNE of features ------------------------------------------------------------------------
@register_plot("tsne")
def plot_tsne(run: RunRecord, ctx: TableContext, points: int = 400) -> plt.Figure:
    """Figure 3 style: t-SNE of benign and adversarial test features, per defense (first branch)."""
    from sklearn.manifold import TSNE

    df = _one_victim(_pick(_select(run.results, ctx), "D_d", ctx.downstream))
    if df.empty:
        raise NotCovered(f"no cell with attack {ctx.attack} on {ctx.downstream}")
    store = _store(run)
    defenses = _defenses(df, ctx)
    fig, axes = plt.subplots(1, len(defenses), figsize=(4 * len(defenses), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, defense in zip(axes[0], defenses):
        inputs = store.load_meta("evaluate", df[df.defense == defense].key.iloc[0])["inputs"]
        clean, adv = store.load("features", inputs["clean"]), store.load("features", inputs["adv"])
        labels = clean.tensors["labels"].numpy()
        idx = np.sort(rng.choice(len(labels), size=min(points, len(labels)), replace=False))
        feats = np.concatenate([clean.tensors["branch0"].numpy()[idx], adv.tensors["branch0"].numpy()[idx]])
        emb = TSNE(n_components=2, perplexity=30, init="pca", random_state=0).fit_transform(feats)
        n = len(idx)
        ax.scatter(emb[:n, 0], emb[:n, 1], c=labels[idx], cmap="tab10", s=6, marker="o", label="benign")
        ax.scatter(emb[n:, 0], emb[n:, 1], c=labels[idx], cmap="tab10", s=10, marker="x", label="adversarial")
        ax.set_title(f"{defense} on {ctx.downstream} ({ctx.attack})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        legend = ax.legend(fontsize=7)
        for handle in legend.legend_handles:  # the markers' meaning, not a class colour
            handle.set_color("0.3")
    fig.suptitle("t-SNE of encoder features (colour = class; o benign, x adversarial)", fontsize=9)
    return fig


def write_plots(run: RunRecord, out_dir: Path, names: list[str] | None = None,
                **context: str | float | None) -> tuple[list[Path], dict[str, str]]:
    """Each figure as PNG + PDF; returns the files and, per skipped figure, why."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = TableContext.defaults(run.results, **context)
    written, skipped = [], {}
    for name in names or PLOTS.names():
        try:
            fig = PLOTS.get(name)(run, ctx)
        except NotCovered as why:
            skipped[name] = str(why)
            continue
        for suffix, dpi in ((".png", 90), (".pdf", None)):
            path = out_dir / f"{name}{suffix}"
            fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if suffix == ".pdf" else None)
            written.append(path)
        plt.close(fig)
    return written, skipped
