"""`imagefolder:<path>`: torchvision's class order, decoded once into the cache, fingerprinted by content."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daebench import imagefolder
from daebench.data import dataset_fingerprint, load_dataset
from daebench.errors import DataUnavailableError


def _tree(root, sizes=((8, 8),), classes=("dog", "cat", "bird")):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def test_a_tree_loads_in_imagefolder_order_and_is_decoded_once(tmp_path, monkeypatch):
    tree = _tree(tmp_path / "tree")
    monkeypatch.setenv("DAEBENCH_DATA", str(tmp_path / "data"))
    data = load_dataset(f"imagefolder:{tree}", image_size=8)
    assert data.num_classes == 3 and data.name == "tree"
    assert data.x_train.shape == (9, 3, 8, 8) and data.x_test.shape == (6, 3, 8, 8)
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # bird, cat, dog: sorted as torchvision
    first = np.asarray(Image.open(tree / "train" / "bird" / "0.png"))
    assert np.array_equal(data.x_train[0].permute(1, 2, 0).numpy(), first)
    root = imagefolder.tree_root(f"imagefolder:{tree}")
    *_, from_cache = imagefolder.load_tree(f"imagefolder:{tree}", tmp_path / "data")
    assert from_cache and len(list((tmp_path / "data" / "imagefolder-cache").glob("*.npz"))) == 1
    fp = dataset_fingerprint(f"imagefolder:{tree}", 8)
    assert fp["source"] == "imagefolder:tree" and len(fp["sha256"]) == 64
    # moving the tree keeps the fingerprint (content, not location)
    moved = tmp_path / "elsewhere" / "tree"
    moved.parent.mkdir()
    root.rename(moved)
    assert dataset_fingerprint(f"imagefolder:{moved}", 8) == fp


def test_images_of_different_sizes_are_stacked_at_64(tmp_path, monkeypatch):
    tree = _tree(tmp_path / "mixed", sizes=((8, 8), (10, 12)))
    monkeypatch.setenv("DAEBENCH_DATA", str(tmp_path / "data"))
    assert load_dataset(f"imagefolder:{tree}", image_size=16).x_train.shape == (9, 3, 16, 16)


@pytest.mark.parametrize("breakage, match", [
    (lambda t: __import__("shutil").rmtree(t / "test"), "is not an ImageFolder tree"),
    (lambda t: (t / "test" / "fish").mkdir(), "class folders of train/"),
])
def test_a_broken_tree_is_one_clear_error(tmp_path, breakage, match):
    tree = _tree(tmp_path / "tree")
    breakage(tree)
    with pytest.raises(DataUnavailableError, match=match):
        load_dataset(f"imagefolder:{tree}", image_size=8, root=tmp_path / "data")
