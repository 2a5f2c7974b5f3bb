"""SupCon (Khosla et al., NeurIPS 2020): contrastive learning where every image of
the same class, in either view, is a positive. The one supervised recipe of the
paper's eleven: it reads the training labels.

Why two forms: solo-learn trains SupCon with its SimCLR loss keyed by labels, which sums
the positives inside the log (the paper's L_in):
    L = mean_i -log( sum_{p in P(i)} e^{z_i.z_p/T} / sum_{a != i} e^{z_i.z_a/T} );
the paper (and its code) recommends L_out, the mean over positives of the log-ratio.
`form` chooses; the default is solo-learn's. Recipe and deviations: docs/FIDELITY.md#ssl-supcon.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, symmetric
from daebench.encoders.ssl.base import Optimizer, SSLMethod, SSLParams, register_ssl_method, tiny
from daebench.encoders.ssl.heads import fp32, full_precision, mlp


def _log_prob(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax over the other samples (self excluded) of z_i.z_a / T, and the self mask."""
    z = F.normalize(fp32(z), dim=1)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    return logits - torch.logsumexp(logits, dim=1, keepdim=True), self_mask


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float,
                form: Literal["solo-learn", "paper-out"] = "solo-learn") -> torch.Tensor:
    """z: (M, D) projections of all views, labels: (M,). Anchors without a positive are skipped."""
    log_prob, self_mask = _log_prob(z, temperature)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    has_positive = positives.any(1)
    if form == "solo-learn":  # -log of the positives' share of the softmax mass
        kept = log_prob.masked_fill(~positives, float("-inf")).masked_fill(~has_positive[:, None], 0.0)
        per_anchor = -torch.logsumexp(kept, dim=1)  # (rows without positives: finite, then dropped)
    else:  # L_out: mean over positives of -log p
        per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1) / positives.sum(1).clamp(min=1)
    return per_anchor[has_positive].mean()


class SupConParams(SSLParams):
    optimizer: Optimizer = "sgd"
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(256, ge=1)
    temperature: float = Field(0.2, gt=0)
    form: Literal["solo-learn", "paper-out"] = Field(
        "solo-learn", description="`solo-learn`: positives summed inside the log (solo-learn's SimCLR loss on "
                                  "labels, L_in); `paper-out`: the SupCon paper's L_out")
    augment: AugmentParams = Field(default_factory=symmetric)


@register_ssl_method("supcon")
class SupCon(SSLMethod):
    Params = SupConParams
    version = 2  # 2: solo-learn's loss form (L_in) by default, symmetric.yaml views, schedules
    profiles = {"tiny": tiny()}
    uses_labels = True

    def __init__(self, encoder, params: SupConParams) -> None:
        super().__init__(encoder, params)
        self.projector = mlp([encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim], batch_norm=False)

    def training_loss(self, view1, view2, labels):
        z = self.projector(self.encoder(torch.cat([view1, view2])))
        with full_precision(z):
            return supcon_loss(z, torch.cat([labels, labels]), self.params.temperature, self.params.form)
