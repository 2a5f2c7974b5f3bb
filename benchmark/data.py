"""Datasets as plain uint8 tensors, resolved by name through one registry.

Why uint8 and no normalisation: attacks work in [0,1] pixel space and every
model carries its own normalisation, so the data stays raw, compact (a quarter of
float32) and identical for every encoder. `to_float` is the one conversion.

Sources:
  * registered names (`DATASETS`): `digits` (embedded in scikit-learn, always
    available -- the default), `cifar10`, `stl10`, `svhn`, `gtsrb` (torchvision),
    `animals10`, `imagenet20` (ImageFolder trees the user provides), plus any
    outside plugin from the `daebench.datasets` entry-point group. A loader is
    `(root: Path, download: bool) -> ImageData` at native resolution;
    `load_dataset` resizes.
  * `npz:<path>`: a `.npz` with x_train (N,H,W,3) uint8, y_train, x_test, y_test
    (the format of ../shared/data), so any data works offline.
  * `imagefolder:<path>`: any ImageFolder tree `<path>/{train,test}/<class>/<image>`,
    decoded once into a cache under the data root (`daebench.imagefolder`).

Results are memoised in-process; the returned tensors are shared between callers
and MUST NOT be modified in place (clone first).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from daebench import imagefolder
from daebench.errors import ConfigError, DataUnavailableError
from daebench.registry import Registry

DATA_VERSION = 1
"""Bump when a loader's output changes, so cached artifacts keyed on it go stale."""

NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_FOLDER_SIZE = 64  # ImageFolder images are stacked at 64x64 so 32 and 64 both work
_RESIZE_CHUNK = 2048  # images per interpolate call: bounds the float32 peak memory


@dataclass(frozen=True)
class ImageData:
    """Train/test images as uint8 tensors (N,3,H,W) in RGB, labels int64 (N,).

    Shared by the in-process cache: treat the tensors as read-only.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        # Checked here so a plugin loader with a wrong layout fails at load time,
        # not deep inside an attack.
        for split in ("train", "test"):
            x, y = self.split(split)
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
                raise DataUnavailableError(
                    f"Dataset '{self.name}' {split} images must be uint8 (N,3,H,W); "
                    f"got {x.dtype} {tuple(x.shape)}."
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataUnavailableError(
                    f"Dataset '{self.name}' {split} labels must be int64 ({x.shape[0]},); "
                    f"got {y.dtype} {tuple(y.shape)}."
                )

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the 'train' or 'test' split."""
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ConfigError(f"Unknown split '{split}' of dataset '{self.name}'. Valid splits: train, test.")


Loader = Callable[[Path, bool], ImageData]
DATASETS: Registry[Loader] = Registry("dataset", entry_point_group="daebench.datasets")


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0,1], the space attacks and models work in."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {x_uint8.dtype}")
    return x_uint8.to(torch.float32).div_(255.0)


def default_data_root() -> pathlib.Path:
    """$DAEBENCH_DATA if set, else ~/.cache/daebench/data (read at each call)."""
    env = os.environ.get("DAEBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "daebench" / "data"


# -- helpers ------------------------------------------------------------------
def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y, dtype=np.int64))


def _nhwc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(0, 3, 1, 2)))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 images, rounded back to uint8."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, x.shape[0], _RESIZE_CHUNK):
        chunk = x[i : i + _RESIZE_CHUNK].to(torch.float32)
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _how_to_provide(root: Path) -> str:
    return (
        f"To provide it, put the dataset files under {root}, set $DAEBENCH_DATA to the data root "
        f"that holds them, or use 'npz:<path>' with a .npz holding x_train (N,H,W,3) uint8, "
        f"y_train, x_test, y_test arrays (the embedded 'digits' dataset needs nothing)."
    )


def _stack_pil(dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate a PIL-yielding dataset, resize each image to size x size, stack as uint8."""
    n = len(dataset)
    xs = np.empty((n, size, size, 3), dtype=np.uint8)
    ys = np.empty(n, dtype=np.int64)
    for i in range(n):
        img, label = dataset[i]
        xs[i] = np.asarray(img.convert("RGB").resize((size, size), resample=2))  # 2 = BILINEAR
        ys[i] = label
    return _nhwc(xs), torch.from_numpy(ys)


# -- embedded -----------------------------------------------------------------
@DATASETS.register("digits")
def _load_digits(root: Path, download: bool) -> ImageData:
    """scikit-learn's 8x8 digits: always available, so tests and demos need no files."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    x = np.repeat(x[..., None], 3, axis=-1)  # gray -> RGB (N,8,8,3)
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target)
    return ImageData("digits", _nhwc(x_tr), _labels(y_tr), _nhwc(x_te), _labels(y_te), 10)


