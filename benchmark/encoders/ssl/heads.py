"""Small building blocks shared by several recipes: MLP heads, momentum pairs, IterNorm.

Why here: lightly has most heads, not the shapes solo-learn uses for MoCo v2+ / SupCon /
ReSSL / SimCLR (BN-free), MoCo v3 (bias-free, BN'd) and VibCReg (GELU, IterNorm); the
per-recipe comparison is in docs/FIDELITY.md#ssl-<method>."""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn


def mlp(dims: list[int], batch_norm: bool = True, activation: type[nn.Module] = nn.ReLU,
        last_batch_norm: bool = False, bias: bool = True) -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1], BN + activation between them. A linear
    followed by BN has no bias (BN cancels it); `bias=False` drops every bias (MoCo v3)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=bias and not (batch_norm and not last)))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(activation())
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def full_precision(like: torch.Tensor):
    """Turn bf16 autocast off for a loss: softmaxes at temperature 0.04, Sinkhorn and
    Cholesky / Newton whitening lose too much in bf16. Inputs must be cast with `fp32`."""
    return torch.autocast(like.device.type, enabled=False)


def fp32(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half precision is upcast, float64 stays (the fidelity tests run in it)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class MomentumPair(nn.Module):
    """Frozen EMA copies of (encoder, projector): the teacher / key branch."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, projector_copy: nn.Module | None = None) -> None:
        """`projector_copy`: a fresh instance for heads deepcopy cannot copy (weight norm)."""
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        if projector_copy is None:
            projector_copy = copy.deepcopy(projector)
        else:
            projector_copy.load_state_dict(projector.state_dict())
        self.projector = projector_copy
        deactivate_requires_grad(self.encoder)
        deactivate_requires_grad(self.projector)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x)).detach()

    @torch.no_grad()
    def follow(self, encoder: nn.Module, projector: nn.Module, tau: float) -> None:
        update_momentum(encoder, self.encoder, m=tau)
        update_momentum(projector, self.projector, m=tau)


def iternorm_groups(dim: int, num_groups: int) -> tuple[int, int]:
    """solo-learn's IterNorm grouping: ceil(dim / num_groups) channels per group, halved
    until it divides dim; returns (groups, channels)."""
    channels = (dim - 1) // num_groups + 1
    while dim % channels:
        channels //= 2
    return dim // channels, channels


class IterNorm(nn.Module):
    """Iterative whitening (Huang et al., CVPR 2019), as VibCReg's projector ends with.

    Features are split into groups; each group is centred and whitened by Newton's
    iterations for Sigma^{-1/2} (T steps on the trace-normalised covariance), so no
    eigendecomposition is needed, then a learnable per-feature scale and shift (`affine`,
    as solo-learn's layer). Running mean / whitening matrix serve eval mode, as in batch
    norm. Autograd differentiates the iterations; solo-learn hand-writes that backward
    (tests/fidelity compares the two)."""

    def __init__(self, dim: int, num_groups: int = 64, iterations: int = 5, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        self.groups, self.channels = iternorm_groups(dim, num_groups)
        self.iterations, self.eps, self.momentum = iterations, eps, momentum
        self.register_buffer("running_mean", torch.zeros(self.groups, self.channels, 1))
        self.register_buffer("running_wm", torch.eye(self.channels).expand(self.groups, -1, -1).clone())
        self.weight = nn.Parameter(torch.ones(1, dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(1, dim)) if affine else None

    def whitening_matrix(self, xc: torch.Tensor) -> torch.Tensor:
        """xc: centred (groups, channels, N) -> (groups, channels, channels) ~ Sigma^{-1/2}."""
        n = xc.shape[-1]
        eye = torch.eye(self.channels, device=xc.device, dtype=xc.dtype).expand(self.groups, -1, -1)
        sigma = self.eps * eye + xc @ xc.transpose(1, 2) / n
        r_tr = 1.0 / sigma.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1)
        sigma_n = sigma * r_tr
        p = eye
        for _ in range(self.iterations):
            p = 1.5 * p - 0.5 * p @ p @ p @ sigma_n
        return p * r_tr.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = fp32(x)
        xg = x.T.reshape(self.groups, self.channels, -1)
        if self.training:
            mean = xg.mean(-1, keepdim=True)
            xc = xg - mean
            wm = self.whitening_matrix(xc)
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_wm.lerp_(wm.to(self.running_wm.dtype), self.momentum)
        else:
            xc, wm = xg - self.running_mean, self.running_wm
        out = (wm @ xc).reshape(-1, x.shape[0]).T
        if self.weight is not None:
            out = out * self.weight + self.bias
        return out.to(dtype)
