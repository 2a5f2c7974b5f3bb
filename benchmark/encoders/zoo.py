"""The encoder zoo: pre-train one SSL encoder outside a grid, and list what is cached.

`daebench encoders pretrain` builds the same `pretrain` node a grid would (a
one-encoder grid, planned by the grid planner), so an encoder made here is a cache
hit for any grid that names the same recipe, and the other way round.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from daebench.store import ArtifactStore


@dataclasses.dataclass
class PretrainResult:
    key: str
    cached: bool
    meta: dict[str, Any]


def encoder_grid(method: str, dataset: str, profile: str = "tiny", width: int = 64, seed: int = 0,
                 params: dict[str, Any] | None = None, device: str = "auto", image_size: int = 32):
    """A minimal grid holding one encoder; `dataset` is a registry name or a source such as npz:path."""
    from daebench.config import parse_grid

    name = Path(dataset.split(":", 1)[1]).stem if ":" in dataset else dataset
    raw = {
        "name": f"pretrain-{method}-{name}", "profile": profile, "seeds": [seed], "device": device,
        "image_size": image_size, "datasets": {name: dataset} if name != dataset else {},
        "encoders": [{"method": method, "dataset": name, "width": width, "params": params or {}}],
        "attacks": ["noise"], "defenses": ["none"], "attacker_data": name,
        "fine_tune_data": [name], "downstream": [name],
    }
    return parse_grid(raw, where=f"`daebench encoders pretrain --method {method}`")


def pretrain_encoder(grid, cache_dir: str | os.PathLike, progress: bool = True) -> PretrainResult:
    """Run (or find in the cache) the grid's first encoder; raises on failure."""
    from daebench.errors import StageFailedError
    from daebench.plan import _Planner
    from daebench.run import execute_node
    from daebench.stages import StageContext

    planner = _Planner(grid)
    key = planner.encoder(grid.encoders[0], grid.seeds[0])
    node = planner.plan.nodes[key]
    store = ArtifactStore(cache_dir)
    cached = store.verify(node.stage, key)
    if not cached:
        ctx = StageContext(device=grid.device, data_root=grid.data_root, download=grid.download,
                           batch_size=grid.batch_size, progress=progress)
        outcome = execute_node(node, str(store.root.resolve()), ctx)
        if outcome.error:
            raise StageFailedError(f"{node.label} failed:\n{outcome.error}")
    return PretrainResult(key, cached, store.load_meta(node.stage, key))


def list_encoders(cache_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per cached encoder (pre-trained or loaded from a checkpoint)."""
    store = ArtifactStore(cache_dir)
    rows = []
    for stage in ("pretrain", "checkpoint"):
        for key in store.keys(stage):
            meta = store.load_meta(stage, key)
            spec = meta.get("spec", {})
            arch = spec.get("arch", {})
            params = spec.get("params", {})
            data = spec.get("data", {})
            rows.append({
                "key": key[:12], "method": spec.get("method", "checkpoint"),
                "data": (data.get("fingerprint", {}).get("source") if data else meta.get("source_file")),
                "width": arch.get("width"), "epochs": params.get("epochs"), "seed": spec.get("seed"),
                "knn": meta.get("knn_accuracy"), "random_init_knn": meta.get("random_init_knn_accuracy"),
                "minutes": round(meta["seconds"] / 60, 1) if "seconds" in meta else None,
            })
    return rows
