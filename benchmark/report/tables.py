"""The ZePAD paper's tables, rebuilt from a run's tidy results (and from the paper's own numbers).

Each table is a registered builder: tidy rows in, a pandas DataFrame out, in the
paper's layout (rows D_p / D_d / baseline-ours-delta, one column per SSL method plus
AVG, and so on). The same builder runs on the measured rows and on the
paper-reported rows (`paper.py`), so the two can be shown side by side, each block
labelled with its source. A cell the data does not cover stays empty: nothing is
ever filled in.

Which defense is "ours", which attack and which eps a table shows are a
`TableContext`; its defaults follow the paper (ZePAD, AdvEncoder, 10/255) and fall
back to what the run has (the defense with the best mean RA, the grid's first
attack, the smallest eps). Values are percentages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from daebench.registry import Registry

BASELINE = "none"
DELTA = "Δ"
AVG = "AVG"
PAPER_METHODS = ["wmse", "byol", "nnclr", "simclr", "mocov2plus", "mocov3", "supcon", "ressl", "dino", "swav", "vibcreg"]
METHOD_LABELS = {"wmse": "W-MSE", "byol": "BYOL", "nnclr": "NNCLR", "simclr": "SimCLR", "mocov2plus": "MoCo2+",
                 "mocov3": "MoCo3", "supcon": "SupCon", "ressl": "RESSL", "dino": "DINO", "swav": "SwAV",
                 "vibcreg": "VibCreg"}
PAPER_EPS = 10 / 255


@dataclass(frozen=True)
class TableContext:
    """What a table shows: the defense compared with the baseline, the attack, eps, and for
    single-setting tables (7, S4, 5) the D_f / D_d they are read at."""

    defense: str
    attack: str | None
    eps: float | None
    fine_tune: str | None = None
    downstream: str | None = None
    sweep: str | None = None  # the defense parameter of Table S5 (ZePAD's lambda)
    encoder: str | None = None  # the victim encoder figures show (None: every one, a panel each)
    # the pre-training data of the victims a table without a D_p level shows, where the rows
    # hold several (the paper's CIFAR-10 when there; None: the rows hold one)
    pretrain: str | None = None

    @classmethod
    def defaults(cls, df: pd.DataFrame, **overrides: str | float | None) -> "TableContext":
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(
            defense=given.get("defense") or _default_defense(df),
            attack=given.get("attack") or _default_attack(df),
            eps=given.get("eps") or _default_eps(df),
            fine_tune=given.get("fine_tune") or _first(df, "D_f"),
            downstream=given.get("downstream") or _first(df, "D_d"),
            sweep=given.get("sweep") or _default_sweep(df, given.get("defense") or _default_defense(df)),
            encoder=given.get("encoder"),
            pretrain=given.get("pretrain") or _default_pretrain(df),
        )

    def describe(self, df: pd.DataFrame | None = None) -> str:
        """The context in words; given the rows, also which variant "ours" is when the
        defense's family has several in them (the full method or an ablation)."""
        eps = f"{self.eps * 255:.0f}/255" if self.eps else "any"
        which = _which_variant(df, self.defense) if df is not None and not df.empty else ""
        pretrain = f", victims pre-trained on {self.pretrain}" if self.pretrain else ""
        return f"ours = {self.defense} (vs baseline {BASELINE}), attack = {self.attack}, eps = {eps}{pretrain}{which}"


@dataclass
class Table:
    """A built table: its frame (numbers in %), caption and the context it was read at."""

    name: str
    title: str
    frame: pd.DataFrame
    context: str = ""
    signed_rows: tuple[str, ...] = (DELTA,)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.frame.empty or bool(self.frame.isna().all().all())


Builder = Callable[[pd.DataFrame, TableContext], pd.DataFrame]
TABLES: Registry[tuple[str, Builder]] = Registry("table")


def register_table(name: str, title: str):
    def add(fn: Builder) -> Builder:
        TABLES.register(name, (title, fn), origin=fn.__module__)
        return fn
    return add


