"""Seeding, devices and batching shared by every stage.

Each stage seeds itself from its own spec at its start (never from what ran
before it), which is what makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Index batches over range(n): shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def configure_threads() -> None:
    """Use every core for intra-op parallelism (torch defaults to physical cores)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
