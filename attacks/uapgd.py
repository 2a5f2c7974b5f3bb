"""UAPGD (Deng & Karam 2020), embedding-loss variant: one universal perturbation.

Universal PGD with momentum over the attacker's data: for each batch, `steps`
inner iterations of v <- mu * v + grad, delta <- proj(delta + alpha * sign(v)),
from a random start in [-eps, eps].
The objective is label-free (downstream-agnostic): the mean squared distance
between the surrogate's features of x + delta and of x. (The label-based variant
with a surrogate head comes with the attacks issue.)
"""

from __future__ import annotations

import torch
from pydantic import Field

from attacks.base import Attack, AttackParams, register_attack
from benchmark.runtime import batches


class UAPGDParams(AttackParams):
    epochs: int = Field(5, ge=1, description="passes over the attacker's data")
    steps: int = Field(10, ge=1, description="inner momentum steps per batch")
    step_size: float = Field(1 / 255, gt=0)
    momentum: float = Field(0.5, ge=0, le=1)


@register_attack("uapgd")
class UAPGD(Attack):
    """Universal momentum-PGD maximising embedding distortion."""

    Params = UAPGDParams
    profiles = {"tiny": {"epochs": 1, "steps": 5}}
    universal = True
    version = 2  # 2: random start (1 started at zero, where the gradient vanishes)

    def loss(self, surrogate, x_adv, x, clean_features):
        return (surrogate(x_adv) - clean_features).pow(2).mean(dim=1)

    def perturb(self, surrogate, x, generator):
        p = self.params
        # A random start: the embedding distance has a zero gradient at delta = 0
        # (its minimum), so sign ascent from zero would never move.
        delta = (torch.rand((1, *x.shape[1:]), generator=generator) * 2 - 1).mul_(self.eps).to(self.device)
        velocity = torch.zeros_like(delta)
        for _ in self.progress_bar(range(p.epochs), "epochs"):
            for idx in batches(len(x), p.batch_size, generator):
                xb = x[idx].to(self.device)
                clean = self.features(surrogate, xb)
                for _ in range(p.steps):
                    delta.requires_grad_(True)
                    x_adv = (xb + delta).clamp(0, 1)
                    (grad,) = torch.autograd.grad(self.loss(surrogate, x_adv, xb, clean).mean(), delta)
                    with torch.no_grad():
                        velocity = p.momentum * velocity + grad
                        delta = (delta + p.step_size * velocity.sign()).clamp(-self.eps, self.eps)
        return delta.detach()
