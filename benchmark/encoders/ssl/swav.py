"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online cluster
assignments. Each view's prototype scores predict the other view's Sinkhorn-Knopp
codes; a queue of past projections stabilises the codes for small batches.

Why these parts: lightly's `SwaVProjectionHead` and `SwaVLoss` (Sinkhorn) match
solo-learn's projector and `swav_loss_func` + `SinkhornKnopp` (tests/fidelity); the
prototypes are solo-learn's weight-normalised, bias-free linear layer (lightly's has a
bias), and the queue follows solo-learn: filled from the first step, used from
`epoch_queue_starts`. Recipe and deviations: docs/FIDELITY.md#ssl-swav.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead
from pydantic import Field
from torch import nn

from daebench.encoders.ssl.augment import AugmentParams, symmetric
from daebench.encoders.ssl.base import SSLMethod, SSLParams, register_ssl_method, tiny
from daebench.encoders.ssl.heads import fp32, full_precision


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
    augment: AugmentParams = Field(default_factory=symmetric)


def prototypes_layer(dim: int, num_prototypes: int) -> nn.Linear:
    """Linear(dim, K, bias=False) weight-normalised with its norm fixed at 1: scores are
    cosines with unit prototypes, and gradients flow through the normalisation (solo-learn)."""
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(dim, num_prototypes, bias=False))
    with torch.no_grad():
        layer.parametrizations.weight.original0.fill_(1.0)
    layer.parametrizations.weight.original0.requires_grad_(False)
    return layer


@register_ssl_method("swav")
class SwAV(SSLMethod):
    Params = SwAVParams
    version = 2  # 2: bias-free weight-normalised prototypes, solo-learn's queue timing, symmetric.yaml views
    # 80 epochs (15: +2.3 kNN points over random init on the CIFAR-10 subset, 40: +8.2,
    # 80: +10.4; results/measured/2026-11-22-zoo-longer-tiny)
    profiles = {"tiny": tiny(num_prototypes=300, queue_size=0, freeze_prototypes_epochs=1, epochs=80)}

    def __init__(self, encoder, params: SwAVParams) -> None:
        super().__init__(encoder, params)
        self.projector = SwaVProjectionHead(encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim)
        self.prototypes = prototypes_layer(params.proj_output_dim, params.num_prototypes)
        self.criterion = SwaVLoss(temperature=params.temperature, sinkhorn_iterations=params.sinkhorn_iterations,
                                  sinkhorn_epsilon=params.sinkhorn_epsilon)
        # Past normalised projections of the two global views, newest first; zeros until filled.
        self.register_buffer("queue", torch.zeros(2, params.queue_size, params.proj_output_dim))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(fp32(self.projector(self.encoder(x))), dim=1)

    def training_loss(self, view1, view2, local_views=()):
        z = [self._project(v) for v in (view1, view2)]
        local_z = [self._project(v) for v in local_views]
        with full_precision(view1):  # prototype scores feed Sinkhorn's exp(score / 0.05)
            scores = [self.prototypes(zi) for zi in z]
            local_scores = [self.prototypes(zi) for zi in local_z]
            queue_scores = None
            if self.params.queue_size and self.epoch >= self.params.epoch_queue_starts:
                with torch.no_grad():  # (rows not yet filled are zeros and score 0, as in solo-learn)
                    queue_scores = [self.prototypes(self.queue[i]) for i in range(2)]
            loss = self.criterion(scores, local_scores, queue_outputs=queue_scores).squeeze()
        if self.params.queue_size:
            self._enqueue(z)
        return loss

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
