"""SSP: Self-Supervised Perturbations (Naseer et al., "A Self-supervised Approach
for Adversarial Robustness", CVPR 2020): maximise the feature distortion at an
intermediate layer, ||phi(x + delta) - phi(x)||^2 (MSE), no labels needed.

Two registered names, because whether an attack is universal is a class
attribute here (`Attack.universal`), not a parameter:

* `ssp` -- the universal variant of the PAP code (banyuanhao/PAP, utils/ssp.py,
  a baseline of Ban & Dong, NeurIPS 2022): one delta, initialised uniform in
  [-eps, eps], sign ascent with step 2e-4 (that code's `--alpha` default, shared
  by all its attacks) over the attacker's data at batch 16, clamped to +-eps after
  every batch. The layer is the second ResNet stage (`model.net[2]` of the
  SimCLRv2 ResNet there) -> 'layer2'. That code records activations through a
  hook that squares them, so its MSE is between *squared* activations:
  `square_activations=True` by default here. Iterations as in attacks/pap.py:
  the shipped SSP perturbation is k = 30000 at batch 16, so 10 epochs over
  CIFAR-10 train (31250 iterations).
* `ssp_per_sample` -- the original per-image attack (Muzammal-Naseer/NRP, ssp.py):
  100 steps of 0.01, each projected to x +- eps and [0, 1], raw (unsquared)
  activations. The reference starts from N(0, 1) images clipped into the ball
  (almost every pixel lands on a corner, and its first gradient is taken at the
  unclipped noise); here the start is uniform in +-eps, projected.

Both clamp x + delta to [0, 1] (the PAP code's universal variant does not).
The `tiny` profiles raise the universal step to 2/255 (about 86 iterations on
1347 images instead of ~31k) and cut the per-sample steps to 5.
"""

from __future__ import annotations

import torch
from pydantic import Field

from attacks.base import Attack, AttackParams, PerSamplePGDAttack, PerSamplePGDParams, register_attack
from attacks.pap import Layer, layer_activations


def feature_distortion(adv: torch.Tensor, clean: torch.Tensor, square: bool) -> torch.Tensor:
    """Per-sample MSE between activations (optionally squared first), shape (N,)."""
    if square:
        adv, clean = adv.pow(2), clean.pow(2)
    return (adv - clean).pow(2).flatten(1).mean(dim=1)


class SSPParams(AttackParams):
    batch_size: int = Field(16, ge=1, description="images per iteration (PAP code --batch_size 16)")
    epochs: int = Field(10, ge=1, description="passes over the attacker's data (~31k iterations on CIFAR-10)")
    step_size: float = Field(2e-4, gt=0, description="sign-ascent step (PAP code --alpha 0.0002)")
    layer: Layer = Field("layer2", description="layer whose activations are distorted (PAP code net[2])")
    square_activations: bool = Field(True, description="compare squared activations, as the PAP code's hook does")


@register_attack("ssp")
class SSP(Attack):
    """Universal SSP: one delta maximising intermediate-layer feature distortion."""

    Params = SSPParams
    profiles = {"tiny": {"batch_size": 32, "epochs": 2, "step_size": 2 / 255}}
    universal = True

    def perturb(self, surrogate, x, generator):
        p = self.params

        def objective(xb: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                clean = layer_activations(surrogate, xb, p.layer)
            adv = layer_activations(surrogate, (xb + delta).clamp(0, 1), p.layer)
            return feature_distortion(adv, clean, p.square_activations).mean()

        return self.universal_sign_ascent(objective, x, generator, p.epochs, p.step_size, random_init=True)


class SSPPerSampleParams(PerSamplePGDParams):
    steps: int = Field(100, ge=1, description="iterations per image (NRP ssp.py --iters 100)")
    step_size: float = Field(0.01, gt=0, description="sign step (NRP ssp.py --step_size 0.01)")
    layer: Layer = Field("layer2", description="layer whose activations are distorted")
    square_activations: bool = Field(False, description="the original compares raw activations")
    random_start: bool = True


@register_attack("ssp_per_sample")
class SSPPerSample(PerSamplePGDAttack):
    """Per-image SSP (the original): PGD maximising intermediate-layer feature distortion."""

    Params = SSPPerSampleParams
    profiles = {"tiny": {"steps": 5}}

    def features(self, surrogate, x):
        # pgd_per_sample passes these to `loss` as the clean reference: the layer, not the embedding
        with torch.no_grad():
            return layer_activations(surrogate, x, self.params.layer)

    def loss(self, surrogate, x_adv, x, clean_features):
        adv = layer_activations(surrogate, x_adv, self.params.layer)
        return feature_distortion(adv, clean_features, self.params.square_activations)
