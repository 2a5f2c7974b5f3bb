"""Where a number came from: versions, git commit, device, time."""

from __future__ import annotations

import functools
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

import daebench


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(daebench.__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str = "cpu") -> dict:
    from daebench.runtime import resolve_device

    dev = str(resolve_device(str(device)))
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name()})"
    return {
        "daebench": daebench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "device": dev,
        "torch_threads": torch.get_num_threads(),  # CPU results depend on it (reduction order)
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
