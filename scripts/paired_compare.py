"""Each defense against the undefended baseline on the same test images, paired per image.

The results table's Wilson intervals are per cell; two cells measured on the same
images are compared more sharply by the images on which they disagree (McNemar's
exact test, `daebench.metrics.paired_accuracy_difference`). This reads the per-image
predictions the evaluate artifacts keep in the store, for every cell of a grid that
has been run:

    python scripts/paired_compare.py full-cifar10 [--cache-dir results/cache] [--out paired.json] [--baseline trades]

BA: the clean predictions of the defense against the baseline's (the same for every
attack of a cell group, which is checked); RA: the adversarial predictions under each
attack against the baseline's under the same attack. `--baseline DEFENSE` compares every
defense with another one instead of the undefended encoder (defenses whose mean-RA intervals
overlap in the leaderboard may still separate per attack, paired).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from daebench.config import load_grid
from daebench.metrics import paired_accuracy_difference
from daebench.plan import plan_grid
from daebench.store import ArtifactStore

DEFAULT_BASELINE = "none"
GROUP = ("encoder", "D_f", "D_d", "scenario", "eps", "seed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("--cache-dir", default="results/cache")
    ap.add_argument("--out", help="also write the rows as JSON")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="the defense every other is compared with (default: none)")
    args = ap.parse_args()
    store = ArtifactStore(args.cache_dir)
    keys = defaultdict(dict)  # group -> (defense, attack) -> evaluate key
    for cell in plan_grid(load_grid(args.grid)).cells:
        if store.exists("evaluate", cell.evaluate_key):
            keys[tuple(cell.row[k] for k in GROUP)][cell.row["defense"], cell.row["attack"]] = cell.evaluate_key
    rows = []
    for group, group_keys in keys.items():  # one group's predictions in memory at a time: `paper` has thousands
        evals = {pair: store.load("evaluate", key).tensors for pair, key in group_keys.items()}
        base = {attack: t for (defense, attack), t in evals.items() if defense == args.baseline}
        if not base:
            continue
        for defense in sorted({d for d, _ in evals} - {args.baseline}):
            mine = {attack: t for (d, attack), t in evals.items() if d == defense}
            shared = sorted(set(mine) & set(base))
            if not shared:
                continue
            first = mine[shared[0]]
            if not all(torch.equal(mine[a]["pred_clean"], first["pred_clean"]) for a in shared):
                raise SystemExit(f"{defense}: clean predictions differ between attacks of one cell group {group}")
            labels = first["labels"]
            rows.append(_row(group, defense, args.baseline, "BA", None, first["pred_clean"] == labels, base[shared[0]]["pred_clean"] == labels))
            for attack in shared:
                rows.append(_row(group, defense, args.baseline, "RA", attack, mine[attack]["pred_adv"] == labels,
                                 base[attack]["pred_adv"] == labels))
    if not rows:
        found = sorted({d for group_keys in keys.values() for d, _ in group_keys})
        raise SystemExit(f"No cell of {args.grid} pairs a defense with the baseline {args.baseline!r} on the same "
                         f"images in {args.cache_dir}: the defenses evaluated there are {found or 'none at all (run the grid first)'}; "
                         "pass one of them as --baseline.")
    print(f"| D_d | defense | metric | attack | defense - {args.baseline} [95% CI] | defense only | {args.baseline} only | McNemar p |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['D_d']} | {r['defense']} | {r['metric']} | {r['attack'] or ''} | {100 * r['difference']:+.1f} "
              f"[{100 * r['difference_lo']:+.1f}, {100 * r['difference_hi']:+.1f}] | {r['a_only']} | {r['b_only']} | "
              f"{r['p_value']:.2g} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


def _row(group: tuple, defense: str, baseline: str, metric: str, attack: str | None, hits: torch.Tensor, base_hits: torch.Tensor) -> dict:
    return {**dict(zip(GROUP, group)), "defense": defense, "baseline": baseline, "metric": metric, "attack": attack,
            **paired_accuracy_difference(hits, base_hits)}


if __name__ == "__main__":
    main()
