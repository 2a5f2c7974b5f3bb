"""Defended models: any `nn.Module` mapping [0, 1] images to features, stored by its state
dict plus the spec that rebuilds it.

A branch of a defended model (and every encoder artifact) is packed as its weights,
`branch{i}.<name>`, and a JSON spec in the artifact's metadata, `branches[i]`. The spec
names a *model kind* (`MODEL_KINDS`), whose `from_spec` rebuilds the module before the
weights are loaded strictly. Built in:

* `encoder` (`Encoder`, the default when a spec names no kind): normalisation + a
  registered backbone; its spec is the backbone's `arch_spec`, its weights the backbone's
  (the layout every encoder artifact has always had);
* `input_transformed` (`InputTransformed`): a fixed input transformation of
  `INPUT_TRANSFORMS` (bit-depth reduction, ...) in front of any model.

A plugin adds a kind (a purifier network, another architecture) by registering a class
with `from_spec(spec)`, `model_spec()` and `feature_dim`, from its module or the
`daebench.model_kinds` entry-point group; an input transformation through
`daebench.input_transforms`.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import nn

from daebench.encoders.backbones import Encoder, build_encoder
from daebench.errors import DAEBenchError
from daebench.registry import Registry

MODEL_KINDS: Registry = Registry("model kind", entry_point_group="daebench.model_kinds")
INPUT_TRANSFORMS: Registry = Registry("input transformation", entry_point_group="daebench.input_transforms")


class StorableModel(Protocol):
    """What a branch of a defended model provides besides `forward` ([0, 1] images -> features)."""

    feature_dim: int

    def model_spec(self) -> dict[str, Any]: ...


# -- input transformations ------------------------------------------------------------------
@INPUT_TRANSFORMS.register("bit_depth")
class BitDepth(nn.Module):
    """Colour-depth reduction to `bits` bits per channel: round(x (2^b - 1)) / (2^b - 1)
    (feature squeezing, Xu et al., NDSS 2018). Non-differentiable, parameter-free."""

    def __init__(self, bits: int = 5) -> None:
        super().__init__()
        if not 1 <= int(bits) <= 8:
            raise DAEBenchError(f"bit_depth: bits must be an integer in 1..8, got {bits}.")
        self.bits = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels

    def transform_spec(self) -> dict[str, Any]:
        return {"name": "bit_depth", "bits": self.bits}


@MODEL_KINDS.register("input_transformed")
class InputTransformed(nn.Module):
    """A fixed input transformation in front of a model: model(transform(x))."""

    def __init__(self, transform: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.transform, self.model = transform, model
        self.feature_dim: int = model.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))

    def model_spec(self) -> dict[str, Any]:
        return {"kind": "input_transformed", "transform": self.transform.transform_spec(),
                "model": model_spec(self.model)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "InputTransformed":
        transform = dict(spec["transform"])
        return cls(INPUT_TRANSFORMS.get(transform.pop("name"))(**transform), build_model(spec["model"]))

    # weights: the inner model's, under `model.` (a transformation has none)
    def state_for_store(self) -> dict[str, torch.Tensor]:
        return {f"model.{k}": v for k, v in model_state(self.model).items()}

    def load_from_store(self, state: dict[str, torch.Tensor]) -> None:
        load_model_state(self.model, {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})


# -- specs, weights, branches ----------------------------------------------------------------------
def model_spec(module: nn.Module) -> dict[str, Any]:
    """The JSON spec that rebuilds `module` (an `Encoder`'s is its architecture spec)."""
    if isinstance(module, Encoder):
        return dict(module.arch_spec)
    if hasattr(module, "model_spec"):
        return module.model_spec()
    raise DAEBenchError(
        f"A defended model's branch must be an Encoder or a module of a registered model kind (with `model_spec()` "
        f"and `from_spec()`, see daebench.encoders.models); got {type(module).__name__}.")


def build_model(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind", "encoder")
    if kind == "encoder":
        return build_encoder(**{k: v for k, v in spec.items() if k != "kind"})
    return MODEL_KINDS.get(kind).from_spec(spec)


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the store keeps: an Encoder's backbone's, else the module's own choice
    (`state_for_store`) or its whole state dict."""
    if isinstance(module, Encoder):
        return module.backbone.state_dict()
    if hasattr(module, "state_for_store"):
        return module.state_for_store()
    return module.state_dict()


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if isinstance(module, Encoder):
        module.backbone.load_state_dict(state)
    elif hasattr(module, "load_from_store"):
        module.load_from_store(state)
    else:
        module.load_state_dict(state)


def pack_branches(models: Sequence[nn.Module]) -> tuple[dict[str, torch.Tensor], dict]:
    """Models -> (tensors 'branch{i}.<param>', meta with each branch's spec)."""
    tensors = {f"branch{i}.{k}": v for i, m in enumerate(models) for k, v in model_state(m).items()}
    return tensors, {"branches": [model_spec(m) for m in models]}


def unpack_branches(tensors: dict[str, torch.Tensor], meta: dict) -> list[nn.Module]:
    """Inverse of `pack_branches`: rebuild each model and load its weights strictly (eval mode)."""
    models = []
    for i, spec in enumerate(meta["branches"]):
        model = build_model(spec)
        prefix = f"branch{i}."
        load_model_state(model, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        models.append(model.eval())
    return models


class FastEncoder(nn.Module):
    """The encoder under bf16 autocast and/or channels-last input, returning float32
    features, so every loss (GR, KL, cosines, CE) is computed in float32 whatever the
    switches. It shares its parameters with the wrapped encoder: optimisers built on
    either train the same weights."""

    def __init__(self, encoder: nn.Module, amp: bool, channels_last: bool) -> None:
        super().__init__()
        self.encoder, self.amp, self.channels_last = encoder, amp, channels_last

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.encoder(x).float()

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The wrapped encoder's layer activations (layer-wise attacks), float32 too."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return {k: v.float() for k, v in self.encoder.forward_features(x).items()}
