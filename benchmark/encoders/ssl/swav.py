"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online cluster
assignments. Each view's prototype scores predict the other view's Sinkhorn-Knopp
codes; a queue of past projections stabilises the codes for small batches.

lightly's `SwaVProjectionHead`, `SwaVPrototypes` and `SwaVLoss` (Sinkhorn); the
queue, prototype normalisation and freezing are here.
solo-learn CIFAR config: projector 2048-128, 3000 prototypes, temperature 0.1,
Sinkhorn 3 iterations at epsilon 0.05, queue 3840 from epoch 50, prototypes frozen
for 2 epochs, LARS lr 0.6, wd 1e-6, batch 256, 1000 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from pydantic import Field

from benchmark.encoders.ssl.base import SSLMethod, SSLParams, register_ssl_method, tiny
from benchmark.encoders.ssl.heads import full_precision


class SwAVParams(SSLParams):
    lr: float = Field(0.6, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(128, ge=1)
    num_prototypes: int = Field(3000, ge=2)
    temperature: float = Field(0.1, gt=0)
    sinkhorn_iterations: int = Field(3, ge=1)
    sinkhorn_epsilon: float = Field(0.05, gt=0)
    queue_size: int = Field(3840, ge=0, description="0 = no queue")
    epoch_queue_starts: int = Field(50, ge=0)
    freeze_prototypes_epochs: int = Field(2, ge=0)


@register_ssl_method("swav")
class SwAV(SSLMethod):
    Params = SwAVParams
    # 80 epochs (15: +2.3 kNN points over random init on the CIFAR-10 subset, 40: +8.2,
    # 80: +10.4; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(num_prototypes=300, queue_size=0, freeze_prototypes_epochs=1, epochs=80)}

    def __init__(self, encoder, params: SwAVParams) -> None:
        super().__init__(encoder, params)
        self.projector = SwaVProjectionHead(encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim)
        self.prototypes = SwaVPrototypes(params.proj_output_dim, params.num_prototypes)
        self.criterion = SwaVLoss(temperature=params.temperature, sinkhorn_iterations=params.sinkhorn_iterations,
                                  sinkhorn_epsilon=params.sinkhorn_epsilon)
        # Past projections of the two global views; rows of zeros are "not yet filled".
        self.register_buffer("queue", torch.zeros(2, params.queue_size, params.proj_output_dim))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.encoder(x)).float(), dim=1)

    def training_loss(self, view1, view2, local_views=()):
        with torch.no_grad():
            self.prototypes.normalize()
        z = [self._project(v) for v in (view1, view2)]
        local_z = [self._project(v) for v in local_views]
        with full_precision(view1):  # prototype scores feed Sinkhorn's exp(score / 0.05)
            scores = [self.prototypes(zi) for zi in z]
            local_scores = [self.prototypes(zi) for zi in local_z]
            queue_scores = None
            if self.params.queue_size and self.epoch >= self.params.epoch_queue_starts:
                if self.queue[:, -1].abs().sum() > 0:  # full: every slot has a past projection
                    with torch.no_grad():
                        queue_scores = [self.prototypes(self.queue[i]) for i in range(2)]
                self._enqueue(z)
            return self.criterion(scores, local_scores, queue_outputs=queue_scores)

    @torch.no_grad()
    def _enqueue(self, z: list[torch.Tensor]) -> None:
        n = min(len(z[0]), self.params.queue_size)
        self.queue[:, n:] = self.queue[:, :-n].clone()
        for i in range(2):
            self.queue[i, :n] = z[i][:n].detach()

    def before_optimizer_step(self) -> None:
        if self.epoch < self.params.freeze_prototypes_epochs:
            for p in self.prototypes.parameters():
                p.grad = None
