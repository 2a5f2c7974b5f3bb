"""Load third-party encoder checkpoints safely and fit them to our backbones.

Why this module exists: users bring checkpoints from solo-learn (Lightning
`.ckpt`), akamaster's CIFAR ResNets, torchvision, DataParallel or torch.compile
runs, or a `.safetensors` file. Each wraps the same tensors differently, and a
pickled checkpoint can carry code that runs the moment it is unpickled. So:

* nothing is unpickled with `weights_only=False`: a file that needs it is refused
  with a message naming the global it tried to import;
* the first bytes are sniffed *before* unpickling, so an HTML login page or a Git
  LFS pointer saved under a checkpoint name gets a message that says so instead
  of a cryptic unpickling error;
* wrapper containers and key prefixes are undone here, once, and whatever is not
  backbone weights (a linear probe, a projector, a momentum encoder) is handed
  back as "extras" rather than silently dropped or mistaken for backbone weights;
* every failure is a one-paragraph `CheckpointError`, never a raw torch error.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from daebench.encoders.backbones import Encoder
from daebench.errors import CheckpointError

DEFAULT_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.")
"""Wrapper prefixes stripped (repeatedly) from keys: DataParallel, torch.compile, a
`self.model` attribute, solo-learn's `backbone.`, and legacy solo-learn's `encoder.`."""

BACKBONE_MARKERS: tuple[str, ...] = ("backbone.", "encoder.")
"""Prefixes that mark the backbone inside a bigger model: when present, only keys
under them are backbone weights (solo-learn also saves `classifier.`, `projector.`,
`momentum_backbone.`, `predictor.` next to them)."""

CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "encoder", "backbone")
"""Dict keys tried, in this order, for the tensors of a wrapped checkpoint:
Lightning/solo-learn and akamaster save `state_dict`; the PyTorch tutorial idiom
saves `model_state_dict`; others save `model`, `net`, `encoder` or `backbone`.
The first one holding tensors wins; a dict that holds tensors itself is used as-is."""

HEAD_PREFIXES: tuple[str, ...] = (
    "classifier.", "linear.", "fc.", "head.", "heads.", "projector.", "predictor.",
    "prototypes.", "momentum_", "queue", "teacher.", "student.",
)
"""Names of heads and SSL training parts: when the backbone module has no such
parameter they are extras, not "unexpected keys"."""

_MIN_BYTES = 32  # nothing that holds a tensor is smaller
_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)|unrecognized function\s+<?([^>\s]+)", re.IGNORECASE)


# -- reading ---------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sniff(path: Path, size: int) -> None:
    """Reject files that are obviously not checkpoints, without unpickling anything."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype", b"<html")):
        raise CheckpointError(
            f"Checkpoint '{path}' is an HTML page, not a checkpoint -- typically a failed "
            f"download or a login/redirect page saved under the checkpoint's name. "
            f"Re-download the file (for Google Drive or a hub, use its direct-download link)."
        )
    if text.startswith(b"version https://git-lfs.github.com/spec/"):
        raise CheckpointError(
            f"Checkpoint '{path}' is a Git LFS pointer ({size} bytes), not the weights "
            f"themselves: the repository was cloned without LFS. Run `git lfs pull` in it "
            f"(after `git lfs install`) or download the file directly."
        )
    if size < _MIN_BYTES:
        raise CheckpointError(
            f"Checkpoint '{path}' is {'empty' if size == 0 else f'only {size} bytes'}: too "
            f"small to hold any weights. The download or copy was probably interrupted; "
            f"fetch it again."
        )
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        first = decoded.strip().splitlines()[0][:80] if decoded.strip() else ""
        raise CheckpointError(
            f"Checkpoint '{path}' is a text file, not a checkpoint (it starts with "
            f"{first!r}); it is probably an error message saved by a failed download. "
            f"Re-download it."
        )