# -- torchvision --------------------------------------------------------------
def _torchvision_split(name: str, root: Path, download: bool, build: Callable):
    """Build one torchvision dataset, turning offline/missing failures into one message."""
    from daebench.compat import import_torchvision

    tv = import_torchvision()
    try:
        return build(tv.datasets, str(root), download)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; "Dataset not found" a RuntimeError
        why = (
            f"downloading it failed ({type(err).__name__}: {err})"
            if download
            else f"downloading is disabled (download=False; {err})"
        )
        raise DataUnavailableError(
            f"Dataset '{name}' is not available: looked for torchvision's files under {root} "
            f"and {why}. {_how_to_provide(root)}"
        ) from err


@DATASETS.register("cifar10")
def _load_cifar10(root: Path, download: bool) -> ImageData:
    """CIFAR-10 via torchvision (50000/10000, 32x32, 10 classes); downloads when online."""
    parts = []
    for train in (True, False):
        ds = _torchvision_split("cifar10", root, download, lambda d, r, dl: d.CIFAR10(r, train=train, download=dl))
        parts += [_nhwc(ds.data), _labels(ds.targets)]
    return ImageData("cifar10", *parts, num_classes=10)


def _labelled_splits(name: str, root: Path, download: bool, build: Callable) -> list[torch.Tensor]:
    """[x_train, y_train, x_test, y_test] of a torchvision set storing (N,3,H,W) `.data` and `.labels`."""
    parts: list[torch.Tensor] = []
    for split in ("train", "test"):
        ds = _torchvision_split(name, root, download, lambda d, r, dl: build(d, r, split, dl))
        parts += [torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8)), _labels(ds.labels)]
    return parts


@DATASETS.register("stl10")
def _load_stl10(root: Path, download: bool) -> ImageData:
    """STL-10 via torchvision (5000/8000 labelled, 96x96, 10 classes); downloads when online."""
    parts = _labelled_splits("stl10", root, download, lambda d, r, split, dl: d.STL10(r, split=split, download=dl))
    return ImageData("stl10", *parts, num_classes=10)


@DATASETS.register("svhn")
def _load_svhn(root: Path, download: bool) -> ImageData:
    """SVHN via torchvision (73257/26032, 32x32, 10 classes); downloads when online."""
    # SVHN writes its .mat files straight into root; a subfolder keeps them apart.
    parts = _labelled_splits("svhn", root / "svhn", download, lambda d, r, split, dl: d.SVHN(r, split=split, download=dl))
    return ImageData("svhn", *parts, num_classes=10)


@DATASETS.register("gtsrb")
def _load_gtsrb(root: Path, download: bool) -> ImageData:
    """GTSRB via torchvision (26640/12630, resized to 32x32, 43 classes); downloads when online."""
    # GTSRB images vary in size, so each is resized to 32x32 before stacking.
    parts = []
    for split in ("train", "test"):
        ds = _torchvision_split("gtsrb", root, download, lambda d, r, dl: d.GTSRB(r, split=split, download=dl))
        parts += list(_stack_pil(ds, 32))
    return ImageData("gtsrb", *parts, num_classes=43)


# -- user-provided ImageFolder trees -------------------------------------------
def _image_folder_loader(name: str) -> Loader:
    def load(root: Path, download: bool) -> ImageData:
        from daebench.compat import import_torchvision

        base = root / name
        train_dir = base / "train"
        test_dir = next((base / s for s in ("test", "val") if (base / s).is_dir()), base / "test")
        layout = f"{base}/train/<class>/*.jpg and {base}/test/<class>/*.jpg (or val/ instead of test/)"
        if not (train_dir.is_dir() and test_dir.is_dir()):
            raise DataUnavailableError(
                f"Dataset '{name}' is not available: expected an ImageFolder layout {layout}, "
                f"but it is missing. '{name}' cannot be downloaded automatically"
                f"{' (download=True does not help)' if download else ''}. {_how_to_provide(root)}"
            )
        tv = import_torchvision()
        try:
            train, test = tv.datasets.ImageFolder(str(train_dir)), tv.datasets.ImageFolder(str(test_dir))
        except (OSError, RuntimeError) as err:  # e.g. "Couldn't find any class folder"
            raise DataUnavailableError(
                f"Dataset '{name}' under {base} is not a valid ImageFolder layout {layout}: {err}"
            ) from err
        if train.classes != test.classes:
            raise DataUnavailableError(
                f"Dataset '{name}': the class folders of {train_dir} ({', '.join(train.classes)}) and "
                f"{test_dir} ({', '.join(test.classes)}) differ; both splits need the same classes."
            )
        x_tr, y_tr = _stack_pil(train, _FOLDER_SIZE)
        x_te, y_te = _stack_pil(test, _FOLDER_SIZE)
        return ImageData(name, x_tr, y_tr, x_te, y_te, len(train.classes))

    load.__name__ = load.__qualname__ = f"_load_{name}"
    load.__doc__ = f"'{name}' from a user-provided ImageFolder tree <root>/{name}/{{train,test}}/<class>/*."
    return load


