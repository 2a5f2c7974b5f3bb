import json
import os
import time

import pytest
import torch

from daebench.store import ArtifactStore, CorruptArtifactError, artifact_key


def test_key_is_canonical_and_sensitive():
    a = artifact_key("craft", {"eps": 0.1, "attack": "x"}, {"surrogate": "k"}, 1)
    b = artifact_key("craft", {"attack": "x", "eps": 0.1}, {"surrogate": "k"}, 1)
    assert a == b
    assert a != artifact_key("craft", {"attack": "x", "eps": 0.2}, {"surrogate": "k"}, 1)
    assert a != artifact_key("craft", {"attack": "x", "eps": 0.1}, {"surrogate": "k"}, 2)
    assert a != artifact_key("craft", {"attack": "x", "eps": 0.1}, {"surrogate": "j"}, 1)


def test_roundtrip(tmp_path):
    store = ArtifactStore(tmp_path)
    t = {"delta": torch.randn(1, 3, 4, 4), "labels": torch.arange(5)}
    store.save("craft", "abc123", t, {"note": "hi"})
    assert store.exists("craft", "abc123") and store.verify("craft", "abc123")
    art = store.load("craft", "abc123")
    assert torch.equal(art.tensors["delta"], t["delta"]) and torch.equal(art.tensors["labels"], t["labels"])
    assert art.meta["note"] == "hi" and len(art.meta["checksum"]) == 64
    assert store.keys("craft") == ["abc123"]
    assert not (tmp_path / ".tmp").exists() or not any((tmp_path / ".tmp").iterdir())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corruption_is_detected_quarantined_and_never_served(tmp_path, damage):
    store = ArtifactStore(tmp_path)
    store.save("head", "k1", {"w": torch.ones(1000)}, {})
    blob = store.path("head", "k1") / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError):
        store.load("head", "k1")
    assert not store.exists("head", "k1")  # moved aside, so the runner recomputes it
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "QUARANTINED").is_file()


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path):
    store = ArtifactStore(tmp_path)
    stale = tmp_path / ".tmp" / "craft-k-999999999-abcd1234"
    stale.mkdir(parents=True)
    assert store.clean_stale_tmp() == 1 and not stale.exists()


def test_stale_temp_dirs_are_judged_per_host(tmp_path):
    """On a shared filesystem a pid means nothing for another host: its leftovers go only when old."""
    from daebench.store import HOST

    store = ArtifactStore(tmp_path)
    tmp = tmp_path / ".tmp"
    dead_here = tmp / f"craft-k1-{HOST}-999999999-abcd1234"
    alive_here = tmp / f"craft-k2-{HOST}-{os.getppid()}-abcd1234"
    fresh_elsewhere = tmp / "craft-k3-other-node-7-abcd1234"
    old_elsewhere = tmp / "craft-k4-other-node-7-abcd1234"
    for d in (dead_here, alive_here, fresh_elsewhere, old_elsewhere):
        d.mkdir(parents=True)
    seven_hours_ago = time.time() - 7 * 3600
    os.utime(old_elsewhere, (seven_hours_ago, seven_hours_ago))
    assert store.clean_stale_tmp() == 2
    assert not dead_here.exists() and not old_elsewhere.exists()
    assert alive_here.exists() and fresh_elsewhere.exists()


def test_store_accepts_file_urls_and_refuses_object_stores(tmp_path):
    from daebench.errors import StoreError

    assert ArtifactStore(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(StoreError, match="POSIX filesystem.*Mount it"):
        ArtifactStore("s3://bucket/daebench")


def test_meta_is_plain_json(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("evaluate", "kk", {"x": torch.zeros(2)}, {"metrics": {"BA": 0.5}})
    meta = json.loads((store.path("evaluate", "kk") / "meta.json").read_text())
    assert meta["metrics"]["BA"] == 0.5 and meta["stage"] == "evaluate"


def test_complete_lists_finished_artifacts_and_ignores_bookkeeping_and_vanishing_dirs(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.complete() == set()  # the root does not exist yet
    store.save("craft", "abc123", {"x": torch.zeros(2)}, {})
    store.save("head", "def456", {"x": torch.ones(2)}, {})
    (tmp_path / ".tmp" / "craft-zzz-host-1-aa").mkdir(parents=True)
    (tmp_path / "quarantine" / "craft-old").mkdir(parents=True)
    (tmp_path / "quarantine" / "craft-old" / "meta.json").write_text("{}")
    (tmp_path / "partial" / "k").mkdir(parents=True)
    assert store.complete() == {("craft", "abc123"), ("head", "def456")}
    store.quarantine("head", "def456", reason="test")
    assert store.complete() == {("craft", "abc123")}
