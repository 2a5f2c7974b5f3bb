"""Scale-out benchmark: the same grid on 1 vs 2 local Dask workers, timed interleaved and repeated.

Each run computes the grid from an empty store on a fresh LocalCluster of
single-threaded worker processes (the cluster's start and close are not timed); the
ratio is wall(1 worker) / wall(2 workers). Both run once untimed (warm-up), then
--repeats rounds of 1 worker, 2 workers (`daebench.timing`); printed: the median of
the per-round ratios with their range. Two workers can only help as far as a wave of
the stage DAG has independent stages and the machine has free cores; on this
project's 2-core machines the ceiling is 2x. --smoke shrinks every stage (checking
the script itself; its ratio then means little).

Usage: python scripts/bench_dask.py [--repeats 3] [--smoke] [--out results/bench_dask.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from daebench.config import parse_grid
from daebench.executors import DaskExecutor
from daebench.provenance import provenance
from daebench.results import run_grid
from daebench.timing import Timed, interleave

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


def smoke_grid() -> dict:
    """The same DAG, each stage a fraction of the work."""
    grid = copy.deepcopy(GRID)
    for enc in grid["encoders"]:
        enc["params"].update(epochs=1, max_samples=128)
    grid["attacks"] = [{"name": "embedattack", "params": {"steps": 1}}, {"name": "uapgd", "params": {"steps": 1}}]
    grid["defenses"][1]["params"].update(steps=1, max_samples=32)
    grid["heads"] = {"epochs": 1}
    return grid


def wall_time(config: dict, workers: int) -> Timed:
    grid = parse_grid(config)
    executor = DaskExecutor(workers=workers)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            report = run_grid(grid, cache_dir=Path(tmp) / "cache", runs_dir=None, progress=False, executor=executor)
            return Timed(time.perf_counter() - started, sum(report.computed.values()))
    finally:
        executor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="counted rounds, after one warm-up")
    parser.add_argument("--smoke", action="store_true", help="a much smaller grid (seconds a stage)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = smoke_grid() if args.smoke else GRID
    cmp = interleave({"1 worker": lambda: wall_time(config, 1), "2 workers": lambda: wall_time(config, 2)},
                     repeats=args.repeats)
    speedup = cmp.ratio("1 worker", "2 workers")
    one, two, stages = cmp.median_seconds("1 worker"), cmp.median_seconds("2 workers"), cmp.values["1 worker"][-1]
    result = {"stages": stages, "wall_1_worker_s": round(one, 2), "wall_2_workers_s": round(two, 2),
              "speedup": round(speedup.median, 2), "speedup_summary": speedup.as_dict(), "timings": cmp.as_dict(),
              "smoke": args.smoke, "provenance": provenance("cpu")}
    print(f"grid of {stages} stages: 1 Dask worker {one:.1f} s, 2 workers {two:.1f} s (medians)")
    print(speedup.describe("2 workers vs 1", digits=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
