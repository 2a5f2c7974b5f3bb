"""PGD-AT (Madry et al., ICLR 2018) as adversarial fine-tuning of encoder + head on D_f.

Inner maximisation: PGD on the cross-entropy of the D_f head, eps 8/255, step
2/255, 10 steps, random start; outer minimisation: cross-entropy on the PGD
examples. The adversarial examples are generated with BatchNorm in eval mode (so
the attack does not update running statistics), then the step trains in train mode.
"""

from __future__ import annotations

import torch.nn.functional as F

from defenses.base import AdversarialFineTuning, register_defense


@register_defense("pgd_at")
class PGDAT(AdversarialFineTuning):
    """Madry's PGD adversarial training, applied as fine-tuning of the public encoder."""

    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 4 / 255}}

    def loss(self, encoder, head, x, y):
        x_adv = self.ce_adversarial_examples(encoder, head, x, y)
        return F.cross_entropy(head(encoder(x_adv)), y)
