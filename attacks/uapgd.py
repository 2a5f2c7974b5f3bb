"""UAPGD (Deng & Karam, "Universal adversarial attack via enhanced projected gradient
descent", ICIP 2020): one universal perturbation by momentum PGD.

Default loss "ce": the cross-entropy of the attacker's *surrogate classifier* (the
surrogate encoder plus the reference head trained on the attacker's labelled data,
`Attack.surrogate_classifier`) on the attacker's labels. For each batch of the
attacker's data (shuffled each epoch), the images the current delta does not yet
fool (prediction at clamp(x + delta, 0, 1) still equal to the label) get up to
`steps` inner iterations, each on those of them still not fooled:

    v <- momentum * v + grad_delta mean CE(f(clamp(x + delta)), y)
    delta <- clamp(delta + step_size * sign(v), -eps, eps)

stopping early once all of them are fooled. delta starts at zero (the CE gradient
does not vanish there); the velocity v is kept across batches. Defaults: momentum
0.5 and 10 inner steps (Deng & Karam), step 1/255 and 5 epochs (kept from version 2).

Option loss="embedding" (versions <= 2, label-free, downstream-agnostic): the same
momentum loop on every image of the batch, maximising the mean squared distance
between the surrogate's features of x + delta and of x, from a random start in
[-eps, eps] (that distance has a zero gradient at delta = 0, its minimum).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from attacks.base import Attack, SurrogateClassifierParams, register_attack
from benchmark.runtime import batches


class UAPGDParams(SurrogateClassifierParams):
    loss: Literal["ce", "embedding"] = Field("ce", description="ce: surrogate classifier + labels; embedding: label-free")
    epochs: int = Field(5, ge=1, description="passes over the attacker's data")
    steps: int = Field(10, ge=1, description="inner momentum steps per batch")
    step_size: float = Field(1 / 255, gt=0)
    momentum: float = Field(0.5, ge=0, le=1)


@register_attack("uapgd")
class UAPGD(Attack):
    """Universal momentum-PGD: surrogate-classifier CE (default) or embedding distortion."""

    Params = UAPGDParams
    profiles = {"tiny": {"epochs": 1, "steps": 5}}
    universal = True
    version = 3  # 3: CE on the surrogate classifier by default; 2: random start (embedding)

    def loss(self, surrogate, x_adv, x, clean_features):
        return (surrogate(x_adv) - clean_features).pow(2).mean(dim=1)

    def perturb(self, surrogate, x, generator):
        if self.params.loss == "embedding":
            return self._perturb_embedding(surrogate, x, generator)
        return self._perturb_ce(self.surrogate_classifier(surrogate, x),
                                x, self.labels(), generator)

    def _perturb_ce(self, classifier, x, y, generator):
        p = self.params
        delta = torch.zeros((1, *x.shape[1:]), device=self.device)
        velocity = torch.zeros_like(delta)
        for _ in self.progress_bar(range(p.epochs), "epochs"):
            for idx in batches(len(x), p.batch_size, generator):
                xb, yb = x[idx].to(self.device), y[idx].to(self.device)
                for _ in range(p.steps):
                    delta.requires_grad_(True)
                    logits = classifier((xb + delta).clamp(0, 1))
                    keep = logits.detach().argmax(1) == yb  # fooled ones drop out, the rest step on
                    if not keep.any():
                        break
                    (grad,) = torch.autograd.grad(F.cross_entropy(logits[keep], yb[keep]), delta)
                    with torch.no_grad():
                        velocity = p.momentum * velocity + grad
                        delta = (delta + p.step_size * velocity.sign()).clamp(-self.eps, self.eps)
                    xb, yb = xb[keep], yb[keep]
        return delta.detach()

    def _perturb_embedding(self, surrogate, x, generator):
        p = self.params
        # A random start: the embedding distance has a zero gradient at delta = 0
        # (its minimum), so sign ascent from zero would never move.
        delta = (torch.rand((1, *x.shape[1:]), generator=generator) * 2 - 1).mul_(self.eps).to(self.device)
        velocity = torch.zeros_like(delta)
        for _ in self.progress_bar(range(p.epochs), "epochs"):
            for idx in batches(len(x), p.batch_size, generator):
                xb = x[idx].to(self.device)
                clean = self.features(surrogate, xb)
                for _ in range(p.steps):
                    delta.requires_grad_(True)
                    x_adv = (xb + delta).clamp(0, 1)
                    (grad,) = torch.autograd.grad(self.loss(surrogate, x_adv, xb, clean).mean(), delta)
                    with torch.no_grad():
                        velocity = p.momentum * velocity + grad
                        delta = (delta + p.step_size * velocity.sign()).clamp(-self.eps, self.eps)
        return delta.detach()
