"""Two-view SSL augmentations on batched tensors, per-sample random, fast on CPU.

Why: torchvision draws one set of random parameters per call (per batch) and a
Python loop over PIL images is slow; here every image gets its own crop, flip,
colour jitter, grayscale, blur and solarisation in a few batched tensor ops, in
solo-learn's order. Where this approximates solo-learn's PIL pipeline (bilinear
instead of bicubic crops, a fixed jitter order, hue as a YIQ rotation, an exact
Gaussian instead of PIL's box-blur approximation): docs/FIDELITY.md#ssl-augmentations.
`backend: pil` runs solo-learn's own pipeline instead (PIL images and torchvision
transforms, one image at a time: exact, and several times slower).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from typing import Any, ClassVar, Literal

from pydantic import Field

from daebench.plugins import Params

_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


class AugmentParams(Params):
    """One view's pipeline; the defaults are solo-learn's `asymmetric.yaml` first view: crop
    (0.08, 1), jitter 0.4/0.4/0.2/0.1 p 0.8, gray 0.2, no blur, no solarisation, flip 0.5."""

    omitted_when: ClassVar[dict[str, Any]] = {"backend": "tensor"}
    backend: Literal["tensor", "pil"] = Field(
        "tensor", description="tensor: batched per-sample ops (fast); pil: solo-learn's PIL + torchvision pipeline, "
                              "image by image (exact)")
    crop_min_scale: float = Field(0.08, gt=0, le=1)
    crop_max_scale: float = Field(1.0, gt=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    jitter_prob: float = Field(0.8, ge=0, le=1)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    blur_prob: float = Field(0.0, ge=0, le=1, description="Gaussian blur, sigma ~ U(0.1, 2.0) (solo-learn's GaussianBlur)")
    solarize_prob: float = Field(0.0, ge=0, le=1)
    flip_prob: float = Field(0.5, ge=0, le=1)


def symmetric() -> AugmentParams:
    """solo-learn's CIFAR `symmetric.yaml` (SimCLR, SwAV, SupCon): strong jitter and blur p 0.5."""
    return AugmentParams(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5)


def symmetric_weak() -> AugmentParams:
    """solo-learn's CIFAR `symmetric_weak.yaml` (MoCo v2+): jitter 0.4/0.4/0.4/0.1, blur p 0.5."""
    return AugmentParams(saturation=0.4, blur_prob=0.5)


