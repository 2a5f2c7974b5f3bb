"""PAP: Pre-trained Adversarial Perturbations (Ban & Dong, NeurIPS 2022), L4A-ugs.

One universal delta lifting the mean squared activation of a low layer (the stem)
on Gaussian-noise images with per-channel statistics redrawn every 20 iterations,
plus 0.01 x the same on the real batch: the attack needs no labels and targets what
every fine-tuned copy of the encoder inherits, its first layers. Reference:
banyuanhao/PAP utils/L4A_ugs.py and attacks.py; every step, constant and option
that reproduces it exactly is in docs/FIDELITY.md#pap.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from daebench.attacks.base import Attack, UniversalParams, register_attack

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

    def sample(self, n: int, shape: tuple[int, int, int], clamp: bool = True) -> torch.Tensor:
        """n images (n, *shape), clamped to [0, 1] unless `clamp` is off; advances the iteration counter."""
        if self.iteration % self.resample_every == 0:
            (m_lo, m_hi), (s_lo, s_hi) = self.mean_range, self.std_range
            self.std = torch.rand(shape[0], generator=self.generator) * (s_hi - s_lo) + s_lo
            self.mean = torch.rand(shape[0], generator=self.generator) * (m_hi - m_lo) + m_lo
        self.iteration += 1
        noise = torch.randn((n, *shape), generator=self.generator)
        images = noise * self.std.view(-1, 1, 1) + self.mean.view(-1, 1, 1)
        return images.clamp(0, 1) if clamp else images


class PAPParams(UniversalParams):
    omitted_when: ClassVar[dict[str, Any]] = {"drop_last_real": False, "max_iterations": None}  # options added later
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
    drop_last_real: bool = Field(
        False, description="leave each batch's last real image out of the real-image term "
                           "(the reference's [8:-1] slice)")
    max_iterations: int | None = Field(
        None, ge=1, description="stop after this many steps (the reference ships its k = 30000 checkpoint)")

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

        def with_noise(xb: torch.Tensor) -> torch.Tensor:  # one noise batch per step, shared by the surrogates
            noise = prior.sample(p.noise_images, tuple(xb.shape[1:]), clamp=p.clamp_craft).to(self.device)
            return torch.cat([noise, xb])

        return self.universal_sign_ascent(surrogate, self.objective, x, generator, p.epochs, p.step_size,
                                          random_init=True, prepare=with_noise, max_iterations=p.max_iterations)

    def objective(self, encoder: torch.nn.Module, batch: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """L4A-ugs for one encoder, to maximise: mean squared layer activation on the
        noise images (the first `noise_images` of the batch) + real_weight x the same on
        the real ones (an empty real slice adds nothing)."""
        p = self.params
        acts = layer_activations(encoder, self.craft_input(batch + delta), p.layer).pow(2)
        n = p.noise_images
        real = acts[n:-1] if p.drop_last_real else acts[n:]
        loss = acts[:n].mean() if n else acts.new_zeros(())
        return loss + p.real_weight * real.mean() if len(real) else loss
