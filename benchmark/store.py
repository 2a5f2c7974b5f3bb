"""Content-addressed artifact store.

Each artifact lives in `<root>/<stage>/<key[:2]>/<key>/` as
`tensors.safetensors` (all arrays: weights, features, perturbations) and
`meta.json` (spec, input keys, seed, versions, git commit, timings, and the
sha256 of the tensor file). Why this shape:

* the key is a hash of what the artifact *is* (stage, canonical spec, the keys of
  its inputs, the stage's code version), so "already computed?" is a directory
  lookup, and cache, resume and de-duplication are one mechanism;
* an artifact is written into a private temporary directory and renamed into
  place in one `os.rename`, so a reader sees either nothing or a complete artifact,
  whenever the writer is killed;
* the checksum is verified on every read; a corrupt artifact is moved to
  `<root>/quarantine/` and reported as missing, so it is recomputed, never used;
* no pickles: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import errno
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from daebench.errors import StoreError

HOST = socket.gethostname().replace("/", "_")

TENSORS = "tensors.safetensors"
META = "meta.json"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing specs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-serialisable in a spec: {obj!r} ({type(obj).__name__})")


def artifact_key(stage: str, spec: Mapping[str, Any], inputs: Mapping[str, str], version: int) -> str:
    payload = canonical_json({"stage": stage, "spec": spec, "inputs": dict(inputs), "version": version})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CorruptArtifactError(Exception):
    """An artifact's bytes do not match the checksum written with it."""


@dataclass
class Artifact:
    stage: str
    key: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under `prefix.`, with the prefix stripped (e.g. one state dict)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def local_root(root: str | os.PathLike) -> Path:
    """A store location as a local path: a path, or a `file://` URL.

    The store relies on POSIX semantics (atomic directory renames, kernel-released
    file locks), which object stores (s3://, gs://) do not give; those are refused
    with what to do instead."""
    text = os.fspath(root)
    if "://" not in text:
        return Path(text)
    protocol, _, rest = text.partition("://")
    if protocol == "file":
        return Path(rest if rest.startswith("/") else "/" + rest.split("/", 1)[-1])
    raise StoreError(
        f"Artifact store {text!r} uses protocol {protocol!r}: the store needs a POSIX filesystem "
        f"(atomic renames and file locks), which an object store does not provide. Mount it "
        f"(s3fs, gcsfuse, NFS) and pass the mount path, or use a local path / file:// URL.")


# The store's own folders beside the stage folders; every path into them is built by a
# method below, so listings (`complete`) and writers agree on what is not an artifact.
TMP_DIR, LOCKS_DIR, QUARANTINE_DIR, PARTIAL_DIR = ".tmp", "locks", "quarantine", "partial"
CALIBRATION_DIR = "calibration"  # `daebench estimate`'s device timings
_BOOKKEEPING = frozenset({TMP_DIR, LOCKS_DIR, QUARANTINE_DIR, PARTIAL_DIR, CALIBRATION_DIR})


class ArtifactStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = local_root(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def exists(self, stage: str, key: str) -> bool:
        """Complete artifacts only (the directory appears atomically with meta.json)."""
        return (self.path(stage, key) / META).is_file()

    def lock_path(self, key: str) -> Path:
        """The lock file guarding the computation of one artifact."""
        path = self.root / LOCKS_DIR / key[:2] / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def scratch_path(self, key: str) -> Path:
        """Where a long stage keeps mid-stage checkpoints of one artifact until it lands."""
        return self.root / PARTIAL_DIR / key

    def status(self, stage: str, key: str) -> str:
        """'ok', 'missing', or 'corrupt' (its checksum failed: it was just quarantined)."""
        if not self.exists(stage, key):
            return "missing"
        try:
            self._check(stage, key)
            return "ok"
        except CorruptArtifactError:
            return "corrupt"

    def verify(self, stage: str, key: str) -> bool:
        """True if the artifact exists and its checksum holds; quarantine it otherwise."""
        return self.status(stage, key) == "ok"

    def _check(self, stage: str, key: str) -> dict[str, Any]:
        where = self.path(stage, key)
        try:
            meta = json.loads((where / META).read_text())
            expected = meta["checksum"]
            actual = sha256_file(where / TENSORS)
        except (OSError, ValueError, KeyError) as err:
            self.quarantine(stage, key, reason=f"unreadable: {err}")
            raise CorruptArtifactError(f"{stage}/{key}: unreadable ({err})") from err
        if actual != expected:
            self.quarantine(stage, key, reason=f"checksum {actual} != {expected}")
            raise CorruptArtifactError(f"{stage}/{key}: checksum mismatch; quarantined, will be recomputed")
        return meta

    def quarantine(self, stage: str, key: str, reason: str) -> Path | None:
        src = self.path(stage, key)
        if not src.exists():
            return None
        dest = self.root / QUARANTINE_DIR / f"{stage}-{key}-{uuid.uuid4().hex[:8]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dest)
        except OSError:
            return None
        (dest / "QUARANTINED").write_text(reason + "\n")
        return dest

    def load(self, stage: str, key: str) -> Artifact:
        meta = self._check(stage, key)
        tensors = load_file(str(self.path(stage, key) / TENSORS))
        return Artifact(stage, key, tensors, meta)

    def load_meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / META).read_text())

    def save(
        self, stage: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
    ) -> Path:
        """Write atomically; if another writer got there first, keep theirs."""
        final = self.path(stage, key)
        tmp_root = self.root / TMP_DIR
        tmp_root.mkdir(parents=True, exist_ok=True)
        # The writer's host and pid are in the name, so a cleaner on a shared filesystem
        # removes only what a dead process of its own host left.
        tmp = tmp_root / f"{stage}-{key}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            save_file(clean, str(tmp / TENSORS))
            _fsync(tmp / TENSORS)
            full_meta = {"stage": stage, "key": key, **meta, "checksum": sha256_file(tmp / TENSORS)}
            (tmp / META).write_text(json.dumps(full_meta, indent=1, sort_keys=True, default=_json_default))
            _fsync(tmp / META)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.exists(stage, key):
                    raise
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"The disk holding the cache directory {self.root} is full (ENOSPC while writing "
                                 f"the {stage} artifact {key[:12]}): nothing partial was kept, and every artifact "
                                 f"stored before it is intact. Free space (or pass another --cache-dir) and re-run "
                                 f"to resume.") from None
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def clean_stale_tmp(self, older_than_s: float = 0.0, foreign_after_s: float = 6 * 3600) -> int:
        """Remove temporary directories left by killed writers; returns how many.

        A writer of this host is stale when its pid is dead. Another host's writer cannot
        be checked from here, so its directory is removed only when older than
        `foreign_after_s` (no artifact write takes hours)."""
        tmp_root = self.root / TMP_DIR
        if not tmp_root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for d in tmp_root.iterdir():
            host, pid = _writer_of(d.name)
            try:
                age = now - d.stat().st_mtime
            except FileNotFoundError:  # its writer finished meanwhile
                continue
            if host == HOST:
                if pid is not None and pid != os.getpid() and _alive(pid):
                    continue
            elif age < max(older_than_s, foreign_after_s):
                continue
            if age >= older_than_s:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    def keys(self, stage: str) -> list[str]:
        base = self.root / stage
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.glob("*/*") if (p / META).is_file())

    def complete(self) -> set[tuple[str, str]]:
        """Every complete artifact as (stage, key), safe to call while writers run.

        Skips the store's own bookkeeping folders; a directory renamed away mid-listing
        (a temporary one landing, a corrupt one quarantined) is simply not counted."""
        found: set[tuple[str, str]] = set()
        try:
            stages = [d.name for d in self.root.iterdir() if d.name not in _BOOKKEEPING and d.is_dir()]
        except FileNotFoundError:
            return found
        for stage in stages:
            try:
                found.update((stage, key) for key in self.keys(stage))
            except FileNotFoundError:  # pragma: no cover - a shard removed mid-listing
                continue
        return found


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _writer_of(name: str) -> tuple[str | None, int | None]:
    """(host, pid) from a temporary directory's name `stage-key-host-pid-uuid`."""
    parts = name.split("-", 2)
    if len(parts) < 3:
        return None, None
    fields = parts[2].rsplit("-", 2)
    if len(fields) == 2:  # written before host names were recorded: treat as this host's
        fields = [HOST, *fields]
    try:
        return fields[0], int(fields[1])
    except (ValueError, IndexError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
