#!/usr/bin/env bash
# Prepare the device probe here, before a GPU machine is lent (it has no network and no
# ../shared): the wheels it lacks (pydantic, lightly, dask, ...) into .whl/, and a slice of
# CIFAR-10 (JPEG) -- the first TRAIN images of each class of the training split and the first
# TEST of the test split, in the tree's own layout -- into probe-data/cifar10-jpeg/. Both
# folders are git-ignored; the device call carries them:
#   run(command="bash scripts/gpu_probe.sh", carry=[".whl", "probe-data"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${TRAIN:-500}
TEST=${TEST:-200}
SRC=${SRC:-../shared/data/cifar10-jpeg}
bash ../shared/tools/gpu-wheels.sh .whl
rm -rf probe-data/cifar10-jpeg
for split in train test; do
  n=$([ "$split" = train ] && echo "$TRAIN" || echo "$TEST")
  for dir in "$SRC/$split"/*/; do
    cls=$(basename "$dir")
    mkdir -p "probe-data/cifar10-jpeg/$split/$cls"
    ls "$dir" | sort | head -n "$n" | while read -r f; do cp "$dir/$f" "probe-data/cifar10-jpeg/$split/$cls/"; done
  done
done
du -sh .whl probe-data
