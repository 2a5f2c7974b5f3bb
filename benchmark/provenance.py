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


@functools.lru_cache(maxsize=1)
def _first_cpu_entry() -> dict[str, str]:
    """/proc/cpuinfo's first processor entry ({} where there is none): a virtual machine's
    model name can be generic, its family, model and flags are not."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """The processor's instruction-set flags (avx512f, amx_bf16, ...); empty where unread."""
    return frozenset(_first_cpu_entry().get("flags", "").split())


@functools.lru_cache(maxsize=1)
def cpu_description() -> str:
    """The processor and the vector instructions torch's kernels use on it: float32
    results differ in their last bits between, say, AVX2 and AVX512 kernels, and a
    trained encoder carries such differences into its accuracies."""
    fields = _first_cpu_entry()
    name = fields.get("model name") or platform.processor() or platform.machine()
    generation = f"family {fields['cpu family']} model {fields['model']}, " if "cpu family" in fields and "model" in fields else ""
    return f"{name} ({generation}{torch.backends.cpu.get_cpu_capability()})"


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
        "cpu": cpu_description(),  # and on the kernels' instruction set
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