for _name in ("animals10", "imagenet20"):
    DATASETS.register(_name, _image_folder_loader(_name), origin=__name__)
del _name


# -- npz ------------------------------------------------------------------------
def _npz_path(source: str) -> Path:
    path = Path(source[len(NPZ_PREFIX) :]).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise DataUnavailableError(
            f"Dataset file {path} (from '{source}') does not exist. An npz source is 'npz:<path>' "
            f"to a .npz with arrays {', '.join(NPZ_KEYS)}; relative paths resolve against {Path.cwd()}."
        )
    return path.resolve()


NPZ_EXPECTED = ("x_train (N,H,W,3) uint8, y_train (N,) integer labels, x_test (M,H,W,3) uint8, y_test (M,) integer "
                "labels, N and M at least 1, labels 0..C-1 with every class in the training split")


def npz_array_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each array's dtype and shape, read from its header: the images are never decoded."""
    import zipfile

    headers: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if not member.endswith(".npy"):
                continue
            with z.open(member) as f:
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            headers[member[:-4]] = (dtype, shape)
    return headers


def npz_problem(path: Path) -> str | None:
    """What is wrong with an npz dataset file, as one sentence naming the file, or None.
    Reads array headers and labels only, so `daebench validate` can afford it for every file."""
    try:
        headers = npz_array_headers(path)
        with np.load(path, allow_pickle=False) as f:  # the labels are small: read whole
            labels = {k: f[k] for k in ("y_train", "y_test") if k in headers}
    except Exception as err:  # not a zip, truncated, a pickled object array, ...
        return f"dataset file {path} cannot be read as .npz ({type(err).__name__}: {err}); expected {NPZ_EXPECTED}"
    missing = [k for k in NPZ_KEYS if k not in headers]
    if missing:
        return (f"dataset file {path} lacks the arrays {', '.join(missing)}: it has "
                f"{', '.join(sorted(headers)) or 'no arrays'}; expected {NPZ_EXPECTED}")
    for split in ("train", "test"):
        (x_dtype, x_shape), (y_dtype, y_shape) = headers[f"x_{split}"], headers[f"y_{split}"]
        if x_dtype != np.uint8 or len(x_shape) != 4 or x_shape[-1] != 3:
            return f"dataset file {path}: x_{split} is {x_dtype} {x_shape}; expected {NPZ_EXPECTED}"
        if x_shape[0] == 0 or min(x_shape[1:3]) == 0:
            return f"dataset file {path}: the {split} split is empty ({x_shape}); expected {NPZ_EXPECTED}"
        if not np.issubdtype(y_dtype, np.integer) or y_shape != (x_shape[0],):
            return (f"dataset file {path}: y_{split} is {y_dtype} {y_shape} for {x_shape[0]} images; "
                    f"expected {NPZ_EXPECTED}")
    train, test = labels["y_train"], labels["y_test"]
    if min(train.min(), test.min()) < 0:
        return f"dataset file {path}: negative labels; expected {NPZ_EXPECTED}"
    classes = int(train.max()) + 1
    present = np.unique(train)
    if len(present) != classes:
        absent = sorted(set(range(classes)) - set(present.tolist()))
        return (f"dataset file {path}: the training labels span 0..{classes - 1} but {len(absent)} of those classes "
                f"never occur (e.g. {', '.join(map(str, absent[:5]))}), so a head would get {classes} outputs for "
                f"{len(present)} classes; relabel them 0..{len(present) - 1}")
    if int(test.max()) >= classes:
        return (f"dataset file {path}: y_test has label {int(test.max())}, but the training split has only the "
                f"classes 0..{classes - 1}; expected {NPZ_EXPECTED}")
    return None


