"""The tidy results store: one row per cell, with metrics, timings and provenance.

A row is one (victim encoder, D_p, defense, D_f, D_d, attack, scenario, eps, seed)
cell. Besides BA / RA / ASR and their Wilson 95% intervals it carries the
detection accuracy where the defense has a detector, the seconds each expensive
stage took when it was computed, and where the numbers came from (grid hash, git
commit, package versions, device), so a table row never travels without them.
Written as CSV (for people and diffs) and Parquet (typed, for pandas).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from daebench.errors import DAEBenchError
from daebench.plan import Plan
from daebench.store import ArtifactStore

METRICS = ("BA", "RA", "ASR", "BA_batch_mean", "RA_batch_mean", "detection_accuracy", "detection_auroc")
TIMINGS = ("pretrain_seconds", "craft_seconds", "defend_seconds")
PROVENANCE = ("grid_hash", "git_commit", "daebench", "torch", "device", "torch_threads", "time_utc")


def collect_results(plan: Plan, store: ArtifactStore, grid_hash: str | None = None) -> pd.DataFrame:
    """One tidy row per cell whose evaluation exists (cells still missing are simply absent)."""
    rows = []
    for cell in plan.cells:
        if not store.exists("evaluate", cell.evaluate_key):
            continue
        meta = store.load_meta("evaluate", cell.evaluate_key)
        row: dict[str, Any] = {**cell.row, **meta["metrics"]}
        row |= _timings(store, meta["inputs"])
        prov = meta.get("provenance", {})
        row |= {"grid_hash": grid_hash} | {k: prov.get(k) for k in PROVENANCE if k != "grid_hash"}
        rows.append(row | {"key": cell.evaluate_key})
    return pd.DataFrame(rows)


def _timings(store: ArtifactStore, evaluate_inputs: dict[str, str]) -> dict[str, float | None]:
    """Seconds of the cell's craft, defend and pretrain stages, when they were computed."""
    adv = store.load_meta("features", evaluate_inputs["adv"])
    craft = store.load_meta("craft", adv["inputs"]["perturbation"]) if "perturbation" in adv["inputs"] else {}
    defend = store.load_meta("defend", adv["inputs"]["model"])
    victim_key = defend["inputs"].get("victim")
    victim = {}
    if victim_key:
        for stage in ("pretrain", "checkpoint"):
            if store.exists(stage, victim_key):
                victim = store.load_meta(stage, victim_key)
    return {"pretrain_seconds": victim.get("seconds"), "craft_seconds": craft.get("craft_seconds"),
            "defend_seconds": defend.get("defend_seconds")}


def write_results(df: pd.DataFrame, run_dir: Path) -> None:
    """results.csv and results.parquet side by side."""
    df.to_csv(run_dir / "results.csv", index=False)
    df.to_parquet(run_dir / "results.parquet", index=False)


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
    df = pd.read_parquet(parquet) if parquet.is_file() else pd.read_csv(directory / "results.csv")
    grid = yaml.safe_load((directory / "grid.yaml").read_text()) if (directory / "grid.yaml").is_file() else {}
    info = json.loads((directory / "run.json").read_text()) if (directory / "run.json").is_file() else {}
    return RunRecord(grid.get("name") or directory.name, directory, df, grid, info)
