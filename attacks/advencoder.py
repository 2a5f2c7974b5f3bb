"""AdvEncoder (Zhou et al., "Downstream-agnostic Adversarial Examples", ICCV 2023).

A DCGAN generator, fed one fixed noise batch whose outputs a 3x3 convolution merges
across the batch into ONE perturbation (clamped to +-eps), is trained with Adam to
minimise alpha * (-InfoNCE(f(x), f(x + delta))) + MSE(x + delta, x)
- MSE(HFC(x), HFC(x + delta)): push the features away from their clean ones while
keeping the perturbation in the high frequencies. A generator, not a direct
optimisation of delta, because that is the authors' algorithm (CGCL-codes/AdvEncoder
gan_per_attack.py, model/adv_gan.py, utils/fr_util.py, utils/nce.py; ZePAD ships the
same code). At 64x64 the generator is exactly the reference one; other power-of-two
sizes change only the number of upsampling layers (see `AdvEncoderGenerator`).
Steps, constants and the options that reproduce the reference exactly:
docs/FIDELITY.md#advencoder.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from daebench.plugins import Work
from daebench.attacks.base import Attack, UniversalParams, register_attack, sum_terms
from daebench.runtime import batches


def high_frequency_component(x: torch.Tensor, radius: float) -> torch.Tensor:
    """HFC of a batch (B, C, H, W): per channel FFT2, zero a centred disc, inverse.

    After fftshift the zero frequency sits at (H/2, W/2); frequencies closer than
    `radius` to it are removed, as in the reference's `generate_high`.
    """
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device, dtype=torch.float32) - h / 2
    cols = torch.arange(w, device=x.device, dtype=torch.float32) - w / 2
    dist = (rows[:, None] ** 2 + cols[None, :] ** 2).sqrt()
    keep = (dist >= radius).to(x.dtype)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * keep
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real


def info_nce(query: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: mean over i of the cross-entropy of
    softmax_j(cos(query_i, positive_j) / T) at j = i."""
    logits = F.normalize(query, dim=-1) @ F.normalize(positive, dim=-1).T
    labels = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits / temperature, labels)


class AdvEncoderGenerator(nn.Module):
    """DCGAN generator + the reference's "residual" conv across the batch axis.

    forward(z: (batch, latent_dim, 1, 1)) -> one perturbation (1, 3, H, W), before
    the eps clamp. The reference only makes 64x64 images (4 -> 8 -> 16 -> 32 hidden
    maps, a stride-2 output layer to 64); here the first log2(H) - 2 layers after the
    4x4 one double the resolution (kernel 4, stride 2) and the rest keep it (kernel 3,
    stride 1, padding 1), so 64x64 is exactly the reference and 32x32 differs only in
    the output layer's kernel. If an image needs more doublings than there are
    widths, the last width is repeated. Convolutions are N(0, init_std) with zero
    bias, drawn from the attack's seeded generator; BatchNorm keeps PyTorch's init.
    """

    def __init__(self, image_size: int, batch_size: int, widths: tuple[int, ...] = (1024, 512, 256, 128),
                 latent_dim: int = 100, init_std: float = 0.02, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"AdvEncoder's generator needs a power-of-two image size >= 8, got {image_size}")
        doublings = int(math.log2(image_size)) - 2  # from the first 4x4 map up to image_size
        widths = tuple(widths) + (widths[-1],) * max(0, doublings - len(widths))
        self.image_size, self.batch_size = image_size, batch_size

        def up(c_in: int, c_out: int, i: int) -> nn.ConvTranspose2d:
            # layers 1..doublings (counted after the first) double; the rest keep the size
            if i <= doublings:
                return nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            return nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=1, padding=1)

        hidden: list[nn.Module] = []
        for i, width in enumerate(widths):
            conv = nn.ConvTranspose2d(latent_dim, width, kernel_size=4, stride=1, padding=0) if i == 0 \
                else up(widths[i - 1], width, i)
            hidden += [conv, nn.BatchNorm2d(width), nn.ReLU()]
        self.hidden_layer = nn.Sequential(*hidden)
        self.output_layer = nn.Sequential(up(widths[-1], 3, len(widths)), nn.Tanh())
        self.residual_layer = nn.Conv2d(batch_size, 1, kernel_size=3, stride=1, padding=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, init_std, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.output_layer(self.hidden_layer(z))  # (B, 3, H, W) in [-1, 1]
        merged = self.residual_layer(images.permute(1, 0, 2, 3))  # (3, 1, H, W): batch as channels
        return merged.permute(1, 0, 2, 3)  # (1, 3, H, W)


Width = Annotated[int, Field(ge=1)]


class AdvEncoderParams(UniversalParams):
    omitted_when: ClassVar[dict[str, Any]] = {"output": "final"}  # added later
    epochs: int = Field(20, ge=1, description="passes over the attacker's data (reference --epochs 20)")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate (reference 0.0002)")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    alpha: float = Field(5.0, ge=0, description="weight of the adversarial (InfoNCE) loss (reference --alpha 5)")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature (info-nce-pytorch default)")
    radius: float = Field(8.0, ge=0, description="radius of the removed low-frequency disc (reference --radius 8)")
    latent_dim: int = Field(100, ge=1, description="channels of the fixed noise z")
    widths: tuple[Width, ...] = Field((1024, 512, 256, 128), min_length=1, description="generator widths")
    init_std: float = Field(0.02, gt=0, description="std of the N(0, std) conv initialisation")
    output: Literal["final", "last_step"] = Field(
        "final", description="the returned delta: G(z) with the final weights, or the G(z) the last training step "
                             "used (the reference's saved uap_noise, one Adam step earlier)")


