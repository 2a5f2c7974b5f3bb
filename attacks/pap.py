"""PAP: Pre-trained Adversarial Perturbations (Ban & Dong, NeurIPS 2022), L4A-ugs.

The Low-Level Layer Lifting Attack with uniform Gaussian sampling, following the
authors' code (banyuanhao/PAP: utils/L4A_ugs.py, attacks.py, README): one
universal delta, initialised uniform in [-eps, eps], updated by sign ascent
(step 2e-4, `--alpha`) and clamped to +-eps after every batch, maximising the
mean squared activation of a low layer (the stem, `model.net[0]` of the
reference's SimCLRv2 ResNet) on

* 8 Gaussian-noise images per batch, N(mean_c, std_c) per channel c, with
  mean_c ~ U[0.4, 0.6] and std_c ~ U[0.05, 0.10] redrawn every 20 iterations
  (the noise itself is redrawn every iteration), plus
* 0.01 (`--lamuda`) times the same loss on the real batch,

both at (image + delta). Every random draw comes from the attack's seeded generator.

Iterations: the reference runs one shuffled pass over ImageNet at batch 16,
saving delta every 1000 iterations; the perturbations it ships for SimCLRv2
ResNets are the k = 30000 ones. The paper profile keeps batch 16 and takes 10
epochs, which on the benchmark's attacker data (CIFAR-10 train, 50k images) is
31250 iterations, the same order as the reference's k = 30000.

Deviations: images (noise and real) + delta are clamped to [0, 1] before the
forward pass (the reference feeds them unclamped), and the real-image term
averages over the whole batch (the reference's `[8:-1]` drops its last image).
The `tiny` profile (batch 32, 4 epochs: about 170 iterations on 1347 images)
raises the step to 2/255 so that the few iterations still travel several eps.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from attacks.base import Attack, AttackParams, register_attack

Layer = Literal["stem", "layer1", "layer2", "layer3", "layer4"]


def layer_activations(surrogate: torch.nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The surrogate's activations at `layer` (from its `forward_features`)."""
    if not hasattr(surrogate, "forward_features"):
        raise TypeError(f"{type(surrogate).__name__} has no forward_features: layer-wise attacks need one")
    acts = surrogate.forward_features(x)
    if layer not in acts:
        raise ValueError(f"surrogate has no layer '{layer}'; it has {', '.join(acts)}")
    return acts[layer]


class NoisePrior:
    """The L4A-ugs data prior: Gaussian images with per-channel statistics that are
    redrawn (uniformly in the given ranges) every `resample_every` iterations."""

    def __init__(self, mean_range: tuple[float, float], std_range: tuple[float, float], resample_every: int,
                 generator: torch.Generator) -> None:
        self.mean_range, self.std_range = mean_range, std_range
        self.resample_every = resample_every
        self.generator = generator
        self.iteration = 0
        self.mean = self.std = torch.empty(0)

    def sample(self, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
        """n images (n, *shape) in [0, 1]; advances the iteration counter."""
        if self.iteration % self.resample_every == 0:
            (m_lo, m_hi), (s_lo, s_hi) = self.mean_range, self.std_range
            self.std = torch.rand(shape[0], generator=self.generator) * (s_hi - s_lo) + s_lo
            self.mean = torch.rand(shape[0], generator=self.generator) * (m_hi - m_lo) + m_lo
        self.iteration += 1
        noise = torch.randn((n, *shape), generator=self.generator)
        return (noise * self.std.view(-1, 1, 1) + self.mean.view(-1, 1, 1)).clamp(0, 1)


class PAPParams(AttackParams):
    batch_size: int = Field(16, ge=1, description="real images per iteration (reference --batch_size 16)")
    epochs: int = Field(10, ge=1, description="passes over the attacker's data (~31k iterations on CIFAR-10)")
    step_size: float = Field(2e-4, gt=0, description="sign-ascent step (reference --alpha 0.0002)")
    layer: Layer = Field("stem", description="the low layer whose activations are lifted (reference net[0])")
    noise_images: int = Field(8, ge=0, description="Gaussian-noise images per iteration")
    resample_every: int = Field(20, ge=1, description="iterations between redraws of the noise statistics")
    mean_lo: float = Field(0.4, ge=0, le=1)
    mean_hi: float = Field(0.6, ge=0, le=1)
    std_lo: float = Field(0.05, ge=0)
    std_hi: float = Field(0.10, ge=0)
    real_weight: float = Field(0.01, ge=0, description="weight of the real-image term (reference --lamuda 0.01)")

    @model_validator(mode="after")
    def _ranges(self):
        if self.mean_lo > self.mean_hi or self.std_lo > self.std_hi:
            raise ValueError("need mean_lo <= mean_hi and std_lo <= std_hi")
        return self


@register_attack("pap")
class PAP(Attack):
    """L4A-ugs: lift low-layer activations on noise images (and, a little, real ones)."""

    Params = PAPParams
    profiles = {"tiny": {"batch_size": 32, "epochs": 4, "step_size": 2 / 255}}
    universal = True

    def noise_prior(self, generator: torch.Generator) -> NoisePrior:
        p = self.params
        return NoisePrior((p.mean_lo, p.mean_hi), (p.std_lo, p.std_hi), p.resample_every, generator)

    def perturb(self, surrogate, x, generator):
        p = self.params
        prior = self.noise_prior(generator)

        def objective(xb: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            noise = prior.sample(p.noise_images, tuple(xb.shape[1:])).to(self.device)
            acts = layer_activations(surrogate, (torch.cat([noise, xb]) + delta).clamp(0, 1), p.layer).pow(2)
            n = p.noise_images
            loss = acts[:n].mean() if n else acts.new_zeros(())
            return loss + p.real_weight * acts[n:].mean()

        return self.universal_sign_ascent(objective, x, generator, p.epochs, p.step_size, random_init=True)
