"""PGD-AT (Madry et al., ICLR 2018) as adversarial fine-tuning of encoder + head on D_f.

Why this shape: Madry's min-max (CE on PGD examples) is the baseline every defense is
compared with, run in the shared `AdversarialFineTuning` loop; the attack runs with
BatchNorm in eval mode so it does not update running statistics. Steps, options and
the reference's own training recipe: docs/FIDELITY.md#pgd-at.
"""

from __future__ import annotations

import torch.nn.functional as F

from daebench.defenses.base import AdversarialFineTuning, register_defense


@register_defense("pgd_at")
class PGDAT(AdversarialFineTuning):
    """Madry's PGD adversarial training, applied as fine-tuning of the public encoder."""

    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 4 / 255}}

    def loss(self, encoder, head, x, y):
        x_adv = self.ce_adversarial_examples(encoder, head, x, y).x_adv
        return F.cross_entropy(head(encoder(x_adv)), y)
