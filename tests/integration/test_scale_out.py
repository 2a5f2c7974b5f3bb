"""Scale-out and hardening: a real Dask LocalCluster, two runs racing on one store,
a simulated out-of-memory, corrupted artifacts, and fuzzed grid configs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daebench.config import parse_grid
from daebench.errors import ConfigError
from daebench.results import run_grid
from daebench.store import ArtifactStore
from tests.conftest import MICRO_GRID, REPO, write_grid

METRICS = ["BA", "RA", "ASR", "n"]


def _table(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["defense", "attack"]).reset_index(drop=True)[["defense", "attack", *METRICS]]


@pytest.fixture(scope="module")
def serial_one_thread(tmp_path_factory):
    """The micro grid computed serially with 1 torch thread: what a 1-thread worker computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path_factory.mktemp("serial1") / "cache",
                        runs_dir=None, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # about 30 s each on a 2-core AVX2 machine: CI's slow pass runs it
def test_dask_local_cluster_runs_the_dag_once_into_the_same_store(serial_one_thread, tmp_path):
    from daebench.executors import DaskExecutor

    executor = DaskExecutor(workers=2)
    try:
        assert executor.workers == 2
        report = run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path / "cache", runs_dir=None, progress=False,
                          executor=executor)
    finally:
        executor.close()
    assert not report.failures
    assert sum(report.computed.values()) == len(report.plan.nodes)  # each artifact once
    store = ArtifactStore(tmp_path / "cache")
    assert all(store.verify(n.stage, n.key) for n in report.plan.nodes.values())
    pd.testing.assert_frame_equal(_table(serial_one_thread.results), _table(report.results))


def _crash_on_two(x: int) -> int:
    if x == 2:
        os._exit(1)  # the worker process dies mid-task (as under SIGKILL or the OOM killer)
    return 10 * x


@pytest.mark.parametrize("kind", ["dask", "joblib"])
def test_a_dead_worker_fails_only_its_own_items(kind):
    """The executor turns a lost worker into `on_error(item, err)` for what it held; the rest complete.
    (Dask retries a task whose worker died `allowed-failures` times: 0 here, for speed.)"""
    from daebench.executors import DaskExecutor, JoblibExecutor

    import contextlib

    import dask
    import distributed  # noqa: F401  (loads its config defaults before we override one)

    assert distributed.__version__

    # (dask.config.set applies on creation: make it only where it is exited)
    no_retry = dask.config.set({"distributed.scheduler.allowed-failures": 0}) if kind == "dask" else contextlib.nullcontext()
    with no_retry:
        executor = DaskExecutor(workers=2) if kind == "dask" else JoblibExecutor(2)
        try:
            results = list(executor.map(_crash_on_two, [0, 1, 2, 3], on_error=lambda item, err: ("failed", item)))
        finally:
            if kind == "dask":
                executor.close()
    assert ("failed", 2) in results
    items = sorted(r[1] if isinstance(r, tuple) else r // 10 for r in results)
    assert items == [0, 1, 2, 3]  # every item answered exactly once: a result or a failure
    # Items that shared the dying worker may fail with it (joblib abandons its batch; Dask
    # counts a death against every task the worker held); the others complete.
    assert any(isinstance(r, int) for r in results)


def test_the_runner_turns_a_lost_worker_into_one_failed_stage(tmp_path):
    """A stage whose worker died is reported as failed, its descendants skipped, every other artifact kept."""
    from daebench.executors import JoblibExecutor

    class LosesFirstDefend(JoblibExecutor):
        lost = None

        def map(self, fn, items, on_error):
            for item in items:
                if item.stage == "defend" and self.lost is None:
                    self.lost = item.key
                    yield on_error(item, RuntimeError("worker 'tcp://127.0.0.1:1' vanished"))
                else:
                    yield fn(item)

    executor = LosesFirstDefend(1)
    report = run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path / "cache", runs_dir=None, progress=False,
                      executor=executor, raise_on_failure=False)
    assert [f.key for f in report.failures] == [executor.lost]
    assert "worker running this stage died" in report.failures[0].error
    assert report.skipped == len(report.plan.descendants(executor.lost))
    again = run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path / "cache", runs_dir=None, progress=False)
    assert not again.failures and sum(again.computed.values()) == 1 + report.skipped  # only what was lost


