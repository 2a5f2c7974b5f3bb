"""Two-view SSL augmentations on batched tensors, per-sample random, fast on CPU.

torchvision's v2 transforms draw one set of random parameters per call, i.e. per
batch; looping over images in Python is slow. Here every image gets its own crop,
flip, colour jitter, grayscale and solarisation in a handful of batched tensor ops:
the crop+flip is one `affine_grid` / `grid_sample`, the jitter is arithmetic.
Hue jitter is a rotation of the chroma plane in YIQ space (a close, standard
approximation of torchvision's HSV hue shift).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from benchmark.plugins import Params

_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


class AugmentParams(Params):
    """solo-learn's CIFAR pipeline: crop (0.08, 1), jitter 0.4/0.4/0.2/0.1 p 0.8, gray 0.2, flip 0.5."""

    crop_min_scale: float = Field(0.08, gt=0, le=1)
    crop_max_scale: float = Field(1.0, gt=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    jitter_prob: float = Field(0.8, ge=0, le=1)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    solarize_prob: float = Field(0.0, ge=0, le=1)
    flip_prob: float = Field(0.5, ge=0, le=1)


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


def augment(x: torch.Tensor, p: AugmentParams, g: torch.Generator, size: int | None = None) -> torch.Tensor:
    """One random view of each image in the batch; x float in [0, 1], (N, 3, H, W).
    `size` resizes the crop (multi-crop's small views); None keeps H x W."""
    n = x.shape[0]
    y = random_resized_crop_flip(x, p, g, size)
    y = color_jitter(y, p, g)
    gray = (torch.rand(n, generator=g) < p.grayscale_prob).view(n, 1, 1, 1).to(x.device)
    y = torch.where(gray, (y * _GRAY.to(x.device)).sum(1, keepdim=True).expand_as(y), y)
    solar = (torch.rand(n, generator=g) < p.solarize_prob).view(n, 1, 1, 1).to(x.device)
    y = torch.where(solar & (y >= 0.5), 1 - y, y)
    return y.clamp(0, 1)
