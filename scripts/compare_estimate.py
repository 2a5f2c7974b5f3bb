"""Estimate vs actual: `daebench estimate`'s prediction for the stages a run log says were
computed, beside their measured seconds, per stage type and for the costliest stages.

    python scripts/compare_estimate.py quick results/measured/2026-11-28-clean-house-quick/after/run.log

The estimate covers exactly the stages the log lists (a run that found artifacts cached
computed only the rest), with this device's calibration (measured now, or --calibration).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

from daebench.config import load_grid
from daebench.estimator import estimate_grid

LINE = re.compile(r"\] done: (.*) \(([\d.]+) s\)$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("log", help="a `daebench run --no-progress` log")
    ap.add_argument("--calibration", help="a saved calibration instead of measuring this device now")
    ap.add_argument("--cache-dir", default="results/cache", help="where this device's calibration is kept")
    args = ap.parse_args()
    actual: dict[str, list[float]] = defaultdict(list)
    for line in open(args.log):
        m = LINE.search(line.strip())
        if m:
            actual[m.group(1)].append(float(m.group(2)))
    estimate = estimate_grid(load_grid(args.grid), calibration=args.calibration, cache_dir=args.cache_dir,
                             skip_cached=False)
    predicted: dict[str, list[float]] = defaultdict(list)
    stage_of = {}
    for s in estimate.stages:
        predicted[s.label].append(s.seconds)
        stage_of[s.label] = s.stage
    est_by, act_by, count = Counter(), Counter(), Counter()
    rows = []
    for label, seconds in actual.items():
        if label not in predicted:
            continue
        guesses = predicted[label]
        mean_guess = sum(guesses) / len(guesses)  # labels repeat (features of several models): compare like with like
        stage = stage_of[label]
        est_by[stage] += mean_guess * len(seconds)
        act_by[stage] += sum(seconds)
        count[stage] += len(seconds)
        rows.append((sum(seconds), mean_guess * len(seconds), label))
    print(f"device: {estimate.device}\n")
    print("| stage | stages | actual s | estimated s | estimate / actual |\n|---|---|---|---|---|")
    for stage in est_by:
        ratio = est_by[stage] / act_by[stage] if act_by[stage] else float("nan")
        print(f"| {stage} | {count[stage]} | {act_by[stage]:.1f} | {est_by[stage]:.1f} | {ratio:.2f} |")
    total_a, total_e = sum(act_by.values()), sum(est_by.values())
    print(f"| all | {sum(count.values())} | {total_a:.1f} | {total_e:.1f} | {total_e / total_a:.2f} |\n")
    print("| stage (the 12 costliest) | actual s | estimated s | estimate / actual |\n|---|---|---|---|")
    for act, est, label in sorted(rows, reverse=True)[:12]:
        print(f"| {label} | {act:.1f} | {est:.1f} | {est / act if act else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
