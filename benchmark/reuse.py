"""What stage reuse saves, read from a plan and recorded stage timings: no timing run.

A grid computes every unique stage of its DAG once (`unique_seconds`). Computing each
cell on its own, in a fresh store, would compute the cell's whole chain -- its
evaluation and every stage upstream of it -- for that cell alone; the sum of those
chains over the cells is `cell_by_cell_seconds`, and their quotient is the reuse
factor. A stage shared by 32 cells counts once on one side and 32 times on the other.

The seconds of each stage come from, in order of preference: the store's artifact
metadata (`seconds`, what the runner measured for exactly that artifact), the run's
log (`[i/N] done: LABEL (S s)` lines, averaged per label), and the run record's
per-stage-type totals (`run.json` `stage_seconds` / `computed`, averaged per type: an
approximation). `ReuseFigure.sources` counts which source timed how many stages.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from daebench.errors import DAEBenchError
from daebench.plan import Cell, Plan
from daebench.store import ArtifactStore

LOG_LINE = re.compile(r"\] done: (.*) \(([\d.]+) s\)$")


@dataclass
class ReuseFigure:
    unique_seconds: float  # every unique stage once: what the grid computes with one store
    cell_by_cell_seconds: float  # each cell's chain (its evaluation and all its ancestors), summed over cells
    cells: int
    unique_stages: int
    cell_by_cell_stages: int
    by_stage: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (unique s, cell-by-cell s)
    sources: dict[str, int] = field(default_factory=dict)  # where the seconds came from -> stages timed so
    untimed: int = 0  # stages no source timed (counted as 0 s)

    @property
    def ratio(self) -> float:
        return self.cell_by_cell_seconds / self.unique_seconds if self.unique_seconds > 0 else float("nan")

    def describe(self, label: str = "reuse vs cell-by-cell, from the plan") -> str:
        timed = ", ".join(f"{n} from {s}" for s, n in self.sources.items()) or "none"
        lines = [f"{label}: {self.ratio:.1f}x ({self.cells} cells: {self.unique_stages} unique stages "
                 f"{self.unique_seconds:.1f} s vs {self.cell_by_cell_stages} cell-by-cell "
                 f"{self.cell_by_cell_seconds:.1f} s; timings: {timed}"
                 + (f"; {self.untimed} untimed, counted as 0 s" if self.untimed else "") + ")"]
        lines.append("  by stage: " + ", ".join(
            f"{stage} {u:.1f} s -> {c:.1f} s" for stage, (u, c) in self.by_stage.items()))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "unique_seconds": self.unique_seconds,
                "cell_by_cell_seconds": self.cell_by_cell_seconds, "cells": self.cells,
                "unique_stages": self.unique_stages, "cell_by_cell_stages": self.cell_by_cell_stages,
                "by_stage": {s: {"unique_seconds": u, "cell_by_cell_seconds": c} for s, (u, c) in self.by_stage.items()},
                "sources": self.sources, "untimed": self.untimed}


def cell_chain(plan: Plan, cell: Cell) -> set[str]:
    """The keys a cell computed on its own needs: its evaluation and every ancestor (each once)."""
    chain, stack = set(), [cell.evaluate_key]
    while stack:
        key = stack.pop()
        if key not in chain:
            chain.add(key)
            stack.extend(plan.nodes[key].deps)
    return chain


def reuse_figure(plan: Plan, seconds: Mapping[str, float], sources: Mapping[str, int] | None = None) -> ReuseFigure:
    """The reuse factor of `plan` given each stage's seconds (key -> seconds; a key left
    out counts as 0 s and as untimed)."""
    unique: dict[str, float] = defaultdict(float)
    chains: dict[str, float] = defaultdict(float)
    for key, node in plan.nodes.items():
        unique[node.stage] += seconds.get(key, 0.0)
    chain_stages = 0
    for cell in plan.cells:
        chain = cell_chain(plan, cell)
        chain_stages += len(chain)
        for key in chain:
            chains[plan.nodes[key].stage] += seconds.get(key, 0.0)
    order = list(dict.fromkeys(node.stage for node in plan.topological()))
    return ReuseFigure(unique_seconds=sum(unique.values()), cell_by_cell_seconds=sum(chains.values()),
                       cells=len(plan.cells), unique_stages=len(plan.nodes), cell_by_cell_stages=chain_stages,
                       by_stage={s: (unique[s], chains[s]) for s in order},
                       sources=dict(sources or {}), untimed=sum(1 for key in plan.nodes if key not in seconds))


def seconds_from_store(plan: Plan, store: ArtifactStore) -> dict[str, float]:
    """key -> the seconds each artifact's metadata records, for the plan's artifacts in the store."""
    out = {}
    for key, node in plan.nodes.items():
        if store.exists(node.stage, key):
            seconds = store.load_meta(node.stage, key).get("seconds")
            if seconds is not None:
                out[key] = float(seconds)
    return out


def seconds_from_log(plan: Plan, lines: list[str]) -> dict[str, float]:
    """key -> the mean seconds the log records for the node's label (labels can repeat:
    the features of several models share one)."""
    by_label: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        if m := LOG_LINE.search(line.strip()):
            by_label[m.group(1)].append(float(m.group(2)))
    return {key: sum(by_label[n.label]) / len(by_label[n.label]) for key, n in plan.nodes.items() if by_label.get(n.label)}


def seconds_from_stage_totals(plan: Plan, stage_seconds: Mapping[str, float],
                              computed: Mapping[str, int]) -> dict[str, float]:
    """key -> the mean seconds of its stage type in a run record (an approximation)."""
    mean = {s: stage_seconds[s] / n for s, n in computed.items() if n and s in stage_seconds}
    return {key: mean[n.stage] for key, n in plan.nodes.items() if n.stage in mean}


def run_directory(run: str | Path, runs_dir: str | Path = "results/runs") -> Path:
    """A run given as a directory holding grid.yaml (results/runs/ci, results/measured/X) or by name."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if (candidate / "grid.yaml").is_file():
            return candidate
    raise DAEBenchError(f"No run record at '{run}' or {Path(runs_dir) / str(run)}: a run's directory holds the "
                        f"grid.yaml (and run.json) that `daebench run` writes.")


