"""Performance benchmark: what the stage cache buys, timed interleaved and repeated.

1. Grid wall time with stage reuse (one content-addressed store: every artifact
   computed once per grid) vs computing every cell independently (each cell in a
   fresh store, so its encoder, perturbation, defended model, features and head
   are all recomputed for it alone).
2. Downstream head training on cached features vs re-encoding the images through
   the frozen encoder every epoch (what a plain training loop does).

Each comparison runs both sides once untimed (warm-up), then --repeats rounds of
A B A B ... (`daebench.timing`), and prints the median of the per-round ratios with
their range, so a loaded machine shifts both sides of a round alike. The reuse
factor is also computed from the plan itself (`daebench.reuse`: seconds of every
unique stage vs the sum over cells of each cell's chain of stages, from the
artifacts' recorded seconds), which needs no second timing run at all:

    python scripts/bench_pipeline.py [--repeats 5] [--out results/bench_pipeline.json]
    python scripts/bench_pipeline.py --from-run ci results/measured/2026-12-03-quick-fp32

--from-run only reads records (a run under results/runs by name, or a directory with
grid.yaml and run.json); the grid's data must be here, to be fingerprinted. --smoke
shrinks the grid and the head training to check the script itself in seconds (its
ratios then mean little). The grid is the test suite's micro grid (digits, CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from daebench.config import parse_grid
from daebench.data import load_dataset
from daebench.encoders import build_encoder
from daebench.errors import DAEBenchError
from daebench.heads import HeadParams, head_optimizer, make_head, train_head
from daebench.provenance import provenance
from daebench.results import run_grid
from daebench.reuse import reuse_figure, reuse_from_run, seconds_from_store
from daebench.runtime import batches, configure_threads, seed_everything
from daebench.stages import encode_images
from daebench.store import ArtifactStore
from daebench.timing import Timed, interleave

GRID = {
    "name": "bench",
    "profile": "tiny",
    "image_size": 16,
    "encoders": [{"method": "simclr", "dataset": "digits", "arch": "resnet18", "width": 8,
                  "params": {"epochs": 2, "batch_size": 128, "max_samples": 512}}],
    "attacks": [{"name": "embedattack", "params": {"steps": 5}}, {"name": "uapgd", "params": {"steps": 4}}],
    "attacker_data": "digits",
    "defenses": ["none", {"name": "pgd_at", "params": {"epochs": 1, "steps": 2, "max_samples": 256}}],
    "fine_tune_data": ["digits"],
    "downstream": ["digits"],
    "heads": {"epochs": 20},
}


def smoke_grid() -> dict:
    """The same DAG (4 cells), each stage a fraction of the work: for checking the script."""
    grid = copy.deepcopy(GRID)
    grid["encoders"][0]["params"].update(epochs=1, max_samples=128)
    grid["attacks"] = [{"name": "embedattack", "params": {"steps": 1}}, {"name": "uapgd", "params": {"steps": 1}}]
    grid["defenses"][1]["params"].update(steps=1, max_samples=32)
    grid["heads"] = {"epochs": 1}
    return grid


def _name(spec) -> str:
    return spec if isinstance(spec, str) else spec["name"]


def grid_reuse_vs_independent(config: dict, repeats: int) -> dict:
    grid = parse_grid(config)
    cell_grids = []  # one single-cell grid per cell of the whole grid
    plan_figure = {}

    def shared() -> Timed:
        tmp = tempfile.mkdtemp()
        try:
            started = time.perf_counter()
            report = run_grid(grid, cache_dir=Path(tmp) / "shared", runs_dir=None, progress=False)
            seconds = time.perf_counter() - started
            if not cell_grids:
                cell_grids.extend(parse_grid({**config, "attacks": [a for a in config["attacks"] if _name(a) == c.row["attack"]],
                                              "defenses": [d for d in config["defenses"] if _name(d) == c.row["defense"]]})
                                  for c in report.plan.cells)
            # the reuse factor this very run's artifact timings imply (no second run needed)
            plan_figure["last"] = reuse_figure(report.plan, seconds_from_store(report.plan, ArtifactStore(Path(tmp) / "shared")),
                                               {"store metadata": len(report.plan.nodes)})
            return Timed(seconds, {"cells": len(report.plan.cells), "stages": sum(report.computed.values())})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def independent() -> Timed:
        tmp = tempfile.mkdtemp()
        try:
            seconds, stages = 0.0, 0
            for i, one in enumerate(cell_grids):
                started = time.perf_counter()
                r = run_grid(one, cache_dir=Path(tmp) / f"cell{i}", runs_dir=None, progress=False)
                seconds += time.perf_counter() - started
                stages += sum(r.computed.values())
            return Timed(seconds, {"stages": stages})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    cmp = interleave({"reuse": shared, "cell-by-cell": independent}, repeats=repeats)
    ratio = cmp.ratio("cell-by-cell", "reuse")
    return {"cells": cmp.values["reuse"][-1]["cells"], "stages_shared": cmp.values["reuse"][-1]["stages"],
            "stages_independent": cmp.values["cell-by-cell"][-1]["stages"],
            "shared_seconds": cmp.median_seconds("reuse"), "independent_seconds": cmp.median_seconds("cell-by-cell"),
            "ratio": ratio.median, "ratio_summary": ratio.as_dict(), "timings": cmp.as_dict(),
            "from_plan": plan_figure["last"].as_dict(), "_ratio": ratio, "_plan": plan_figure["last"]}


def heads_cached_vs_reencoding(epochs: int, repeats: int, n: int | None = None) -> dict:
    data = load_dataset("digits", image_size=32)
    x_train, y_train = data.x_train[:n], data.y_train[:n]
    seed_everything(0)
    encoder = build_encoder("resnet18", width=16).eval()
    cpu = torch.device("cpu")
    params = HeadParams(epochs=epochs)

    def cached() -> None:
        features = encode_images(encoder, x_train, cpu)
        train_head(features, y_train, data.num_classes, params, seed=0)

    def reencode() -> None:
        gen = seed_everything(0)
        head = make_head(encoder.feature_dim, data.num_classes, params)
        opt, sched = head_optimizer(head, params)
        for _ in range(epochs):
            for idx in batches(len(x_train), params.batch_size, gen):
                with torch.no_grad():
                    f = encoder(x_train[idx].float() / 255)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(head(f), y_train[idx]).backward()
                opt.step()
            sched.step()

    cmp = interleave({"cached": cached, "re-encoding": reencode}, repeats=repeats)
    ratio = cmp.ratio("re-encoding", "cached")
    return {"epochs": epochs, "images": len(x_train), "cached_seconds": cmp.median_seconds("cached"),
            "reencode_seconds": cmp.median_seconds("re-encoding"), "ratio": ratio.median,
            "ratio_summary": ratio.as_dict(), "timings": cmp.as_dict(), "_ratio": ratio}


def _public(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def from_runs(runs: list[str], runs_dir: str, cache_dir: str | None) -> dict:
    out = {}
    for run in runs:
        try:
            figure = reuse_from_run(run, runs_dir, cache_dir)
        except DAEBenchError as err:  # a record whose grid today's code no longer plans: said, the others go on
            print(f"{run}: not re-planned: {str(err).splitlines()[0][:300]}")
            out[run] = {"error": str(err)}
            continue
        print(f"{run}:\n{figure.describe()}")
        out[run] = figure.as_dict()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="counted rounds of each comparison, after one warm-up")
    parser.add_argument("--smoke", action="store_true", help="a much smaller grid; 2 head epochs on 256 images")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    parser.add_argument("--from-run", nargs="+", metavar="RUN",
                        help="only the reuse factor from these runs' records (no timing)")
    parser.add_argument("--runs-dir", default="results/runs", help="where --from-run looks up runs by name")
    parser.add_argument("--cache-dir", help="the store --from-run reads artifact timings from (default: run.json's)")
    parser.add_argument("--out", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args()
    if args.from_run:
        result = {"from_run": from_runs(args.from_run, args.runs_dir, args.cache_dir)}
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        else:
            configure_threads()
        grid = grid_reuse_vs_independent(smoke_grid() if args.smoke else GRID, args.repeats)
        print(f"grid ({grid['cells']} cells): stage reuse {grid['shared_seconds']:.1f} s ({grid['stages_shared']} stages)"
              f" vs every cell independently {grid['independent_seconds']:.1f} s ({grid['stages_independent']} stages),"
              f" medians")
        print(grid["_ratio"].describe("reuse vs cell-by-cell"))
        print(grid["_plan"].describe().splitlines()[0])
        heads = heads_cached_vs_reencoding(2 if args.smoke else 20, args.repeats, 256 if args.smoke else None)
        print(f"head training, {heads['epochs']} epochs on {heads['images']} images: cached features {heads['cached_seconds']:.2f} s vs "
              f"re-encoding every epoch {heads['reencode_seconds']:.2f} s, medians")
        print(heads["_ratio"].describe("cached features vs re-encoding"))
        result = {"grid_reuse": _public(grid), "head_training": _public(heads), "smoke": args.smoke,
                  "threads": torch.get_num_threads()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "provenance": provenance()}, indent=1))


if __name__ == "__main__":
    main()
