"""Run records: one tidy row per cell, with metrics, timings and provenance.

The results layer: above the runner (it runs a grid's plan, then turns the store's
evaluations into rows and writes the run's record), below the reports (which read
records only).

A row is one (victim encoder, D_p, defense, D_f, D_d, attack, scenario, eps, seed)
cell. Besides BA / RA / ASR and their Wilson 95% intervals it carries the
detection accuracy where the defense has a detector, the seconds each expensive
stage took when it was computed, and where the numbers came from (grid hash, git
commit, package versions, device), so a table row never travels without them.
Written as CSV (for people and diffs) and Parquet (typed, for pandas).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from daebench.config import GridSpec
from daebench.errors import DAEBenchError, StageFailedError
from daebench.executors import Executor
from daebench.paths import default_runs
from daebench.plan import Cell, Plan, grid_hash
from daebench.provenance import provenance
from daebench.runner import RunReport, failure_message, run_plan
from daebench.store import ArtifactStore

METRICS = ("BA", "RA", "ASR", "BA_batch_mean", "RA_batch_mean", "detection_accuracy", "detection_auroc")
TIMINGS = ("pretrain_seconds", "craft_seconds", "defend_seconds")
PROVENANCE = ("grid_hash", "git_commit", "daebench", "torch", "device", "torch_threads", "time_utc")


def run_grid(
    grid: GridSpec, cache_dir: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = "default",
    executor: Executor | None = None, progress: bool = True, raise_on_failure: bool = True, recompute: Iterable[str] = (),
    estimate: dict[str, Any] | None = None,
) -> RunReport:
    """Run a grid (`daebench.runner.run_plan`), collect its results table and write its
    record under `runs_dir/<grid name>/` (None: no record); `recompute` as in `run_plan`. Raises `StageFailedError`
    after keeping every computed artifact when a stage failed, unless told not to."""
    report = run_plan(grid, cache_dir, executor, progress, recompute)
    report.estimate = estimate
    report.results = collect_results(report.plan, ArtifactStore(report.cache_dir), grid_hash(grid))
    if runs_dir is not None:
        report.run_dir = write_run(report, default_runs() if runs_dir == "default" else Path(runs_dir))
    if report.failures and raise_on_failure:
        raise StageFailedError(failure_message(report))
    return report


def collect_results(plan: Plan, store: ArtifactStore, grid_hash: str | None = None) -> pd.DataFrame:
    """One tidy row per cell whose evaluation exists (cells still missing are simply absent)."""
    rows = []
    for cell in plan.cells:
        if not store.exists("evaluate", cell.evaluate_key):
            continue
        meta = store.load_meta("evaluate", cell.evaluate_key)
        row: dict[str, Any] = {**cell.row, **meta["metrics"]}
        row |= _timings(store, cell)
        prov = meta.get("provenance", {})
        row |= {"grid_hash": grid_hash} | {k: prov.get(k) for k in PROVENANCE if k != "grid_hash"}
        rows.append(row | {"key": cell.evaluate_key})
    return pd.DataFrame(rows)


def _timings(store: ArtifactStore, cell: Cell) -> dict[str, float | None]:
    """Seconds of the cell's craft, defend and pretrain stages, when they were computed
    (read from the artifacts the plan says the cell used)."""
    def meta(role: str) -> dict[str, Any]:
        ref = cell.refs.get(role)
        return store.load_meta(ref.stage, ref.key) if ref is not None and store.exists(ref.stage, ref.key) else {}

    return {"pretrain_seconds": meta("victim").get("seconds"), "craft_seconds": meta("craft").get("craft_seconds"),
            "defend_seconds": meta("defend").get("defend_seconds")}


def write_run(report: RunReport, runs_dir: Path) -> Path:
    """results.csv/.parquet + the exact grid + provenance, side by side (numbers never travel alone).

    A run never destroys an earlier run's results: a results table with fewer rows than
    the one in place (a failed run, a slice of the grid) or of another grid of the same
    name first moves the earlier record into `history/<its time>/`; every file is written
    atomically; and `run.json` keeps one line per earlier run (`history`), so a re-run
    that computes nothing does not erase the record of the run that computed."""
    import yaml

    run_dir = runs_dir / report.grid.name
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_json(run_dir / "run.json")
    earlier_rows = _rows(run_dir / "results.csv")
    new_hash = grid_hash(report.grid)
    if earlier_rows and (len(report.results) < earlier_rows or (previous and previous.get("grid_hash") != new_hash)):
        _archive(run_dir, previous)
    write_results(report.results, run_dir)
    _atomic_write(run_dir / "grid.yaml", yaml.safe_dump(report.grid.model_dump(mode="json"), sort_keys=False))
    run_info: dict[str, Any] = {
        "grid": report.grid.name, "description": report.grid.description, "grid_hash": new_hash,
        **provenance(report.grid.device),
        "cache_dir": str(Path(report.cache_dir).resolve()) if report.cache_dir else None,
        "wall_seconds": round(report.wall_seconds, 2), "cached": dict(report.hits), "computed": dict(report.computed),
        "stage_seconds": {k: round(v, 2) for k, v in report.seconds.items()},
        # `daebench estimate` before the run, beside the actual seconds above; per stage in stages.csv
        "estimate": {k: v for k, v in report.estimate.items() if k != "stages"} if report.estimate else None,
        "stages_file": write_stage_times(report, run_dir),
        "failures": [{"stage": f.label, "error": f.error} for f in report.failures],
        "corrupted": report.corrupted,
        "rows": len(report.results),
        "history": _history(previous),
    }
    _atomic_write(run_dir / "run.json", json.dumps(run_info, indent=1))
    return run_dir


def write_stage_times(report: RunReport, run_dir: Path) -> str | None:
    """stages.csv: one row per stage this run computed, its actual seconds beside what
    the estimate printed before the run predicted for it (where there was one). A run
    that computed nothing keeps the table of the run that did."""
    if not report.finished:
        return "stages.csv" if (run_dir / "stages.csv").exists() else None
    predicted = (report.estimate or {}).get("stages", {})
    table = pd.DataFrame([{"stage": o.stage, "label": o.label, "key": o.key, "actual_seconds": round(o.seconds, 2),
                           "estimated_seconds": predicted.get(o.key)} for o in report.finished])
    _atomic_write(run_dir / "stages.csv", table.to_csv(index=False))
    return "stages.csv"


HISTORY_FIELDS = ("time_utc", "git_commit", "grid_hash", "device", "cpu", "wall_seconds", "computed", "cached", "rows")


def _history(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not previous:
        return []
    earlier = list(previous.get("history", []))
    earlier.append({k: previous.get(k) for k in HISTORY_FIELDS} | {"failures": len(previous.get("failures", []))})
    return earlier


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(path: Path) -> int:
    try:
        return len(pd.read_csv(path))
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return 0


def _archive(run_dir: Path, previous: dict[str, Any] | None) -> Path:
    """Move the run's current record into history/<its time>/ (copied, then replaced)."""
    import shutil

    stamp = ((previous or {}).get("time_utc") or "unknown").replace(":", "-")
    target = run_dir / "history" / stamp
    target.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "results.parquet", "grid.yaml", "run.json", "stages.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    return target


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


