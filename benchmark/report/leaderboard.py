"""`leaderboard.md`: the generated section between two markers, rebuilt from run records.

The start marker names the records the section is built from: committed records
(`results/measured/<record>/`, each a results.csv + run.json) or run names under
the runs directory. So the leaderboard can rank grids too expensive for CI to
re-run (every defense x every attack, full-size data, GPU runs), and
`daebench leaderboard --check` tells whether the committed section is what the
committed records regenerate. `--reproduce RUN` checks a fresh run (CI's `ci`)
against the record of the same grid that the leaderboard ranks.

Per record, defenses are ranked by their mean RA over the *real* attacks: a control
(an attack plugin with `control = True`, e.g. uniform `noise`) is shown in its own
column and never averaged in, since it would lift every defense's mean towards its
BA. The 95% interval of a mean is the mean of its cells' 95% Wilson bounds: exact
when the cells' errors move together (they share the test images), wider otherwise,
so a separation it shows is not an artefact of assuming independence. A defense's
rank is one plus the number of defenses whose interval lies wholly above its own,
so defenses whose intervals overlap share a rank and are marked tied (`=`).

Only facts of the records go in (numbers, grid hash, device, versions, the record's
commit and date), so regenerating from the same records gives the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

import re
from pathlib import Path

import numpy as np
import pandas as pd

from daebench.config import format_eps
from daebench.errors import DAEBenchError
from daebench.results import RunRecord, load_run

START = re.compile(r"<!-- daebench:leaderboard:start runs=(?P<runs>[^ ]*) -->")
END = "<!-- daebench:leaderboard:end -->"
REPORTS_DIR = Path("results/reports")
BASELINE = "none"
#: attacks that are controls when their plugin cannot be imported to ask it
KNOWN_CONTROLS = frozenset({"noise"})


def is_control(attack_name: str) -> bool:
    """Whether an attack plugin is a control (it learns nothing about the encoder)."""
    from daebench.attacks.base import ATTACKS

    try:
        return bool(getattr(ATTACKS.get(attack_name), "control", False))
    except Exception:
        return attack_name in KNOWN_CONTROLS


def _attack_names(df: pd.DataFrame) -> pd.Series:
    return df["attack_name"] if "attack_name" in df else df["attack"]


def split_controls(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of real attacks, rows of controls)."""
    names = _attack_names(df)
    controls = names.map(lambda n: is_control(str(n)))
    return df[~controls], df[controls]


