"""BYOL (Grill et al., NeurIPS 2020): predict a momentum target's projection.

Why this loss: solo-learn sums 2 - 2 cos(p_v, z'_u) over both view orders (its
`byol_loss_func`); the scale matters with LARS's unscaled biases and with SGD. Recipe
and deviations: docs/FIDELITY.md#ssl-byol.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, asymmetric_second_view
from daebench.encoders.ssl.base import SSLMethod, SSLParams, momentum_tau, register_ssl_method, tiny


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 mean cos(p, z), the target z detached (solo-learn's `byol_loss_func`)."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


class BYOLParams(SSLParams):
    lr: float = Field(1.0, gt=0)
    proj_hidden_dim: int = Field(4096, ge=1)
    pred_hidden_dim: int = Field(4096, ge=1)
    base_tau: float = Field(0.99, ge=0, le=1)
    final_tau: float = Field(1.0, ge=0, le=1)
    augment2: AugmentParams | None = Field(default_factory=asymmetric_second_view)


@register_ssl_method("byol")
class BYOL(SSLMethod):
    Params = BYOLParams
    version = 2  # 2: solo-learn's loss scale (sum of 2 - 2 cos), asymmetric views, LARS / schedules
    # 80 epochs: a predictor-only method (no negatives) learns slowly from random
    # init (15 epochs: +5.1 kNN points over random init on the CIFAR-10 subset, 40:
    # +8.1, 80: +12.1; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(pred_hidden_dim=512, epochs=80)}

    def __init__(self, encoder, params: BYOLParams) -> None:
        super().__init__(encoder, params)
        d = encoder.feature_dim
        self.projector = BYOLProjectionHead(d, params.proj_hidden_dim, params.proj_output_dim)
        self.predictor = BYOLPredictionHead(params.proj_output_dim, params.pred_hidden_dim, params.proj_output_dim)
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.momentum_encoder)
        deactivate_requires_grad(self.momentum_projector)

    def _online(self, x):
        return self.predictor(self.projector(self.encoder(x)))

    @torch.no_grad()
    def _target(self, x):
        return self.momentum_projector(self.momentum_encoder(x)).detach()

    def training_loss(self, view1, view2):
        return byol_loss(self._online(view2), self._target(view1)) + byol_loss(self._online(view1), self._target(view2))

    def after_step(self, progress: float) -> None:
        p = self.params
        tau = momentum_tau(progress, p.base_tau, p.final_tau)
        update_momentum(self.encoder, self.momentum_encoder, m=tau)
        update_momentum(self.projector, self.momentum_projector, m=tau)
