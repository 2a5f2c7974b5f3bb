"""ReSSL (Zheng et al., NeurIPS 2021): relational self-supervision. The student's
similarity distribution over a queue of past keys (temperature 0.1) is trained to
match the momentum teacher's sharper one (temperature 0.04) on a weakly augmented view.

L = -mean_i sum_j softmax(k_i.Q_j / T_k)  log softmax(q_i.Q_j / T_q)
solo-learn CIFAR config: projector 4096-256, T_q 0.1, T_k 0.04, queue 65536,
tau 0.99 -> 1.0, SGD lr 0.05, wd 1e-4, batch 256, 1000 epochs; the teacher's view is
weak (crop from 0.2 and flip only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field

from benchmark.encoders.ssl.augment import AugmentParams
from benchmark.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, register_ssl_method, tiny
from benchmark.encoders.ssl.heads import MomentumPair, full_precision, mlp


def ressl_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature_q: float,
               temperature_k: float) -> torch.Tensor:
    """q, k: (N, D) normalised; queue: (Q, D) normalised past keys."""
    teacher = F.softmax((k @ queue.T / temperature_k).detach(), dim=1)
    student = F.log_softmax(q @ queue.T / temperature_q, dim=1)
    return -(teacher * student).sum(1).mean()


def _weak_view() -> AugmentParams:
    return AugmentParams(crop_min_scale=0.2, jitter_prob=0.0, grayscale_prob=0.0)


class ReSSLParams(SSLParams):
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    proj_hidden_dim: int = Field(4096, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    temperature_q: float = Field(0.1, gt=0)
    temperature_k: float = Field(0.04, gt=0)
    queue_size: int = Field(65536, ge=1)
    base_tau: float = Field(0.99, ge=0, le=1)
    final_tau: float = Field(1.0, ge=0, le=1)
    augment2: AugmentParams | None = Field(default_factory=_weak_view)


@register_ssl_method("ressl")
class ReSSL(SSLMethod):
    Params = ReSSLParams
    # 120 epochs (15: +3.0 kNN points over random init on the CIFAR-10 subset, 40: +5.9,
    # 120: +18.4; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(queue_size=4096, base_tau=0.98, epochs=120)}

    def __init__(self, encoder, params: ReSSLParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim])
        self.momentum = MomentumPair(encoder, self.projector)
        self.queue = MemoryBankModule(size=(params.queue_size, params.proj_output_dim), feature_dim_first=False)

    def training_loss(self, view1, view2):
        p = self.params
        q = F.normalize(self.projector(self.encoder(view1)).float(), dim=1)
        k = F.normalize(self.momentum(view2).float(), dim=1)
        _, queue = self.queue(k, update=True)  # the queue as it was before this batch's keys
        with full_precision(q):
            return ressl_loss(q, k, F.normalize(queue, dim=1), p.temperature_q, p.temperature_k)

    def after_step(self, progress: float) -> None:
        p = self.params
        self.momentum.follow(self.encoder, self.projector,
                             cosine_schedule(int(progress * 10_000), 10_000, p.base_tau, p.final_tau))
