"""UAPGD (Deng & Karam, "Universal adversarial attack via enhanced projected gradient
descent", ICIP 2020): one universal perturbation grown by momentum PGD on a classifier.

Why a classifier: UAPGD needs class decisions, and the benchmark is downstream-agnostic,
so the classifier is the attacker's surrogate classifier (the surrogate encoder plus a
head trained on the attacker's labelled data, `Attack.surrogate_classifier`).

Two variants:

* `reference` (default): the algorithm of the code the ZePAD paper's UAPGD baseline
  comes from (banyuanhao/PAP utils/uapepgd.py). One shuffled pass, one image at a
  time: an image whose prediction at x + delta still equals its clean prediction gets
  its own inner momentum PGD from a fresh random start delta0 (velocity reset,
  cross-entropy on the L2-normalised logits against the clean prediction, up to
  `steps` steps of step_size * sign(v), v = momentum * v + gamma * (x + delta + delta0)
  + grad), then delta <- clip(delta + delta0, -eps, eps). `reference_image_update`
  is that per-image update.
* `batched`: version 3's batched universal momentum PGD (kept for comparison and for
  `loss: embedding`): for each batch, the images not yet fooled step together on the
  mean CE against their true labels, the velocity kept across batches.

Steps, constants and the options that reproduce the reference exactly:
docs/FIDELITY.md#uapgd.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from daebench.plugins import Work
from daebench.attacks.base import Attack, SurrogateClassifierParams, member_logits, register_attack, sum_terms
from daebench.runtime import batches

#: Defaults that differ between the variants (the reference's values are the fields' defaults).
BATCHED_DEFAULTS: dict[str, Any] = {"epochs": 5, "step_size": 1 / 255}
#: Parameters only the reference variant reads.
REFERENCE_ONLY = ("gamma", "step_size_late", "step_decay_at")


class UAPGDParams(SurrogateClassifierParams):
    variant: Literal["reference", "batched"] = Field(
        "reference", description="reference: PAP's uapepgd.py, per image; batched: version 3's batched momentum PGD")
    loss: Literal["ce", "embedding"] = Field(
        "ce", description="ce: surrogate classifier + labels; embedding: label-free (variant batched only)")
    epochs: int = Field(1, ge=1, description="passes over the attacker's data (reference 1; batched default 5)")
    steps: int = Field(10, ge=1, description="inner momentum steps per image (reference) or per batch (batched)")
    step_size: float = Field(
        0.002, gt=0,
        description="sign step (reference: 0.002 for the first step_decay_at images; batched default 1/255)")
    momentum: float = Field(0.5, ge=0, le=1, description="velocity decay (reference beta 0.5)")
    gamma: float = Field(1e-5, ge=0, description="weight of the input point in the velocity (reference gamma 1e-5)")
    step_size_late: float = Field(0.0002, gt=0, description="sign step once the image counter reaches step_decay_at")
    step_decay_at: int = Field(10000, ge=1, description="image counter (every image seen) at which the step drops")
    max_images: int | None = Field(None, ge=1, description="craft on a random subset of this many images")

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        """The batched variant keeps version 3's defaults for the fields it shares."""
        if isinstance(data, dict) and data.get("variant") == "batched":
            return {**BATCHED_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "UAPGDParams":
        if self.variant == "reference" and self.loss != "ce":
            raise ValueError(
                "loss 'embedding' exists only for variant 'batched': the reference algorithm is defined on a "
                "classifier's predictions (its fooling test and cross-entropy need a class); set variant: batched "
                "to use the label-free embedding loss")
        ignored = [n for n in REFERENCE_ONLY if getattr(self, n) != type(self).model_fields[n].default]
        if self.variant == "batched" and ignored:
            raise ValueError(
                f"{', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} only to variant 'reference' "
                f"(PAP's uapepgd.py) and the batched variant would ignore it; remove it, or set variant: reference")
        return self


@register_attack("uapgd")
class UAPGD(Attack):
    """Universal momentum PGD on the surrogate classifier: PAP's per-image algorithm (default) or batched."""

    Params = UAPGDParams
    profiles = {"tiny": {"epochs": 1, "steps": 5, "max_images": 256}}
    universal = True
    # 4: variant reference (PAP's uapepgd.py) by default, max_images; 3: CE on the
    # surrogate classifier by default (now variant batched); 2: random start (embedding)
    version = 4

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """The epochs x steps updates, and the features the surrogate classifier learns from."""
        return super().work(params, images) + Work(forward=images)

    def loss(self, surrogate, x_adv, x, clean_features):
        return (surrogate(x_adv) - clean_features).pow(2).mean(dim=1)

    def perturb(self, surrogate, x, generator):
        p = self.params
        if p.loss == "embedding":
            return self._perturb_embedding(surrogate, self._subset(x, generator), generator)
        classifier = self.surrogate_classifier(surrogate, x)  # the head learns from all the labelled data
        if p.variant == "batched":
            x, y = self._subset(x, generator, self.labels())
            return self._perturb_batched(classifier, x, y, generator)
        return self._perturb_reference(classifier, self._subset(x, generator), generator)

    def _subset(self, x: torch.Tensor, generator: torch.Generator, y: torch.Tensor | None = None):
        """At most max_images of the attacker's data (a seeded random subset)."""
        n = self.params.max_images
        if n is None or n >= len(x):
            return x if y is None else (x, y)
        keep = torch.randperm(len(x), generator=generator)[:n]
        return x[keep] if y is None else (x[keep], y[keep])

    # -- variant "reference": PAP's uapepgd.py ------------------------------------------
    def _perturb_reference(self, classifier: torch.nn.Module, x: torch.Tensor,
                           generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """One pass per epoch, one image at a time, in a shuffled order; see the module docstring."""
        p = self.params
        clean = self.predict(classifier, x)  # the labels: clean predictions (batched; eval mode, same values)
        delta = (torch.rand((1, *x.shape[1:]), generator=generator).to(self.device, x.dtype) * 2 - 1) * self.eps
        seen = updated = 0
        for _ in range(p.epochs):
            for i in self.progress_bar(torch.randperm(len(x), generator=generator).tolist(), "images"):
                seen += 1  # the reference's k: every image counts, fooled or not
                xi, label = x[i:i + 1].to(self.device), clean[i:i + 1].to(self.device)
                with torch.no_grad():
                    if classifier(self.craft_input(xi + delta)).argmax(1) != label:
                        continue  # already fooled: no update
                step = p.step_size if seen < p.step_decay_at else p.step_size_late
                delta0 = self.reference_image_update(classifier, xi + delta, label, step, generator)
                delta = (delta + delta0).clamp(-self.eps, self.eps)
                updated += 1
        fooling = float((self.predict(classifier, x, delta) != clean).float().mean())
        return delta, {"fooling_rate": fooling, "images_seen": seen, "images_updated": updated}

    def reference_image_update(self, classifier: torch.nn.Module, point: torch.Tensor, label: torch.Tensor,
                               step_size: float, generator: torch.Generator) -> torch.Tensor:
        """delta0 for one image at `point` = x + delta (PAP's get_delta), to add to delta.

        delta0 starts uniform in [-eps, eps] (one draw of point's shape from `generator`),
        the velocity at zero. Each of at most `steps` iterations: z = point + delta0 (the
        classifier's input, clamped unless clamp_craft is off), loss = the sum over the
        surrogate encoders of CE(normalize(logits), label), v <- momentum * v + gamma * z +
        grad, delta0 <- delta0 + step_size * sign(v); then stop if the prediction at z
        (before this step) already differed from the label. delta0 is not projected here.
        """
        p = self.params
        delta0 = (torch.rand(point.shape, generator=generator).to(point) * 2 - 1) * self.eps
        velocity = torch.zeros_like(point)
        for _ in range(p.steps):
            delta0.requires_grad_(True)
            z = self.craft_input(point + delta0)
            logits = member_logits(classifier, z)
            fooled = bool((sum_terms([lg.detach() for lg in logits]).argmax(1) != label).all())
            loss = sum_terms([F.cross_entropy(F.normalize(lg, dim=1), label) for lg in logits])
            (grad,) = torch.autograd.grad(loss, delta0)
            with torch.no_grad():
                velocity = p.momentum * velocity + p.gamma * z + grad
                delta0 = delta0 + step_size * velocity.sign()
            if fooled:
                break
        return delta0.detach()

    def predict(self, classifier: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.params.batch_size):
                xb = x[i:i + self.params.batch_size].to(self.device)
                out.append(classifier(xb if delta is None else self.craft_input(xb + delta)).argmax(1).cpu())
        return torch.cat(out)

    # -- variant "batched" (version 3) ------------------------------------------------------
    def _perturb_batched(self, classifier, x, y, generator):
        """For each batch, the images not yet fooled (prediction at x + delta still equal to
        the label) get up to `steps` steps, each on those of them still not fooled:
        v <- momentum * v + grad_delta mean CE(f(x + delta), y), delta <- clip(delta +
        step_size * sign(v)). delta starts at zero; v is kept across batches."""
        p = self.params
        delta = torch.zeros((1, *x.shape[1:]), device=self.device)
        velocity = torch.zeros_like(delta)
        for _ in self.progress_bar(range(p.epochs), "epochs"):
            for idx in batches(len(x), p.batch_size, generator):
                xb, yb = x[idx].to(self.device), y[idx].to(self.device)
                for _ in range(p.steps):
                    delta.requires_grad_(True)
                    logits = member_logits(classifier, self.craft_input(xb + delta))
                    keep = sum_terms([lg.detach() for lg in logits]).argmax(1) == yb  # fooled ones drop out
                    if not keep.any():
                        break
                    loss = sum_terms([F.cross_entropy(lg[keep], yb[keep]) for lg in logits])
                    (grad,) = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        velocity = p.momentum * velocity + grad
                        delta = (delta + p.step_size * velocity.sign()).clamp(-self.eps, self.eps)
                    xb, yb = xb[keep], yb[keep]
        return delta.detach()

    def _perturb_embedding(self, surrogate, x, generator):
        """The batched loop on every image, maximising the features' squared distance to
        the clean ones (summed over the surrogates), from a random start (that distance
        has a zero gradient at delta = 0, its minimum)."""
        p = self.params
        delta = (torch.rand((1, *x.shape[1:]), generator=generator) * 2 - 1).mul_(self.eps).to(self.device)
        velocity = torch.zeros_like(delta)
        members = self.members(surrogate)
        for _ in self.progress_bar(range(p.epochs), "epochs"):
            for idx in batches(len(x), p.batch_size, generator):
                xb = x[idx].to(self.device)
                clean = [self.features(m, xb) for m in members]
                for _ in range(p.steps):
                    delta.requires_grad_(True)
                    x_adv = self.craft_input(xb + delta)
                    objective = sum_terms([self.loss(m, x_adv, xb, c).mean() for m, c in zip(members, clean)])
                    (grad,) = torch.autograd.grad(objective, delta)
                    with torch.no_grad():
                        velocity = p.momentum * velocity + grad
                        delta = (delta + p.step_size * velocity.sign()).clamp(-self.eps, self.eps)
        return delta.detach()
