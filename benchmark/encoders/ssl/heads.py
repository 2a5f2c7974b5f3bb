"""Small building blocks shared by several recipes: MLP heads, momentum pairs, IterNorm.

lightly has most heads; these are the shapes solo-learn uses that lightly does not
(BN-free MoCo v2+ / SupCon projector, MoCo v3's BN'd projector and predictor, VibCReg's
GELU projector ending in IterNorm)."""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn


def mlp(dims: list[int], batch_norm: bool = True, activation: type[nn.Module] = nn.ReLU,
        last_batch_norm: bool = False) -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1], BN + activation between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=not (batch_norm and not last)))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(activation())
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def full_precision(like: torch.Tensor):
    """Turn bf16 autocast off for a loss: softmaxes at temperature 0.04, Sinkhorn and
    Cholesky / Newton whitening lose too much in bf16. Inputs must be cast with .float()."""
    return torch.autocast(like.device.type, enabled=False)


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


class IterNorm(nn.Module):
    """Iterative whitening (Huang et al., CVPR 2019), as VibCReg's projector ends with.

    Features are split into `num_groups` groups; each group is centred and whitened
    by Newton's iterations for Sigma^{-1/2} (T steps on the trace-normalised
    covariance), so no eigendecomposition is needed. Running mean / whitening
    matrix serve eval mode, as in batch norm."""

    def __init__(self, dim: int, num_groups: int = 64, iterations: int = 5, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        num_groups = min(num_groups, dim)
        if dim % num_groups:
            raise ValueError(f"IterNorm: dim {dim} is not divisible by num_groups {num_groups}")
        self.groups, self.channels = num_groups, dim // num_groups
        self.iterations, self.eps, self.momentum = iterations, eps, momentum
        self.register_buffer("running_mean", torch.zeros(num_groups, self.channels, 1))
        self.register_buffer("running_wm", torch.eye(self.channels).expand(num_groups, -1, -1).clone())

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
        xg = x.float().T.reshape(self.groups, self.channels, -1)
        if self.training:
            mean = xg.mean(-1, keepdim=True)
            xc = xg - mean
            wm = self.whitening_matrix(xc)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_wm.lerp_(wm, self.momentum)
        else:
            xc, wm = xg - self.running_mean, self.running_wm
        return (wm @ xc).reshape(-1, x.shape[0]).T.to(dtype)
