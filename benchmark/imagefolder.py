"""`imagefolder:<path>`: any ImageFolder tree `<path>/{train,test}/<class>/<image>`, decoded once.

Classes and files are ordered as torchvision's `ImageFolder` orders them (class folders
sorted by name, files sorted within each, the same image extensions), so labels match a
torchvision pipeline over the same tree. Decoding tens of thousands of JPEGs on every run
would dominate small stages, so the first load decodes the tree in parallel worker
processes and keeps the uint8 arrays in `<data root>/imagefolder-cache/<digest>.npz`,
keyed by the tree's listing (file names, sizes, modification times); later loads read
that file. The content fingerprint that artifact keys use is the sha256 of every file's
bytes in that order, computed once with the decode and kept in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from daebench.errors import DataUnavailableError

PREFIX = "imagefolder:"
#: torchvision's IMG_EXTENSIONS
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FALLBACK_SIZE = 64  # a tree whose images differ in size is stacked at 64 x 64 (load_dataset resizes after)
_CHUNK = 2048  # images per decoding task
Listing = list[tuple[str, int, str, int, int]]  # (split, label, path relative to the tree, size, mtime_ns)


def tree_root(source: str) -> Path:
    """The tree a source names, checked for its layout (one clear paragraph if it is not one)."""
    path = Path(source[len(PREFIX):]).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    layout = f"{path}/train/<class>/<image> and {path}/test/<class>/<image> (or val/ for test/)"
    if not (path / "train").is_dir() or split_dir(path, "test") is None:
        raise DataUnavailableError(
            f"Dataset '{source}' is not an ImageFolder tree: expected {layout}. An imagefolder source is "
            f"'imagefolder:<path>'; relative paths resolve against {Path.cwd()}.")
    return path


def split_dir(root: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else ("test", "val")
    return next((root / n for n in names if (root / n).is_dir()), None)


def listing(root: Path) -> tuple[list[str], Listing]:
    """(classes, files) in torchvision ImageFolder order; both splits must share their classes."""
    classes_of = {}
    files: Listing = []
    for split in ("train", "test"):
        base = split_dir(root, split)
        classes = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        if not classes:
            raise DataUnavailableError(f"Dataset tree {root}: {base} has no class folders (<class>/<image>).")
        classes_of[split] = classes
        for label, name in enumerate(classes):
            for folder, _, names in sorted(os.walk(base / name, followlinks=True)):
                for file in sorted(names):
                    if file.lower().endswith(EXTENSIONS):
                        full = Path(folder) / file
                        st = full.stat()
                        files.append((split, label, str(full.relative_to(root)), st.st_size, st.st_mtime_ns))
    if classes_of["train"] != classes_of["test"]:
        raise DataUnavailableError(
            f"Dataset tree {root}: the class folders of train/ ({', '.join(classes_of['train'])}) and test/ "
            f"({', '.join(classes_of['test'])}) differ; both splits need the same classes.")
    for split in ("train", "test"):
        if not any(f[0] == split for f in files):
            raise DataUnavailableError(f"Dataset tree {root}: its {split} split holds no images ({', '.join(EXTENSIONS)}).")
        held = {f[1] for f in files if f[0] == split}
        empty = [name for label, name in enumerate(classes_of[split]) if label not in held]
        if empty:  # torchvision's ImageFolder refuses such a tree too ("Found no valid file for the classes ...")
            raise DataUnavailableError(
                f"Dataset tree {root}: the class folder(s) {', '.join(empty)} of its {split} split hold no images "
                f"({', '.join(EXTENSIONS)}); every class needs images in both splits, or remove the empty folders.")
    return classes_of["train"], files


def _cache_file(files: Listing, cache_dir: Path) -> Path:
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:24]
    return cache_dir / "imagefolder-cache" / f"{digest}.npz"


def _decode(root: str, paths: list[str]) -> tuple[list[np.ndarray], str]:
    """Decode images to uint8 RGB arrays (native size); also the sha256 of their bytes in order."""
    from PIL import Image

    digest, out = hashlib.sha256(), []
    for rel in paths:
        data = (Path(root) / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + data)
        try:
            with Image.open(Path(root) / rel) as image:
                out.append(np.asarray(image.convert("RGB")))
        except Exception as err:  # truncated, corrupt, or not an image despite its extension
            raise DataUnavailableError(f"Dataset tree {root}: {rel} is not a readable image ({type(err).__name__}: "
                                       f"{err}); replace or remove it.") from None
    return out, digest.hexdigest()


def _stack(images: list[np.ndarray]) -> np.ndarray:
    shapes = {a.shape for a in images}
    if len(shapes) == 1:
        return np.stack(images)
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(a).resize((FALLBACK_SIZE, FALLBACK_SIZE), resample=2)) for a in images])


def decode_tree(root: Path, files: Listing, workers: int | None = None) -> dict[str, np.ndarray]:
    """Decode every image of the tree in parallel processes (joblib); arrays + content digest."""
    from joblib import Parallel, delayed

    paths = [f[2] for f in files]
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    n_jobs = workers or min(len(chunks), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    results = Parallel(n_jobs=max(1, n_jobs))(delayed(_decode)(str(root), chunk) for chunk in chunks)
    images = [a for part, _ in results for a in part]
    content = hashlib.sha256("".join(d for _, d in results).encode()).hexdigest()
    arrays: dict[str, np.ndarray] = {"content_sha256": np.frombuffer(content.encode(), dtype=np.uint8)}
    for split in ("train", "test"):
        index = [i for i, f in enumerate(files) if f[0] == split]
        arrays[f"x_{split}"] = _stack([images[i] for i in index])
        arrays[f"y_{split}"] = np.asarray([files[i][1] for i in index], dtype=np.int64)
    return arrays


def load_tree(source: str, cache_dir: Path) -> tuple[dict[str, np.ndarray], list[str], bool]:
    """(arrays, classes, from_cache): the decoded tree, from the cache when its listing matches."""
    root = tree_root(source)
    classes, files = listing(root)
    cache = _cache_file(files, cache_dir)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}, classes, True
        except (OSError, ValueError):  # a torn cache file: decode again
            pass
    arrays = decode_tree(root, files)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)
    return arrays, classes, False


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    return arrays["content_sha256"].tobytes().decode()
