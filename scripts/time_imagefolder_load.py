"""Time an `imagefolder:` source's first load (parallel decode into the cache) and a cached one.

Each load runs in a fresh process, so the in-process memo cannot hide the cost:

    python scripts/time_imagefolder_load.py ../shared/data/cifar10-jpeg --data-root /tmp/dr > timing.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from daebench.provenance import provenance

_CHILD = """
import sys, time
from daebench.data import load_dataset, dataset_fingerprint
t = time.perf_counter()  # after the imports: the load alone
data = load_dataset(sys.argv[1], image_size=32, root=sys.argv[2])
load = time.perf_counter() - t
fp = dataset_fingerprint(sys.argv[1], image_size=32, root=sys.argv[2])
print(load, time.perf_counter() - t, len(data.x_train), len(data.x_test), data.num_classes, "x".join(map(str, data.x_train.shape)), fp["sha256"])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree")
    ap.add_argument("--data-root", required=True, help="where the decoded-tree cache goes (start empty for a first load)")
    ap.add_argument("--repeats", type=int, default=3, help="cached loads after the first")
    args = ap.parse_args()
    rows = []
    for i in range(1 + args.repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _CHILD, f"imagefolder:{args.tree}", args.data_root],
                             check=True, capture_output=True, text=True).stdout.split(maxsplit=6)
        rows.append({"load": "first" if i == 0 else "cached", "load_seconds": float(out[0]),
                     "load_and_fingerprint_seconds": float(out[1]), "process_seconds_with_imports": time.perf_counter() - start,
                     "train": int(out[2]), "test": int(out[3]), "classes": int(out[4]), "x_train_shape": out[5], "fingerprint": out[6].strip()})
        print(json.dumps(rows[-1]), file=sys.stderr)
    json.dump({"tree": args.tree, "provenance": provenance(), "loads": rows}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
