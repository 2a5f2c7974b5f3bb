"""MART (Wang et al., ICLR 2020) as adversarial fine-tuning of encoder + head on D_f.

As the reference `mart.py`: PGD on the cross-entropy from x + 0.001 N(0, 1), 10 sign
steps of 0.007 within eps = 0.031 (BatchNorm in eval mode); the outer loss is the
boosted cross-entropy on x' -- CE(f(x'), y) plus -log(1 - p'_{y*}), y* the most
likely wrong class -- plus beta * mean over the batch of KL(p(x) || p(x')) weighted
by (1 - p_y(x)), so misclassified clean examples count more; beta = 6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defenses.base import AdversarialFineTuning, register_defense
from defenses.trades import TRADESParams


def mart_loss(logits_natural: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # the most likely wrong class
    boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(logits_natural, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
    return boosted_ce + beta * (kl * (1.0000001 - true_probs)).mean()


class MARTParams(TRADESParams):
    """TRADES's attack settings (eps 0.031, 10 steps of 0.007, start x + 0.001 N(0,1)) and beta = 6."""


@register_defense("mart")
class MART(AdversarialFineTuning):
    """MART: boosted CE on adversarial examples plus a KL term weighted towards misclassified inputs."""

    Params = MARTParams
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014}}

    def loss(self, encoder, head, x, y):
        p = self.params
        x_adv = self.ce_adversarial_examples(encoder, head, x, y, start=x + p.start_std * torch.randn_like(x))
        return mart_loss(head(encoder(x)), head(encoder(x_adv)), y, p.beta)
