"""Pre-train every registered SSL method's `tiny` profile on one dataset and tabulate
kNN accuracy against the same architecture randomly initialised (the encoder-zoo
issue's acceptance figure). Each encoder is a cached `pretrain` artifact: re-running
this script only reads them back.

    python scripts/measure_zoo.py --dataset npz:../shared/data/cifar10-subset.npz --out results/measured/zoo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from daebench.config import parse_overrides
from daebench.encoders.ssl import SSL_METHODS
from daebench.plan import standalone_encoder
from daebench.provenance import provenance
from daebench.runner import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="npz:../shared/data/cifar10-subset.npz")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast + channels_last (as the ci grids)")
    ap.add_argument("--cache-dir", default="results/cache")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe parameter of every method (YAML value), e.g. --set epochs=40")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    speed = {"amp": True, "channels_last": True} if args.amp else {}
    overrides = parse_overrides(args.set)
    rows = []
    for method in args.methods or SSL_METHODS.names():
        _, spec = standalone_encoder(method, args.dataset, "tiny", args.width, 0, {**speed, **overrides})
        cached, m = run_stage(spec, f"pretrain {method}", args.cache_dir, device="cpu", progress=False)
        row = {"method": method, "knn": m["knn_accuracy"], "random_init_knn": m.get("random_init_knn_accuracy"),
               "gain": m["knn_accuracy"] - m.get("random_init_knn_accuracy", float("nan")),
               "minutes": m["seconds"] / 60, "epochs": m["spec"]["params"]["epochs"], "key": spec.key,
               "cached": cached, "final_loss": m["loss_history"][-1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "zoo.json").write_text(json.dumps({"dataset": args.dataset, "width": args.width, "speed": speed,
                                                       "overrides": overrides,
                                                       "provenance": provenance("cpu"), "rows": rows}, indent=1))
    lines = ["| method | kNN acc. | random-init kNN | gain (points) | epochs | minutes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['knn']:.1f} | {100 * r['random_init_knn']:.1f} | "
                     f"{100 * r['gain']:+.1f} | {r['epochs']} | {r['minutes']:.1f} |")
    (args.out / "zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