# -- defaults -----------------------------------------------------------------------------
def _first(df: pd.DataFrame, col: str) -> str | None:
    values = df[col].dropna() if col in df else []
    return str(values.iloc[0]) if len(values) else None


def _default_defense(df: pd.DataFrame) -> str:
    names = set(df.get("defense_name", df["defense"]))
    if "zepad" in names:
        labels = list(dict.fromkeys(df.loc[df.get("defense_name", df["defense"]) == "zepad", "defense"]))
        return full_method(df, labels[0]) or labels[0]  # the full method, not an ablation variant
    others = df[df.defense != BASELINE]
    if others.empty:
        return BASELINE
    return str(others.groupby("defense")["RA"].mean().idxmax())


#: the paper's names of a defense's switches (its Table 5 / S5 settings) -> the defense's parameters
PARAM_ALIASES = {"adv_ft": "adversarial_fine_tuning", "mpae": "mpae_branch", "bmp": "bmp_branch", "lambda": "lam"}


def _param_defaults(defense_name: str) -> dict[str, object]:
    """The registered defense's declared parameter defaults ({} for one not installed here)."""
    try:
        from daebench.defenses import DEFENSES

        fields = DEFENSES.get(defense_name).Params.model_fields
    except Exception:  # an unknown plugin, or a paper row naming a defense this install lacks
        return {}
    return {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()}


def _same_value(value: object, default: object) -> bool:
    if isinstance(default, bool):
        return str(value).strip().lower() in (("1", "true", "yes", "on") if default else ("0", "false", "no", "off"))
    if isinstance(default, (int, float)):
        try:
            return math.isclose(float(value), float(default))
        except (TypeError, ValueError):
            return False
    return value == default


def full_method(df: pd.DataFrame, defense: str) -> str | None:
    """The full method of the family `defense` belongs to: its unlabelled member (the label is
    the defense's own name), else the variant whose parameters that vary across the family all
    equal the defense's defaults (the paper's Table 5 `adv_ft=1;mpae=1;bmp=1`, S3 `fusion=rfdm`,
    S5 `lambda=20`); None when no variant is at the defaults."""
    family = _family(df, defense)
    labels = list(dict.fromkeys(family.defense))
    if not labels:
        return None
    name = str(family.defense_name.iloc[0]) if "defense_name" in family else defense
    if name in labels or len(labels) == 1:
        return name if name in labels else labels[0]
    if "defense_params" not in family:
        return None
    params = {label: json.loads(family.loc[family.defense == label, "defense_params"].dropna().iloc[0] or "{}")
              if family.loc[family.defense == label, "defense_params"].notna().any() else {} for label in labels}
    keys = {k for p in params.values() for k in p}
    varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params.values()}) > 1]
    defaults = _param_defaults(name)
    known = [k for k in varying if PARAM_ALIASES.get(k, k) in defaults]
    if not known:
        return None
    at_defaults = [label for label in labels
                   if all(_same_value(params[label].get(k), defaults[PARAM_ALIASES.get(k, k)]) for k in known)]
    return at_defaults[0] if len(at_defaults) == 1 else None


def _default_pretrain(df: pd.DataFrame) -> str | None:
    """Where the rows hold victims of several D_p: the paper's default (CIFAR-10) when there."""
    values = list(dict.fromkeys(df["D_p"].dropna())) if "D_p" in df else []
    if len(values) < 2:
        return None
    return "cifar10" if "cifar10" in values else str(values[0])


def _default_attack(df: pd.DataFrame) -> str | None:
    attacks = df["attack"].dropna()
    if attacks.empty:
        return None
    return "advencoder" if "advencoder" in set(attacks) else str(attacks.iloc[0])


def _default_eps(df: pd.DataFrame) -> float | None:
    eps = df["eps"].dropna()
    if eps.empty:
        return None
    return PAPER_EPS if np.isclose(eps, PAPER_EPS).any() else float(eps.min())