def _load_npz(path: Path) -> ImageData:
    """Read and validate an npz source; every problem names the file and what was expected."""
    if (problem := npz_problem(path)) is not None:
        raise DataUnavailableError(problem[0].upper() + problem[1:] + ".")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in NPZ_KEYS}
    num_classes = int(arrays["y_train"].max()) + 1
    return ImageData(
        path.stem,
        _nhwc(arrays["x_train"]),
        _labels(arrays["y_train"]),
        _nhwc(arrays["x_test"]),
        _labels(arrays["y_test"]),
        num_classes,
    )


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """File hash, memoised per (path, size, mtime) so a changed file is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- public entry points --------------------------------------------------------
def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}.")
    return image_size


@functools.lru_cache(maxsize=8)
def _load_cached(source: str, image_size: int, root: Path, download: bool, stamp: tuple) -> ImageData:
    # `stamp` (an npz file's size and mtime, a tree's listing) is only part of the key: an edited source reloads.
    if source.startswith(NPZ_PREFIX):
        data = _load_npz(Path(source[len(NPZ_PREFIX) :]))
    elif source.startswith(imagefolder.PREFIX):
        data = _load_tree(source, root)
    else:
        data = DATASETS.get(source)(root, download)
    x_train, x_test = _resize(data.x_train, image_size), _resize(data.x_test, image_size)
    name = source if source in DATASETS else data.name
    return replace(data, name=name, x_train=x_train, x_test=x_test)


def _load_tree(source: str, cache_root: Path) -> ImageData:
    arrays, classes, _ = imagefolder.load_tree(source, cache_root)
    return ImageData(imagefolder.tree_root(source).name, _nhwc(arrays["x_train"]), _labels(arrays["y_train"]),
                     _nhwc(arrays["x_test"]), _labels(arrays["y_test"]), len(classes))


@functools.lru_cache(maxsize=8)
def _tree_fingerprint(source: str, cache_root: Path, stamp: str) -> str:
    """The tree's content digest (decoding it once, into the cache, if needed)."""
    arrays, _, _ = imagefolder.load_tree(source, cache_root)
    return imagefolder.content_sha256(arrays)


def _tree_stamp(source: str) -> str:
    root = imagefolder.tree_root(source)
    return hashlib.sha256(repr(imagefolder.listing(root)).encode()).hexdigest()


def load_dataset(
    source: str,
    image_size: int = 32,
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> ImageData:
    """Load `source` (a registered name or 'npz:<path>') resized to image_size x image_size.

    Memoised per process on the resolved arguments: the returned tensors are shared
    with later callers and must not be modified in place (clone them first).
    """
    _check_size(image_size)
    if source.startswith(NPZ_PREFIX):
        path = _npz_path(source)
        st = path.stat()
        # root and download mean nothing for a file: left out of the key.
        return _load_cached(f"{NPZ_PREFIX}{path}", image_size, Path(), False, (st.st_size, st.st_mtime_ns))
    root_path = (Path(root).expanduser() if root is not None else default_data_root()).resolve()
    if source.startswith(imagefolder.PREFIX):  # the data root holds the decoded-tree cache
        tree = f"{imagefolder.PREFIX}{imagefolder.tree_root(source)}"
        return _load_cached(tree, image_size, root_path, False, (_tree_stamp(tree),))
    DATASETS.get(source)  # unknown names: did-you-mean error before any caching
    return _load_cached(source, image_size, root_path, bool(download), ())


def dataset_fingerprint(source: str, image_size: int = 32, root: str | os.PathLike | None = None) -> dict:
    """JSON-able identity of what `load_dataset` returns, for artifact cache keys.

    npz sources are identified by content (sha256) and file name, not by their
    location, so moving a file keeps caches valid. Registered datasets are
    identified by name; `root` does not change their contents and is ignored.
    """
    _check_size(image_size)
    if source.startswith(NPZ_PREFIX):
        path = _npz_path(source)
        st = path.stat()
        return {
            "source": f"{NPZ_PREFIX}{path.name}",
            "image_size": image_size,
            "sha256": _sha256(str(path), st.st_size, st.st_mtime_ns),
            "version": DATA_VERSION,
        }
    if source.startswith(imagefolder.PREFIX):
        tree = f"{imagefolder.PREFIX}{imagefolder.tree_root(source)}"
        root_path = (Path(root).expanduser() if root is not None else default_data_root()).resolve()
        return {"source": f"{imagefolder.PREFIX}{Path(tree[len(imagefolder.PREFIX):]).name}", "image_size": image_size,
                "sha256": _tree_fingerprint(tree, root_path, _tree_stamp(tree)), "version": DATA_VERSION}
    DATASETS.check(source)
    return {"source": source, "image_size": image_size, "version": DATA_VERSION}
