"""BA / RA / ASR with 95% intervals, weighted by sample count.

The reference code averages per-batch accuracies, which over-weights a short last
batch; here every sample counts once. Intervals are Wilson score intervals
(well-behaved near 0 and 1, where RA and ASR often sit).
"""

from __future__ import annotations

import math

import torch

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(name: str, hits: torch.Tensor) -> dict[str, float]:
    n, k = int(hits.numel()), int(hits.sum())
    lo, hi = wilson_interval(k, n)
    return {name: k / n if n else float("nan"), f"{name}_lo": lo, f"{name}_hi": hi}


def robustness_metrics(labels: torch.Tensor, pred_clean: torch.Tensor, pred_adv: torch.Tensor) -> dict[str, float]:
    """BA = acc(clean), RA = acc(adv), ASR = share of samples whose prediction changed."""
    if not (len(labels) == len(pred_clean) == len(pred_adv)):
        raise ValueError("labels and predictions must have the same length")
    out: dict[str, float] = {"n": int(len(labels))}
    out |= _rate("BA", pred_clean == labels)
    out |= _rate("RA", pred_adv == labels)
    out |= _rate("ASR", pred_adv != pred_clean)
    return out


def detection_metrics(flagged_clean: torch.Tensor, flagged_adv: torch.Tensor) -> dict[str, float]:
    """Detection accuracy over the clean (correct when not flagged) and adversarial
    (correct when flagged) images together, as the ZePAD paper's Table 6 counts it."""
    correct = torch.cat([~flagged_clean.bool(), flagged_adv.bool()])
    return _rate("detection_accuracy", correct)
