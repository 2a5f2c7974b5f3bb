"""ReSSL (Zheng et al., NeurIPS 2021): relational self-supervision. The student's
similarity distribution over a queue of past keys (temperature 0.1) is trained to
match the momentum teacher's sharper one (temperature 0.04) on a weakly augmented view.

Why hand-written: lightly has no ReSSL loss; `ressl_loss` is solo-learn's
`ressl_loss_func`, L = -mean_i sum_j softmax(k_i.Q_j / T_k) log softmax(q_i.Q_j / T_q),
with the queue read before this batch's keys enter it. Recipe and deviations:
docs/FIDELITY.md#ssl-ressl.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules.memory_bank import MemoryBankModule
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams
from daebench.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, momentum_tau, register_ssl_method, tiny
from daebench.encoders.ssl.heads import MomentumPair, fp32, full_precision, mlp


def ressl_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature_q: float,
               temperature_k: float) -> torch.Tensor:
    """q, k: (N, D) normalised; queue: (Q, D) normalised past keys."""
    teacher = F.softmax((k @ queue.T / temperature_k).detach(), dim=1)
    student = F.log_softmax(q @ queue.T / temperature_q, dim=1)
    return -(teacher * student).sum(1).mean()


def _strong_view() -> AugmentParams:
    """solo-learn's `ressl.yaml` first (student) view: the asymmetric jitter plus blur p 0.5."""
    return AugmentParams(blur_prob=0.5)


def _weak_view() -> AugmentParams:
    """solo-learn's `ressl.yaml` second (teacher) view: crop (0.08, 1) and flip only."""
    return AugmentParams(jitter_prob=0.0, grayscale_prob=0.0)


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
    augment: AugmentParams = Field(default_factory=_strong_view)
    augment2: AugmentParams | None = Field(default_factory=_weak_view)


@register_ssl_method("ressl")
class ReSSL(SSLMethod):
    Params = ReSSLParams
    version = 2  # 2: BN-free projector, ressl.yaml views (blur; weak view cropped from 0.08), schedules
    # 120 epochs (15: +3.0 kNN points over random init on the CIFAR-10 subset, 40: +5.9,
    # 120: +18.4; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(queue_size=4096, base_tau=0.98, epochs=120)}

    def __init__(self, encoder, params: ReSSLParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim], batch_norm=False)
        self.momentum = MomentumPair(encoder, self.projector)
        self.queue = MemoryBankModule(size=(params.queue_size, params.proj_output_dim), feature_dim_first=False)

    def training_loss(self, view1, view2):
        p = self.params
        q = F.normalize(fp32(self.projector(self.encoder(view1))), dim=1)
        k = F.normalize(fp32(self.momentum(view2)), dim=1)
        _, queue = self.queue(k, update=True)  # the queue as it was before this batch's keys
        with full_precision(q):
            return ressl_loss(q, k, F.normalize(queue, dim=1), p.temperature_q, p.temperature_k)

    def after_step(self, progress: float) -> None:
        p = self.params
        self.momentum.follow(self.encoder, self.projector,
                             momentum_tau(progress, p.base_tau, p.final_tau))
