#!/usr/bin/env bash
# Gen-AF stage 1 step by step on the v3 ci-defenses victim (pretrain key 54873b73b41bfc46b33e4916),
# 13 optimiser steps of batch 256, 5-step PGD at step 0.014 (the ci-defenses settings).
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=results/measured/2026-11-28-genaf-head-collapse-revisited
run() { name=$1; shift; echo "commit $(git rev-parse --short HEAD)" > $D/$name.log
  python scripts/diagnose_genaf.py --victim-key 54873b73b41bfc46b33e4916 --steps 13 --set steps=5 --set step_size=0.014 "$@" >> $D/$name.log 2>&1; }
run released                                   # the default: released GR (weights not detached), released loop
run released-detached --set gr_detach_weights=true
run released-hidden512 --head-hidden 512       # v2's head width
run corrected-detached-hidden512 --set variant=corrected --set gr_detach_weights=true --head-hidden 512
run corrected-hidden512 --set variant=corrected --head-hidden 512   # released GR (weights not detached) in the corrected loop
run released-lam0 --set lam=0
