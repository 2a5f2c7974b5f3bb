"""Typed stage specs: what each stage computes, the artifacts it reads, and its key.

One frozen pydantic model per stage. The planner builds them, the stages read them
(attributes, not dictionary keys), the runner loads their inputs by typed reference
(stage + key) and the store files their artifacts under `key`. A spec splits its
fields three ways, by declaration:

* inputs (`Ref` fields): upstream artifacts; their keys, under their roles, enter this key;
* `runtime` fields: how to reach the data (a file path, an npz location), never in the key,
  so moving a file keeps every cache valid;
* everything else: the content of the key, `hashed()`.

The key is `artifact_key(stage, hashed(), {role: input key}, STAGE_VERSIONS[stage])`, the
same hash the store has always used, so specs written this way reproduce every cached key.
"""

from __future__ import annotations

import functools
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from daebench.store import artifact_key

#: Bump a stage's version when its code changes what it computes: its artifacts
#: (and everything downstream of them) then get new keys and are recomputed.
STAGE_VERSIONS = {"pretrain": 1, "checkpoint": 1, "craft": 1, "defend": 1, "features": 1, "head": 1, "evaluate": 3}


class Ref(BaseModel):
    """A typed reference to an artifact: the stage that made it and its key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stage: str
    key: str


class SpecPart(BaseModel):
    """A frozen, strict model whose `hashed()` leaves out its `runtime` fields and the
    `optional` ones that are unset (None): options added later keep older keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    runtime: ClassVar[frozenset[str]] = frozenset()
    optional: ClassVar[frozenset[str]] = frozenset()
    hashed_as: ClassVar[dict[str, str]] = {}  # field -> the name it is hashed under

    def hashed(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in self.runtime or name in input_fields(type(self)) or (name in self.optional and value is None):
                continue
            out[self.hashed_as.get(name, name)] = _hashed(value)
        return out


@functools.cache
def input_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a spec declared as references to input artifacts (`Ref`, `Ref | None`,
    `tuple[Ref, ...]`), in declaration order."""
    def mentions_ref(annotation: Any) -> bool:
        return annotation is Ref or any(mentions_ref(a) for a in typing.get_args(annotation))

    return tuple(name for name, field in cls.model_fields.items() if mentions_ref(field.annotation))


def _hashed(value: Any) -> Any:
    if isinstance(value, SpecPart):
        return value.hashed()
    if isinstance(value, dict):
        return {k: _hashed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hashed(v) for v in value]
    return value


class DataSpec(SpecPart):
    """A dataset split as stages see it: its content fingerprint, and `source`, how the
    grid names it (a registry name or npz:path). The source is hashed too, under
    `_source`, as it has been since the first cached artifacts: keeping it keeps their keys."""

    optional: ClassVar[frozenset[str]] = frozenset({"split"})
    hashed_as: ClassVar[dict[str, str]] = {"source": "_source"}
    fingerprint: dict[str, Any]
    image_size: int
    source: str
    split: str | None = None


class StageSpec(SpecPart):
    """A stage's spec. Subclasses set `stage` and declare their inputs as `Ref` fields;
    `roles()` names each input as the artifact's metadata records it."""

    stage: ClassVar[str]

    def inputs(self) -> dict[str, Ref]:
        """role -> reference, in a fixed order (unset optional inputs left out)."""
        out: dict[str, Ref] = {}
        for name in input_fields(type(self)):
            value = getattr(self, name)
            if isinstance(value, Ref):
                out[name] = value
            elif value:
                out.update(self.list_roles(name, list(value)))
        return out

    def list_roles(self, name: str, refs: list[Ref]) -> dict[str, Ref]:
        return {f"{name}{i}": ref for i, ref in enumerate(refs)}

    @property
    def key(self) -> str:
        return artifact_key(self.stage, self.hashed(), {role: ref.key for role, ref in self.inputs().items()},
                            STAGE_VERSIONS[self.stage])

    def ref(self) -> Ref:
        return Ref(stage=self.stage, key=self.key)


class PretrainSpec(StageSpec):
    stage: ClassVar[str] = "pretrain"
    method: str
    version: int
    params: dict[str, Any]
    arch: dict[str, Any]
    seed: int
    data: DataSpec


class CheckpointSpec(StageSpec):
    stage: ClassVar[str] = "checkpoint"
    runtime: ClassVar[frozenset[str]] = frozenset({"path"})
    arch: dict[str, Any]
    sha256: str
    key_map: dict[str, str] | None
    path: str


class CraftSpec(StageSpec):
    stage: ClassVar[str] = "craft"
    optional: ClassVar[frozenset[str]] = frozenset({"ensemble", "precision"})
    attack: str
    version: int
    params: dict[str, Any]
    eps: float
    seed: int
    data: DataSpec
    ensemble: int | None = None  # white-box crafts (several surrogates): the ensemble objective's version
    precision: str | None = None  # "bf16": the surrogates' forwards under bf16 autocast + channels-last; None: float32
    surrogates: tuple[Ref, ...]

    def list_roles(self, name: str, refs: list[Ref]) -> dict[str, Ref]:
        return {("surrogate" if i == 0 else f"surrogate{i}"): ref for i, ref in enumerate(refs)}


class DefendSpec(StageSpec):
    stage: ClassVar[str] = "defend"
    optional: ClassVar[frozenset[str]] = frozenset({"extra_data"})
    defense: str
    version: int
    params: dict[str, Any]
    seed: int
    data: DataSpec
    extra_data: dict[str, DataSpec] | None = None  # datasets the defense reads besides D_f
    victim: Ref
    aux: tuple[Ref, ...] = ()


class FeaturesSpec(StageSpec):
    stage: ClassVar[str] = "features"
    optional: ClassVar[frozenset[str]] = frozenset({"clamp", "precision"})
    data: DataSpec
    clamp: bool | None = None  # set exactly when a perturbation is applied
    precision: str | None = None  # "bf16": the encoder's forwards under bf16 autocast + channels-last; None: float32
    model: Ref
    perturbation: Ref | None = None


class HeadSpec(StageSpec):
    stage: ClassVar[str] = "head"
    params: dict[str, Any]
    seed: int
    features: Ref


class EvaluateSpec(StageSpec):
    stage: ClassVar[str] = "evaluate"
    defense: str
    clamp: bool
    head_params: dict[str, Any]
    head: Ref
    clean: Ref
    adv: Ref

