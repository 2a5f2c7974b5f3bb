"""Grid -> stage DAG, de-duplicated by artifact key.

The planner expands a `GridSpec` into cells (encoder x attack x defense x D_f x
D_d x eps x seed x scenario) and each cell into the chain of stages it needs, as
typed specs (`daebench.specs`). Stages are keyed by content, so a perturbation
crafted on an encoder appears once however many defenses and downstream datasets
use it, and a defended model once however many attacks and D_d evaluate it. Each
plugin's parameters are resolved once per grid (`PluginResolver`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from daebench.config import EncoderSpec, GridSpec, PluginSpec, format_eps
from daebench.data import dataset_fingerprint
from daebench.encoders.backbones import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from daebench.plugins import Configurable, Params
from daebench.specs import (CheckpointSpec, CraftSpec, DataSpec, DefendSpec, EvaluateSpec, FeaturesSpec, HeadSpec,
                            PretrainSpec, Ref, StageSpec)
from daebench.store import canonical_json

log = logging.getLogger("daebench")
NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass(frozen=True)
class Node:
    """One stage of the DAG: its typed spec and a label for people."""

    spec: StageSpec
    label: str
    key: str

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def refs(self) -> dict[str, Ref]:
        """role -> typed reference of each input artifact."""
        return self.spec.inputs()

    @property
    def inputs(self) -> dict[str, str]:
        """role -> key of each input artifact (as the artifact's metadata records it)."""
        return {role: ref.key for role, ref in self.refs.items()}

    @property
    def deps(self) -> list[str]:
        return list(self.inputs.values())


@dataclass
class Cell:
    """One row of the results table: its evaluation and the upstream artifacts whose
    timings the row reports (the crafted perturbation, the defended model, the victim)."""

    row: dict[str, Any]
    evaluate_key: str
    refs: dict[str, Ref] = field(default_factory=dict)


@dataclass
class Plan:
    nodes: dict[str, Node] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def add(self, spec: StageSpec, label: str) -> Ref:
        key = spec.key
        if key not in self.nodes:
            self.nodes[key] = Node(spec, label, key)
        return Ref(stage=spec.stage, key=key)

    def topological(self) -> list[Node]:
        """Nodes in dependency order (inputs always before their consumers)."""
        order, seen = [], set()

        def visit(key: str) -> None:
            if key in seen:
                return
            seen.add(key)
            for dep in self.nodes[key].deps:
                visit(dep)
            order.append(self.nodes[key])

        for key in self.nodes:
            visit(key)
        return order

    def descendants(self, key: str) -> set[str]:
        children: dict[str, list[str]] = {}
        for node in self.nodes.values():
            for dep in node.deps:
                children.setdefault(dep, []).append(node.key)
        out, stack = set(), [key]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return out


class PluginResolver:
    """Each plugin's parameters (its profile, then the grid's overrides), resolved once
    per grid. A plugin that has no profile of the grid's default name runs its `paper`
    profile: that is said once, naming the plugin, since a tiny grid then takes hours."""

    def __init__(self, grid_profile: str, bf16: bool = False) -> None:
        self.grid_profile = grid_profile
        self.bf16 = bf16  # the grid's resolved `precision`: the `amp` / `channels_last` a plugin's params leave open
        self._cache: dict[tuple[str, str], Params] = {}
        self.warnings: list[str] = []

    def __call__(self, kind: str, cls: type[Configurable], profile: str | None, overrides: dict[str, Any]) -> Params:
        memo = (kind, canonical_json([cls.registry_name, profile, overrides]))
        if memo not in self._cache:
            chosen = cls.profile_for(profile, self.grid_profile)
            if profile is None and chosen != self.grid_profile and not cls.profile_free:
                message = (f"{kind} '{cls.registry_name}' has no '{self.grid_profile}' profile (it has: "
                           f"{', '.join(cls.profile_names())}); it runs its 'paper' defaults, which may take far longer "
                           f"than the rest of this grid. Set `profile:` or `params:` for it in the grid to silence this.")
                if message not in self.warnings:
                    self.warnings.append(message)
                    log.warning(message)
            self._cache[memo] = cls.resolve_params(chosen, self._with_precision(cls, chosen, overrides))
        return self._cache[memo]


    def _with_precision(self, cls: type[Configurable], profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The precision switches the grid decides: only where the plugin has them and
        neither its profile nor the grid's params set them."""
        if not self.bf16:  # float32: the plugins' defaults (their switches off)
            return overrides
        decided = {**cls.profiles.get(profile, {}), **overrides}
        return {**{k: True for k in ("amp", "channels_last") if k in cls.Params.model_fields and k not in decided},
                **overrides}


def bf16_by_default(precision: str, device: str) -> bool:
    """`precision: auto` is bf16 + channels-last on CUDA, float32 elsewhere."""
    if precision != "auto":
        return precision == "bf16"
    if str(device) == "auto":
        import torch

        return torch.cuda.is_available()
    return str(device).startswith("cuda")  # any label: a calibration file's device is planned for too


@dataclass(frozen=True)
class DataContext:
    """What names a dataset for a plan: the grid's aliases (name -> source), image size and data root."""

    image_size: int = 32
    data_root: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, grid: GridSpec) -> "DataContext":
        return cls(grid.image_size, grid.data_root, dict(grid.datasets))

    def spec(self, name: str, split: str | None = None) -> DataSpec:
        """A dataset by content fingerprint (reads npz files to hash them)."""
        source = self.sources.get(name, name)
        return DataSpec(fingerprint=dataset_fingerprint(source, self.image_size, self.data_root),
                        image_size=self.image_size, source=source, split=split)


def encoder_spec(enc: EncoderSpec, seed: int, data: DataContext, resolve: "PluginResolver") -> StageSpec:
    """The stage that makes an encoder: `pretrain` (an SSL recipe) or `checkpoint`."""
    from daebench.encoders.backbones import default_conv1_padding

    mean, std = NORMALIZATION[enc.normalization]
    padding = enc.conv1_padding if enc.conv1_padding is not None else default_conv1_padding(enc.arch)
    arch = {"arch": enc.arch, "width": enc.width, "conv1_padding": padding, "mean": list(mean), "std": list(std)}
    if enc.checkpoint:
        from daebench.encoders.checkpoints import file_sha256

        path = str(Path(enc.checkpoint).expanduser().resolve())
        return CheckpointSpec(arch=arch, sha256=file_sha256(path), key_map=enc.key_map, path=path)
    from daebench.encoders.ssl import SSL_METHODS

    method = SSL_METHODS.get(enc.method)
    params = resolve("ssl method", method, enc.profile, enc.params)
    return PretrainSpec(method=enc.method, version=method.version, params=params.model_dump(), arch=arch, seed=seed,
                        data=data.spec(enc.dataset))


def standalone_encoder(method: str, dataset: str, profile: str = "tiny", width: int = 64, seed: int = 0,
                       params: dict[str, Any] | None = None, image_size: int = 32) -> tuple[EncoderSpec, StageSpec]:
    """One encoder planned outside a grid (`daebench encoders pretrain`): the same spec,
    and so the same cached artifact, as a grid naming the same recipe. `dataset` is a
    registry name or a source such as npz:path (named by its file's stem)."""
    from daebench.config import dataset_problem
    from daebench.errors import ConfigError

    name = Path(dataset.split(":", 1)[1]).stem if ":" in dataset else dataset
    if (problem := dataset_problem(name, dataset)) is not None:
        raise ConfigError(f"{problem}.")
    enc = EncoderSpec(method=method, dataset=name, width=width, params=params or {})
    sources = {name: dataset} if name != dataset else {}
    return enc, encoder_spec(enc, seed, DataContext(image_size, None, sources), PluginResolver(profile))


class _Planner:
    def __init__(self, grid: GridSpec) -> None:
        self.grid = grid
        self.plan = Plan()
        bf16 = bf16_by_default(grid.precision, grid.device)
        self.resolve = PluginResolver(grid.profile, bf16)
        self.precision = "bf16" if bf16 else None  # crafts and features (None: float32, the keys they always had)
        self.data = DataContext.of(grid)

    def encoder(self, enc: EncoderSpec, seed: int) -> Ref:
        spec = encoder_spec(enc, seed, self.data, self.resolve)
        return self.plan.add(spec, f"{spec.stage} {enc.name}")

    def params(self, kind: str, plugin: PluginSpec) -> tuple[type[Configurable], Params]:
        from daebench.attacks import ATTACKS
        from daebench.defenses import DEFENSES

        cls = (ATTACKS if kind == "attack" else DEFENSES).get(plugin.name)
        return cls, self.resolve(kind, cls, plugin.profile, plugin.params)

    def craft(self, attack: PluginSpec, surrogates: list[Ref], scenario: str, eps: float, seed: int, downstream: str) -> Ref:
        cls, params = self.params("attack", attack)
        # Universal perturbations are crafted on the attacker's data and serve every
        # D_d; per-sample attacks perturb the D_d test images themselves.
        target = self.grid.attacker_data if cls.universal else downstream
        ensemble = None
        if len(surrogates) > 1:  # white-box: how the per-encoder losses combine (single-surrogate keys unchanged)
            from daebench.attacks.base import ENSEMBLE_VERSION

            ensemble = ENSEMBLE_VERSION
        # The scenario only decides which surrogates the attacker has; it is not in
        # the spec, so two scenarios with the same surrogates share one artifact.
        spec = CraftSpec(attack=attack.name, version=cls.version, params=params.model_dump(), eps=eps, seed=seed,
                         data=self.data.spec(target), ensemble=ensemble, precision=self.precision,
                         surrogates=tuple(surrogates))
        return self.plan.add(spec, f"craft {attack.display} ({scenario}) eps={format_eps(eps)} on {target}")

    def auxiliaries(self, defense: PluginSpec, victim: EncoderSpec, d_f: str, seed: int) -> tuple[list[Ref], list[Ref]]:
        """The extra encoders a defense uses, all of them and the public ones."""
        cls, params = self.params("defense", defense)
        extra = cls.auxiliary_encoders(params, victim, d_f, self.grid.profile, datasets=self.grid.dataset_names())
        refs = [self.encoder(aux.spec, seed + aux.seed_offset) for aux in extra]
        return refs, [r for r, aux in zip(refs, extra) if aux.public]

    def defend(self, defense: PluginSpec, victim: Ref, aux: list[Ref], d_f: str, seed: int) -> Ref:
        cls, params = self.params("defense", defense)
        extra = cls.extra_datasets(params)  # only when asked for: other defenses keep their keys
        spec = DefendSpec(defense=defense.name, version=cls.version, params=params.model_dump(), seed=seed,
                          data=self.data.spec(d_f),
                          extra_data={name: self.data.spec(name) for name in extra} if extra else None,
                          victim=victim, aux=tuple(aux))
        return self.plan.add(spec, f"defend {defense.display} D_f={d_f}")

    def params_json(self, kind: str, plugin: PluginSpec) -> str:
        """A plugin's resolved parameters (profile + overrides) as canonical JSON, for the results table."""
        return canonical_json(self.params(kind, plugin)[1].model_dump())

    def surrogates(self, scenario: str, victim: Ref, aux: list[Ref], seed: int) -> list[Ref]:
        if scenario == "semi_black_box":
            return [victim]
        if scenario == "white_box":
            return [victim, *aux]
        named = {e.name: e for e in self.grid.encoders + self.grid.surrogates}
        return [self.encoder(named[self.grid.transfer_from], seed)]

    def features(self, model: Ref, d_d: str, split: str, perturbation: Ref | None = None) -> Ref:
        spec = FeaturesSpec(data=self.data.spec(d_d, split), clamp=self.grid.clamp if perturbation else None,
                            precision=self.precision, model=model, perturbation=perturbation)
        return self.plan.add(spec, f"features {d_d}/{split}{' adv' if perturbation else ''}")

    def build(self) -> Plan:
        g = self.grid
        for enc, seed in product(g.encoders, g.seeds):
            victim = self.encoder(enc, seed)
            for defense, d_f in product(g.defenses, g.fine_tune_data):
                downstream = [d for f, d in g.data_pairs() if f == d_f]
                if not downstream:  # `pairing` leaves this D_f no D_d: nothing to defend for
                    continue
                aux, public_aux = self.auxiliaries(defense, enc, d_f, seed)
                model = self.defend(defense, victim, aux, d_f, seed)
                for d_d in downstream:
                    train = self.features(model, d_d, "train")
                    head_params = g.heads_for(d_d).model_dump()
                    head = self.plan.add(HeadSpec(params=head_params, seed=seed, features=train),
                                         f"head {defense.display} {d_d}")
                    clean = self.features(model, d_d, "test")
                    for scenario, attack, eps in product(g.scenarios, g.attacks, g.eps):
                        craft = self.craft(attack, self.surrogates(scenario, victim, public_aux, seed), scenario, eps, seed, d_d)
                        adv = self.features(model, d_d, "test", craft)
                        evaluate = self.plan.add(
                            EvaluateSpec(defense=defense.name, clamp=g.clamp, head_params=head_params,
                                         head=head, clean=clean, adv=adv),
                            f"evaluate {enc.name} {defense.display} {attack.display} {d_d} {scenario}")
                        row = {"encoder": enc.name, "method": enc.method or enc.trained_with or "checkpoint",
                               "D_p": enc.dataset or enc.trained_on or "",
                               "defense": defense.display, "D_f": d_f, "D_d": d_d, "attack": attack.display,
                               "scenario": scenario, "surrogate": g.transfer_from if scenario == "transfer" else enc.name,
                               "eps": eps, "seed": seed, "clamp": g.clamp,
                               # the registry names and resolved parameters, so reports can sweep a parameter
                               "defense_name": defense.name, "defense_params": self.params_json("defense", defense),
                               "attack_name": attack.name, "attack_params": self.params_json("attack", attack)}
                        self.plan.cells.append(Cell(row, evaluate.key, {"craft": craft, "defend": model, "victim": victim}))
        return self.plan


def plan_grid(grid: GridSpec) -> Plan:
    return _Planner(grid).build()


def grid_hash(grid: GridSpec) -> str:
    import hashlib

    dump = grid.model_dump(mode="json")
    for name, default in (("pairing", "all"), ("precision", "auto")):
        if dump.get(name) == default:  # a default leaves the hash of grids written before the field unchanged
            del dump[name]
    for encoder in dump.get("encoders", []) + dump.get("surrogates", []):
        for name in ("trained_with", "trained_on"):  # the same for a checkpoint's labels
            if encoder.get(name) is None:
                encoder.pop(name, None)
    return hashlib.sha256(canonical_json(dump).encode()).hexdigest()[:12]