def reuse_from_run(run: str | Path, runs_dir: str | Path = "results/runs",
                   cache_dir: str | Path | None = None) -> ReuseFigure:
    """The reuse factor of a recorded run: its grid re-planned (the data it names must be
    here, to be fingerprinted), each stage timed from the store (`cache_dir`, default the
    one run.json names), else the run's log, else run.json's per-type means."""
    import yaml

    from daebench.config import parse_grid
    from daebench.plan import plan_grid

    directory = run_directory(run, runs_dir)
    grid = parse_grid(yaml.safe_load((directory / "grid.yaml").read_text()), where=f"({directory / 'grid.yaml'})")
    plan = plan_grid(grid)
    info_path = directory / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    layers: list[tuple[str, dict[str, float]]] = []  # lowest priority first
    if info.get("stage_seconds") and info.get("computed"):
        layers.append(("run.json per-type means", seconds_from_stage_totals(plan, info["stage_seconds"],
                                                                            info["computed"])))
    if (directory / "run.log").is_file():
        layers.append(("run.log", seconds_from_log(plan, (directory / "run.log").read_text().splitlines())))
    store_dir = cache_dir or info.get("cache_dir")
    if store_dir and Path(store_dir).is_dir():
        layers.append(("store metadata", seconds_from_store(plan, ArtifactStore(store_dir))))
    seconds: dict[str, float] = {}
    origin: dict[str, str] = {}
    for name, layer in layers:
        seconds.update(layer)
        origin.update(dict.fromkeys(layer, name))
    sources = Counter(origin.values())
    return reuse_figure(plan, seconds, {name: sources[name] for name, _ in reversed(layers) if sources[name]})
