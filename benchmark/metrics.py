"""BA / RA / ASR with 95% intervals, weighted by sample count.

The reference code averages per-batch accuracies, which over-weights a short last
batch; here every sample counts once, and the reference's figure is reported beside
it (`BA_batch_mean`, `RA_batch_mean`). Intervals are Wilson score intervals
(well-behaved near 0 and 1, where RA and ASR often sit). docs/FIDELITY.md#metrics.
"""

from __future__ import annotations

import math

import torch

Z95 = 1.959963984540054
REFERENCE_BATCH = 256  # the reference evaluation loaders' batch size
DETECTION_SWEEP = (0.0, 0.05, 0.1, 0.2, 0.3)  # detection thresholds reported beside the defense's own


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
    out["BA_batch_mean"] = batch_mean_accuracy(pred_clean == labels)
    out["RA_batch_mean"] = batch_mean_accuracy(pred_adv == labels)
    return out


def batch_mean_accuracy(hits: torch.Tensor, batch_size: int = REFERENCE_BATCH) -> float:
    """The reference code's figure (ZePAD `utils/predict.py`): the mean of per-batch
    accuracies over the test set in order, batches of 256, so a short last batch weighs
    as much as a full one. Reported beside the per-sample rate for comparisons with it."""
    if len(hits) == 0:
        return float("nan")
    return float(torch.stack([chunk.float().mean() for chunk in hits.split(batch_size)]).mean())


def detection_metrics(score_clean: torch.Tensor, score_adv: torch.Tensor, threshold: float) -> dict[str, float]:
    """A detector that flags an input when its score exceeds `threshold`, on the clean
    (correct when not flagged) and adversarial (correct when flagged) images together:
    the accuracy at the threshold (the ZePAD paper's Table 6 reading), the accuracy at
    each threshold of `DETECTION_SWEEP`, the AUROC (every threshold at once), and the
    best accuracy over all thresholds with the threshold that reaches it -- an *oracle*
    figure, chosen on these very test images."""
    from sklearn.metrics import roc_auc_score, roc_curve

    score_clean, score_adv = score_clean.double().cpu(), score_adv.double().cpu()
    correct = torch.cat([score_clean <= threshold, score_adv > threshold])
    out = _rate("detection_accuracy", correct)
    truth = torch.cat([torch.zeros(len(score_clean)), torch.ones(len(score_adv))]).numpy()
    scores = torch.cat([score_clean, score_adv]).numpy()
    for t in DETECTION_SWEEP:  # the threshold sweep: accuracy at a few margins around the paper's 0.1
        out[f"detection_accuracy_at_{t:.2f}"] = float(torch.cat([score_clean <= t, score_adv > t]).double().mean())
    if len(score_clean) and len(score_adv):
        out["detection_auroc"] = float(roc_auc_score(truth, scores))
        fpr, tpr, thresholds = roc_curve(truth, scores)
        accuracy = (tpr * len(score_adv) + (1 - fpr) * len(score_clean)) / (len(score_adv) + len(score_clean))
        best = int(accuracy.argmax())
        out["detection_accuracy_oracle"] = float(accuracy[best])
        out["detection_threshold_oracle"] = float(thresholds[best])
    return out


def paired_accuracy_difference(hits_a: torch.Tensor, hits_b: torch.Tensor, z: float = Z95) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the SAME test images, per image paired.

    Two Wilson intervals that overlap do not mean two models are indistinguishable: on
    the same images their errors are correlated, and only the images on which they
    disagree carry the difference. McNemar's exact test counts those (`a_only`: A right
    and B wrong, `b_only`: the reverse; p two-sided, binomial at 1/2), and the interval is
    the paired-difference normal interval, sqrt(b + c - (b - c)^2 / n) / n."""
    from scipy.stats import binomtest

    if hits_a.shape != hits_b.shape or hits_a.dim() != 1:
        raise ValueError("paired hits must be two 1-D tensors over the same images")
    a, b = hits_a.bool(), hits_b.bool()
    n = int(a.numel())
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    diff = (a_only - b_only) / n if n else float("nan")
    se = math.sqrt(max(a_only + b_only - (a_only - b_only) ** 2 / n, 0.0)) / n if n else float("nan")
    p = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"n": n, "a_only": a_only, "b_only": b_only, "difference": diff,
            "difference_lo": diff - z * se, "difference_hi": diff + z * se, "p_value": float(p)}