def _daebench(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "daebench.cli", "run", *args, "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # about 30 s each on a 2-core AVX2 machine: CI's slow pass runs it
def test_two_runs_racing_on_one_store_compute_each_artifact_once(tmp_path):
    config = write_grid(tmp_path / "micro.yaml")
    procs = [_daebench(str(config), "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / f"runs{i}"))
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    infos = [json.loads((tmp_path / f"runs{i}" / "micro" / "run.json").read_text()) for i in range(2)]
    computed = sum(sum(info["computed"].values()) for info in infos)
    nodes = sum(len(ArtifactStore(tmp_path / "cache").keys(stage)) for stage in
                ("pretrain", "craft", "defend", "features", "head", "evaluate"))
    assert computed == nodes, (computed, nodes, [i["computed"] for i in infos])
    a, b = (pd.read_csv(tmp_path / f"runs{i}" / "micro" / "results.csv") for i in range(2))
    pd.testing.assert_frame_equal(_table(a), _table(b))
    assert not list((tmp_path / "cache" / "quarantine").glob("*")) if (tmp_path / "cache" / "quarantine").exists() else True


def test_out_of_memory_halves_the_inference_batch_and_retries(micro_run, tmp_path, monkeypatch, caplog):
    from daebench import stages

    real = stages.STAGES["features"]
    seen = []

    def tight_memory(ctx, spec, inputs):
        seen.append(ctx.batch_size)
        if ctx.batch_size > 128:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(ctx, spec, inputs)

    monkeypatch.setitem(stages.STAGES, "features", tight_memory)
    _, _, reference = micro_run
    with caplog.at_level("WARNING", logger="daebench"):
        report = run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path / "cache", runs_dir=None, progress=False)
    assert not report.failures
    assert seen[:3] == [512, 256, 128]
    assert "out of device memory at batch size 512; retrying with 256" in caplog.text
    # smaller batches change features by floating-point rounding only (batch size is not in the key)
    root, _, _ = micro_run
    mine, theirs = ArtifactStore(tmp_path / "cache"), ArtifactStore(root / "cache")
    for key in mine.keys("features"):
        a, b = mine.load("features", key).tensors, theirs.load("features", key).tensors
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["branch0"], b["branch0"], atol=1e-4, rtol=1e-4)


def test_out_of_memory_in_a_training_stage_fails_cleanly_without_retrying(tmp_path, monkeypatch):
    from daebench import stages

    calls = []

    def no_memory(ctx, spec, inputs):
        calls.append(ctx.batch_size)
        raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    monkeypatch.setitem(stages.STAGES, "defend", no_memory)
    report = run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path / "cache", runs_dir=None, progress=False,
                      raise_on_failure=False)
    assert len(calls) == 2 and len(report.failures) == 2  # one try per defense, no batch halving
    assert "out of memory" in report.failures[0].error


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_artifacts_are_detected_reported_and_recomputed(micro_run, tmp_path, damage):
    import shutil

    root, grid, reference = micro_run
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    store = ArtifactStore(cache)
    victims = [("features", store.keys("features")[0]), ("craft", store.keys("craft")[0])]
    for stage, key in victims:
        blob = store.path(stage, key) / "tensors.safetensors"
        data = blob.read_bytes()
        blob.write_bytes(data[: len(data) // 3] if damage == "truncate" else
                         data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    report = run_grid(grid, cache_dir=cache, runs_dir=None, progress=False)
    assert len(report.corrupted) == 2 and "quarantined and recomputed" in report.summary()
    assert report.computed["features"] >= 1 and report.computed["craft"] == 1
    assert len(list((cache / "quarantine").iterdir())) == 2
    pd.testing.assert_frame_equal(_table(reference.results), _table(report.results))


# -- fuzzed configs -----------------------------------------------------------------------------------
_values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
_keys = st.sampled_from(list(MICRO_GRID) + ["nope", "encoder", "atacks", "eps"])
_special = st.sampled_from([
    {"eps": [float("nan")]}, {"eps": ["1e309"]}, {"eps": []}, {"attacks": []}, {"defenses": []}, {"seeds": []},
    {"encoders": [{"checkpoint": "/does/not/exist.ckpt"}]}, {"datasets": {"x": "npz:/does/not/exist.npz"}},
    {"downstream": ["x"], "datasets": {"x": "npz:/nope.npz"}}, {"image_size": 10**9}, {"batch_size": -1},
    {"encoders": [{"method": "simclr"}]}, {"heads": {"epochs": 0}}, {"eps": ["10/0"]}, {"scenarios": ["sideways"]},
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(_keys, _values, max_size=3), special=_special)
def test_fuzzed_grid_configs_give_a_clear_error_or_a_valid_grid(changes, special):
    raw = {**MICRO_GRID, **special, **changes}
    try:
        grid = parse_grid(raw)
    except ConfigError as err:
        assert str(err) and "Traceback" not in str(err)
        return
    # it validated: then every number in it is finite and every axis non-empty
    assert grid.encoders and grid.attacks and grid.defenses and grid.seeds
    assert all(math.isfinite(e) and 0 < e <= 1 for e in grid.eps)


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=200))
def test_fuzzed_yaml_files_never_give_a_traceback(text, tmp_path_factory):
    from daebench.cli import main

    path = tmp_path_factory.mktemp("fuzz") / "grid.yaml"
    path.write_text(text)
    try:
        code = main(["validate", str(path)])
    except SystemExit as exit_:  # argparse never gets here, but be explicit
        code = exit_.code
    assert code in (0, 2)


def test_paths_that_do_not_exist_are_named_in_one_clear_error():
    with pytest.raises(ConfigError, match="npz file '/does/not/exist.npz' does not exist"):
        parse_grid({**MICRO_GRID, "datasets": {"mine": "npz:/does/not/exist.npz"}, "downstream": ["mine"]})
    with pytest.raises(ConfigError, match="checkpoint file '/nope.ckpt' does not exist"):
        parse_grid({**MICRO_GRID, "encoders": [{"checkpoint": "/nope.ckpt"}]})
