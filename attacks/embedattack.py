"""EmbedAttack (Kowalczyk et al., "Benchmarking Robustness of SSL", seed 003).

Per-sample PGD in embedding space: random start in [-eps, eps], 20 steps of
2/255, maximise ||f(x + delta) - f(x)||^2, clamp to [0,1] then to +-eps after
each step. Task-agnostic: it needs the encoder only.
"""

from __future__ import annotations

from attacks.base import PerSamplePGDAttack, register_attack


@register_attack("embedattack")
class EmbedAttack(PerSamplePGDAttack):
    """Per-sample PGD maximising the embedding MSE to the clean embedding."""

    profiles = {"tiny": {"steps": 10}}  # paper: 20 steps of 2/255, random start (the base defaults)

    def loss(self, surrogate, x_adv, x, clean_features):
        return (surrogate(x_adv) - clean_features).pow(2).mean(dim=1)
