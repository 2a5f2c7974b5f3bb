#!/usr/bin/env bash
# The device probe as one prepared command, on a GPU machine with this repository, .whl/
# and probe-data/ carried (scripts/prepare_gpu_probe.sh makes them here). Installs the
# wheels and DAEBench into /tmp/site (no network, no build isolation), then runs
# `daebench probe`, writing probe.json and probe.log under $OUT (or probe-out/). Extra
# arguments go to `daebench probe` (e.g. --sharing-workers 0 to skip the sharing run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-probe-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -m daebench.cli probe --out "$OUT/probe.json" --work-dir /tmp/probe-work "$@" 2>&1 | tee "$OUT/probe.log"
