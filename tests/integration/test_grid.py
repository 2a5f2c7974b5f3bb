"""The grid end to end on the micro grid: cached, deterministic, kill-safe, failure-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from daebench.config import parse_grid
from daebench.errors import StageFailedError
from daebench.results import run_grid
from daebench.store import ArtifactStore
from tests.conftest import MICRO_GRID, write_grid

METRICS = ["BA", "RA", "ASR", "n"]


def _table(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["defense", "attack"]).reset_index(drop=True)[["defense", "attack", *METRICS]]


@pytest.fixture
def first_run(micro_run):
    return micro_run


def test_every_cell_has_a_result(first_run):
    _, grid, report = first_run
    assert len(report.results) == 4  # 1 encoder x 2 attacks x 2 defenses x 1 D_f x 1 D_d
    assert not report.failures
    # craft is shared: embedattack once per D_d, uapgd once -- not once per defense
    assert report.computed["craft"] == 2
    assert report.computed["defend"] == 2


def test_attacks_lower_robust_accuracy(first_run):
    _, _, report = first_run
    base = report.results[report.results.defense == "none"]
    assert (base.RA < base.BA).all()
    assert (base.ASR > 0).all()


def test_second_run_computes_nothing_and_is_identical(first_run):
    root, grid, report = first_run
    again = run_grid(grid, cache_dir=root / "cache", runs_dir=root / "runs", progress=False)
    assert sum(again.computed.values()) == 0
    assert sum(again.hits.values()) == len(again.plan.nodes)
    pd.testing.assert_frame_equal(_table(report.results), _table(again.results))


def test_run_writes_results_with_its_config_and_provenance(first_run):
    root, _, _ = first_run
    run_dir = root / "runs" / "micro"
    assert (run_dir / "results.csv").is_file() and (run_dir / "grid.yaml").is_file()
    import json

    info = json.loads((run_dir / "run.json").read_text())
    assert {"torch", "git_commit", "device", "grid_hash", "cpu"} <= set(info)
    import torch

    assert info["cpu"].endswith(f"{torch.backends.cpu.get_cpu_capability()})")  # the kernels' instruction set


def test_recomputation_in_a_fresh_store_is_bit_identical(first_run, tmp_path):
    _, grid, report = first_run
    fresh = run_grid(grid, cache_dir=tmp_path / "cache", runs_dir=None, progress=False)
    pd.testing.assert_frame_equal(_table(report.results), _table(fresh.results))


def test_corrupted_artifact_is_recomputed_not_used(first_run, tmp_path):
    root, grid, report = first_run
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    from daebench.store import ArtifactStore

    store = ArtifactStore(cache)
    key = store.keys("head")[0]
    blob = store.path("head", key) / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    again = run_grid(grid, cache_dir=cache, runs_dir=None, progress=False)
    assert again.computed["head"] == 1
    assert len(list((cache / "quarantine").iterdir())) == 1
    pd.testing.assert_frame_equal(_table(report.results), _table(again.results))


def test_sigkill_mid_run_then_resume_equals_uninterrupted(first_run, tmp_path):
    _, _, report = first_run
    config = write_grid(tmp_path / "micro.yaml")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "daebench.cli", "run", str(config), "--cache-dir", str(cache),
           "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    # Kill once the first stages have landed, while later ones are in flight.
    while time.time() < deadline and len(ArtifactStore(cache).complete()) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = len(ArtifactStore(cache).complete())
    assert landed >= 3, "the run finished or stalled before it could be killed"
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    df = pd.read_csv(tmp_path / "runs" / "micro" / "results.csv")
    pd.testing.assert_frame_equal(_table(report.results), _table(df), check_dtype=False)
    assert not any((cache / ".tmp").iterdir())


def test_missing_dataset_fails_cleanly_and_keeps_what_was_computed(tmp_path, monkeypatch):
    # D_d 'svhn' is not on disk and downloads are off: its stages fail with a clear
    # error, every stage not needing it still runs and is kept.
    monkeypatch.setenv("DAEBENCH_DATA", str(tmp_path / "empty"))
    grid = parse_grid({**MICRO_GRID, "downstream": ["digits", "svhn"], "download": False,
                       "attacks": [{"name": "uapgd", "params": {"steps": 1}}], "defenses": ["none"]})
    with pytest.raises(StageFailedError) as err:
        run_grid(grid, cache_dir=tmp_path / "cache", runs_dir=None, progress=False)
    msg = str(err.value)
    assert "svhn" in msg and "npz:" in msg and "Traceback" not in msg
    again = run_grid(grid, cache_dir=tmp_path / "cache", runs_dir=None, progress=False, raise_on_failure=False)
    assert sum(again.computed.values()) == 0  # nothing that succeeded is redone
    assert len(again.results) == 1 and again.results.iloc[0].D_d == "digits"


def test_parallel_workers_give_the_same_results(tmp_path):
    """Two loky workers (1 torch thread each) == in-process with 1 thread, bit for bit.

    CPU kernels reduce in an order that depends on the thread count, so results are
    compared at equal thread counts (the count is recorded in every artifact).
    """
    import torch

    from daebench.executors import JoblibExecutor

    grid = parse_grid(MICRO_GRID)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_grid(grid, cache_dir=tmp_path / "serial", runs_dir=None, progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel = run_grid(grid, cache_dir=tmp_path / "parallel", runs_dir=None, progress=False, executor=JoblibExecutor(2))
    assert sum(parallel.computed.values()) == len(parallel.plan.nodes)
    pd.testing.assert_frame_equal(_table(serial.results), _table(parallel.results))


def test_scenarios_pick_surrogates_and_share_artifacts(tmp_path):
    surrogate = {"name": "other-simclr", "method": "simclr", "dataset": "digits", "arch": "resnet18", "width": 8,
                 "params": {"epochs": 1, "batch_size": 128, "max_samples": 256}}
    grid = parse_grid({**MICRO_GRID, "scenarios": ["semi_black_box", "white_box", "transfer"],
                       "surrogates": [surrogate], "transfer_from": "other-simclr",
                       "attacks": [{"name": "uapgd", "params": {"steps": 2, "loss": "embedding", "variant": "batched"}}],
                       "defenses": ["none"]})
    report = run_grid(grid, cache_dir=tmp_path / "cache", runs_dir=None, progress=False)
    assert set(report.results.scenario) == {"semi_black_box", "white_box", "transfer"}
    # no defense here has auxiliary encoders: white-box == semi-black-box, one shared artifact
    assert report.computed["craft"] == 2 and report.computed["pretrain"] == 2
    by = report.results.set_index("scenario")
    assert by.loc["white_box", "RA"] == by.loc["semi_black_box", "RA"]
    assert by.loc["transfer", "surrogate"] == "other-simclr"


def test_transfer_needs_a_known_surrogate():
    from daebench.errors import ConfigError

    with pytest.raises(ConfigError, match="transfer_from 'nope' is not an encoder"):
        parse_grid({**MICRO_GRID, "scenarios": ["transfer"], "transfer_from": "nope"})


def test_zepad_end_to_end_three_branches_detection_and_white_box_surrogates(tmp_path):
    """ZePAD on the micro grid: partner + BMP pre-trained by the grid, RFDM, detection reported;
    white-box attackers get the victim and the public partner, never the BMP encoder."""
    grid = parse_grid({**MICRO_GRID, "defenses": ["none", {"name": "zepad", "params": {"epochs": 1, "steps": 1,
                                                                                       "max_samples": 128}}],
                       "attacks": [{"name": "embedattack", "params": {"steps": 3}}],
                       "scenarios": ["semi_black_box", "white_box"]})
    report = run_grid(grid, cache_dir=tmp_path / "cache", runs_dir=None, progress=False)
    df = report.results
    zepad = df[df.defense == "zepad"]
    assert len(zepad) == 2 and zepad.detection_accuracy.between(0, 1).all()
    assert df[df.defense == "none"].detection_accuracy.isna().all()
    assert report.computed["pretrain"] == 3  # victim, BYOL partner, BMP SimCLR on D_f (seed + 1)
    crafts = [n for n in report.plan.nodes.values() if n.stage == "craft"]
    surrogate_counts = sorted(len([r for r in n.inputs if r.startswith("surrogate")]) for n in crafts)
    assert surrogate_counts == [1, 2]  # semi-black-box: the victim; white-box: victim + partner
    from daebench.store import ArtifactStore

    model = ArtifactStore(tmp_path / "cache").load_meta("defend", [n.key for n in report.plan.nodes.values()
                                                                  if n.stage == "defend" and n.spec.defense == "zepad"][0])
    assert model["fusion"] == {"method": "rfdm", "mpae": [0, 1], "bmp": 2, "threshold": 0.1}


def test_a_parallel_run_leaves_the_callers_torch_thread_count_alone(tmp_path):
    """A one-stage wave runs in-process with the workers' thread count; the caller's
    count must be restored (found by CI: later in-process runs silently used 1 thread)."""
    import torch

    from daebench.executors import JoblibExecutor

    before = torch.get_num_threads()
    grid = parse_grid({**MICRO_GRID, "attacks": [{"name": "uapgd", "params": {"steps": 1}}], "defenses": ["none"]})
    run_grid(grid, cache_dir=tmp_path / "cache", runs_dir=None, progress=False, executor=JoblibExecutor(2))
    assert torch.get_num_threads() == before


def test_an_input_transformation_defense_runs_through_a_grid_and_is_stored_as_a_module(tmp_path):
    """bit_depth wraps the victim (InputTransformed): its artifact holds the spec that
    rebuilds the wrapper and the victim's weights; its features are the victim's features
    of the quantised images."""
    import torch

    from daebench.encoders.models import unpack_branches
    from daebench.store import ArtifactStore

    grid = parse_grid({**MICRO_GRID, "attacks": [{"name": "embedattack", "params": {"steps": 3}}],
                       "defenses": ["none", {"name": "bit_depth", "params": {"bits": 3}}]})
    report = run_grid(grid, tmp_path / "cache", None, progress=False)
    assert set(report.results.defense) == {"none", "bit_depth"}
    store = ArtifactStore(tmp_path / "cache")
    defends = {n.spec.defense: n for n in report.plan.nodes.values() if n.stage == "defend"}
    art = store.load("defend", defends["bit_depth"].key)
    assert art.meta["branches"][0]["kind"] == "input_transformed"
    (model,) = unpack_branches(art.tensors, art.meta)
    (victim,) = unpack_branches(*(lambda a: (a.tensors, a.meta))(store.load("defend", defends["none"].key)))
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), victim(torch.round(x * 7) / 7))
