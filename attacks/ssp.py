"""SSP: Self-Supervised Perturbations (Naseer et al., CVPR 2020): maximise the
feature distortion ||phi(x + delta) - phi(x)||^2 at an intermediate layer, which
needs neither labels nor a head, so it transfers to any downstream task.

Two registered names, because whether an attack is universal is a class attribute
(`Attack.universal`), not a parameter: `ssp`, the universal variant of the PAP code
(banyuanhao/PAP utils/ssp.py, squared activations at the second stage), and
`ssp_per_sample`, the original per-image attack (Muzammal-Naseer/NRP ssp.py).
Steps, constants and the options that reproduce each reference exactly:
docs/FIDELITY.md#ssp.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from daebench.attacks.base import Attack, PerSamplePGDAttack, PerSamplePGDParams, UniversalParams, register_attack
from daebench.attacks.pap import Layer, layer_activations


def feature_distortion(adv: torch.Tensor, clean: torch.Tensor, square: bool) -> torch.Tensor:
    """Per-sample MSE between activations (optionally squared first), shape (N,)."""
    if square:
        adv, clean = adv.pow(2), clean.pow(2)
    return (adv - clean).pow(2).flatten(1).mean(dim=1)


class SSPParams(UniversalParams):
    omitted_when: ClassVar[dict[str, Any]] = {"max_iterations": None}  # added later
    batch_size: int = Field(16, ge=1, description="images per iteration (PAP code --batch_size 16)")
    epochs: int = Field(10, ge=1, description="passes over the attacker's data (~31k iterations on CIFAR-10)")
    step_size: float = Field(2e-4, gt=0, description="sign-ascent step (PAP code --alpha 0.0002)")
    layer: Layer = Field("layer2", description="layer whose activations are distorted (PAP code net[2])")
    square_activations: bool = Field(True, description="compare squared activations, as the PAP code's hook does")
    max_iterations: int | None = Field(
        None, ge=1, description="stop after this many steps (the PAP code ships its k = 30000 checkpoint)")


@register_attack("ssp")
class SSP(Attack):
    """Universal SSP: one delta maximising intermediate-layer feature distortion."""

    Params = SSPParams
    profiles = {"tiny": {"batch_size": 32, "epochs": 2, "step_size": 2 / 255}}
    universal = True

    def perturb(self, surrogate, x, generator):
        p = self.params
        return self.universal_sign_ascent(surrogate, self.objective, x, generator, p.epochs, p.step_size,
                                          random_init=True, max_iterations=p.max_iterations)

    def objective(self, encoder: torch.nn.Module, xb: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Feature distortion of one encoder at `layer`, to maximise (clean activations without gradient)."""
        p = self.params
        with torch.no_grad():
            clean = layer_activations(encoder, xb, p.layer)
        adv = layer_activations(encoder, self.craft_input(xb + delta), p.layer)
        return feature_distortion(adv, clean, p.square_activations).mean()


class SSPPerSampleParams(PerSamplePGDParams):
    omitted_when: ClassVar[dict[str, Any]] = {"start": "uniform"}  # added later
    steps: int = Field(100, ge=1, description="iterations per image (NRP ssp.py --iters 100)")
    step_size: float = Field(0.01, gt=0, description="sign step (NRP ssp.py --step_size 0.01)")
    layer: Layer = Field("layer2", description="layer whose activations are distorted")
    square_activations: bool = Field(False, description="the original compares raw activations")
    random_start: bool = True
    start: Literal["uniform", "gaussian"] = Field(
        "uniform", description="the random start: uniform in +-eps, or NRP's N(0, 1) image (x_adv = randn; with "
                               "project_start: false its first gradient is at that raw image, as in NRP)")


@register_attack("ssp_per_sample")
class SSPPerSample(PerSamplePGDAttack):
    """Per-image SSP (the original): PGD maximising intermediate-layer feature distortion."""

    Params = SSPPerSampleParams
    profiles = {"tiny": {"steps": 5}}
    version = 2  # 2: the toolkit's PGD (the same point up to rounding)

    def start_delta(self, xb, generator, random_start):
        if random_start and self.params.start == "gaussian":
            return torch.randn(xb.shape, generator=generator).to(self.device) - xb  # x + delta = an N(0, 1) image
        return super().start_delta(xb, generator, random_start)

    def features(self, surrogate, x):
        # pgd_per_sample passes these to `loss` as the clean reference: the layer, not the embedding
        with torch.no_grad():
            return layer_activations(surrogate, x, self.params.layer)

    def loss(self, surrogate, x_adv, x, clean_features):
        adv = layer_activations(surrogate, x_adv, self.params.layer)
        return feature_distortion(adv, clean_features, self.params.square_activations)
