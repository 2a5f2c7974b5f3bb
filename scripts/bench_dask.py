"""Scale-out benchmark: the same grid on 1 vs 2 local Dask workers, measured in one run.

Each configuration computes the grid from an empty store on a fresh LocalCluster of
single-threaded worker processes; the ratio is wall(1 worker) / wall(2 workers).
Two workers can only help as far as a wave of the stage DAG has independent stages
and the machine has free cores; on this project's 2-core machines the ceiling is 2x.

Usage: python scripts/bench_dask.py [--out results/bench_dask.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from daebench.config import parse_grid
from daebench.executors import DaskExecutor
from daebench.provenance import provenance
from daebench.results import run_grid

# the micro grid widened so every wave has several independent stages
GRID = {
    "name": "bench-dask",
    "profile": "tiny",
    "image_size": 16,
    "encoders": [{"method": "simclr", "dataset": "digits", "arch": "resnet18", "width": 8,
                  "params": {"epochs": 2, "batch_size": 128, "max_samples": 512}},
                 {"method": "byol", "dataset": "digits", "arch": "resnet18", "width": 8,
                  "params": {"epochs": 2, "batch_size": 128, "max_samples": 512}}],
    "attacks": [{"name": "embedattack", "params": {"steps": 5}}, {"name": "uapgd", "params": {"steps": 4}}],
    "attacker_data": "digits",
    "defenses": ["none", {"name": "pgd_at", "params": {"epochs": 1, "steps": 2, "max_samples": 256}}],
    "fine_tune_data": ["digits"],
    "downstream": ["digits"],
    "heads": {"epochs": 20},
}


def wall_time(workers: int) -> tuple[float, int]:
    grid = parse_grid(GRID)
    executor = DaskExecutor(workers=workers)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            report = run_grid(grid, cache_dir=Path(tmp) / "cache", runs_dir=None, progress=False, executor=executor)
            return time.perf_counter() - started, sum(report.computed.values())
    finally:
        executor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    one, stages = wall_time(1)
    two, _ = wall_time(2)
    result = {"stages": stages, "wall_1_worker_s": round(one, 2), "wall_2_workers_s": round(two, 2),
              "speedup": round(one / two, 2), "provenance": provenance("cpu")}
    print(f"grid of {stages} stages: 1 Dask worker {one:.1f} s, 2 workers {two:.1f} s -> {one / two:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
