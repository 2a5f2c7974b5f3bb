"""Uniform random noise in the same L-inf ball: the control every attack must beat.

Not an attack from the papers: each test image gets its own noise drawn uniformly
from [-eps, eps] (seeded). An attack that lowers downstream accuracy no more than
this has learned nothing about the encoder. docs/FIDELITY.md#noise.
"""

from __future__ import annotations

import torch

from daebench.attacks.base import Attack, AttackParams, register_attack


@register_attack("noise")
class UniformNoise(Attack):
    """Control: per-sample uniform noise in [-eps, eps] (what any real attack must beat)."""

    Params = AttackParams
    universal = False
    control = True
    profile_free = True

    def perturb(self, surrogate, x, generator):
        return (torch.rand(x.shape, generator=generator) * 2 - 1) * self.eps
