"""Performance benchmark: what the stage cache buys, measured in one run.

1. Grid wall time with stage reuse (one content-addressed store: every artifact
   computed once per grid) vs computing every cell independently (each cell in a
   fresh store, so its encoder, perturbation, defended model, features and head
   are all recomputed for it alone).
2. Downstream head training on cached features vs re-encoding the images through
   the frozen encoder every epoch (what a plain training loop does).

Usage: python scripts/bench_pipeline.py [--out results/bench_pipeline.json]
Prints the two ratios; the grid is the test suite's micro grid (digits, CPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from daebench.config import parse_grid
from daebench.data import load_dataset
from daebench.encoders import build_encoder
from daebench.heads import HeadParams, head_optimizer, make_head, train_head
from daebench.provenance import provenance
from daebench.results import run_grid
from daebench.runtime import batches, configure_threads, seed_everything
from daebench.stages import encode_images

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


def grid_reuse_vs_independent() -> dict:
    grid = parse_grid(GRID)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = run_grid(grid, cache_dir=Path(tmp) / "shared", runs_dir=None, progress=False)
        shared = time.perf_counter() - started
        stages_shared = sum(report.computed.values())
        independent, stages_independent = 0.0, 0
        for i, cell in enumerate(report.plan.cells):
            one = parse_grid({**GRID, "attacks": [a for a in GRID["attacks"] if _name(a) == cell.row["attack"]],
                              "defenses": [d for d in GRID["defenses"] if _name(d) == cell.row["defense"]]})
            started = time.perf_counter()
            r = run_grid(one, cache_dir=Path(tmp) / f"cell{i}", runs_dir=None, progress=False)
            independent += time.perf_counter() - started
            stages_independent += sum(r.computed.values())
    return {"cells": len(report.plan.cells), "shared_seconds": shared, "independent_seconds": independent,
            "stages_shared": stages_shared, "stages_independent": stages_independent,
            "ratio": independent / shared}


def _name(spec) -> str:
    return spec if isinstance(spec, str) else spec["name"]


def heads_cached_vs_reencoding(epochs: int = 20) -> dict:
    data = load_dataset("digits", image_size=32)
    seed_everything(0)
    encoder = build_encoder("resnet18", width=16).eval()
    cpu = torch.device("cpu")
    params = HeadParams(epochs=epochs)

    started = time.perf_counter()
    features = encode_images(encoder, data.x_train, cpu)
    train_head(features, data.y_train, data.num_classes, params, seed=0)
    cached = time.perf_counter() - started

    started = time.perf_counter()
    gen = seed_everything(0)
    head = make_head(encoder.feature_dim, data.num_classes, params)
    opt, sched = head_optimizer(head, params)
    for _ in range(epochs):
        for idx in batches(len(data.x_train), params.batch_size, gen):
            with torch.no_grad():
                f = encoder(data.x_train[idx].float() / 255)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(f), data.y_train[idx]).backward()
            opt.step()
        sched.step()
    reencode = time.perf_counter() - started
    return {"epochs": epochs, "cached_seconds": cached, "reencode_seconds": reencode, "ratio": reencode / cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args()
    configure_threads()
    grid = grid_reuse_vs_independent()
    print(f"grid ({grid['cells']} cells): stage reuse {grid['shared_seconds']:.1f} s ({grid['stages_shared']} stages) "
          f"vs every cell independently {grid['independent_seconds']:.1f} s ({grid['stages_independent']} stages): "
          f"{grid['ratio']:.2f}x")
    heads = heads_cached_vs_reencoding()
    print(f"head training, {heads['epochs']} epochs: cached features {heads['cached_seconds']:.2f} s vs re-encoding "
          f"every epoch {heads['reencode_seconds']:.2f} s: {heads['ratio']:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"grid_reuse": grid, "head_training": heads, "provenance": provenance()}, indent=1))


if __name__ == "__main__":
    main()
