"""NNCLR (Dwibedi et al., ICCV 2021): the positive is the nearest neighbour of the
other view's projection in a support queue.

Why hand-written: solo-learn's `nnclr_loss_func` contrasts each neighbour nn_i with the
other view's predictions p_j only (cross-entropy over the rows of nn . p^T / T), while
lightly's symmetric NT-Xent would add nn-nn and p-p negatives and the reverse direction.
The queue (lightly's `NNMemoryBankModule`) receives view 1's normalised projections after
both neighbour look-ups, as solo-learn. Recipe and deviations: docs/FIDELITY.md#ssl-nnclr.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead, NNMemoryBankModule
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, asymmetric_second_view
from daebench.encoders.ssl.base import SSLMethod, SSLParams, register_ssl_method, tiny
from daebench.encoders.ssl.heads import fp32, full_precision

__all__ = ["NNCLR", "NNCLRParams", "asymmetric_second_view", "nnclr_loss"]


def nnclr_loss(nn: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of normalised nn_i . p_j / T with the same image as the target class."""
    nn, p = F.normalize(fp32(nn), dim=-1), F.normalize(fp32(p), dim=-1)
    logits = nn @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(len(nn), device=nn.device))


class NNCLRParams(SSLParams):
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    pred_hidden_dim: int = Field(4096, ge=1)
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(65536, ge=1)
    augment2: AugmentParams | None = Field(default_factory=asymmetric_second_view)


@register_ssl_method("nnclr")
class NNCLR(SSLMethod):
    Params = NNCLRParams
    version = 2  # 2: solo-learn's one-directional nn-vs-p loss; view 1 enqueued; LARS / schedules
    # 30 epochs: the nearest-neighbour positives are only as good as the queue's
    # features, which start random (15 epochs: +9.7 kNN points over random init on the
    # CIFAR-10 subset, 30: +14.6; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(pred_hidden_dim=512, queue_size=4096, epochs=30)}

    def __init__(self, encoder, params: NNCLRParams) -> None:
        super().__init__(encoder, params)
        self.projector = NNCLRProjectionHead(encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim)
        self.predictor = NNCLRPredictionHead(params.proj_output_dim, params.pred_hidden_dim, params.proj_output_dim)
        self.support = NNMemoryBankModule(size=(params.queue_size, params.proj_output_dim))

    def training_loss(self, view1, view2):
        z1, z2 = self.projector(self.encoder(view1)), self.projector(self.encoder(view2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with full_precision(p1):
            z1n, z2n = F.normalize(fp32(z1.detach()), dim=-1), F.normalize(fp32(z2.detach()), dim=-1)
            nn2 = self.support(z2n, update=False)
            nn1 = self.support(z1n, update=True)  # looked up before the enqueue, as nn2
            return 0.5 * (nnclr_loss(nn1, p2, self.params.temperature) + nnclr_loss(nn2, p1, self.params.temperature))