def _detail(err: BaseException) -> str:
    """The informative part of a torch/pickle error, without torch's weights_only preamble."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    return f"{type(err).__name__}: {text[:160] or 'no detail'}"


def _corrupt(path: Path, size: int, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint '{path}' ({size} bytes) is truncated or corrupt and cannot be read "
        f"({_detail(err)}). "
        f"The download or copy was probably interrupted; fetch it again and compare its "
        f"sha256 with the published one."
    )


def _refused(path: Path, err: pickle.UnpicklingError) -> CheckpointError:
    match = _GLOBAL_RE.search(str(err))
    name = next((g for g in match.groups() if g), None) if match else None
    what = f"the global '{name}'" if name else "a Python global"
    return CheckpointError(
        f"Checkpoint '{path}' contains pickled code that would run on load: unpickling it "
        f"imports and calls {what}, so DAEBench refused to execute it (it only loads "
        f"with torch.load(weights_only=True)). A checkpoint of plain tensors is expected: "
        f"a state_dict saved with torch.save(model.state_dict(), path), or a .safetensors "
        f"file. If you trust the file's source, load it yourself once and re-save its "
        f"state_dict that way."
    )


def _load_torch(path: Path, size: int) -> Any:
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip:  # torch's own error for a truncated zip is a bare OSError(EINVAL)
        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise _corrupt(path, size, err) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if _GLOBAL_RE.search(msg) or re.search(r"global|reduce|unsupported class", msg, re.IGNORECASE):
            raise _refused(path, err) from None
        raise _corrupt(path, size, err) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise _corrupt(path, size, err) from None


def _tensor_leaves(obj: Mapping[Any, Any]) -> dict[str, Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _unwrap(obj: Any, depth: int = 0) -> dict[str, Tensor] | None:
    """The flat tensor dict inside `obj`, trying CONTAINER_KEYS first (see there)."""
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    for key in CONTAINER_KEYS:
        inner = _unwrap(obj.get(key), depth + 1) if key in obj else None
        if inner:
            return inner
    tensors = _tensor_leaves(obj)
    return tensors or None


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a checkpoint file SAFELY and return a flat name->tensor state dict.

    `.safetensors` files go through safetensors; everything else through
    `torch.load(weights_only=True)` only. Containers are unwrapped (CONTAINER_KEYS)
    and non-tensor leaves (epoch, hyper-parameters, best accuracy) dropped.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"Checkpoint '{p}' does not exist{' (it is a directory)' if p.is_dir() else ''}. "
            f"Check the path (relative paths are resolved from {Path.cwd()})."
        )
    size = p.stat().st_size
    _sniff(p, size)
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as err:  # SafetensorError and friends: a bad header or short file
            raise _corrupt(p, size, err) from None
    else:
        obj = _load_torch(p, size)
    state = _unwrap(obj)
    if not state:
        found = ", ".join(map(repr, list(obj)[:20])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"Checkpoint '{p}' holds no tensors: expected a state dict (name -> tensor), "
            f"possibly wrapped under one of {', '.join(CONTAINER_KEYS)}; found top-level "
            f"{'keys ' + found if isinstance(obj, Mapping) else 'a ' + found}."
        )
    return state


# -- key remapping ---------------------------------------------------------------
def _apply_key_map(key: str, key_map: Mapping[str, str] | None) -> str:
    for old in sorted(key_map or {}, key=len, reverse=True):  # longest prefix first
        if key.startswith(old):
            return key_map[old] + key[len(old):]  # type: ignore[index]
    return key


def _strip(key: str, prefixes: Sequence[str]) -> tuple[str, bool]:
    """Strip wrapper prefixes repeatedly; also say whether a backbone marker was one."""
    marked = False
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix):], True
                marked = marked or prefix in BACKBONE_MARKERS
                break
    return key, marked


def _renamed(state: Mapping[str, Tensor], key_map: Mapping[str, str] | None,
             strip_prefixes: Sequence[str]) -> dict[str, tuple[str, Tensor, bool]]:
    out: dict[str, tuple[str, Tensor, bool]] = {}
    for original, tensor in state.items():
        name, marked = _strip(_apply_key_map(original, key_map), strip_prefixes)
        if name in out:
            raise CheckpointError(
                f"Checkpoint keys '{out[name][0]}' and '{original}' both become '{name}' "
                f"after key remapping; pass a key_map that keeps them apart."
            )
        out[name] = (original, tensor, marked)
    return out


def remap_keys(state: dict[str, Tensor], key_map: dict[str, str] | None = None,
               strip_prefixes: Sequence[str] = DEFAULT_PREFIXES) -> dict[str, Tensor]:
    """Rename keys: `key_map` prefix rewrites first (longest prefix first), then strip
    `strip_prefixes` repeatedly. Two keys landing on one name is a CheckpointError."""
    return {name: t for name, (_, t, _) in _renamed(state, key_map, strip_prefixes).items()}


# -- loading into an encoder -----------------------------------------------------
def _shape(t: Tensor | torch.Size) -> str:
    return "(" + ",".join(map(str, tuple(t.shape if isinstance(t, Tensor) else t))) + ")"


def _mismatch_error(module: nn.Module, path: Path, missing: list[str], unexpected: list[str],
                    shapes: list[tuple[str, Tensor, Tensor]]) -> CheckpointError:
    arch = getattr(module, "registry_name", None) or type(module).__name__
    width = getattr(module, "width", None)
    parts = [f"Checkpoint '{path}' does not fit the {arch} backbone"
             + (f" (width {width})" if width is not None else "") + "."]
    if missing:
        parts.append(f"Missing {len(missing)} key(s), e.g. {', '.join(missing[:4])}.")
    if unexpected:
        parts.append(f"Unexpected {len(unexpected)} key(s), e.g. {', '.join(unexpected[:4])}.")
    for name, ckpt, model in shapes[:3]:
        note = ""
        if name.endswith("conv1.weight") and ckpt.dim() == 4 and ckpt.shape[-1] == 7 and model.shape[-1] == 3:
            note = (": an ImageNet-stem checkpoint? this architecture uses the CIFAR 3x3 stem; use arch "
                    "resnet18_imagenet (torchvision / timm: 7x7 stride 2 + max-pool) or resnet18_imagenet_s1 "
                    "(7x7 stride 1, no max-pool: how the ZePAD code loads solo-learn ImageNet-100 encoders)")
        parts.append(f"{name}: checkpoint {_shape(ckpt)} vs model {_shape(model)}{note}.")
    if len(shapes) > 3:
        parts.append(f"({len(shapes) - 3} more shape mismatches.)")
    hint = ("If the names differ only by a prefix, pass key_map={'their.prefix.': ''}; "
            "if the channel counts differ, build the encoder with the checkpoint's width")
    stem = next((c for n, c, m in shapes if n == "conv1.weight" and c.shape[0] != m.shape[0]), None)
    if stem is not None:
        hint += f" (its conv1 has {stem.shape[0]} output channels, i.e. width={stem.shape[0]})"
    parts.append(hint + ".")
    return CheckpointError(" ".join(parts))


def load_encoder_weights(encoder: Encoder, path: str | os.PathLike, key_map: dict[str, str] | None = None,
                         strict: bool = True) -> dict[str, Tensor]:
    """Load backbone weights into `encoder.backbone`; return the leftover tensors.

    Leftovers ("extras", keyed after prefix stripping) are e.g. a solo-learn
    `classifier.*` linear probe or a torchvision `fc.*` head, so callers can use a
    ready-made head. A head the backbone module itself owns (akamaster's `linear`)
    is loaded into it instead. With `strict=False`, missing keys are tolerated and
    unexpected ones returned as extras; shape mismatches are always an error.
    """
    p = Path(path)
    module = encoder.backbone
    expected = module.state_dict()
    renamed = _renamed(read_state_dict(p), key_map, DEFAULT_PREFIXES)
    has_marker = any(marked for _, _, marked in renamed.values())
    weights: dict[str, Tensor] = {}
    extras: dict[str, Tensor] = {}
    for name, (_, tensor, marked) in renamed.items():
        if has_marker and not marked:  # outside backbone./encoder.: extras, unless the module owns it
            (weights if name in expected else extras)[name] = tensor
        elif name not in expected and name.startswith(HEAD_PREFIXES):
            extras[name] = tensor
        else:
            weights[name] = tensor
    for k in expected:  # pre-0.4.1 checkpoints (akamaster's) have no BN step counters
        if k.endswith("num_batches_tracked") and k not in weights:
            weights[k] = expected[k].clone()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [(k, weights[k], expected[k]) for k in weights
              if k in expected and weights[k].shape != expected[k].shape]
    if shapes or (strict and (missing or unexpected)):
        raise _mismatch_error(module, p, missing, unexpected, shapes)
    for k in unexpected:
        extras[k] = weights.pop(k)
    broken = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(
            f"Checkpoint '{p}' has NaN or infinite values in {len(broken)} weight tensor(s) "
            f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): an encoder with them computes NaN "
            f"features and chance accuracy. Use a checkpoint saved before training diverged.")
    try:
        module.load_state_dict(weights, strict=strict)
    except RuntimeError as err:  # should be caught above; never let torch's text escape raw
        raise CheckpointError(
            f"Checkpoint '{p}' could not be loaded into the {type(module).__name__} backbone: "
            f"{' '.join(str(err).split())[:400]}. Check the architecture, key_map and width."
        ) from None
    return extras


def ready_made_head(tensors: Mapping[str, Tensor], prefix: str = "extra.") -> nn.Linear | None:
    """The linear head a checkpoint came with (solo-learn `classifier.*`, torchvision /
    timm `fc.*`, `linear.*`, `head.*`), from a checkpoint artifact's tensors; None if none.

    It classifies the checkpoint's own pre-training classes, so it is a valid downstream
    head only when D_d is that dataset."""
    for name in ("classifier", "fc", "linear", "head"):
        weight, bias = tensors.get(f"{prefix}{name}.weight"), tensors.get(f"{prefix}{name}.bias")
        if weight is not None and weight.dim() == 2:
            head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                head.weight.copy_(weight)
                if bias is not None:
                    head.bias.copy_(bias)
            return head.eval()
    return None
