"""TRADES (Zhang et al., ICML 2019) as adversarial fine-tuning of encoder + head on D_f.

Why this shape: the reference `trades_loss` is reproduced step for step (attack from an
unclamped x + 0.001 N(0, 1), KL target and CE on separate train-mode forwards), inside
the shared `AdversarialFineTuning` loop so the comparison with PGD-AT, MART and Gen-AF
is fair. Steps, options and the reference loop's own schedule: docs/FIDELITY.md#trades.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from daebench.defenses.base import AdversarialFineTuning, AdversarialFineTuningParams, register_defense


def trades_kl(logits_natural: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x')) summed over classes, averaged over the batch (KLDivLoss(sum) / B)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="sum") / len(logits_adv)


class TRADESAttackParams(AdversarialFineTuningParams):
    """The reference attack of TRADES and MART (eps 0.031, 10 steps of 0.007 from x + 0.001 N(0, 1)) and beta."""

    eps: float = Field(0.031, gt=0, le=1, description="L-inf budget of the training attack")
    step_size: float = Field(0.007, gt=0, description="sign-step size of the training attack")
    steps: int = Field(10, ge=0, description="steps of the training attack")
    beta: float = Field(6.0, ge=0, description="weight of the robust KL term")
    start_std: float = Field(0.001, ge=0, description="the attack starts at x + start_std * N(0, 1)")
    clamp_start: bool = Field(False, description="clamp the start to [0, 1] before the first gradient (the "
                                                 "reference clamps only after each step)")


class TRADESParams(TRADESAttackParams):
    kl_target_forward: Literal["separate", "shared"] = Field(
        "separate", description="`separate`: the KL target p(x) is its own train-mode forward, after CE's and "
                                "the adversarial one (the reference: its own dropout mask and BatchNorm update); "
                                "`shared`: reuse CE's clean logits")


@register_defense("trades")
class TRADES(AdversarialFineTuning):
    """TRADES: clean cross-entropy plus beta x KL between clean and adversarial predictions."""

    Params = TRADESParams
    version = 2  # 2: unclamped attack start and a separate KL-target forward (the reference)
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014}}

    def adversarial_examples(self, encoder, head, x) -> torch.Tensor:
        """Maximise KL(p(x) || p(x')) with BatchNorm / dropout in eval mode; back to train mode."""
        p = self.params
        encoder.eval()
        head.eval()
        with torch.no_grad():
            target = head(encoder(x))
        x_adv = self.pgd(lambda z: trades_kl(target, head(encoder(z))), x, start=x + p.start_std * torch.randn_like(x),
                         clamp_start=p.clamp_start).x_adv
        encoder.train()
        head.train()
        return x_adv

    def loss(self, encoder, head, x, y):
        p = self.params
        x_adv = self.adversarial_examples(encoder, head, x)
        logits = head(encoder(x))
        logits_adv = head(encoder(x_adv))
        target = logits if p.kl_target_forward == "shared" else head(encoder(x))
        return F.cross_entropy(logits, y) + p.beta * trades_kl(target, logits_adv)
