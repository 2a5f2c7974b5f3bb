"""Grid -> stage DAG, de-duplicated by artifact key.

The planner expands a `GridSpec` into cells (encoder x attack x defense x D_f x
D_d x eps x seed x scenario) and each cell into the chain of stages it needs.
Stages are keyed by content, so a perturbation crafted on an encoder appears once
however many defenses and downstream datasets use it, and a defended model once
however many attacks and D_d evaluate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from daebench.config import EncoderSpec, GridSpec, PluginSpec
from daebench.data import dataset_fingerprint
from daebench.encoders.backbones import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from daebench.stages import STAGE_VERSIONS
from daebench.store import artifact_key, canonical_json

NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass(frozen=True)
class Node:
    stage: str
    spec: dict[str, Any]
    inputs: dict[str, str]  # role -> key of the input artifact
    label: str
    key: str

    @property
    def deps(self) -> list[str]:
        return list(self.inputs.values())


@dataclass
class Cell:
    """One row of the results table and the key of its `evaluate` artifact."""

    row: dict[str, Any]
    evaluate_key: str


@dataclass
class Plan:
    nodes: dict[str, Node] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)

    def add(self, stage: str, spec: dict[str, Any], inputs: dict[str, str], label: str) -> str:
        hashed = {k: v for k, v in spec.items() if not k.startswith("_")}
        key = artifact_key(stage, hashed, inputs, STAGE_VERSIONS[stage])
        if key not in self.nodes:
            self.nodes[key] = Node(stage, spec, dict(inputs), label, key)
        return key

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


class _Planner:
    def __init__(self, grid: GridSpec) -> None:
        self.grid = grid
        self.plan = Plan()

    def data(self, name: str, split: str | None = None) -> dict[str, Any]:
        source = self.grid.dataset_source(name)
        spec = {"fingerprint": dataset_fingerprint(source, self.grid.image_size, self.grid.data_root),
                "image_size": self.grid.image_size, "_source": source}
        return spec if split is None else {**spec, "split": split}

    def encoder(self, enc: EncoderSpec, seed: int) -> str:
        mean, std = NORMALIZATION[enc.normalization]
        from daebench.encoders.backbones import default_conv1_padding

        padding = enc.conv1_padding if enc.conv1_padding is not None else default_conv1_padding(enc.arch)
        arch = {"arch": enc.arch, "width": enc.width, "conv1_padding": padding,
                "mean": list(mean), "std": list(std)}
        if enc.checkpoint:
            from daebench.encoders.checkpoints import file_sha256

            path = str(Path(enc.checkpoint).expanduser().resolve())
            spec = {"arch": arch, "sha256": file_sha256(path), "key_map": enc.key_map, "_path": path}
            return self.plan.add("checkpoint", spec, {}, f"checkpoint {enc.name}")
        from daebench.encoders.ssl import SSL_METHODS

        method = SSL_METHODS.get(enc.method)
        params = method.resolve_params(method.profile_for(enc.profile, self.grid.profile), enc.params)
        spec = {"method": enc.method, "version": method.version, "params": params.model_dump(), "arch": arch, "seed": seed,
                "data": self.data(enc.dataset)}
        return self.plan.add("pretrain", spec, {}, f"pretrain {enc.name}")

    def craft(self, attack: PluginSpec, surrogates: list[str], scenario: str, eps: float, seed: int, downstream: str) -> str:
        from daebench.attacks import ATTACKS

        cls = ATTACKS.get(attack.name)
        params = cls.resolve_params(cls.profile_for(attack.profile, self.grid.profile), attack.params)
        # Universal perturbations are crafted on the attacker's data and serve every
        # D_d; per-sample attacks perturb the D_d test images themselves.
        target = self.grid.attacker_data if cls.universal else downstream
        spec = {"attack": attack.name, "version": cls.version, "params": params.model_dump(), "eps": eps, "seed": seed,
                "data": self.data(target)}
        if len(surrogates) > 1:  # white-box: how the per-encoder losses combine (single-surrogate keys unchanged)
            from daebench.attacks.base import ENSEMBLE_VERSION

            spec["ensemble"] = ENSEMBLE_VERSION
        # The scenario only decides which surrogates the attacker has; it is not in
        # the spec, so two scenarios with the same surrogates share one artifact.
        inputs = {("surrogate" if i == 0 else f"surrogate{i}"): key for i, key in enumerate(surrogates)}
        return self.plan.add("craft", spec, inputs, f"craft {attack.display} ({scenario}) eps={eps:.4f} on {target}")

    def auxiliaries(self, defense: PluginSpec, victim: EncoderSpec, d_f: str, seed: int) -> tuple[list[str], list[str]]:
        """Keys of the extra encoders a defense uses, all of them and the public ones."""
        from daebench.defenses import DEFENSES

        cls = DEFENSES.get(defense.name)
        params = cls.resolve_params(cls.profile_for(defense.profile, self.grid.profile), defense.params)
        extra = cls.auxiliary_encoders(params, victim, d_f, self.grid.profile, datasets=self.grid.dataset_names())
        keys = [self.encoder(aux.spec, seed + aux.seed_offset) for aux in extra]
        return keys, [k for k, aux in zip(keys, extra) if aux.public]

    def defend(self, defense: PluginSpec, victim: str, aux: list[str], d_f: str, seed: int) -> str:
        from daebench.defenses import DEFENSES

        cls = DEFENSES.get(defense.name)
        params = cls.resolve_params(cls.profile_for(defense.profile, self.grid.profile), defense.params)
        spec = {"defense": defense.name, "version": cls.version, "params": params.model_dump(), "seed": seed, "data": self.data(d_f)}
        if extra := cls.extra_datasets(params):  # only when asked for: other defenses keep their keys
            spec["extra_data"] = {name: self.data(name) for name in extra}
        inputs = {"victim": victim} | {f"aux{i}": key for i, key in enumerate(aux)}
        return self.plan.add("defend", spec, inputs, f"defend {defense.display} D_f={d_f}")

    def params_json(self, kind: str, plugin: PluginSpec) -> str:
        """A plugin's resolved parameters (profile + overrides) as canonical JSON, for the results table."""
        from daebench.attacks import ATTACKS
        from daebench.defenses import DEFENSES

        cls = (ATTACKS if kind == "attack" else DEFENSES).get(plugin.name)
        return canonical_json(cls.resolve_params(cls.profile_for(plugin.profile, self.grid.profile), plugin.params).model_dump())

    def surrogates(self, scenario: str, victim: str, aux: list[str], seed: int) -> list[str]:
        if scenario == "semi_black_box":
            return [victim]
        if scenario == "white_box":
            return [victim, *aux]
        named = {e.name: e for e in self.grid.encoders + self.grid.surrogates}
        return [self.encoder(named[self.grid.transfer_from], seed)]

    def features(self, model: str, d_d: str, split: str, perturbation: str | None = None) -> str:
        inputs = {"model": model} | ({"perturbation": perturbation} if perturbation else {})
        spec = {"data": self.data(d_d, split)} | ({"clamp": self.grid.clamp} if perturbation else {})
        return self.plan.add("features", spec, inputs, f"features {d_d}/{split}{' adv' if perturbation else ''}")

    def build(self) -> Plan:
        g = self.grid
        for enc, seed in product(g.encoders, g.seeds):
            victim = self.encoder(enc, seed)
            for defense, d_f in product(g.defenses, g.fine_tune_data):
                aux, public_aux = self.auxiliaries(defense, enc, d_f, seed)
                model = self.defend(defense, victim, aux, d_f, seed)
                for d_d in g.downstream:
                    train = self.features(model, d_d, "train")
                    head_params = g.heads_for(d_d).model_dump()
                    head = self.plan.add("head", {"params": head_params, "seed": seed},
                                         {"features": train}, f"head {defense.display} {d_d}")
                    clean = self.features(model, d_d, "test")
                    for scenario, attack, eps in product(g.scenarios, g.attacks, g.eps):
                        craft = self.craft(attack, self.surrogates(scenario, victim, public_aux, seed), scenario, eps, seed, d_d)
                        adv = self.features(model, d_d, "test", craft)
                        spec = {"defense": defense.name, "clamp": g.clamp, "head_params": head_params}
                        key = self.plan.add("evaluate", spec, {"head": head, "clean": clean, "adv": adv},
                                            f"evaluate {enc.name} {defense.display} {attack.display} {d_d} {scenario}")
                        row = {"encoder": enc.name, "method": enc.method or "checkpoint", "D_p": enc.dataset or "",
                               "defense": defense.display, "D_f": d_f, "D_d": d_d, "attack": attack.display,
                               "scenario": scenario, "surrogate": g.transfer_from if scenario == "transfer" else enc.name,
                               "eps": eps, "seed": seed, "clamp": g.clamp,
                               # the registry names and resolved parameters, so reports can sweep a parameter
                               "defense_name": defense.name, "defense_params": self.params_json("defense", defense),
                               "attack_name": attack.name, "attack_params": self.params_json("attack", attack)}
                        self.plan.cells.append(Cell(row, key))
        return self.plan


def plan_grid(grid: GridSpec) -> Plan:
    return _Planner(grid).build()


def grid_hash(grid: GridSpec) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(grid.model_dump(mode="json")).encode()).hexdigest()[:12]
