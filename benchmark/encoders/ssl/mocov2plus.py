"""MoCo v2+ (Chen et al., 2020; solo-learn's "plus": symmetric loss, tuned schedule):
InfoNCE of queries against momentum keys, negatives from queues of past keys.

Why two queues: solo-learn keeps one queue per view (q1 is contrasted with past keys of
view 2, q2 with past keys of view 1) and enqueues this batch's keys only after both
terms; one shared lightly memory bank would put this batch's k2 among q2's negatives.
lightly's `NTXentLoss` with a memory bank is solo-learn's `mocov2plus_loss_func` for
one (query, key, queue) triple. Recipe and deviations: docs/FIDELITY.md#ssl-mocov2plus.
"""

from __future__ import annotations

from lightly.loss import NTXentLoss
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, symmetric_weak
from daebench.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, momentum_tau, register_ssl_method, tiny
from daebench.encoders.ssl.heads import MomentumPair, fp32, mlp


class MoCoV2PlusParams(SSLParams):
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(32768, ge=1)
    base_tau: float = Field(0.99, ge=0, le=1)
    final_tau: float = Field(0.999, ge=0, le=1)
    augment: AugmentParams = Field(default_factory=symmetric_weak)


@register_ssl_method("mocov2plus")
class MoCoV2Plus(SSLMethod):
    Params = MoCoV2PlusParams
    version = 2  # 2: one queue per view, enqueued after the loss; symmetric_weak.yaml views; schedules
    # 80 epochs (15: +5.0 kNN points over random init on the CIFAR-10 subset, 40: +8.7,
    # 80: +12.2; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(queue_size=4096, base_tau=0.98, epochs=80)}

    def __init__(self, encoder, params: MoCoV2PlusParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim], batch_norm=False)
        self.momentum = MomentumPair(encoder, self.projector)
        bank = (params.queue_size, params.proj_output_dim)
        # criterion i holds the past keys of view i + 1 and contrasts the other view's queries with them
        self.against_view2 = NTXentLoss(temperature=params.temperature, memory_bank_size=bank)
        self.against_view1 = NTXentLoss(temperature=params.temperature, memory_bank_size=bank)

    def training_loss(self, view1, view2):
        q1, q2 = self.projector(self.encoder(view1)), self.projector(self.encoder(view2))
        k1, k2 = self.momentum(view1), self.momentum(view2)
        # each criterion reads its queue before enqueueing its own keys: neither term sees this batch's keys
        return 0.5 * (self.against_view2(fp32(q1), fp32(k2)) + self.against_view1(fp32(q2), fp32(k1)))

    def after_step(self, progress: float) -> None:
        p = self.params
        self.momentum.follow(self.encoder, self.projector, momentum_tau(progress, p.base_tau, p.final_tau))