TABLE_COLUMNS = ["encoder", "defense", "D_f", "D_d", "attack", "eps", "BA", "RA", "ASR", "n"]


def format_results(df: pd.DataFrame) -> str:
    """The BA / RA / ASR table in percent, with 95% intervals, as the CLI prints it."""
    if df.empty:
        return "(no results yet)"
    out = df.copy()
    for m in ("BA", "RA", "ASR"):
        out[m] = [f"{100 * v:5.1f} [{100 * lo:4.1f},{100 * hi:5.1f}]" for v, lo, hi in zip(out[m], out[f"{m}_lo"], out[f"{m}_hi"])]
    out["eps"] = [f"{255 * e:.0f}/255" for e in out["eps"]]
    return out[[c for c in TABLE_COLUMNS if c in out]].to_string(index=False)


def write_results(df: pd.DataFrame, run_dir: Path) -> None:
    """results.csv and results.parquet side by side, each written to a temporary file and
    renamed over the old one: a run killed mid-write leaves the earlier table whole."""
    for name, write in (("results.csv", lambda p: df.to_csv(p, index=False)),
                        ("results.parquet", lambda p: df.to_parquet(p, index=False))):
        tmp = run_dir / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, run_dir / name)


@dataclass
class RunRecord:
    """A finished run as reports see it: its rows, its grid and its provenance."""

    name: str
    directory: Path
    results: pd.DataFrame
    grid: dict[str, Any]
    info: dict[str, Any]

    @property
    def cache_dir(self) -> Path | None:
        cache = self.info.get("cache_dir")
        return Path(cache) if cache else None


def resolve_run_dir(run: str | Path, runs_dir: str | Path) -> Path:
    """A run named by its grid (under runs_dir) or given as a directory; a clear error otherwise."""
    path = Path(run)
    for candidate in (path, Path(runs_dir) / str(run)):
        if (candidate / "results.csv").is_file() or (candidate / "results.parquet").is_file():
            return candidate
    runs = sorted(p.name for p in Path(runs_dir).glob("*") if (p / "results.csv").is_file())
    raise DAEBenchError(f"No results for run '{run}' (looked in {path} and {Path(runs_dir) / str(run)}). "
                        f"Runs with results: {', '.join(runs) or 'none yet: start one with `daebench run`'}.")


def load_run(run: str | Path, runs_dir: str | Path) -> RunRecord:
    import yaml

    directory = resolve_run_dir(run, runs_dir)
    parquet = directory / "results.parquet"
    source = parquet if parquet.is_file() else directory / "results.csv"
    try:
        df = pd.read_parquet(parquet) if parquet.is_file() else pd.read_csv(source)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame()
    except Exception as err:  # a truncated or foreign file
        raise DAEBenchError(f"The results table {source} cannot be read ({type(err).__name__}: {err}); a run's "
                            f"table is the results.csv / results.parquet that `daebench run` writes.") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if df.empty or missing:
        what = "has no rows" if df.empty else f"lacks the columns {', '.join(missing)}"
        raise DAEBenchError(f"The results table {source} {what}: reports need at least one evaluated cell with the "
                            f"columns {', '.join(REQUIRED_COLUMNS)}, as `daebench run` writes them (a run whose stages "
                            f"all failed has none; re-run the grid to resume it).")
    try:
        grid = yaml.safe_load((directory / "grid.yaml").read_text()) if (directory / "grid.yaml").is_file() else {}
        info = json.loads((directory / "run.json").read_text()) if (directory / "run.json").is_file() else {}
    except (ValueError, yaml.YAMLError) as err:
        raise DAEBenchError(f"The run record in {directory} is damaged ({err}): grid.yaml and run.json are "
                            f"written by `daebench run`; re-run the grid to rewrite them.") from None
    return RunRecord((grid or {}).get("name") or directory.name, directory, df, grid or {}, info or {})


#: what every report reads from a results table
REQUIRED_COLUMNS = ("defense", "attack", "D_d", "eps", "BA", "RA", "ASR")