def _default_sweep(df: pd.DataFrame, defense: str) -> str | None:
    """The parameter that varies across the variants of "ours", if exactly one family varies."""
    family = _family(df, defense)
    if family.empty or "defense_params" not in family:
        return None
    params = [json.loads(p) for p in family["defense_params"].dropna().unique()]
    varying = sorted({k for p in params for k in p if len({json.dumps(q.get(k)) for q in params}) > 1})
    return "lambda" if "lambda" in varying else (varying[0] if varying else None)


#: the settings a variant table's rows differ in, as the paper prints them: (the paper's name,
#: the defense's parameter); and the parameter values the paper names otherwise
PAPER_SETTINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "5": (("adv_ft", "adversarial_fine_tuning"), ("mpae", "mpae_branch"), ("bmp", "bmp_branch")),
    "S3": (("fusion", "fusion"),),
}
PAPER_VALUES = {"fusion": {"equal": "average"}}


def paper_setting_labels(d: pd.DataFrame, table: str) -> pd.Series:
    """Each row's variant in the paper's notation of the table's settings (Table 5
    `adv_ft=1;mpae=0;bmp=1`, S3 `fusion=average`), so a measured row sits beside the
    paper-reported row of the same setting whatever the grid called it. The undefended
    baseline is Table 5's all-off row. Rows already in that notation (the paper's) keep
    their label; where a row lacks a setting, or two labels would merge, every label stays."""
    settings = PAPER_SETTINGS[table]

    def label(row: pd.Series) -> str:
        if all(f"{name}=" in str(row["defense"]) for name, _ in settings):  # a paper-reported row
            return str(row["defense"])
        params = json.loads(row["defense_params"]) if isinstance(row.get("defense_params"), str) else {}
        if row["defense"] == BASELINE and table == "5":
            return ";".join(f"{name}=0" for name, _ in settings)
        if not all(param in params for _, param in settings):
            return ""
        values = [params[param] for _, param in settings]
        return ";".join(f"{name}={int(v) if isinstance(v, bool) else PAPER_VALUES.get(name, {}).get(v, v)}"
                        for (name, _), v in zip(settings, values))

    labels = d.apply(label, axis=1) if len(d) else pd.Series(dtype=str, index=d.index)
    pairs = pd.DataFrame({"defense": d["defense"], "label": labels}).drop_duplicates()
    if (labels == "").any() or pairs.label.duplicated().any() or pairs.defense.duplicated().any():
        return d["defense"]
    return labels


def _setting_caption(table: str) -> Callable[[pd.DataFrame, TableContext], str]:
    """The caption's key from the grid's labels to the paper's settings the rows carry."""
    def caption(df: pd.DataFrame, ctx: TableContext) -> str:
        d = _variant_rows(df, ctx, table)
        if d.empty:
            return ""
        labels = paper_setting_labels(d, table)
        pairs = dict(zip(d["defense"], labels))
        if all(k == v for k, v in pairs.items()):
            return ""
        return "; rows by the paper's settings: " + ", ".join(f"{k} = {v}" for k, v in pairs.items())
    return caption


def _variant_rows(df: pd.DataFrame, ctx: TableContext, table: str) -> pd.DataFrame:
    """The rows a variant table (5, S3) shows: every variant of "ours" at the table's D_f / D_d,
    and for Table 5 the baseline (its all-off row)."""
    d = _at_setting(df, ctx)
    family = _family(d, ctx.defense)
    return d[(d.defense == BASELINE) | d.index.isin(family.index)] if table == "5" else family


def _family(df: pd.DataFrame, defense: str) -> pd.DataFrame:
    """Every row of the defense "ours" belongs to, across its variants (labels)."""
    if "defense_name" not in df:
        return df[df.defense == defense]
    names = df.loc[df.defense == defense, "defense_name"]
    return df[df.defense_name == names.iloc[0]] if len(names) else df.iloc[0:0]