def _wilson(p: pd.Series, n: pd.Series) -> tuple[pd.Series, pd.Series]:
    z = 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _bounds(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The cells' metric with its 95% bounds (recorded, or Wilson from n)."""
    out = df.copy()
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    if lo not in out or out[lo].isna().any():
        n = out["n"] if "n" in out else pd.Series(np.nan, index=out.index)
        out[lo], out[hi] = _wilson(out[metric], n)
    return out


def rank_by_interval(means: pd.Series, lo: pd.Series, hi: pd.Series) -> pd.Series:
    """1 + the number of entries whose interval lies wholly above this one's."""
    return pd.Series([1 + int((lo > hi[k]).sum()) for k in means.index], index=means.index)


def _rank_labels(ranks: pd.Series) -> pd.Series:
    counts = ranks.value_counts()
    return ranks.map(lambda r: f"={r}" if counts[r] > 1 else str(r))


def rank_defenses(df: pd.DataFrame) -> pd.DataFrame:
    """One row per defense, best first: rank (tied where intervals overlap), mean RA over the
    real attacks with its interval, worst RA and its attack, BA and its change against the
    baseline, ASR, RA per attack, the controls' RA, and detection AUROC where it detects."""
    real, controls = split_controls(df)
    if real.empty:
        raise DAEBenchError("The record has no real attack, only controls: a leaderboard ranks defenses by "
                            "their RA under real attacks.")
    real = _bounds(real, "RA")
    g = real.groupby("defense", sort=False)
    out = pd.DataFrame({"mean RA": g.RA.mean(), "RA lo": g.RA_lo.mean(), "RA hi": g.RA_hi.mean()})
    per_attack = real.groupby(["defense", "attack"], sort=False).RA.mean().unstack("attack")
    out["worst RA"] = per_attack.min(axis=1)
    out["worst attack"] = per_attack.idxmin(axis=1)
    clean = _bounds(df.drop_duplicates([c for c in ("defense", "encoder", "D_d", "seed") if c in df]), "BA")
    b = clean.groupby("defense", sort=False)
    out["BA"], out["BA lo"], out["BA hi"] = b.BA.mean(), b.BA_lo.mean(), b.BA_hi.mean()
    if BASELINE in out.index:
        base = out.loc[BASELINE]
        out["BA change"] = out["BA"] - base["BA"]
        out["BA separates"] = (out["BA lo"] > base["BA hi"]) | (out["BA hi"] < base["BA lo"])
    out["ASR"] = g.ASR.mean()
    for attack in per_attack.columns:
        out[f"RA {attack}"] = per_attack[attack]
    if not controls.empty:
        for attack, rows in controls.groupby("attack", sort=False):
            out[f"RA {attack} (control)"] = rows.groupby("defense").RA.mean()
    if "detection_auroc" in df and df.detection_auroc.notna().any():
        out["AUROC"] = df.groupby("defense").detection_auroc.mean()
    out["cells"] = g.RA.size()
    out = out.sort_values(["mean RA", "BA"], ascending=False, kind="stable")
    ranks = rank_by_interval(out["mean RA"], out["RA lo"], out["RA hi"])
    out.insert(0, "rank", _rank_labels(ranks))
    return out.rename_axis("defense").reset_index()


def rank_attacks(df: pd.DataFrame) -> pd.DataFrame:
    """One row per attack, strongest first: the mean RA it leaves across defenses (lower is
    stronger) with its interval, its ASR, and the defense that resists it best; controls last."""
    rows = _bounds(df, "RA")
    g = rows.groupby("attack", sort=False)
    best = rows.groupby(["attack", "defense"], sort=False).RA.mean().unstack("defense")
    out = pd.DataFrame({"mean RA": g.RA.mean(), "RA lo": g.RA_lo.mean(), "RA hi": g.RA_hi.mean(),
                        "ASR": g.ASR.mean(), "most robust defense": best.idxmax(axis=1)})
    names = rows.groupby("attack", sort=False).apply(lambda r: str(_attack_names(r).iloc[0]), include_groups=False)
    out["control"] = names.map(is_control)
    real = out[~out.control].sort_values("mean RA", kind="stable")
    # stronger = lower RA: rank = 1 + attacks whose interval lies wholly below
    ranks = rank_by_interval(-real["mean RA"], -real["RA hi"], -real["RA lo"])
    real.insert(0, "rank", _rank_labels(ranks))
    ctrl = out[out.control].assign(rank="control")
    return pd.concat([real, ctrl]).drop(columns="control").rename_axis("attack").reset_index()


def _percent(v: float) -> str:
    return "" if pd.isna(v) else f"{100 * v:.1f}"


def _interval(m: float, lo: float, hi: float) -> str:
    return f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _signed(v: float) -> str:
    text = f"{100 * v:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _values(df: pd.DataFrame, col: str) -> str:
    if col not in df:
        return "?"
    return ", ".join(str(v) for v in dict.fromkeys(df[col].dropna()))


def defense_table(ranked: pd.DataFrame) -> pd.DataFrame:
    """The ranked defenses as printed: percentages, intervals, a dagger where BA separates."""
    cols: dict[str, pd.Series] = {
        "rank": ranked["rank"], "defense": ranked["defense"],
        "mean RA [95% CI]": [_interval(*r) for r in ranked[["mean RA", "RA lo", "RA hi"]].itertuples(index=False)],
        "worst RA (attack)": [f"{100 * v:.1f} ({a})" for v, a in ranked[["worst RA", "worst attack"]].itertuples(index=False)],
        "BA [95% CI]": [_interval(*r) for r in ranked[["BA", "BA lo", "BA hi"]].itertuples(index=False)],
    }
    if "BA change" in ranked:
        cols["BA change"] = [("" if d == BASELINE else _signed(c) + (" †" if s else ""))
                             for d, c, s in ranked[["defense", "BA change", "BA separates"]].itertuples(index=False)]
    cols["ASR"] = ranked["ASR"].map(_percent)
    for c in ranked.columns:
        if c.startswith("RA ") and c not in ("RA lo", "RA hi"):
            cols[c] = ranked[c].map(_percent)
    if "AUROC" in ranked:
        cols["detection AUROC"] = ranked["AUROC"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    cols["cells"] = ranked["cells"].astype(str)
    return pd.DataFrame(cols)


def attack_table(ranked: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "rank": ranked["rank"], "attack": ranked["attack"],
        "mean RA left [95% CI]": [_interval(*r) for r in ranked[["mean RA", "RA lo", "RA hi"]].itertuples(index=False)],
        "ASR": ranked["ASR"].map(_percent), "most robust defense": ranked["most robust defense"]})


def _record_link(run: RunRecord) -> str:
    path = Path(run.directory)
    try:
        path = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return f"`{run.directory}`"
    return f"[{path}/]({path}/)"


def run_section(run: RunRecord) -> str:
    df = run.results
    ranked = rank_defenses(df)
    eps = ", ".join(format_eps(e) for e in sorted(df.eps.unique()))
    first = df.iloc[0]
    info = run.info
    commit = str(info.get("git_commit") or first.get("git_commit", "?"))[:10]
    date = str(info.get("time_utc") or first.get("time_utc", "?"))[:10]
    real, controls = split_controls(df)
    facts = [
        f"record {_record_link(run)}: grid `{run.name}` (config hash `{info.get('grid_hash') or first.get('grid_hash', '?')}`), "
        f"run {date} at commit `{commit}`",
        f"victims: {_values(df, 'encoder')}", f"attacks: {_values(real, 'attack')}"
        + (f" (controls, not averaged: {_values(controls, 'attack')})" if len(controls) else ""),
        f"D_f: {_values(df, 'D_f')}; D_d: {_values(df, 'D_d')} ({_values(df, 'n')} test images)",
        f"scenarios: {_values(df, 'scenario')}; eps {eps}",
        f"device {first.get('device', info.get('device', '?'))} with {_values(df, 'torch_threads')} torch thread(s)"
        + (f" on {info['cpu']}" if info.get("cpu") else "") + " (CPU numbers depend on it), "
        f"torch {first.get('torch', info.get('torch', '?'))}, "
        f"daebench {first.get('daebench', info.get('daebench', '?'))}",
    ]
    lines = [f"### {run.name}" + (f": {info['description']}" if info.get("description") else ""), "",
             "; ".join(facts) + ".", "",
             defense_table(ranked).to_markdown(index=False, disable_numparse=True), "",
             "Attacks, strongest first (the mean RA they leave across every defense):", "",
             attack_table(rank_attacks(df)).to_markdown(index=False, disable_numparse=True), ""]
    reports = REPORTS_DIR / run.name
    if (reports / "tables" / "tables.md").is_file():
        lines += [f"Tables: [{reports}/tables/tables.md]({reports}/tables/tables.md) · plots: "
                  f"[{reports}/plots/]({reports}/plots/) (`daebench tables {run.name}`, `daebench plots {run.name}`).", ""]
    return "\n".join(lines)


LEGEND = ("Mean RA over the real attacks, D_d and victims of the record, with the mean of the cells' 95% Wilson "
          "bounds. Rank: 1 + the number of rows whose interval lies wholly above this one's (wholly below, for "
          "attacks: stronger), so rows that share a rank (`=k`) are tied, not ranked; † after a BA change: the BA "
          "intervals of the defense and the baseline (`none`) do not overlap. Controls (uniform `noise`) are "
          "shown apart and never averaged in. All figures in %.")


def generate(runs: list[str], runs_dir: Path) -> str:
    body = [f"<!-- daebench:leaderboard:start runs={','.join(runs)} -->",
            "<!-- generated by `daebench leaderboard`; edits here are overwritten -->", "", LEGEND, ""]
    for run in runs:
        body.append(run_section(load_run(run, runs_dir)))
    body.append(END)
    return "\n".join(body)


def _split(text: str, path: Path) -> tuple[str, re.Match, str]:
    start = START.search(text)
    end = text.find(END)
    if not start or end < start.end():
        raise DAEBenchError(f"{path} has no generated section: it needs a line "
                            f"'<!-- daebench:leaderboard:start runs=RUN[,RUN...] -->' and, after it, '{END}'.")
    return text[: start.start()], start, text[end + len(END):]


def listed_runs(path: Path) -> list[str]:
    """The records the file's start marker names."""
    if not path.is_file():
        raise DAEBenchError(f"{path} does not exist; create it with the two leaderboard markers.")
    _, start, _ = _split(path.read_text(), path)
    return [r for r in start.group("runs").split(",") if r]


def update(path: Path, runs_dir: Path, runs: list[str] | None = None, check: bool = False) -> tuple[bool, str]:
    """Rebuild the generated section; with check, only report whether it is stale.

    Returns (changed, new text)."""
    runs = runs or listed_runs(path)  # (it checks that the file exists)
    if not path.is_file():
        raise DAEBenchError(f"{path} does not exist; create it with the two leaderboard markers.")
    text = path.read_text()
    before, _, after = _split(text, path)
    new = before + generate(runs, runs_dir) + after
    changed = new != text
    if changed and not check:
        path.write_text(new)
    return changed, new


#: what a reproduction compares, rounded to the leaderboard's precision (0.1 point)
REPRODUCED = ("BA", "RA", "ASR")
#: run.json fields that must agree for a run to reproduce a record bit for bit: float32
#: kernels, and so every trained encoder, differ between CPUs (AVX2 / AVX512), devices,
#: torch releases and thread counts (reduction order)
MACHINE_FIELDS = ("device", "cpu", "torch", "torch_threads")


@dataclass
class Reproduction:
    """A fresh run against its record: `problems` fail the check; where the machines
    differ (`same_machine` False), per-cell differences are expected and only listed."""

    problems: list[str]
    differences: list[str]
    same_machine: bool
    machines: tuple[str, str]  # (record's, run's)


def machine_of(info: dict) -> str:
    return ", ".join(f"{k} {info.get(k, '?')}" for k in MACHINE_FIELDS)


def reproduction_check(run: str, path: Path, runs_dir: Path) -> Reproduction:
    """Cells where a fresh run of a grid differs from the leaderboard's record of that grid.

    The record is the one the marker lists whose grid has the run's name. On the
    record's machine (every MACHINE_FIELDS value recorded and equal) every cell must
    match to 0.1 point; elsewhere the same cells must exist, and their differences are
    reported, not failed: a float32 encoder trained on other kernels is another sample."""
    fresh = load_run(run, runs_dir)
    records = [load_run(r, runs_dir) for r in listed_runs(path)]
    matching = [r for r in records if r.name == fresh.name and Path(r.directory).resolve() != Path(fresh.directory).resolve()]
    if not matching:
        raise DAEBenchError(f"{path} ranks no record of grid '{fresh.name}' to reproduce (it ranks: "
                            f"{', '.join(r.name for r in records) or 'nothing'}).")
    record = matching[0]
    keys = ["defense", "attack", "D_d", "eps", *(c for c in ("encoder", "scenario", "seed") if c in fresh.results)]

    def table(rec: RunRecord) -> pd.DataFrame:
        df = rec.results.copy()
        df["eps"] = df["eps"].round(6)
        return df.set_index(keys)[list(REPRODUCED)].mul(100).round(1).sort_index()

    mine, theirs = table(fresh), table(record)
    problems = [f"cell {k} is in the record but not in the run" for k in theirs.index.difference(mine.index)]
    problems += [f"cell {k} is in the run but not in the record" for k in mine.index.difference(theirs.index)]
    both = mine.index.intersection(theirs.index)
    diff = (mine.loc[both] - theirs.loc[both]).abs()
    differences = [f"cell {key}: " + ", ".join(f"{m} {mine.loc[key, m]:.1f} vs recorded {theirs.loc[key, m]:.1f}"
                                               for m in REPRODUCED if row[m] > 0)
                   for key, row in diff[(diff > 0).any(axis=1)].iterrows()]
    same = all(record.info.get(k) is not None and record.info.get(k) == fresh.info.get(k) for k in MACHINE_FIELDS)
    return Reproduction(problems + (differences if same else []), [] if same else differences, same,
                        (machine_of(record.info), machine_of(fresh.info)))
