"""MART (Wang et al., ICLR 2020) as adversarial fine-tuning of encoder + head on D_f.

Why this shape: the reference `mart_loss` is reproduced term for term (CE-PGD from an
unclamped x + 0.001 N(0, 1); boosted CE on x'; KL weighted by 1 - p_y(x)), inside the
shared `AdversarialFineTuning` loop. Steps, options and the reference loop's own
schedule: docs/FIDELITY.md#mart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from daebench.defenses.base import AdversarialFineTuning, register_defense
from daebench.defenses.trades import TRADESAttackParams


def mart_loss(logits_natural: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """CE(x') + NLL(log(1.0001 - p' + 1e-12), most likely wrong class) + beta * mean[KL(p || p') (1.0000001 - p_y)],
    the KL as the reference's KLDivLoss(log(p' + 1e-12), p) summed over classes."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # the most likely wrong class
    boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(logits_natural, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    return boosted_ce + beta * (kl * (1.0000001 - true_probs)).mean()


class MARTParams(TRADESAttackParams):
    """TRADES's attack settings (eps 0.031, 10 steps of 0.007, start x + 0.001 N(0,1)) and beta = 6."""


@register_defense("mart")
class MART(AdversarialFineTuning):
    """MART: boosted CE on adversarial examples plus a KL term weighted towards misclassified inputs."""

    Params = MARTParams
    version = 2  # 2: unclamped attack start, the reference's KLDivLoss (no 1e-12 inside log p)
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014}}

    def adversarial_examples(self, encoder, head, x, y) -> torch.Tensor:
        """CE-PGD with BatchNorm / dropout in eval mode; back to train mode for the step."""
        p = self.params
        encoder.eval()
        head.eval()
        x_adv = self.pgd(lambda z: F.cross_entropy(head(encoder(z)), y), x, start=x + p.start_std * torch.randn_like(x),
                         clamp_start=p.clamp_start).x_adv
        encoder.train()
        head.train()
        return x_adv

    def loss(self, encoder, head, x, y):
        x_adv = self.adversarial_examples(encoder, head, x, y)
        return mart_loss(head(encoder(x)), head(encoder(x_adv)), y, self.params.beta)
