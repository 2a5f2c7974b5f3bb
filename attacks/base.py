"""The `Attack` base: a subclass writes its loss (and maybe its update rule).

An attack crafts a perturbation from a *surrogate* encoder and images, never from
a downstream head: downstream-agnostic. Two shapes of artifact:

* universal (`universal = True`): one delta of shape (1, 3, H, W), crafted on the
  attacker's data, added to every test image of every downstream dataset;
* per-sample (`universal = False`): one delta per image of the target set.

The base owns what every attack needs and nobody should re-write: freezing the
surrogate and putting it in eval mode, seeding, batching, the L-inf projection,
the [0, 1] clamp, and a final check that ||delta||_inf <= eps holds exactly.
Feature-space losses are first-class: `loss` receives the surrogate's features
of the clean images alongside the adversarial ones.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from pydantic import Field
from tqdm.auto import tqdm

from benchmark.plugins import Configurable, Params
from benchmark.registry import Registry
from benchmark.runtime import batches, seed_everything

ATTACKS: Registry = Registry(
    "attack", entry_point_group="daebench.attacks",
    builtin_package="attacks",  # every module in attacks/ is a plugin file
)
register_attack = ATTACKS.register


class SurrogateEnsemble(torch.nn.Module):
    """Several surrogate encoders as one: features (and layer activations) concatenated.

    For the white-box scenario (the attacker knows every public encoder the defense
    uses): a squared-error loss on the concatenation is the sum of the per-encoder
    losses, so attacks need no special case.
    """

    def __init__(self, encoders: list[torch.nn.Module]) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleList(encoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e(x) for e in self.encoders], dim=1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        per = [e.forward_features(x) for e in self.encoders]
        return {k: torch.cat([p[k] for p in per], dim=1) for k in per[0] if all(k in p for p in per)}


class AttackParams(Params):
    batch_size: int = Field(256, ge=1)


class SurrogateClassifierParams(AttackParams):
    """For attacks built on a surrogate classifier (the attacker's own head)."""

    head_epochs: int = Field(20, ge=1, description="epochs of the surrogate classifier's head")


class Attack(Configurable):
    """Subclass: set `universal`, `Params`, `profiles`; implement `loss` or `perturb`."""

    Params: ClassVar[type[AttackParams]] = AttackParams
    universal: ClassVar[bool] = True

    def __init__(self, params: AttackParams, eps: float, seed: int = 0, device: torch.device | str = "cpu",
                 progress: bool = False) -> None:
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {eps}")
        self.params = params
        self.eps = float(eps)
        self.seed = seed
        self.device = torch.device(device)
        self.progress = progress

    # -- what a subclass writes ------------------------------------------------
    def loss(self, surrogate: torch.nn.Module, x_adv: torch.Tensor, x: torch.Tensor, clean_features: torch.Tensor) -> torch.Tensor:
        """Per-sample objective to *maximise*, shape (N,)."""
        raise NotImplementedError

    def perturb(self, surrogate: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return delta: (1,3,H,W) if universal, else (N,3,H,W). x is float in [0, 1]."""
        raise NotImplementedError

    # -- what the base does ------------------------------------------------------
    def craft(self, surrogate: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Freeze the surrogate, seed, run `perturb`, and check the budget exactly.

        `y` (the attacker's labels) is kept for attacks that need a surrogate
        classifier (`self.labels()`); downstream-agnostic attacks ignore it.
        """
        generator = seed_everything(self.seed)
        self._labels = y
        self.report: dict[str, Any] = {}  # diagnostics a subclass wants recorded with the artifact
        surrogate = surrogate.to(self.device).eval()
        was = [p.requires_grad for p in surrogate.parameters()]
        for p in surrogate.parameters():
            p.requires_grad_(False)
        try:
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
            delta = self.perturb(surrogate, x, generator).detach().float().cpu()
        finally:
            for p, r in zip(surrogate.parameters(), was):
                p.requires_grad_(r)
        delta = self.project(delta)
        expected = (1, *x.shape[1:]) if self.universal else tuple(x.shape)
        if tuple(delta.shape) != expected:
            raise RuntimeError(f"{type(self).__name__}.perturb returned shape {tuple(delta.shape)}, expected {expected}")
        return delta

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    @staticmethod
    def apply(delta: torch.Tensor, x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """x_adv = x + delta (broadcast for universal deltas), clamped to [0,1] by default."""
        x = x.float().div(255) if x.dtype == torch.uint8 else x
        x_adv = x + delta.to(x.device)
        return x_adv.clamp(0, 1) if clamp else x_adv

    def features(self, surrogate: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return surrogate(x)

    # -- helpers for subclasses ----------------------------------------------------
    def labels(self) -> torch.Tensor:
        """The attacker's labels, for attacks built on a surrogate classifier."""
        if getattr(self, "_labels", None) is None:
            raise ValueError(f"{type(self).__name__} needs the attacker's labels: call craft(surrogate, x, y)")
        return self._labels

    def surrogate_classifier(self, surrogate: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
        """surrogate + a head trained on the attacker's labelled data (the reference head).

        UAP-style attacks need class decisions; the attacker, who has labelled data
        but no downstream model, trains one on the public encoder's features.
        """
        from benchmark.heads import HeadParams, train_head

        with torch.no_grad():
            feats = torch.cat([surrogate(x[i:i + 512].to(self.device)).cpu() for i in range(0, len(x), 512)])
        y = self.labels()
        epochs = getattr(self.params, "head_epochs", SurrogateClassifierParams.model_fields["head_epochs"].default)
        head = train_head(feats, y, int(y.max()) + 1, HeadParams(epochs=epochs), seed=self.seed, device=self.device)
        for p in head.parameters():
            p.requires_grad_(False)
        return torch.nn.Sequential(surrogate, head).eval()

    def universal_sign_ascent(
        self, objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
        generator: torch.Generator, epochs: int, step_size: float, random_init: bool = True,
    ) -> torch.Tensor:
        """One delta: for each batch, delta <- clip(delta + step * sign(grad objective(xb, delta))).

        `objective(x_batch, delta)` returns a scalar to maximise; the batch is on the
        device, delta has shape (1, 3, H, W).
        """
        shape = (1, *x.shape[1:])
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * self.eps if random_init else torch.zeros(shape)
        delta = delta.to(self.device)
        for _ in self.progress_bar(range(epochs), "epochs"):
            for idx in batches(len(x), self.params.batch_size, generator):
                delta.requires_grad_(True)
                (grad,) = torch.autograd.grad(objective(x[idx].to(self.device), delta), delta)
                with torch.no_grad():
                    delta = (delta + step_size * grad.sign()).clamp(-self.eps, self.eps)
        return delta.detach()

    def pgd_per_sample(
        self, surrogate: torch.nn.Module, x: torch.Tensor, generator: torch.Generator,
        steps: int, step_size: float, random_start: bool = True,
    ) -> torch.Tensor:
        """Sign-gradient ascent on `loss` per image, in batches; x_adv kept in [0,1]."""
        out = torch.empty_like(x)
        for idx in self.progress_bar(list(batches(len(x), self.params.batch_size)), "batches"):
            xb = x[idx].to(self.device)
            clean = self.features(surrogate, xb)
            if random_start:
                delta = (torch.rand(xb.shape, generator=generator) * 2 - 1).mul_(self.eps).to(self.device)
            else:
                delta = torch.zeros_like(xb)
            delta = ((xb + delta).clamp(0, 1) - xb).clamp(-self.eps, self.eps)
            for _ in range(steps):
                delta.requires_grad_(True)
                objective = self.loss(surrogate, xb + delta, xb, clean).sum()
                (grad,) = torch.autograd.grad(objective, delta)
                with torch.no_grad():
                    delta = delta + step_size * grad.sign()
                    delta = ((xb + delta).clamp(0, 1) - xb).clamp(-self.eps, self.eps)
            out[idx] = delta.detach().cpu()
        return out

    def progress_bar(self, items, unit: str):
        name = getattr(self, "registry_name", type(self).__name__)
        return tqdm(items, desc=f"craft:{name}", unit=unit, leave=False, disable=not self.progress)


class PerSamplePGDParams(AttackParams):
    steps: int = Field(20, ge=1)
    step_size: float = Field(2 / 255, gt=0)
    random_start: bool = True


class PerSamplePGDAttack(Attack):
    """Per-image sign-gradient PGD on `loss`: a subclass writes only its loss
    (and, for a non-embedding target, `features`, the clean reference)."""

    Params: ClassVar[type[PerSamplePGDParams]] = PerSamplePGDParams
    universal: ClassVar[bool] = False

    def perturb(self, surrogate: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        return self.pgd_per_sample(surrogate, x, generator, p.steps, p.step_size, p.random_start)
