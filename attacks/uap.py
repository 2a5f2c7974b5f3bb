"""UAP (Moosavi-Dezfooli et al., "Universal adversarial perturbations", CVPR 2017).

One perturbation v for the whole attacker set, grown by DeepFool steps:

    v = 0
    repeat (at most `max_passes` passes, the attacker set shuffled each pass):
        for each image x with argmax f(clamp(x + v)) == argmax f(x)   (not yet fooled):
            r = DeepFool(clamp(x + v))        # minimal L2 step that flips the class
            if DeepFool converged: v = clamp(v + r, -eps, eps)   # L-inf projection
    until the fooling rate over the attacker set >= `target_fooling_rate`

Defaults follow the reference code (github.com/LTS4/universal, python/universal_pert.py
and deepfool.py): delta = 0.2 (-> target fooling rate 0.8), p = inf, num_classes = 10
candidate classes (the top-10 logits at DeepFool's input), overshoot 0.02; DeepFool's
own iteration cap is 50 (deepfool.py's default; universal_pert.py passes 10). The
reference runs until the target is met (max_iter_uni = inf); we cap at 10 passes.

The classifier f. The benchmark is downstream-agnostic: there is no victim head, so
f is the attacker's *surrogate classifier* -- the surrogate encoder plus the
reference MLP head trained on the attacker's labelled data (`Attack.surrogate_classifier`).
(A solo-learn checkpoint's online linear probe, its `classifier.*` weights, would be
an equally valid f for an attacker that has one; the reference head is used here so
every surrogate is treated alike.)

Batching (the deviation from the sequential original). Images are taken
`batch_size` at a time: the not-yet-fooled mask is computed for the whole batch at
the current v, and DeepFool runs batched on the not-yet-fooled images of the batch
(each image keeps its own candidates, step and stopping iteration, exactly as
alone). The converged steps then go into v one at a time, in the shuffled order,
with the projection after each, as in the original. What differs: all steps of a
batch were computed at v0, the v of the batch's start, where the original computes
image i's step at the v already updated by images 1..i-1. Two corrections keep the
batched mode close to the original: an image that the updated v already fools is
skipped (as the original would skip it; one forward pass), and a stale step r is
cut to the part not yet covered along its own direction,
r <- r_hat * max(0, |r| - <r_hat, v - v0>) (first order: DeepFool's r ends on the
image's linearised boundary; v may have moved part of the way there). Without the
second correction, batch 32 fooled 9 points more than batch 1 (mean of six shuffles);
with it, 3. `batch_size=1` is exactly the sequential original (neither correction
can apply). Measured on a digits classifier
(tests/integration/test_art_crosscheck.py, scripts/bench_attacks.py): with the
same shuffles, batch 8 and batch 1 agree on average within a few points, but a
single pass of UAP is chaotic in the image order (one-pass fooling rates over six
shuffles of 256 images spread over 0.48-0.90 for batch 1, 0.46-0.81 for batch 8),
so individual runs of the two modes can differ by much more.
The sequential mode matches ART's UniversalPerturbation when run in ART's order.

Pixels: DeepFool works on clamp(x + v, 0, 1) and clamps its iterates to [0, 1] (the
classifier only ever sees valid images); the step added to v is the clamped iterate
minus DeepFool's input. The original has no pixel bounds.
"""

from __future__ import annotations

import torch
from pydantic import Field

from attacks.base import Attack, SurrogateClassifierParams, register_attack
from benchmark.runtime import batches


class UAPParams(SurrogateClassifierParams):
    batch_size: int = Field(8, ge=1, description="images per DeepFool batch (1 = the sequential original)")
    max_passes: int = Field(10, ge=1, description="passes over the attacker set (reference: until the target)")
    target_fooling_rate: float = Field(0.8, gt=0, le=1, description="stop once reached (reference: 1 - delta, delta=0.2)")
    max_iter_df: int = Field(50, ge=1, description="DeepFool iterations per image")
    num_candidates: int = Field(10, ge=2, description="DeepFool candidate classes: the top-k logits")
    overshoot: float = Field(0.02, ge=0)
    max_images: int | None = Field(None, ge=1, description="craft on a random subset of this many images")


