"""SupCon (Khosla et al., NeurIPS 2020): contrastive learning where every image of
the same class, in either view, is a positive. The one supervised recipe of the
paper's eleven: it reads the training labels.

L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/T) / sum_{a != i} exp(z_i.z_a/T) )
over the 2N normalised projections, P(i) = the other samples with i's label.
solo-learn CIFAR config: projector 2048-256, temperature 0.2, SGD lr 0.4, wd 1e-5,
batch 256, 1000 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from benchmark.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, register_ssl_method, tiny
from benchmark.encoders.ssl.heads import full_precision, mlp


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """z: (M, D) projections of all views, labels: (M,)."""
    z = F.normalize(z.float(), dim=1)
    m = len(z)
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1) / positives.sum(1).clamp(min=1)
    return per_anchor[positives.any(1)].mean()


class SupConParams(SSLParams):
    optimizer: Optimizer = "sgd"
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    temperature: float = Field(0.2, gt=0)


@register_ssl_method("supcon")
class SupCon(SSLMethod):
    Params = SupConParams
    profiles = {"tiny": tiny()}
    uses_labels = True

    def __init__(self, encoder, params: SupConParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim], batch_norm=False)

    def training_loss(self, view1, view2, labels):
        z = self.projector(self.encoder(torch.cat([view1, view2])))
        with full_precision(z):
            return supcon_loss(z, torch.cat([labels, labels]), self.params.temperature)
