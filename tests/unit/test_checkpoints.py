"""Checkpoint loading: real third-party weights, wrapper formats, and hostile files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from daebench.encoders.backbones import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from daebench.encoders.checkpoints import (
    file_sha256,
    load_encoder_weights,
    read_state_dict,
    remap_keys,
)
from daebench.errors import CheckpointError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR = SHARED / "cifar10-subset.npz"
WEIGHTS = SHARED / "weights"


# -- real akamaster checkpoints ---------------------------------------------------
@pytest.fixture(scope="module")
def cifar_test() -> tuple[torch.Tensor, torch.Tensor]:
    if not CIFAR.is_file():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR}")
    with np.load(CIFAR) as data:
        x = torch.from_numpy(data["x_test"]).permute(0, 3, 1, 2).float().div(255.0)
        y = torch.from_numpy(data["y_test"]).long()
    return x, y


def _accuracy(arch: str, file: str, x: torch.Tensor, y: torch.Tensor) -> float:
    path = WEIGHTS / file
    if not path.is_file():
        pytest.skip(f"real {arch} checkpoint not found at {path}")
    encoder = build_encoder(arch, width=16, conv1_padding=1, mean=IMAGENET_MEAN, std=IMAGENET_STD).eval()
    extras = load_encoder_weights(encoder, path)
    assert extras == {}  # akamaster's `linear` belongs to the backbone module
    with torch.inference_mode():
        logits = torch.cat([encoder.backbone.linear(encoder(xb)) for xb in x.split(256)])
    return (logits.argmax(1) == y).float().mean().item()


def test_real_resnet20_accuracy(cifar_test) -> None:
    acc = _accuracy("resnet20", "resnet20-12fca82f.th", *cifar_test)
    print(f"resnet20 accuracy on the {len(cifar_test[1])}-image CIFAR-10 subset: {acc:.4f}")
    assert abs(acc - 0.916) <= 0.01


def test_real_resnet56_accuracy(cifar_test) -> None:
    start = time.perf_counter()
    acc = _accuracy("resnet56", "resnet56-4bfd9763.th", *cifar_test)
    print(f"resnet56 accuracy on the subset: {acc:.4f} ({time.perf_counter() - start:.1f} s)")
    assert acc > 0.90  # published 93.39% on the full test set


def test_real_checkpoint_sha256() -> None:
    path = WEIGHTS / "resnet20-12fca82f.th"
    if not path.is_file():
        pytest.skip(f"real checkpoint not found at {path}")
    assert file_sha256(path).startswith("12fca82f")


# -- wrapper formats round-trip ---------------------------------------------------
def _source_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_encoder("resnet18", width=8).backbone
    for m in model.modules():  # non-default BN statistics, so buffers are really checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


HEAD = {
    "classifier.weight": torch.randn(10, 64),
    "classifier.bias": torch.randn(10),
    "projector.0.weight": torch.randn(32, 64),
}


def _assert_loaded(path: Path, state: dict[str, torch.Tensor], expect_head: bool) -> None:
    encoder = build_encoder("resnet18", width=8).eval()
    extras = load_encoder_weights(encoder, path)
    loaded = encoder.backbone.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    reference = build_encoder("resnet18", width=8).eval()
    reference.backbone.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(x), reference(x))
    if expect_head:
        assert set(extras) == set(HEAD)
        assert torch.equal(extras["classifier.weight"], HEAD["classifier.weight"])
    else:
        assert extras == {}


@pytest.mark.parametrize("prefix", ["backbone.", "encoder."])
def test_solo_learn_ckpt_round_trip(tmp_path: Path, prefix: str) -> None:
    state = _source_state()
    path = tmp_path / "x.ckpt"
    torch.save(
        {
            "state_dict": {prefix + k: v for k, v in state.items()} | HEAD,
            "epoch": 3,
            "hyper_parameters": {"lr": 0.1},
        },
        path,
    )
    _assert_loaded(path, state, expect_head=True)


def test_dataparallel_prefix_round_trip(tmp_path: Path) -> None:
    state = _source_state()
    path = tmp_path / "dp.pth"
    torch.save({"model_state_dict": {"module." + k: v for k, v in state.items()}}, path)
    _assert_loaded(path, state, expect_head=False)


def test_plain_state_dict_and_safetensors(tmp_path: Path) -> None:
    state = _source_state()
    torch.save(state, tmp_path / "plain.pt")
    _assert_loaded(tmp_path / "plain.pt", state, expect_head=False)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    _assert_loaded(tmp_path / "w.safetensors", state, expect_head=False)


def test_key_map(tmp_path: Path) -> None:
    state = _source_state()
    path = tmp_path / "odd.pt"
    torch.save({"net.trunk." + k: v for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match="key_map"):
        load_encoder_weights(build_encoder("resnet18", width=8), path)
    assert remap_keys(read_state_dict(path), {"net.trunk.": ""}).keys() == state.keys()
    encoder = build_encoder("resnet18", width=8)
    assert load_encoder_weights(encoder, path, key_map={"net.trunk.": ""}) == {}
    assert torch.equal(encoder.backbone.conv1.weight, state["conv1.weight"])


def test_remap_keys_prefix_order() -> None:
    t = torch.zeros(1)
    out = remap_keys({"module._orig_mod.backbone.conv1.weight": t, "a.b.x": t},
                     key_map={"a.": "short.", "a.b.": "long."})
    assert set(out) == {"conv1.weight", "long.x"}


# -- broken and hostile files ---------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")


def test_html_page(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_text("\n  <!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n")
    with pytest.raises(CheckpointError, match="HTML"):
        read_state_dict(path)


def test_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "w.ckpt"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n"
    )
    with pytest.raises(CheckpointError, match="LFS"):
        read_state_dict(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated(tmp_path: Path, legacy: bool) -> None:
    full = tmp_path / "full.pt"
    torch.save(_source_state(), full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        read_state_dict(path)
    assert "half.pt" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(path)


def test_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "best_prec1": 91.0}, path)
    with pytest.raises(CheckpointError, match="epoch"):
        read_state_dict(path)


class _Exploit:
    marker: str = ""

    def __reduce__(self):
        import builtins

        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": exploit}, path)
    with pytest.raises(CheckpointError, match="code that would run") as info:
        read_state_dict(path)
    assert "exec" in str(info.value)
    with pytest.raises(CheckpointError):
        load_encoder_weights(build_encoder("resnet18", width=8), path)
    assert not marker.exists()


def test_width_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w8.pt"
    torch.save(_source_state(), path)
    with pytest.raises(CheckpointError, match="width") as info:
        load_encoder_weights(build_encoder("resnet18", width=16), path)
    message = str(info.value)
    assert "conv1.weight: checkpoint (8,3,3,3) vs model (16,3,3,3)" in message
    assert "width=8" in message


def test_imagenet_stem_hint(tmp_path: Path) -> None:
    state = dict(_source_state())
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    path = tmp_path / "imagenet.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="ImageNet-stem"):
        load_encoder_weights(build_encoder("resnet18", width=8), path)


def test_unexpected_and_missing_keys(tmp_path: Path) -> None:
    state = dict(_source_state())
    state.pop("layer4.1.bn2.weight")
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="layer4.1.bn2.weight") as info:
        load_encoder_weights(build_encoder("resnet18", width=8), path)
    assert "layer5.0.conv1.weight" in str(info.value)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_torchvision_and_timm_resnet18_state_dicts_load_with_identical_features(tmp_path: Path, source: str) -> None:
    """An ImageNet-stem ResNet18 from torchvision or timm (random weights, BN statistics
    perturbed so they matter) loads into `resnet18_imagenet`; features match the source
    model's penultimate layer, and its `fc` head comes back as an extra."""
    from daebench.compat import import_torchvision

    torchvision = import_torchvision()
    torch.manual_seed(0)
    if source == "torchvision":
        model = torchvision.models.resnet18(weights=None)
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model("resnet18", pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{source}.pth"
    torch.save(model.state_dict(), path)
    encoder = build_encoder("resnet18_imagenet", width=64)
    extras = load_encoder_weights(encoder, path)
    assert set(extras) == {"fc.weight", "fc.bias"}
    model.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder.backbone.eval()(x), model.eval()(x), atol=1e-5)