@register_attack("uap")
class UAP(Attack):
    """Universal perturbation from accumulated DeepFool steps on a surrogate classifier."""

    Params = UAPParams
    profiles = {"tiny": {"max_passes": 1, "max_images": 256}}
    universal = True
    version = 1

    def perturb(self, surrogate, x, generator):
        p = self.params
        # The head learns from all the attacker's labelled data; v from at most max_images of it.
        classifier = self.surrogate_classifier(surrogate, x)
        if p.max_images is not None and p.max_images < len(x):
            x = x[torch.randperm(len(x), generator=generator)[:p.max_images]]
        return self.universal_deepfool(classifier, x, generator)

    # -- the algorithm, on any classifier (x in [0,1] -> logits) -------------------
    def universal_deepfool(self, classifier: torch.nn.Module, x: torch.Tensor,
                           generator: torch.Generator | None) -> torch.Tensor:
        """v for `classifier` (x in [0,1] -> logits) on images x; generator None: x in order, no shuffling.

        Sets `self.fooling_rate` (over x, at the end) and `self.passes`.
        """
        p = self.params
        clean = self.predict(classifier, x)
        v = torch.zeros((1, *x.shape[1:]), device=self.device)
        self.fooling_rate = 0.0
        self.passes = 0
        for _ in self.progress_bar(range(p.max_passes), "passes"):
            for idx in batches(len(x), p.batch_size, generator):
                xb = x[idx].to(self.device)
                with torch.no_grad():
                    active = classifier((xb + v).clamp(0, 1)).argmax(1) == clean[idx].to(self.device)
                if not active.any():
                    continue
                xa, ya = xb[active], clean[idx].to(self.device)[active]
                step, converged = self.deepfool(classifier, (xa + v).clamp(0, 1))
                changed = False
                v0 = v
                # The steps go into v one at a time, in the shuffled order, as in the original.
                for i in converged.nonzero().flatten().tolist():
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
            self.passes += 1
            self.fooling_rate = float((self.predict(classifier, x, v) != clean).float().mean())
            self.report = {"fooling_rate": self.fooling_rate, "passes": self.passes}
            if self.fooling_rate >= p.target_fooling_rate:
                break
        return v

    @staticmethod
    @torch.no_grad()
    def fooled(classifier: torch.nn.Module, x: torch.Tensor, v: torch.Tensor, clean: torch.Tensor) -> bool:
        return bool((classifier((x + v).clamp(0, 1)).argmax(1) != clean).all())

    def predict(self, classifier: torch.nn.Module, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 512):
                xb = x[i:i + 512].to(self.device)
                out.append(classifier(xb if v is None else (xb + v).clamp(0, 1)).argmax(1).cpu())
        return torch.cat(out)

    def deepfool(self, classifier: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched DeepFool (L2, Moosavi-Dezfooli et al. 2016) on images z in [0,1].

        Returns (steps, converged): steps = clamp(z + (1 + overshoot) * r_tot, 0, 1) - z per
        image, converged = the class changed within `max_iter_df` iterations. Each image
        has its own top-k candidates (from the logits at z) and stops on its own.
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
            pert = (z[active] + scale * r_tot[active]).clamp(0, 1).requires_grad_(not last)
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
            coef = (dist[rows, best] + 1e-4) / w_norm[rows, best]
            r_i = coef.view(-1, *([1] * (z.dim() - 1))) * w_best
            r_tot[active] = (z[active] + r_tot[active] + r_i).clamp(0, 1) - z[active]  # stay in the box
        steps = (z + scale * r_tot).clamp(0, 1) - z
        return steps, converged
