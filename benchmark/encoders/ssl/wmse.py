"""W-MSE (Ermolov et al., ICML 2021): MSE between whitened embeddings of two views.

Why lightly's `WMSELoss` with another pair loss: its whitening (Cholesky on sub-batches
of `whitening_size`) is solo-learn's `Whitening2d`, but its pair loss back-propagates
through both views while solo-learn's `wmse_loss_func` detaches the second one
(2 - 2 cos(z1, sg(z2))). `target_gradient` chooses. Recipe and deviations:
docs/FIDELITY.md#ssl-wmse.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightly.loss import WMSELoss
from lightly.loss.wmse_loss import norm_mse_loss
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams
from daebench.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, register_ssl_method, tiny
from daebench.encoders.ssl.heads import fp32, full_precision, mlp


def wmse_pair_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """solo-learn's `wmse_loss_func`: 2 - 2 mean cos(z1, z2), z2 detached."""
    return 2 - 2 * F.cosine_similarity(z1, z2.detach(), dim=-1).mean()


def _wmse_augment() -> AugmentParams:
    return AugmentParams(crop_min_scale=0.2, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)


class WMSEParams(SSLParams):
    optimizer: Optimizer = "adam"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    warmup_start_lr: float = Field(0.0, ge=0)
    proj_hidden_dim: int = Field(1024, ge=1)
    proj_output_dim: int = Field(64, ge=1)
    whitening_size: int = Field(128, ge=2)
    whitening_iters: int = Field(1, ge=1)
    target_gradient: Literal["solo-learn", "both"] = Field(
        "solo-learn", description="`solo-learn`: the second whitened view is a detached target; `both`: "
                                  "gradients through both views (the W-MSE paper's code and lightly)")
    augment: AugmentParams = Field(default_factory=_wmse_augment)


@register_ssl_method("wmse")
class WMSE(SSLMethod):
    Params = WMSEParams
    version = 2  # 2: solo-learn's detached second view, warm-up from lr 0, schedules
    # 80 epochs (15: +2.8 kNN points over random init on the CIFAR-10 subset, 40: +9.2,
    # 80: +13.9; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(lr=2e-3, proj_hidden_dim=512, proj_output_dim=64, whitening_size=128, batch_size=128,
                             epochs=80)}

    def __init__(self, encoder, params: WMSEParams) -> None:
        super().__init__(encoder, params)
        if params.whitening_size > params.batch_size:
            raise ValueError(f"wmse: whitening_size {params.whitening_size} exceeds batch_size {params.batch_size}")
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim])
        pair = wmse_pair_loss if params.target_gradient == "solo-learn" else norm_mse_loss
        self.criterion = WMSELoss(embedding_dim=params.proj_output_dim, w_size=params.whitening_size,
                                  w_iter=params.whitening_iters, num_samples=2, loss_fn=pair)

    def training_loss(self, view1, view2):
        z = self.projector(self.encoder(torch.cat([view1, view2])))
        # lightly's whitening runs a Cholesky factorisation: keep it in float32 under autocast.
        with full_precision(z):
            return self.criterion(fp32(z))
