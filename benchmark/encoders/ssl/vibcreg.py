"""VibCReg (Lee & Aune, 2021): VICReg with a whitening projector (IterNorm) and a
normalised covariance term (feature decorrelation).

Why hand-written: lightly has neither; the loss is solo-learn's `vibcreg_loss_func`,
L = w_sim MSE(z1, z2) + w_var sum_v mean_d relu(1 - sqrt(Var(z_v[:, d]) + 1e-4))
    + w_cov sum_v mean_{d, e} C_v[d, e]^2 (C_v: correlation matrix, diagonal zeroed),
and the projector ends in solo-learn's IterNorm (with its affine scale and shift).
Recipe and deviations: docs/FIDELITY.md#ssl-vibcreg.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from daebench.encoders.ssl.augment import AugmentParams
from daebench.encoders.ssl.base import SSLMethod, SSLParams, register_ssl_method, tiny
from daebench.encoders.ssl.heads import IterNorm, fp32, full_precision, mlp


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def decorrelation_term(z: torch.Tensor) -> torch.Tensor:
    zn = F.normalize(z - z.mean(dim=0), dim=0)
    corr = zn.T @ zn
    corr = corr - torch.diag_embed(corr.diagonal())
    return corr.pow(2).mean()


def vibcreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                 cov_weight: float = 200.0) -> torch.Tensor:
    z1, z2 = fp32(z1), fp32(z2)
    return (sim_weight * F.mse_loss(z1, z2)
            + var_weight * (variance_term(z1) + variance_term(z2))
            + cov_weight * (decorrelation_term(z1) + decorrelation_term(z2)))


def _vibcreg_augment() -> AugmentParams:
    return AugmentParams(crop_min_scale=0.2, solarize_prob=0.1)


class VibCRegParams(SSLParams):
    lr: float = Field(0.3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(2048, ge=1)
    sim_loss_weight: float = Field(25.0, ge=0)
    var_loss_weight: float = Field(25.0, ge=0)
    cov_loss_weight: float = Field(200.0, ge=0)
    lars_clip_lr: bool = Field(False, description="solo-learn's VibCReg config leaves LARS's clip_lr off")
    iternorm: bool = True
    iternorm_groups: int = Field(64, ge=1)
    iternorm_iterations: int = Field(5, ge=1)
    augment: AugmentParams = Field(default_factory=_vibcreg_augment)


@register_ssl_method("vibcreg")
class VibCReg(SSLMethod):
    Params = VibCRegParams
    version = 2  # 2: IterNorm with solo-learn's affine scale / shift, LARS without clip_lr, schedules
    profiles = {"tiny": tiny(proj_output_dim=512)}

    def __init__(self, encoder, params: VibCRegParams) -> None:
        super().__init__(encoder, params)
        h = params.proj_hidden_dim
        self.projector = nn.Sequential(
            mlp([encoder.feature_dim, h, h, params.proj_output_dim], activation=nn.GELU),
            IterNorm(params.proj_output_dim, params.iternorm_groups, params.iternorm_iterations)
            if params.iternorm else nn.Identity(),
        )

    def training_loss(self, view1, view2):
        p = self.params
        h1, h2 = self.projector[0](self.encoder(view1)), self.projector[0](self.encoder(view2))
        with full_precision(h1):  # IterNorm's Newton iterations and the loss in float32
            z1, z2 = self.projector[1](fp32(h1)), self.projector[1](fp32(h2))
            return vibcreg_loss(z1, z2, p.sim_loss_weight, p.var_loss_weight, p.cov_loss_weight)
