"""MoCo v3 (Chen, Xie & He, ICCV 2021): predictor on the query branch, in-batch
contrastive loss against momentum keys, no queue.

Why hand-written: lightly has no MoCo v3 loss with the reference's 2T factor.
loss(q, k) = CE(q_n . k_n^T / T, diagonal) * 2T (both L2-normalised), summed over the
two view orders, as solo-learn's `mocov3_loss_func`; heads are solo-learn's bias-free
ResNet MLPs. Recipe and deviations: docs/FIDELITY.md#ssl-mocov3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, asymmetric_second_view
from daebench.encoders.ssl.base import SSLMethod, SSLParams, momentum_tau, register_ssl_method, tiny
from daebench.encoders.ssl.heads import MomentumPair, fp32, full_precision, mlp


def mocov3_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each query's positive is the key of the same image; the other keys are negatives."""
    q, k = F.normalize(fp32(query), dim=1), F.normalize(fp32(key), dim=1)
    logits = q @ k.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device)) * (2 * temperature)


class MoCoV3Params(SSLParams):
    lr: float = Field(0.3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    proj_hidden_dim: int = Field(4096, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    pred_hidden_dim: int = Field(4096, ge=1)
    temperature: float = Field(0.2, gt=0)
    base_tau: float = Field(0.99, ge=0, le=1)
    final_tau: float = Field(1.0, ge=0, le=1)
    augment2: AugmentParams | None = Field(default_factory=asymmetric_second_view)


@register_ssl_method("mocov3")
class MoCoV3(SSLMethod):
    Params = MoCoV3Params
    version = 2  # 2: bias-free predictor output layer (solo-learn), LARS / schedules
    profiles = {"tiny": tiny(pred_hidden_dim=512, base_tau=0.98)}

    def __init__(self, encoder, params: MoCoV3Params) -> None:
        super().__init__(encoder, params)
        d, h, o = encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim
        self.projector = mlp([d, h, o], last_batch_norm=True, bias=False)
        self.predictor = mlp([o, params.pred_hidden_dim, o], bias=False)
        self.momentum = MomentumPair(encoder, self.projector)

    def training_loss(self, view1, view2):
        t = self.params.temperature
        p1 = self.predictor(self.projector(self.encoder(view1)))
        p2 = self.predictor(self.projector(self.encoder(view2)))
        k1, k2 = self.momentum(view1), self.momentum(view2)
        with full_precision(p1):
            return mocov3_loss(p1, k2, t) + mocov3_loss(p2, k1, t)

    def after_step(self, progress: float) -> None:
        p = self.params
        self.momentum.follow(self.encoder, self.projector, momentum_tau(progress, p.base_tau, p.final_tau))
