"""EmbedAttack (Kowalczyk et al., "Benchmarking Robustness of SSL", seed 003).

Per-sample PGD in embedding space: random start in [-eps, eps], 20 steps of
2/255, maximise ||f(x + delta) - f(x)||^2, clamp to [0,1] then to +-eps after
each step. Task-agnostic: it needs the encoder only.
"""

from __future__ import annotations

import torch
from pydantic import Field

from attacks.base import Attack, AttackParams, register_attack


class EmbedAttackParams(AttackParams):
    steps: int = Field(20, ge=1)
    step_size: float = Field(2 / 255, gt=0)
    random_start: bool = True


@register_attack("embedattack")
class EmbedAttack(Attack):
    """Per-sample PGD maximising the embedding MSE to the clean embedding."""

    Params = EmbedAttackParams
    profiles = {"tiny": {"steps": 10}}
    universal = False

    def loss(self, surrogate, x_adv, x, clean_features):
        return (surrogate(x_adv) - clean_features).pow(2).mean(dim=1)

    def perturb(self, surrogate, x, generator):
        p = self.params
        return self.pgd_per_sample(surrogate, x, generator, p.steps, p.step_size, p.random_start)
