"""EmbedAttack (Kowalczyk et al., "Benchmarking Robustness of SSL", seed 003).

Per-sample PGD in embedding space, maximising ||f(x + delta) - f(x)||^2: it needs the
encoder only, so it is the task-agnostic per-sample baseline. Reference:
layer6ai-labs/ssl-robustness evaluators/attack.py (PGD_Sign); steps, constants and
options: docs/FIDELITY.md#embedattack.
"""

from __future__ import annotations

from daebench.attacks.base import PerSamplePGDAttack, register_attack


@register_attack("embedattack")
class EmbedAttack(PerSamplePGDAttack):
    """Per-sample PGD maximising the embedding MSE to the clean embedding."""

    profiles = {"tiny": {"steps": 10}}  # paper: 20 steps of 2/255, random start (the base defaults)
    version = 2  # 2: the toolkit's PGD (projection onto the ball then [0, 1] on x_adv: the same point up to rounding)

    def loss(self, surrogate, x_adv, x, clean_features):
        return (surrogate(x_adv) - clean_features).pow(2).mean(dim=1)
