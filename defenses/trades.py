"""TRADES (Zhang et al., ICML 2019) as adversarial fine-tuning of encoder + head on D_f.

As the reference `trades.py`: the inner maximisation starts at x + 0.001 N(0, 1) and
takes 10 sign steps of 0.007 within eps = 0.031 on KL(p(x) || p(x')) (BatchNorm in
eval mode); the outer loss is CE(f(x), y) + beta * KL(p(x) || p(x')), the KL summed
over classes and averaged over the batch, beta = 6. The loop (two Adam optimisers,
x0.96 per epoch) is the shared `AdversarialFineTuning` one, so the comparison with
PGD-AT, MART and Gen-AF is fair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from defenses.base import AdversarialFineTuning, AdversarialFineTuningParams, register_defense


def trades_kl(logits_natural: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x')) summed over classes, averaged over the batch (KLDivLoss(sum) / B)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="sum") / len(logits_adv)


class TRADESParams(AdversarialFineTuningParams):
    eps: float = Field(0.031, gt=0, le=1)
    step_size: float = Field(0.007, gt=0)
    steps: int = Field(10, ge=0)
    beta: float = Field(6.0, ge=0, description="weight of the robust KL term")
    start_std: float = Field(0.001, ge=0, description="the attack starts at x + start_std * N(0, 1)")


@register_defense("trades")
class TRADES(AdversarialFineTuning):
    """TRADES: clean cross-entropy plus beta x KL between clean and adversarial predictions."""

    Params = TRADESParams
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014}}

    def loss(self, encoder, head, x, y):
        p = self.params
        encoder.eval()
        head.eval()
        with torch.no_grad():
            target = head(encoder(x))
        x_adv = self.pgd(lambda z: trades_kl(target, head(encoder(z))), x,
                         start=x + p.start_std * torch.randn_like(x))
        encoder.train()
        head.train()
        logits = head(encoder(x))
        return F.cross_entropy(logits, y) + p.beta * trades_kl(logits, head(encoder(x_adv)))
