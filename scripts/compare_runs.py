"""Before/after tables of two runs of the same grid (BA, RA per attack, ASR, with 95% intervals).

    python scripts/compare_runs.py results/measured/OLD/results.csv results/measured/NEW/results.csv \
        --labels "before (v2)" "after" > summary.md

For each D_d: one row per defense and run with BA and its Wilson interval, RA (ASR) per
attack, the mean RA over the real attacks every run has (the `noise` control shown,
never averaged in), and the detector's accuracy and AUROC where the defense has one.
"""

from __future__ import annotations

import argparse

import pandas as pd

CONTROLS = {"noise"}


def pct(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def interval(row: pd.Series, metric: str) -> str:
    return f"{pct(row[metric])} [{pct(row[metric + '_lo'])}, {pct(row[metric + '_hi'])}]"


def table(runs: dict[str, pd.DataFrame], d_d: str) -> str:
    attacks = list(dict.fromkeys(a for df in runs.values() for a in df[df.D_d == d_d].attack))
    shared = set.intersection(*(set(df[df.D_d == d_d].attack) for df in runs.values()))
    real = [a for a in attacks if a not in CONTROLS and a in shared]  # the mean compares like with like
    n = int(next(iter(runs.values())).query("D_d == @d_d").n.iloc[0])
    lines = [f"D_d = {d_d} (n = {n}): BA [95% CI] | RA per attack (ASR) | mean RA over the {len(real)} attacks "
             f"every run has ({', '.join(real)})",
             "", "| defense | run | BA | " + " | ".join(attacks) + " | mean RA | detection acc / AUROC |",
             "|---" * (len(attacks) + 5) + "|"]
    defenses = list(dict.fromkeys(d for df in runs.values() for d in df[df.D_d == d_d].defense))
    for defense in defenses:
        for label, df in runs.items():
            cells = df[(df.D_d == d_d) & (df.defense == defense)].set_index("attack")
            if cells.empty:
                continue
            first = cells.iloc[0]
            ras = [f"{pct(cells.RA[a])} ({pct(cells.ASR[a])})" if a in cells.index else "" for a in attacks]
            mean_ra = pct(cells.RA.reindex(real).mean())
            detection = ""
            if "detection_accuracy" in cells and cells.detection_accuracy.notna().any():
                auroc = cells.detection_auroc.mean() if "detection_auroc" in cells else float("nan")
                detection = f"{pct(cells.detection_accuracy.mean())} / {'' if pd.isna(auroc) else f'{auroc:.3f}'}"
            lines.append(f"| {defense} | {label} | {interval(first, 'BA')} | " + " | ".join(ras)
                         + f" | {mean_ra} | {detection} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.csv files, oldest first")
    ap.add_argument("--labels", nargs="+", help="one label per file (default: the file's folder)")
    args = ap.parse_args()
    labels = args.labels or [path.rstrip("/").split("/")[-2] for path in args.results]
    if len(labels) != len(args.results):
        ap.error(f"{len(args.results)} results files but {len(labels)} labels")
    runs = {label: pd.read_csv(path) for label, path in zip(labels, args.results)}
    d_ds = list(dict.fromkeys(d for df in runs.values() for d in df.D_d))
    print("\n\n".join(table(runs, d) for d in d_ds))


if __name__ == "__main__":
    main()
