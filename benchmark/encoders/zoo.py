"""The encoder zoo: what encoders the artifact store holds, with their quality.

Pre-training one encoder outside a grid is planned by `daebench.plan.standalone_encoder`
(the very spec a grid naming the same recipe builds, so either one is a cache hit for
the other) and run by `daebench.runner.run_stage`; `daebench encoders pretrain` does both.
"""

from __future__ import annotations

import os
from typing import Any

from daebench.store import ArtifactStore


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
