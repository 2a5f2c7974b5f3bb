"""UAP (Moosavi-Dezfooli et al., "Universal adversarial perturbations", CVPR 2017).

One perturbation v for the whole attacker set, grown by DeepFool steps: each image
that v does not fool yet contributes the minimal step that flips its class, and v is
projected back to the eps ball after each. The classifier is the attacker's
surrogate classifier (`Attack.surrogate_classifier`): the benchmark is
downstream-agnostic, so there is no victim head to attack. References: LTS4/universal
(python/universal_pert.py, deepfool.py: the original) and banyuanhao/PAP utils/uap.py
(the ZePAD paper's UAP source: random start, batch 1 with augmentation, no
convergence check). The defaults follow LTS4 with a batched DeepFool; the options
that reproduce either reference exactly are in docs/FIDELITY.md#uap.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from daebench.plugins import Work, capped
from daebench.attacks.base import Attack, SurrogateClassifierParams, register_attack
from daebench.runtime import batches


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """PAP's UAP augmentation per image: a RandomResizedCrop box (torchvision's rule: 10
    tries, then the centre crop) resized back to the image size (bilinear), then a
    horizontal flip with probability 0.5. Every draw comes from `generator`."""
    h, w = x.shape[-2:]
    out = []
    for image in x:
        top, left, ch, cw = _crop_box(h, w, generator, scale, ratio)
        crop = image[None, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        out.append(crop.flip(-1) if torch.rand((), generator=generator) < 0.5 else crop)
    return torch.stack(out)


def _crop_box(h: int, w: int, generator: torch.Generator, scale: tuple[float, float],
              ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) as torchvision's RandomResizedCrop.get_params draws them."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = h * w * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(()).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            return top, left, ch, cw
    if w / h < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class UAPParams(SurrogateClassifierParams):
    # options added later, left out of the key at the values that compute what version 1 computed
    omitted_when: ClassVar[dict[str, Any]] = {"init": "zero", "require_convergence": True, "pert_pad": 1e-4,
                                              "augment": False}
    batch_size: int = Field(8, ge=1, description="images per DeepFool batch (1 = the sequential original)")
    max_passes: int = Field(10, ge=1, description="passes over the attacker set (reference: until the target)")
    target_fooling_rate: float = Field(0.8, gt=0, le=1, description="stop once reached (reference: 1 - delta, delta=0.2)")
    max_iter_df: int = Field(50, ge=1, description="DeepFool iterations per image")
    num_candidates: int = Field(10, ge=2, description="DeepFool candidate classes: the top-k logits")
    overshoot: float = Field(0.02, ge=0)
    max_images: int | None = Field(None, ge=1, description="craft on a random subset of this many images")
    init: Literal["zero", "random"] = Field(
        "zero", description="the start of v: zero (LTS4) or uniform in [-eps, eps] (PAP's uap.py)")
    require_convergence: bool = Field(
        True, description="add a DeepFool step only if the class flipped within max_iter_df iterations "
                          "(false: every step is added, as PAP's uap.py does)")
    pert_pad: float = Field(
        1e-4, ge=0, description="added to DeepFool's distance to the boundary in every step (PAP's uap.py: 1e-4; "
                                "LTS4's numpy deepfool.py: 0)")
    augment: bool = Field(
        False, description="augment each image when it is visited "
                           "(RandomResizedCrop + horizontal flip, as PAP's uap.py)")


@register_attack("uap")
class UAP(Attack):
    """Universal perturbation from accumulated DeepFool steps on a surrogate classifier."""

    Params = UAPParams
    profiles = {"tiny": {"max_passes": 1, "max_images": 256}}
    universal = True
    version = 1

    #: Forward + backward passes per image and pass over the data: one forward, and for
    #: each image the perturbation does not fool yet, DeepFool iterations of one backward
    #: per class. How many depends on the data: fitted per image, 12 on the quick grid's
    #: digits and 93 on the ci-defenses CIFAR-10 subset (results/measured/
    #: 2026-11-28-estimate-accuracy); this is their geometric mean, so either is within 3x.
    DEEPFOOL_PASSES = 33.0

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        p = cls.Params.model_validate(params)
        return Work(train=capped(p, images) * p.max_passes * cls.DEEPFOOL_PASSES, forward=images)

    def perturb(self, surrogate: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        # The head learns from all the attacker's labelled data; v from at most max_images of it.
        classifier = self.surrogate_classifier(surrogate, x)
        if p.max_images is not None and p.max_images < len(x):
            x = x[torch.randperm(len(x), generator=generator)[:p.max_images]]
        v = self.universal_deepfool(classifier, x, generator)
        return v, {"fooling_rate": self.fooling_rate, "passes": self.passes}

    # -- the algorithm, on any classifier (x in [0,1] -> logits) -------------------
    def universal_deepfool(self, classifier: torch.nn.Module, x: torch.Tensor,
                           generator: torch.Generator | None) -> torch.Tensor:
        """v for `classifier` (x in [0,1] -> logits) on images x; generator None: x in order, no shuffling.

        Images are taken `batch_size` at a time: the not-yet-fooled mask is computed for
        the batch at the current v, DeepFool runs batched on those images (each with its
        own candidates, step and stopping iteration, exactly as alone), and the steps go
        into v one at a time in the shuffled order, projected after each, as in the
        sequential original. All steps of a batch were computed at the batch's first v0,
        so two corrections keep the batched mode close to the original: an image that
        the updated v already fools is skipped, and a stale step r is cut to the part not
        yet covered along its own direction, r_hat * max(0, |r| - <r_hat, v - v0>).
        `batch_size=1` is exactly the sequential original. Sets `self.fooling_rate`
        (over x, at the end) and `self.passes`.
        """
        p = self.params
        draws = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        clean = self.predict(classifier, x)
        shape = (1, *x.shape[1:])
        v = (torch.rand(shape, generator=draws) * 2 - 1) * self.eps if p.init == "random" else torch.zeros(shape)
        v = v.to(self.device)
        self.fooling_rate = 0.0
        self.passes = 0
        for _ in self.progress_bar(range(p.max_passes), "passes"):
            for idx in batches(len(x), p.batch_size, generator):
                xb = x[idx].to(self.device)
                if p.augment:  # a fresh view per visit; its clean prediction is the label, as in PAP
                    xb = random_resized_crop_flip(xb, draws)
                    clean_b = self.predict(classifier, xb).to(self.device)
                else:
                    clean_b = clean[idx].to(self.device)
                v = self._batch_update(classifier, xb, clean_b, v)
            self.passes += 1
            self.fooling_rate = float((self.predict(classifier, x, v) != clean).float().mean())
            if self.fooling_rate >= p.target_fooling_rate:
                break
        return v

    def _batch_update(self, classifier: torch.nn.Module, xb: torch.Tensor, clean: torch.Tensor,
                      v: torch.Tensor) -> torch.Tensor:
        """v after the DeepFool steps of the batch's not-yet-fooled images (see `universal_deepfool`)."""
        with torch.no_grad():
            active = classifier(self.craft_input(xb + v)).argmax(1) == clean
        if not active.any():
            return v
        xa, ya = xb[active], clean[active]
        step, converged = self.deepfool(classifier, self.craft_input(xa + v))
        added = converged if self.params.require_convergence else torch.ones_like(converged)
        changed = False
        v0 = v
        for i in added.nonzero().flatten().tolist():
            r = step[i:i + 1]
            if changed:  # v moved since this step was computed (at v0)
                if self.fooled(classifier, xa[i:i + 1], v, ya[i:i + 1]):
                    continue
                # Only the part of the step that v has not yet covered along its direction.
                norm = r.norm()
                direction = r / norm.clamp_min(1e-12)
                r = direction * (norm - (direction * (v - v0)).sum()).clamp_min(0)
            v = (v + r).clamp(-self.eps, self.eps)
            changed = True
        return v

    @torch.no_grad()
    def fooled(self, classifier: torch.nn.Module, x: torch.Tensor, v: torch.Tensor, clean: torch.Tensor) -> bool:
        return bool((classifier(self.craft_input(x + v)).argmax(1) != clean).all())

    def predict(self, classifier: torch.nn.Module, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 512):
                xb = x[i:i + 512].to(self.device)
                out.append(classifier(xb if v is None else self.craft_input(xb + v)).argmax(1).cpu())
        return torch.cat(out)

    def _box(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """r cut so that z + r stays in [0, 1] (unless clamp_craft is off: r itself)."""
        return (z + r).clamp(0, 1) - z if self.params.clamp_craft else r

    def deepfool(self, classifier: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched DeepFool (L2, Moosavi-Dezfooli et al. 2016) on images z in [0,1].

        Returns (steps, converged): steps = clamp(z + (1 + overshoot) * r_tot, 0, 1) - z per
        image (unclamped when clamp_craft is off), converged = the class changed within
        `max_iter_df` iterations. Each image has its own top-k candidates (from the logits
        at z) and stops on its own. The iterates stay in [0, 1] (the classifier only sees
        valid images) unless clamp_craft is off; the references have no pixel bounds.
        """
        p = self.params
        with torch.no_grad():
            logits = classifier(z)
        k = min(p.num_candidates, logits.shape[1])
        candidates = logits.topk(k, dim=1).indices  # (m, k); column 0 is the current label
        label = candidates[:, 0]
        r_tot = torch.zeros_like(z)
        converged = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        active = torch.arange(len(z), device=z.device)
        scale = 1 + p.overshoot
        for it in range(p.max_iter_df + 1):  # the last round only checks the final iterate
            last = it == p.max_iter_df
            pert = self.craft_input(z[active] + scale * r_tot[active]).requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                out = classifier(pert)
            flipped = out.detach().argmax(1) != label[active]
            converged[active[flipped]] = True
            if last or flipped.all():
                break
            if flipped.any():  # drop the finished images before the (costly) backward passes
                active = active[~flipped]
                pert = pert.detach()[~flipped].requires_grad_(True)
                with torch.enable_grad():
                    out = classifier(pert)
            with torch.enable_grad():
                f = out.gather(1, candidates[active])
                f_diff = f[:, 1:] - f[:, :1]  # (a, k-1): f_k - f_label
                w = torch.stack([
                    torch.autograd.grad(f_diff[:, j].sum(), pert, retain_graph=j < k - 2)[0]
                    for j in range(k - 1)
                ], dim=1)  # (a, k-1, C, H, W): grad (f_k - f_label)
            f_diff = f_diff.detach()
            w_norm = w.flatten(2).norm(dim=2) + 1e-12
            dist = f_diff.abs() / w_norm  # distance to each linearised boundary
            best = dist.argmin(dim=1)
            rows = torch.arange(len(active), device=z.device)
            w_best = w[rows, best]
            coef = (dist[rows, best] + p.pert_pad) / w_norm[rows, best]
            r_i = coef.view(-1, *([1] * (z.dim() - 1))) * w_best
            if p.clamp_craft:  # stay in the box
                r_tot[active] = (z[active] + r_tot[active] + r_i).clamp(0, 1) - z[active]
            else:
                r_tot[active] = r_tot[active] + r_i
        return self._box(z, scale * r_tot), converged