@register_attack("advencoder")
class AdvEncoder(Attack):
    """A generator, fed one fixed noise batch, trained to emit a universal perturbation."""

    Params = AdvEncoderParams
    profiles = {"tiny": {"widths": (64, 32, 16, 8), "epochs": 2}}
    universal = True

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Per image and epoch: the surrogate's forward + backward on the perturbed batch
        (into the generator) and its forward on the clean one."""
        p = cls.Params.model_validate(params)
        return Work(train=images * p.epochs, forward=images * p.epochs)

    def build_generator(self, image_size: int, generator: torch.Generator | None = None) -> AdvEncoderGenerator:
        p = self.params
        return AdvEncoderGenerator(image_size, p.batch_size, p.widths, p.latent_dim, p.init_std, generator)

    def generator_loss(self, surrogate: torch.nn.Module, xb: torch.Tensor, delta: torch.Tensor,
                       clean_features: list[torch.Tensor]) -> torch.Tensor:
        """L_G = alpha * (-InfoNCE) + MSE(x_adv, x) - MSE(HFC(x), HFC(x_adv)), to minimise.

        The InfoNCE term is summed over the surrogate encoders (one clean feature
        tensor each, in `members` order); the two image terms appear once."""
        p = self.params
        x_adv = self.craft_input(xb + delta)
        adv_loss = sum_terms([-info_nce(clean, encoder(x_adv), p.temperature)
                              for encoder, clean in zip(self.members(surrogate), clean_features)])
        reconstruction = F.mse_loss(x_adv, xb)
        with torch.no_grad():
            clean_hfc = high_frequency_component(xb, p.radius)
        hfc_loss = -F.mse_loss(high_frequency_component(x_adv, p.radius), clean_hfc)
        return p.alpha * adv_loss + reconstruction + hfc_loss

    def perturb(self, surrogate, x, generator):
        p = self.params
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"AdvEncoder needs square images, got {tuple(x.shape[-2:])}")
        z = torch.randn((p.batch_size, p.latent_dim, 1, 1), generator=generator).to(self.device)
        net = self.build_generator(x.shape[-1], generator).to(self.device).train()
        weights = list(net.parameters())
        optimizer = torch.optim.Adam(weights, lr=p.lr, betas=(p.beta1, p.beta2))
        delta = None
        for _ in self.progress_bar(range(p.epochs), "epochs"):
            for idx in batches(len(x), p.batch_size, generator):
                xb = x[idx].to(self.device)
                clean = [self.features(encoder, xb) for encoder in self.members(surrogate)]
                delta = net(z).clamp(-self.eps, self.eps)
                grads = torch.autograd.grad(self.generator_loss(surrogate, xb, delta, clean), weights)
                for w, g in zip(weights, grads):
                    w.grad = g
                optimizer.step()
        if p.output == "last_step" and delta is not None:
            return delta.detach()
        # G(z) in train mode: BatchNorm uses the fixed z batch's own statistics, as in training
        # (running statistics after a short run are far from them; z is fixed, so they are exact).
        with torch.no_grad():
            return net(z).clamp(-self.eps, self.eps)
