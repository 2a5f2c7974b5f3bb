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

White-box (several surrogates, a `SurrogateEnsemble`): a subclass still writes its
loss for ONE encoder; the base's helpers (`summed`, `universal_sign_ascent`,
`pgd_per_sample`, `surrogate_classifier`) sum it over the encoders. Why a sum and not
a loss on concatenated features: only a squared error on the concatenation splits into
per-encoder terms, and even then weighted by the feature widths; InfoNCE, cosines and
a classifier head do not split at all. See docs/FIDELITY.md#attack-shared-machinery.

Options that reproduce a reference exactly but were added after artifacts existed
are named in their Params' `omitted_when` (benchmark/plugins.py): left out of the
params dump, and so of every artifact key, while they hold their default.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch
from pydantic import Field
from tqdm.auto import tqdm

from daebench.data import to_float
from daebench.plugins import Configurable, Params, required
from daebench.registry import Registry
from daebench.runtime import batches, seed_everything
from daebench.training import pgd

ATTACKS: Registry = Registry(
    "attack", entry_point_group="daebench.attacks",
    builtin_package="daebench.attacks",  # every module in attacks/ is a plugin file
)
register_attack = ATTACKS.register


#: In the craft spec of every white-box craft (more than one surrogate; benchmark/plan.py).
#: 2: the per-encoder losses are summed (1, unkeyed: one loss on the concatenated features).
ENSEMBLE_VERSION = 2


