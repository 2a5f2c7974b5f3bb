"""benchmark.data: embedded digits, npz sources, offline errors, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from daebench.data import (
    DATASETS,
    ImageData,
    dataset_fingerprint,
    default_data_root,
    load_dataset,
    to_float,
)
from daebench.errors import DataUnavailableError, UnknownNameError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data subset {path} is absent (it is optional; see shared/data/README.md)")
    return path


def _write_npz(path: Path, n_train: int = 6, n_test: int = 4, size: int = 8, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.int64) % 3,
        "x_test": rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.int64) % 3,
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# -- digits -------------------------------------------------------------------------
def test_digits_shapes_splits_and_ranges():
    data = load_dataset("digits")
    assert isinstance(data, ImageData) and data.name == "digits"
    assert data.num_classes == 10
    assert data.x_train.shape == (1347, 3, 32, 32) and data.x_test.shape == (450, 3, 32, 32)
    assert data.x_train.dtype == data.x_test.dtype == torch.uint8
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.y_train.shape == (1347,) and data.y_test.shape == (450,)
    for y in (data.y_train, data.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < 10
    assert set(data.y_test.tolist()) == set(range(10))  # stratified
    assert int(data.x_train.max()) > 200  # scaled from 0..16 to 0..255, not left at 0..16
    # grayscale replicated to RGB
    assert torch.equal(data.x_train[:, 0], data.x_train[:, 1]) and torch.equal(data.x_train[:, 0], data.x_train[:, 2])


def test_digits_split_is_deterministic():
    first = DATASETS.get("digits")(Path("."), False)  # bypasses the memo: a real second load
    second = DATASETS.get("digits")(Path("."), False)
    assert first.x_train.shape == (1347, 3, 8, 8)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    assert load_dataset("digits") is load_dataset("digits")  # memoised


def test_image_size_64():
    data = load_dataset("digits", image_size=64)
    assert data.x_train.shape[1:] == (3, 64, 64) and data.x_test.shape[1:] == (3, 64, 64)
    assert data.x_train.dtype == torch.uint8


def test_split_accessor():
    data = load_dataset("digits")
    x, y = data.split("test")
    assert x is data.x_test and y is data.y_test
    with pytest.raises(Exception, match="train, test"):
        data.split("val")


def test_to_float():
    x = load_dataset("digits").x_test[:16]
    f = to_float(x)
    assert f.dtype == torch.float32 and f.shape == x.shape
    assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


# -- npz ----------------------------------------------------------------------------
def test_npz_cifar10_subset():
    path = _shared("cifar10-subset.npz")
    data = load_dataset(f"npz:{path}")
    assert data.name == "cifar10-subset"
    assert data.x_train.shape == (5085, 3, 32, 32) and data.x_test.shape == (1017, 3, 32, 32)
    assert data.num_classes == 10
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64


def test_npz_relative_path_resolves_against_cwd(monkeypatch):
    path = _shared("cifar10-subset.npz")
    monkeypatch.chdir(path.parent)
    assert load_dataset("npz:cifar10-subset.npz").x_test.shape == (1017, 3, 32, 32)


def test_npz_gtsrb_subset_43_classes():
    data = load_dataset(f"npz:{_shared('gtsrb-subset.npz')}")
    assert data.num_classes == 43
    assert data.x_train.shape[1:] == (3, 32, 32)


def test_npz_resizes_and_keeps_layout(tmp_path):
    path = _write_npz(tmp_path / "tiny.npz")
    raw = np.load(path)
    data = load_dataset(f"npz:{path}", image_size=8)  # native size: no resize, exact pixels
    assert torch.equal(data.x_train, torch.from_numpy(raw["x_train"]).permute(0, 3, 1, 2))
    assert data.num_classes == 3 and data.name == "tiny"
    assert load_dataset(f"npz:{path}", image_size=32).x_test.shape == (4, 3, 32, 32)


def test_npz_missing_keys(tmp_path):
    path = _write_npz(tmp_path / "bad.npz", y_train=None, x_test=None)
    with pytest.raises(DataUnavailableError) as err:
        load_dataset(f"npz:{path}")
    assert "y_train" in str(err.value) and "x_test" in str(err.value)


def test_npz_wrong_dtype(tmp_path):
    path = _write_npz(tmp_path / "float.npz", x_train=np.zeros((6, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataUnavailableError, match="x_train"):
        load_dataset(f"npz:{path}")


def test_npz_missing_file(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataUnavailableError, match="nope.npz"):
        load_dataset(f"npz:{missing}")


# -- offline / unknown ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar10", "animals10"])
def test_offline_dataset_gives_actionable_error(name, tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        load_dataset(name, root=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path.resolve()) in message and "npz:" in message
    assert not any(tmp_path.iterdir())  # download=False touched nothing


def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar1O")
    assert "Did you mean 'cifar10'" in str(err.value)


def test_builtin_names_registered():
    assert {"digits", "cifar10", "stl10", "svhn", "gtsrb", "animals10", "imagenet20"} <= set(DATASETS.names())


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DAEBENCH_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("DAEBENCH_DATA")
    assert default_data_root() == Path.home() / ".cache" / "daebench" / "data"


# -- fingerprints ---------------------------------------------------------------------
def test_fingerprint_npz_has_sha256_and_tracks_content(tmp_path):
    a = _write_npz(tmp_path / "a.npz")
    b = _write_npz(tmp_path / "b.npz", y_test=np.zeros(4, dtype=np.int64))
    fa, fb = dataset_fingerprint(f"npz:{a}"), dataset_fingerprint(f"npz:{b}")
    assert len(fa["sha256"]) == 64 and fa["sha256"] != fb["sha256"]
    assert fa != fb
    json.dumps(fa)
    assert dataset_fingerprint(f"npz:{a}", image_size=64)["image_size"] == 64


def test_fingerprint_registry_dataset():
    fp = dataset_fingerprint("digits")
    assert fp["source"] == "digits" and fp["image_size"] == 32 and "version" in fp
    json.dumps(fp)
    with pytest.raises(UnknownNameError):
        dataset_fingerprint("cifar1O")