def _which_variant(df: pd.DataFrame, defense: str) -> str:
    """'; ours is the full method ...' or '; ours is a variant ...' when the family has variants in df."""
    family = _family(df, defense)
    if family.defense.nunique() < 2:
        return ""
    name = str(family.defense_name.iloc[0]) if "defense_name" in family else defense
    full = full_method(df, defense)
    if full == defense:
        return f"; ours is the full method, {name} at its default parameters (the other variants are ablations)"
    if full is None:
        return f"; ours is a variant of {name} (none of its variants here is at its default parameters)"
    return f"; ours is a variant of {name}, not its full method {full}"


# -- selection helpers ------------------------------------------------------------------------
def victim_label(df: pd.DataFrame) -> pd.Series:
    """The column a victim encoder gets: its SSL method (paper label), or its name when loaded."""
    method = df["method"].fillna("")
    named = df["encoder"].fillna("") if "encoder" in df else method
    return pd.Series(np.where(method.isin(["", "checkpoint"]), named, method.map(lambda m: METHOD_LABELS.get(m, m))),
                     index=df.index)


def _select(df: pd.DataFrame, ctx: TableContext, *, scenario: str | None = "semi_black_box",
            attack: bool = True, eps: bool = True, pretrain: bool = True) -> pd.DataFrame:
    out = df
    if pretrain and ctx.pretrain is not None and "D_p" in out:  # victims of one D_p: a column is one encoder
        out = out[out.D_p == ctx.pretrain]
    if scenario is not None:
        out = out[out.scenario == scenario]
    if attack and ctx.attack is not None:
        out = out[out.attack == ctx.attack]
    if eps and ctx.eps is not None and out["eps"].notna().any():
        out = out[np.isclose(out["eps"].astype(float), ctx.eps)]
    return out


def _at_setting(df: pd.DataFrame, ctx: TableContext, **select: bool) -> pd.DataFrame:
    """The rows of a single-setting table: `_select`ed, at the context's D_f and D_d."""
    return _pick(_pick(_select(df, ctx, **select), "D_f", ctx.fine_tune), "D_d", ctx.downstream)


def _pick(df: pd.DataFrame, col: str, value: str | None) -> pd.DataFrame:
    """Filter on col == value, unless the column is unrecorded (all missing) there."""
    if value is None or col not in df or df[col].isna().all():
        return df
    return df[df[col] == value]


def _columns(victims: pd.Series) -> list[str]:
    """Paper order first, then anything else in order of appearance."""
    order = [METHOD_LABELS[m] for m in PAPER_METHODS]
    seen = list(dict.fromkeys(victims))
    return [c for c in order if c in seen] + [c for c in seen if c not in order]