class SurrogateEnsemble(torch.nn.Module):
    """Several surrogate encoders, for the white-box scenario (the attacker knows every
    public encoder the defense uses). Attacks sum their per-encoder losses over
    `Attack.members(ensemble)`; `forward` (features side by side) is kept for plugins
    that want one joint feature vector."""

    def __init__(self, encoders: list[torch.nn.Module]) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleList(encoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([e(x) for e in self.encoders], dim=1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        per = [e.forward_features(x) for e in self.encoders]
        return {k: torch.cat([p[k] for p in per], dim=1) for k in per[0] if all(k in p for p in per)}


class SurrogateClassifier(torch.nn.Module):
    """The attacker's classifier: each surrogate encoder followed by its own head.

    `forward` sums the members' logits (one surrogate: its logits, unchanged), which
    is the classifier UAP's DeepFool and every fooling test use; `member_logits`
    gives them one by one, for losses summed per encoder (UAPGD's cross-entropy)."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum_terms(self.member_logits(x))


def sum_terms(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of same-shaped tensors; one term is returned as it is (bit for bit)."""
    return terms[0] if len(terms) == 1 else torch.stack(list(terms)).sum(0)


def member_logits(classifier: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-encoder logits of a `SurrogateClassifier`; any other classifier is one member."""
    return classifier.member_logits(x) if isinstance(classifier, SurrogateClassifier) else [classifier(x)]


class Crafted(NamedTuple):
    """What an attack produces: the perturbation within budget, and its diagnostics."""

    delta: torch.Tensor
    report: dict[str, Any]


class AttackParams(Params):
    batch_size: int = Field(256, ge=1)


class UniversalParams(AttackParams):
    """For universal attacks, whose reference codes add delta to the images unclamped while crafting."""

    omitted_when: ClassVar[dict[str, Any]] = {"clamp_craft": True}  # the key it had before the option
    clamp_craft: bool = Field(
        True, description="clamp x + delta to [0, 1] in every crafting forward pass "
                          "(false: unclamped, as the reference codes)")


class SurrogateClassifierParams(UniversalParams):
    """For attacks built on a surrogate classifier (the attacker's own head); all universal."""

    head_epochs: int = Field(20, ge=1, description="epochs of the surrogate classifier's head")


class Attack(Configurable):
    """Subclass: set `universal`, `Params`, `profiles`; implement `loss` or `perturb`."""

    Params: ClassVar[type[AttackParams]] = AttackParams
    universal: ClassVar[bool] = True
    #: a control (it learns nothing about the encoder): reports show it apart, never averaged in
    control: ClassVar[bool] = False

    def __init__(self, params: AttackParams, eps: float, seed: int = 0, device: torch.device | str = "cpu",
                 progress: bool = False) -> None:
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {eps}")
        self.params = params
        self.eps = float(eps)
        self.seed = seed
        self.device = torch.device(device)
        self.progress = progress

    @classmethod
    def craft_split(cls) -> str:
        """The split of its dataset an attack crafts on: a universal attack learns one delta
        from the attacker's labelled training split; a per-sample attack perturbs each
        downstream test image. The craft stage and the cost estimate both read it."""
        return "train" if cls.universal else "test"

    # -- what a subclass writes ------------------------------------------------
    def loss(self, surrogate: torch.nn.Module, x_adv: torch.Tensor, x: torch.Tensor, clean_features: torch.Tensor) -> torch.Tensor:
        """Per-sample objective to *maximise* for ONE surrogate encoder, shape (N,).

        The base sums it over the encoders of a white-box ensemble."""
        raise NotImplementedError

    @required
    def perturb(self, surrogate: torch.nn.Module, x: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Return delta: (1,3,H,W) if universal, else (N,3,H,W), x being float in [0, 1];
        or (delta, report), the report holding diagnostics to record with the artifact."""
        raise NotImplementedError

    # -- what the base does ------------------------------------------------------
    def craft(self, surrogate: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> Crafted:
        """Freeze the surrogate, seed, run `perturb`, and check the budget exactly; returns
        the perturbation and the attack's report.

        `y` (the attacker's labels) is kept for attacks that need a surrogate
        classifier (`self.labels()`); downstream-agnostic attacks ignore it.
        """
        generator = seed_everything(self.seed)
        self._labels = y
        surrogate = surrogate.to(self.device).eval()
        was = [p.requires_grad for p in surrogate.parameters()]
        for p in surrogate.parameters():
            p.requires_grad_(False)
        try:
            # the images go to the device once (as uint8, a quarter of float32): batches index them there
            x = x.to(self.device)
            x = to_float(x) if x.dtype == torch.uint8 else x.float()
            out = self.perturb(surrogate, x, generator)
            delta, report = out if isinstance(out, tuple) else (out, {})
            delta = delta.detach().float().cpu()
        finally:
            for p, r in zip(surrogate.parameters(), was):
                p.requires_grad_(r)
        delta = self.project(delta)
        expected = (1, *x.shape[1:]) if self.universal else tuple(x.shape)
        if tuple(delta.shape) != expected:
            raise RuntimeError(f"{type(self).__name__}.perturb returned shape {tuple(delta.shape)}, expected {expected}")
        return Crafted(delta, report)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    @staticmethod
    def apply(delta: torch.Tensor, x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """x_adv = x + delta (broadcast for universal deltas), clamped to [0,1] by default."""
        x = to_float(x) if x.dtype == torch.uint8 else x
        x_adv = x + delta.to(x.device)
        return x_adv.clamp(0, 1) if clamp else x_adv

    def features(self, surrogate: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return surrogate(x)

    # -- helpers for subclasses ----------------------------------------------------
    @staticmethod
    def members(surrogate: torch.nn.Module) -> list[torch.nn.Module]:
        """The surrogate encoders: an ensemble's members, or the one surrogate."""
        return list(surrogate.encoders) if isinstance(surrogate, SurrogateEnsemble) else [surrogate]

    def summed(self, surrogate: torch.nn.Module, loss_of: Callable[[torch.nn.Module], torch.Tensor]) -> torch.Tensor:
        """sum over the surrogate encoders of loss_of(encoder): the white-box objective."""
        return sum_terms([loss_of(encoder) for encoder in self.members(surrogate)])

    def craft_input(self, x_adv: torch.Tensor) -> torch.Tensor:
        """What a surrogate sees while crafting: x + delta clamped to [0, 1], unless `clamp_craft` is off."""
        return x_adv.clamp(0, 1) if getattr(self.params, "clamp_craft", True) else x_adv

    def labels(self) -> torch.Tensor:
        """The attacker's labels, for attacks built on a surrogate classifier."""
        if getattr(self, "_labels", None) is None:
            raise ValueError(f"{type(self).__name__} needs the attacker's labels: call craft(surrogate, x, y)")
        return self._labels

    def surrogate_classifier(self, surrogate: torch.nn.Module, x: torch.Tensor) -> SurrogateClassifier:
        """Each surrogate encoder + a head trained on the attacker's labelled data (the reference head).

        UAP-style attacks need class decisions; the attacker, who has labelled data
        but no downstream model, trains one head per public encoder on its features.
        """
        heads = [torch.nn.Sequential(encoder, self._train_head(encoder, x)) for encoder in self.members(surrogate)]
        return SurrogateClassifier(heads).eval()

    def _train_head(self, encoder: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
        from daebench.heads import HeadParams, train_head

        with torch.no_grad():
            feats = torch.cat([encoder(x[i:i + 512].to(self.device)).cpu() for i in range(0, len(x), 512)])
        y = self.labels()
        epochs = getattr(self.params, "head_epochs", SurrogateClassifierParams.model_fields["head_epochs"].default)
        head = train_head(feats, y, int(y.max()) + 1, HeadParams(epochs=epochs), seed=self.seed, device=self.device)
        for p in head.parameters():
            p.requires_grad_(False)
        return head

    def universal_sign_ascent(
        self, surrogate: torch.nn.Module,
        objective: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
        generator: torch.Generator, epochs: int, step_size: float, random_init: bool = True,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, max_iterations: int | None = None,
    ) -> torch.Tensor:
        """One delta: for each batch, delta <- clip(delta + step * sign(grad sum_e objective(e, batch, delta))).

        `objective(encoder, batch, delta)` is the scalar to maximise for ONE surrogate
        encoder (summed here over the white-box ensemble); `prepare(x_batch)` makes the
        batch it sees (PAP prepends noise images), once per step, shared by every encoder.
        The batch is on the device, delta has shape (1, 3, H, W). `max_iterations` stops
        after that many steps (the reference codes save delta at a step count).
        """
        shape = (1, *x.shape[1:])
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * self.eps if random_init else torch.zeros(shape)
        delta = delta.to(self.device)
        done = 0
        for _ in self.progress_bar(range(epochs), "epochs"):
            for idx in batches(len(x), self.params.batch_size, generator):
                if max_iterations is not None and done >= max_iterations:
                    return delta.detach()
                xb = x[idx].to(self.device)
                batch = prepare(xb) if prepare is not None else xb
                delta.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.summed(surrogate, lambda e: objective(e, batch, delta)), delta)
                with torch.no_grad():
                    delta = (delta + step_size * grad.sign()).clamp(-self.eps, self.eps)
                done += 1
        return delta.detach()

    def start_delta(self, xb: torch.Tensor, generator: torch.Generator, random_start: bool) -> torch.Tensor:
        """A per-sample attack's start: uniform in [-eps, eps] (seeded) or zero."""
        if random_start:
            return (torch.rand(xb.shape, generator=generator) * 2 - 1).mul_(self.eps).to(self.device)
        return torch.zeros_like(xb)

    def pgd_per_sample(
        self, surrogate: torch.nn.Module, x: torch.Tensor, generator: torch.Generator,
        steps: int, step_size: float, random_start: bool = True,
    ) -> torch.Tensor:
        """Sign-gradient ascent on `loss` (summed over the surrogates) per image, in batches,
        with the toolkit's `pgd` (x_adv kept in the eps ball and in [0, 1] after every step).

        The start is projected into [0, 1] and the eps ball before the first gradient
        unless `project_start` is off (the reference takes its first gradient at the raw start).
        """
        out = torch.empty(x.shape, dtype=x.dtype)  # on the host: the artifact is stored from there
        members = self.members(surrogate)
        project_start = getattr(self.params, "project_start", True)
        for idx in self.progress_bar(list(batches(len(x), self.params.batch_size)), "batches"):
            xb = x[idx].to(self.device)
            clean = [self.features(m, xb) for m in members]
            start = xb + self.start_delta(xb, generator, random_start)
            if project_start:
                start = torch.min(torch.max(start.clamp(0, 1), xb - self.eps), xb + self.eps)
            x_adv = pgd(lambda z: sum_terms([self.loss(m, z, xb, c).sum() for m, c in zip(members, clean)]), xb,
                        self.eps, step_size, steps, start=start, clamp_start=False).x_adv
            out[idx] = (x_adv - xb).cpu()
        return out

    def progress_bar(self, items, unit: str):
        name = getattr(self, "registry_name", type(self).__name__)
        return tqdm(items, desc=f"craft:{name}", unit=unit, leave=False, disable=not self.progress)


class PerSamplePGDParams(AttackParams):
    omitted_when: ClassVar[dict[str, Any]] = {"project_start": True}  # the key it had before the option
    steps: int = Field(20, ge=1)
    step_size: float = Field(2 / 255, gt=0)
    random_start: bool = True
    project_start: bool = Field(
        True, description="project the random start into [0, 1] and the eps ball before the first gradient "
                          "(false: the first gradient is taken at the raw start, as ssl-robustness and NRP do)")


class PerSamplePGDAttack(Attack):
    """Per-image sign-gradient PGD on `loss`: a subclass writes only its loss
    (and, for a non-embedding target, `features`, the clean reference)."""

    Params: ClassVar[type[PerSamplePGDParams]] = PerSamplePGDParams
    universal: ClassVar[bool] = False

    @required
    def loss(self, surrogate: torch.nn.Module, x_adv: torch.Tensor, x: torch.Tensor,
             clean_features: torch.Tensor) -> torch.Tensor:
        """Per-sample objective to *maximise* for ONE surrogate encoder, shape (N,)."""
        raise NotImplementedError

    def perturb(self, surrogate: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        return self.pgd_per_sample(surrogate, x, generator, p.steps, p.step_size, p.random_start)
