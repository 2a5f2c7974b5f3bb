"""W-MSE (Ermolov et al., ICML 2021): MSE between whitened embeddings of two views.

Whitening (lightly's `WMSELoss`, Cholesky on sub-batches of `whitening_size`)
replaces negatives: embeddings cannot collapse once the batch is whitened.
solo-learn CIFAR config: projector 1024-64, whitening size 128, 1 iteration,
Adam lr 2e-3, wd 1e-6, batch 256, 1000 epochs; crops from 0.2, strong jitter
(0.8 / 0.8 / 0.8 / 0.2).
"""

from __future__ import annotations

import torch
from lightly.loss import WMSELoss
from pydantic import Field

from benchmark.encoders.ssl.augment import AugmentParams
from benchmark.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, register_ssl_method, tiny
from benchmark.encoders.ssl.heads import full_precision, mlp


def _wmse_augment() -> AugmentParams:
    return AugmentParams(crop_min_scale=0.2, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)


class WMSEParams(SSLParams):
    optimizer: Optimizer = "adam"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    proj_hidden_dim: int = Field(1024, ge=1)
    proj_output_dim: int = Field(64, ge=1)
    whitening_size: int = Field(128, ge=2)
    whitening_iters: int = Field(1, ge=1)
    augment: AugmentParams = Field(default_factory=_wmse_augment)


@register_ssl_method("wmse")
class WMSE(SSLMethod):
    Params = WMSEParams
    # 80 epochs (15: +2.8 kNN points over random init on the CIFAR-10 subset, 40: +9.2,
    # 80: +13.9; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(lr=2e-3, proj_hidden_dim=512, proj_output_dim=64, whitening_size=128, batch_size=128,
                             epochs=80)}

    def __init__(self, encoder, params: WMSEParams) -> None:
        super().__init__(encoder, params)
        if params.whitening_size > params.batch_size:
            raise ValueError(f"wmse: whitening_size {params.whitening_size} exceeds batch_size {params.batch_size}")
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim])
        self.criterion = WMSELoss(embedding_dim=params.proj_output_dim, w_size=params.whitening_size,
                                  w_iter=params.whitening_iters, num_samples=2)

    def training_loss(self, view1, view2):
        z = self.projector(self.encoder(torch.cat([view1, view2])))
        # lightly's whitening runs a Cholesky factorisation: keep it in float32 under autocast.
        with full_precision(z):
            return self.criterion(z.float())