def asymmetric_second_view() -> AugmentParams:
    """The second view of solo-learn's `asymmetric.yaml` (BYOL, MoCo v3, NNCLR, DINO): solarised (p 0.2)."""
    return AugmentParams(solarize_prob=0.2)


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def random_resized_crop_flip(x: torch.Tensor, p: AugmentParams, g: torch.Generator, size: int | None = None) -> torch.Tensor:
    n = x.shape[0]
    area = _u(n, p.crop_min_scale, max(p.crop_min_scale, p.crop_max_scale), g)
    log_ratio = _u(n, math.log(3 / 4), math.log(4 / 3), g)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < p.flip_prob, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    out_shape = list(x.shape) if size is None else [n, x.shape[1], size, size]
    grid = F.affine_grid(theta.to(x.device), out_shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, p: AugmentParams, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    apply = (torch.rand(n, generator=g) < p.jitter_prob).float().view(n, 1, 1, 1).to(x.device)
    b = _u(n, 1 - p.brightness, 1 + p.brightness, g).view(n, 1, 1, 1).to(x.device)
    c = _u(n, 1 - p.contrast, 1 + p.contrast, g).view(n, 1, 1, 1).to(x.device)
    s = _u(n, 1 - p.saturation, 1 + p.saturation, g).view(n, 1, 1, 1).to(x.device)
    h = _u(n, -p.hue, p.hue, g).to(x.device) * 2 * math.pi
    gray_w = _GRAY.to(x.device)
    y = (x * b).clamp(0, 1)
    mean = (y * gray_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = (y * gray_w).sum(1, keepdim=True)
    y = ((y - gray) * s + gray).clamp(0, 1)
    yiq = torch.einsum("ij,njhw->nihw", _RGB2YIQ.to(x.device), y)
    cos, sin = h.cos().view(n, 1, 1), h.sin().view(n, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    y = torch.einsum("ij,njhw->nihw", _YIQ2RGB.to(x.device), yiq).clamp(0, 1)
    return apply * y + (1 - apply) * x


BLUR_SIGMA = (0.1, 2.0)


def gaussian_blur(x: torch.Tensor, prob: float, g: torch.Generator) -> torch.Tensor:
    """Blur each image with probability `prob`, sigma ~ U(0.1, 2.0) per image, edges replicated.
    solo-learn blurs PIL images with `ImageFilter.GaussianBlur(radius=sigma)` (PIL approximates
    the Gaussian by box blurs); this is the exact separable Gaussian with that sigma."""
    n = x.shape[0]
    apply = torch.rand(n, generator=g) < prob
    sigma = _u(n, *BLUR_SIGMA, g)
    if not bool(apply.any()):
        return x
    radius = math.ceil(3 * BLUR_SIGMA[1])
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.device, x.dtype)  # (n, 2r + 1)
    c = x.shape[1]
    weight = kernel.repeat_interleave(c, dim=0)  # one kernel per image and channel
    y = x.reshape(1, n * c, *x.shape[2:])
    y = F.conv2d(F.pad(y, [radius, radius, 0, 0], mode="replicate"), weight[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, [0, 0, radius, radius], mode="replicate"), weight[:, None, :, None], groups=n * c)
    return torch.where(apply.to(x.device).view(n, 1, 1, 1), y.reshape(x.shape), x)


def augment(x: torch.Tensor, p: AugmentParams, g: torch.Generator, size: int | None = None) -> torch.Tensor:
    """One random view of each image in the batch; x float in [0, 1], (N, 3, H, W).
    `size` resizes the crop (multi-crop's small views); None keeps H x W."""
    if p.backend == "pil":
        return pil_augment(x, p, size)
    n = x.shape[0]
    y = random_resized_crop_flip(x, p, g, size)
    y = color_jitter(y, p, g)
    gray = (torch.rand(n, generator=g) < p.grayscale_prob).view(n, 1, 1, 1).to(x.device)
    y = torch.where(gray, (y * _GRAY.to(x.device)).sum(1, keepdim=True).expand_as(y), y)
    if p.blur_prob:  # (no draws when off, so pipelines without blur keep their random streams)
        y = gaussian_blur(y, p.blur_prob, g)
    solar = (torch.rand(n, generator=g) < p.solarize_prob).view(n, 1, 1, 1).to(x.device)
    y = torch.where(solar & (y >= 0.5), 1 - y, y)
    return y.clamp(0, 1)


def pil_pipeline(p: AugmentParams, size: int):
    """solo-learn's `build_transform_pipeline` for one view (normalisation excluded: it
    lives inside the encoder): RandomResizedCrop (bicubic), RandomApply(ColorJitter),
    RandomGrayscale, RandomApply(PIL GaussianBlur, sigma ~ U(0.1, 2)), RandomApply(PIL
    solarize), RandomHorizontalFlip, ToTensor. Its randomness comes from torch's and
    Python's global generators, which `pretrain` seeds."""
    import random

    from PIL import ImageFilter, ImageOps

    from daebench.compat import import_torchvision

    T = import_torchvision().transforms
    steps = [T.RandomResizedCrop(size, scale=(p.crop_min_scale, p.crop_max_scale),
                                 interpolation=T.InterpolationMode.BICUBIC)]
    if p.jitter_prob:
        steps.append(T.RandomApply([T.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)], p=p.jitter_prob))
    if p.grayscale_prob:
        steps.append(T.RandomGrayscale(p=p.grayscale_prob))
    if p.blur_prob:
        steps.append(T.RandomApply([T.Lambda(lambda im: im.filter(ImageFilter.GaussianBlur(
            radius=random.uniform(*BLUR_SIGMA))))], p=p.blur_prob))
    if p.solarize_prob:
        steps.append(T.RandomApply([T.Lambda(ImageOps.solarize)], p=p.solarize_prob))
    if p.flip_prob:
        steps.append(T.RandomHorizontalFlip(p=p.flip_prob))
    steps.append(T.ToTensor())
    return T.Compose(steps)


def pil_augment(x: torch.Tensor, p: AugmentParams, size: int | None = None) -> torch.Tensor:
    """`augment` through solo-learn's PIL pipeline, one image at a time (uint8 PIL images,
    as its datasets hand them over)."""
    from PIL import Image

    pipeline = pil_pipeline(p, size or x.shape[-1])
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return torch.stack([pipeline(Image.fromarray(image)) for image in images]).to(x.device, x.dtype)
