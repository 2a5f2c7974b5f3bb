"""kNN accuracy of cached pre-trained encoders on one common split, for a fair comparison.

Each encoder's own pre-training record holds a kNN figure on its own dataset's split (a
subset-trained victim's on the subset's 1017 test images against a 5085-image bank), so
two victims pre-trained on different data are compared here on the same banks:
`python scripts/knn_compare.py --store results/cache --keys KEY1 KEY2 --data SOURCE...`
prints (and with --out writes as JSON) the kNN accuracy of every encoder on every
dataset (train split = bank, test split = queries).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from daebench.data import load_dataset
from daebench.encoders.knn import knn_accuracy
from daebench.encoders.models import unpack_branches
from daebench.provenance import provenance
from daebench.stages import encode_images
from daebench.store import ArtifactStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="results/cache")
    ap.add_argument("--keys", nargs="+", required=True, help="pretrain artifact keys")
    ap.add_argument("--data", nargs="+", required=True, help="dataset sources (npz:..., imagefolder:...)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out")
    args = ap.parse_args()
    store = ArtifactStore(args.store)
    rows = []
    for source in args.data:
        data = load_dataset(source, image_size=args.image_size)
        for key in args.keys:
            art = store.load("pretrain", key)
            encoder = unpack_branches(art.tensors, art.meta)[0].eval()
            with torch.no_grad():
                train_f = encode_images(encoder, data.x_train, torch.device("cpu"), 512)
                test_f = encode_images(encoder, data.x_test, torch.device("cpu"), 512)
            acc = knn_accuracy(train_f, data.y_train, test_f, data.y_test)
            rows.append({"encoder_key": key, "data": source, "bank": len(data.y_train), "queries": len(data.y_test),
                         "knn_accuracy": acc, "recorded_knn_on_own_data": art.meta.get("knn_accuracy"),
                         "pretrain_seconds": art.meta.get("seconds")})
            print(f"{key[:12]} on {source}: kNN {100 * acc:.2f}% ({len(data.y_test)} queries, bank {len(data.y_train)})",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"provenance": provenance(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