def test_checkpoint_stage_keeps_the_solo_learn_probe_as_a_ready_made_head(tmp_path: Path) -> None:
    from daebench.encoders.checkpoints import ready_made_head
    from daebench.specs import CheckpointSpec
    from daebench.stages import StageContext, run_checkpoint

    state = _source_state()
    path = tmp_path / "solo.ckpt"
    torch.save({"state_dict": {"backbone." + k: v for k, v in state.items()} | HEAD}, path)
    arch = {"arch": "resnet18", "width": 8, "conv1_padding": 2}
    spec = CheckpointSpec(arch=arch, sha256="-", key_map=None, path=str(path))
    tensors, meta = run_checkpoint(StageContext(), spec, {})
    head = ready_made_head(tensors)
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (64, 10)
    assert torch.equal(head.weight, HEAD["classifier.weight"]) and torch.equal(head.bias, HEAD["classifier.bias"])
    assert "classifier.weight" in meta["extra_tensors"]
    assert ready_made_head({k: v for k, v in tensors.items() if not k.startswith("extra.")}) is None


def test_a_solo_learn_imagenet100_checkpoint_loads_as_the_zepad_code_rebuilds_it(tmp_path: Path) -> None:
    """ZePAD's BYOL-ImageNet-100 partner: solo-learn weights of torchvision's ResNet18 (7x7
    conv1), which the released code runs with conv1 at stride 1, padding 1 and no max-pool."""
    torch.manual_seed(0)
    source = build_encoder("resnet18_imagenet_s1", width=8)
    state = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()}
    assert state["backbone.conv1.weight"].shape == (8, 3, 7, 7)
    path = tmp_path / "byol-400ep-imagenet100.ckpt"
    torch.save({"state_dict": state | HEAD}, path)
    encoder = build_encoder("resnet18_imagenet_s1", width=8).eval()
    extras = load_encoder_weights(encoder, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), source.eval()(x))
    conv = encoder.backbone.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7), (1, 1), (1, 1))
    assert encoder.backbone.stem(x).shape[-1] == 60  # 64 - 7 + 2 + 1: stride 1, no max-pool
    assert set(extras) == set(HEAD)