def _with_avg(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    frame = frame.copy()
    frame[AVG] = frame.mean(axis=1, skipna=True)
    return frame


def _baseline_vs_ours(df: pd.DataFrame, ctx: TableContext, metric: str, index: list[str], same_data: bool,
                      scenario: str) -> pd.DataFrame:
    """Rows: the index levels, then baseline / ours / Δ; columns: victim encoders + AVG."""
    d = _select(df, ctx, scenario=scenario, attack=metric != "BA", pretrain="D_p" not in index)
    d = d[(d.D_f == d.D_d) if same_data else (d.D_f != d.D_d)]
    d = d[d.defense.isin([BASELINE, ctx.defense])].assign(victim=lambda t: victim_label(t))
    if d.empty:
        return pd.DataFrame()
    if "D_f and D_d" in index:
        d = d.assign(**{"D_f and D_d": d.D_d})
    cols = _columns(d.victim)
    values = d.groupby([*index, "defense", "victim"], sort=False)[metric].mean().mul(100).unstack("victim")
    values = values.reindex(columns=cols)
    blocks = []
    for keys, block in values.groupby(level=index, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        base = block.xs(BASELINE, level="defense").iloc[0] if BASELINE in block.index.get_level_values("defense") \
            else pd.Series(np.nan, index=cols)
        ours = block.xs(ctx.defense, level="defense").iloc[0] if ctx.defense in block.index.get_level_values("defense") \
            else pd.Series(np.nan, index=cols)
        rows = pd.DataFrame([base, ours, ours - base], index=pd.MultiIndex.from_tuples(
            [(*keys, "baseline"), (*keys, ctx.defense), (*keys, DELTA)], names=[*index, "Method"]))
        blocks.append(rows)
    out = _with_avg(pd.concat(blocks))
    # AVG of a Δ row = AVG(ours) - AVG(baseline), as the paper prints it (equal to the mean
    # of Δ only when both rows cover the same encoders)
    methods = out.index.get_level_values("Method")
    for pos in np.flatnonzero(methods == DELTA):
        out.iloc[pos, out.columns.get_loc(AVG)] = out.iloc[pos - 1][AVG] - out.iloc[pos - 2][AVG]
    return out


# -- the tables ------------------------------------------------------------------------------
@register_table("1", "BA (%) of the baseline and the defense, D_f = D_d (semi-black-box)")
def table_1(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    return _baseline_vs_ours(df, ctx, "BA", ["D_p", "D_f and D_d"], True, "semi_black_box")


@register_table("2", "RA (%) of the baseline and the defense, D_f = D_d (semi-black-box)")
def table_2(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    return _baseline_vs_ours(df, ctx, "RA", ["D_p", "D_f and D_d"], True, "semi_black_box")


@register_table("3", "BA (%) of the baseline and the defense, D_f != D_d (semi-black-box)")
def table_3(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    return _baseline_vs_ours(df, ctx, "BA", ["D_f", "D_d"], False, "semi_black_box")


@register_table("4", "RA (%) of the baseline and the defense, D_f != D_d (semi-black-box)")
def table_4(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    return _baseline_vs_ours(df, ctx, "RA", ["D_f", "D_d"], False, "semi_black_box")


@register_table("S1", "BA (%) of the baseline and the defense in the white-box scenario")
def table_s1(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    return _baseline_vs_ours(df, ctx, "BA", ["D_f and D_d"], True, "white_box")


@register_table("S2", "RA (%) of the baseline and the defense in the white-box scenario")
def table_s2(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    return _baseline_vs_ours(df, ctx, "RA", ["D_f and D_d"], True, "white_box")


@register_table("5", "Ablation: BA / RA / ASR (%) of each variant of the defense, and the baseline")
def table_5(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    d = _variant_rows(df, ctx, "5")
    if d.empty:
        return pd.DataFrame()
    d = d.assign(victim=victim_label(d), defense=paper_setting_labels(d, "5"))
    out = d.groupby(["victim", "defense"], sort=False)[["BA", "RA", "ASR"]].mean().mul(100)
    return out.rename_axis(["Victim", "Defense"])


@register_table("6", "DAE detection accuracy (%) of the defense's detector")
def table_6(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    if "detection_accuracy" not in df:
        return pd.DataFrame()
    d = _select(df, ctx)
    d = d[(d.defense == ctx.defense) & d.detection_accuracy.notna()].assign(victim=lambda t: victim_label(t))
    if d.empty:
        return pd.DataFrame()
    out = d.groupby(["D_f", "D_d", "victim"], sort=False)["detection_accuracy"].mean().mul(100).unstack("victim")
    return _with_avg(out.reindex(columns=_columns(d.victim)))


@register_table("7", "Defenses compared: BA and RA (%) per attack; Δ = the defense minus the best other")
def table_7(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    d = _at_setting(df, ctx, attack=False)
    d = d[d.defense != BASELINE].assign(victim=lambda t: victim_label(t))
    if d.empty:
        return pd.DataFrame()
    ba = d.groupby(["victim", "defense"], sort=False)["BA"].mean()
    ra = d.dropna(subset=["attack"]).groupby(["victim", "defense", "attack"], sort=False)["RA"].mean().unstack("attack")
    ra.columns = [f"{a} RA" for a in ra.columns]
    out = pd.concat([ba.rename("BA"), ra], axis=1).mul(100)
    blocks = []
    for victim, block in out.groupby(level="victim", sort=False):
        block = block.copy()
        defenses = block.index.get_level_values("defense")
        if ctx.defense in defenses and len(defenses) > 1:
            ours = block.xs(ctx.defense, level="defense").iloc[0]
            best_other = block[defenses != ctx.defense].max()
            block.loc[(victim, DELTA), :] = (ours - best_other).values
        blocks.append(block)
    return pd.concat(blocks).rename_axis(["Model", "Method"])


@register_table("S3", "BA / RA (%) of each fusion (or other) variant of the defense")
def table_s3(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    d = _variant_rows(df, ctx, "S3")
    if d.empty:
        return pd.DataFrame()
    d = d.assign(victim=victim_label(d), defense=paper_setting_labels(d, "S3"))
    long = d.melt(id_vars=["defense", "victim"], value_vars=["BA", "RA"], var_name="Metric")
    out = long.groupby(["defense", "Metric", "victim"], sort=False)["value"].mean().mul(100).unstack("victim")
    return _with_avg(out.reindex(columns=_columns(d.victim))).rename_axis(["Variant", "Metric"])


@register_table("S4", "RA (%) of the defense under each perturbation budget")
def table_s4(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    d = _at_setting(df, ctx, eps=False)
    d = d[d.defense == ctx.defense].assign(victim=lambda t: victim_label(t))
    if d.empty:
        return pd.DataFrame()
    d = d.assign(eps_label=d.eps.map(lambda e: f"{e * 255:.0f}/255")).sort_values("eps", kind="stable")
    out = d.groupby(["eps_label", "victim"], sort=False)["RA"].mean().mul(100).unstack("victim")
    return _with_avg(out.reindex(columns=_columns(d.victim))).rename_axis("ϵ")


@register_table("S5", "BA / RA (%) of the defense as one of its parameters sweeps (the paper: lambda)")
def table_s5(df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame:
    if ctx.sweep is None or "defense_params" not in df:
        return pd.DataFrame()
    d = _at_setting(df, ctx)
    d = _family(d, ctx.defense)
    if d.empty:
        return pd.DataFrame()
    # only the variants that differ from "ours" in the swept parameter alone
    ours = d.loc[d.defense == ctx.defense, "defense_params"]
    if len(ours):
        base = {k: v for k, v in json.loads(ours.iloc[0]).items() if k != ctx.sweep}
        d = d[d.defense_params.map(lambda p: {k: v for k, v in json.loads(p).items() if k != ctx.sweep} == base)]
    d = d.assign(victim=victim_label(d), value=d.defense_params.map(lambda p: json.loads(p).get(ctx.sweep)))
    d = d.dropna(subset=["value"]).sort_values("value", kind="stable")
    d["value"] = d["value"].map(lambda v: f"{v:g}" if isinstance(v, (int, float)) else str(v))
    out = d.groupby(["value", "victim"], sort=False)[["BA", "RA"]].mean().mul(100).unstack("victim")
    out = out.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([_columns(d.victim), ["BA", "RA"]]))
    return out.rename_axis(ctx.sweep)


# -- building and writing ----------------------------------------------------------------------
def build_table(name: str, measured: pd.DataFrame, paper: pd.DataFrame | None = None,
                **context: str | float | None) -> Table:
    """One table from the measured rows, with the paper-reported block beneath when given."""
    title, builder = TABLES.get(name)
    ctx = _for_table(name, TableContext.defaults(measured, **context)) if not measured.empty else None
    frame = builder(measured, ctx) if ctx else pd.DataFrame()
    described = ctx.describe(_in_table(name, measured, ctx)) if ctx else "no measured rows"
    if ctx is not None and name in CAPTION_CHECKS:
        described += CAPTION_CHECKS[name](measured, ctx)
    if paper is not None and not paper.empty:
        paper_ctx = _for_table(name, TableContext.defaults(paper))
        reported = builder(paper, paper_ctx)
        blocks = {k: v for k, v in (("measured", frame), ("paper-reported", reported)) if not v.empty}
        if blocks:
            cols = _union_columns([v.columns for v in blocks.values()])
            frame = pd.concat({k: v.reindex(columns=cols) for k, v in blocks.items()}, names=["source"])
        described += f"; paper-reported block: {paper_ctx.describe(_in_table(name, paper, paper_ctx))}"
    return Table(name, title, frame, described)


#: tables with a D_p level: they show every pre-training set's victims, each in its rows
PRETRAIN_LEVEL_TABLES = ("1", "2")


def _for_table(name: str, ctx: TableContext) -> TableContext:
    """The context as the table reads it: no single D_p where the table has a D_p level."""
    return replace(ctx, pretrain=None) if name in PRETRAIN_LEVEL_TABLES else ctx


#: tables showing the variants of "ours" side by side, whose caption says which one "ours" is
VARIANT_TABLES = ("5", "S3", "S5")


def _in_table(name: str, df: pd.DataFrame, ctx: TableContext) -> pd.DataFrame | None:
    """The rows whose variants a table shows (its caption then says which variant "ours" is)."""
    return _at_setting(df, ctx) if name in VARIANT_TABLES \
        else None


def _detection_at_chance(df: pd.DataFrame, ctx: TableContext) -> str:
    """Table 6's caption note when the measured detector is at chance: its accuracy's 95% interval
    holds 50% and, where the AUROC is recorded, that is within 1.96 standard errors of 0.5 (an
    AUROC above chance with the accuracy at 50% is said apart: the threshold fails, not the scores)."""
    if "detection_accuracy" not in df:
        return ""
    d = _select(df, ctx)
    d = d[(d.defense == ctx.defense) & d.detection_accuracy.notna()]
    if d.empty:
        return ""
    state = d.apply(_chance_state, axis=1)
    auroc = d.detection_auroc.dropna() if "detection_auroc" in d else pd.Series(dtype=float)
    figures = f"mean accuracy {d.detection_accuracy.mean() * 100:.1f}%" + (
        f", mean AUROC {auroc.mean():.3f}" if len(auroc) else "")
    chance, threshold = int((state == "chance").sum()), int((state == "threshold").sum())
    out = ""
    if chance == len(d):
        out = (f". The measured detector is at chance in every cell ({figures}): each accuracy's 95% interval holds "
               f"50%{' and each AUROC is within its 95% interval of 0.5' if len(auroc) else ''}; it does not tell DAEs "
               f"from benign images here")
    elif chance:
        out = (f". In {chance} of {len(d)} measured cells the detector is at chance (the accuracy's 95% interval holds "
               f"50%{', the AUROC is within its interval of 0.5' if len(auroc) else ''})")
    if threshold:
        out += (f". In {threshold} of {len(d)} measured cells the accuracy is at chance at the detector's threshold "
                f"although the AUROC is above 0.5: the threshold, not the scores, fails there")
    return out


def _chance_state(row: pd.Series) -> str:
    """'chance', 'threshold' (accuracy at 50% but AUROC above chance) or '' for one cell."""
    from daebench.metrics import wilson_interval

    lo, hi, n = row.get("detection_accuracy_lo"), row.get("detection_accuracy_hi"), row.get("n")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        if n is None or pd.isna(n):
            return ""
        lo, hi = wilson_interval(round(row.detection_accuracy * 2 * n), int(2 * n))  # clean + adversarial images
    if not lo <= 0.5 <= hi:
        return ""
    auroc = row.get("detection_auroc")
    if auroc is None or pd.isna(auroc) or n is None or pd.isna(n):
        return "chance"
    return "chance" if abs(auroc - 0.5) <= 1.96 * _auroc_se(float(auroc), int(n), int(n)) else "threshold"


def _auroc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / max(n_pos * n_neg, 1)
    return math.sqrt(max(var, 0.0))


#: per table, a check of the measured rows that adds a sentence to the caption
CAPTION_CHECKS: dict[str, Callable[[pd.DataFrame, TableContext], str]] = {
    "6": _detection_at_chance, "5": _setting_caption("5"), "S3": _setting_caption("S3")}


def _union_columns(column_lists: list[pd.Index]) -> pd.Index | list:
    """Columns of several blocks: paper method order first, AVG last, others as they come."""
    cols = list(dict.fromkeys(c for cl in column_lists for c in cl))
    if any(isinstance(c, tuple) for c in cols):
        return pd.MultiIndex.from_tuples(cols)
    order = [METHOD_LABELS[m] for m in PAPER_METHODS]
    known = sorted((c for c in cols if c in order), key=order.index)
    return known + [c for c in cols if c not in order and c != AVG] + ([AVG] if AVG in cols else [])


def format_frame(table: Table) -> pd.DataFrame:
    """Numbers as the paper prints them: two decimals, a sign on Δ rows/columns, empty when missing."""
    frame = table.frame
    signed_rows = np.zeros(len(frame), dtype=bool)
    if isinstance(frame.index, pd.MultiIndex):
        signed_rows = np.array([any(str(v) in table.signed_rows for v in key) for key in frame.index])
    else:
        signed_rows = np.array([str(v) in table.signed_rows for v in frame.index])

    def fmt(value: float, signed: bool) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:+.2f}" if signed else f"{value:.2f}"

    out = pd.DataFrame({col: [fmt(v, s) for v, s in zip(frame[col], signed_rows)] for col in frame.columns},
                       index=frame.index)
    out.columns = frame.columns
    return out


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """Index levels as columns, repeated labels blanked (the paper's look), headers joined."""
    flat = frame.reset_index()
    levels = list(frame.index.names) if frame.index.nlevels > 1 else [frame.index.name or ""]
    levels = [lv or "" for lv in levels]
    flat.columns = [" ".join(str(p) for p in c if str(p)) if isinstance(c, tuple) else str(c) for c in flat.columns]
    original = flat.iloc[:, : len(levels)].astype(str)
    for depth in range(len(levels) - 1):
        keys = original.iloc[:, : depth + 1].agg("|".join, axis=1)
        flat.loc[keys.eq(keys.shift()), flat.columns[depth]] = ""
    return flat


def to_markdown(table: Table) -> str:
    head = f"**Table {table.name}.** {table.title}.\n\n_{table.context}._\n\n"
    if table.empty:
        return head + "_No cell of this run falls in this table's layout: nothing to show (nothing is invented)._\n"
    body = _flat(format_frame(table)).to_markdown(index=False, disable_numparse=True)
    notes = "".join(f"\n{n}\n" for n in table.notes)
    return head + body + "\n" + notes


def to_latex(table: Table) -> str:
    caption = f"{table.title} ({table.context})"
    if table.empty:
        return f"% Table {table.name}: no cell of this run falls in this table's layout.\n"
    caption = caption.replace("\\", "").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")
    tex = _flat(format_frame(table)).to_latex(index=False, escape=True, caption=caption, label=f"tab:daebench-{table.name}")
    return tex.replace(DELTA, r"$\Delta$").replace("ϵ", r"$\epsilon$")


def write_tables(measured: pd.DataFrame, out_dir: Path, paper: pd.DataFrame | None = None,
                 names: list[str] | None = None, header: str = "", **context: str | float | None) -> list[Path]:
    """Every table as .md, .tex and .csv, plus tables.md gathering them (under `header`,
    which says which run, data and date the numbers come from); returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sections = [], []
    for name in names or TABLES.names():
        table = build_table(name, measured, paper_subset(paper, name) if paper is not None else None, **context)
        stem = out_dir / f"table{name}"
        stem.with_suffix(".md").write_text(to_markdown(table))
        stem.with_suffix(".tex").write_text(to_latex(table))
        table.frame.to_csv(stem.with_suffix(".csv"))
        written += [stem.with_suffix(s) for s in (".md", ".tex", ".csv")]
        sections.append(to_markdown(table))
    index = out_dir / "tables.md"
    index.write_text((header + "\n\n" if header else "") + "\n".join(sections))
    return [index, *written]


def paper_subset(paper: pd.DataFrame, name: str) -> pd.DataFrame:
    """The paper-reported rows of one table (each table's numbers come from that table only)."""
    return paper[paper["table"] == name] if "table" in paper else paper
