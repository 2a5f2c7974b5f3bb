"""MoCo v2+ (Chen et al., 2020; solo-learn's "plus": symmetric loss, tuned schedule):
InfoNCE of queries against momentum keys, negatives from a queue of past keys.

lightly's `NTXentLoss` with a memory bank is exactly MoCo's loss (positive key,
queue negatives, no in-batch negatives); each call enqueues that call's keys, so
both views' keys enter the queue, as in solo-learn.
solo-learn CIFAR config: projector 2048-256 (no BN), temperature 0.2, queue 32768,
tau 0.99 -> 0.999, SGD lr 0.3, wd 1e-4, batch 256, 1000 epochs.
"""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field

from benchmark.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, register_ssl_method, tiny
from benchmark.encoders.ssl.heads import MomentumPair, mlp


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


@register_ssl_method("mocov2plus")
class MoCoV2Plus(SSLMethod):
    Params = MoCoV2PlusParams
    # 80 epochs (15: +5.0 kNN points over random init on the CIFAR-10 subset, 40: +8.7,
    # 80: +12.2; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(queue_size=4096, base_tau=0.98, epochs=80)}

    def __init__(self, encoder, params: MoCoV2PlusParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim], batch_norm=False)
        self.momentum = MomentumPair(encoder, self.projector)
        self.criterion = NTXentLoss(temperature=params.temperature,
                                    memory_bank_size=(params.queue_size, params.proj_output_dim))

    def training_loss(self, view1, view2):
        q1, q2 = self.projector(self.encoder(view1)), self.projector(self.encoder(view2))
        k1, k2 = self.momentum(view1), self.momentum(view2)
        return 0.5 * (self.criterion(q1.float(), k2.float()) + self.criterion(q2.float(), k1.float()))

    def after_step(self, progress: float) -> None:
        p = self.params
        self.momentum.follow(self.encoder, self.projector,
                             cosine_schedule(int(progress * 10_000), 10_000, p.base_tau, p.final_tau))
