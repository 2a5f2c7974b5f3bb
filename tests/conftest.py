"""Shared fixtures: a micro grid small enough to run end to end in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

MICRO_GRID = {
    "name": "micro",
    "profile": "tiny",
    "image_size": 16,
    "eps": ["10/255"],
    "encoders": [{"method": "simclr", "dataset": "digits", "arch": "resnet18", "width": 8,
                  "params": {"epochs": 2, "batch_size": 128, "max_samples": 512}}],
    "attacks": [{"name": "embedattack", "params": {"steps": 5}},
                {"name": "uapgd", "params": {"steps": 4}}],
    "attacker_data": "digits",
    "defenses": ["none", {"name": "pgd_at", "params": {"epochs": 1, "steps": 2, "max_samples": 256}}],
    "fine_tune_data": ["digits"],
    "downstream": ["digits"],
    "heads": {"epochs": 20},
}


def write_grid(path: Path, **overrides) -> Path:
    grid = {**MICRO_GRID, **overrides}
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture
def micro_grid_path(tmp_path: Path) -> Path:
    return write_grid(tmp_path / "micro.yaml")


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here (the real data lives in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """The micro grid run once per session: (root with cache/ and runs/, grid, report). Read-only."""
    from daebench.config import parse_grid
    from daebench.results import run_grid

    root = tmp_path_factory.mktemp("micro-run")
    grid = parse_grid(MICRO_GRID)
    report = run_grid(grid, cache_dir=root / "cache", runs_dir=root / "runs", progress=False)
    return root, grid, report


def digits_subset(n_train: int, n_test: int, image_size: int = 16):
    """The first images of the embedded digits, as a small `ImageData` for defenses' tests."""
    from daebench.data import ImageData, load_dataset

    d = load_dataset("digits", image_size=image_size)
    return ImageData("digits-small", d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test], d.y_test[:n_test],
                     d.num_classes)


def pytest_configure(config):
    """Internal-error logs of the tests go to a temporary file, never into results/runs/."""
    import os
    import tempfile

    os.environ.setdefault("DAEBENCH_ERROR_LOG", str(Path(tempfile.mkdtemp()) / "daebench-error.log"))



def pytest_terminal_summary(terminalreporter):
    """The CPU the tests ran on, even under -q: some kernels (bf16 without AMX, say) exist on
    some CPUs only, and a CI log should say which ones a failure met."""
    import torch

    from daebench.provenance import cpu_description, cpu_flags

    extras = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})) or "no vector flags read"
    terminalreporter.write_line(f"cpu: {cpu_description()}; {extras}; torch threads {torch.get_num_threads()}")
