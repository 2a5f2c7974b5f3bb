"""Fault injection: SIGKILL the runner at random moments, 20 times; every re-run must
end with the uninterrupted run's results and recompute no artifact that was complete."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from daebench.results import run_grid
from daebench.store import ArtifactStore
from tests.conftest import REPO, write_grid

pytestmark = pytest.mark.slow
TRIALS = 20


def _complete(cache) -> set[tuple[str, str]]:
    return ArtifactStore(cache).complete()


def test_random_sigkills_then_resume_equal_an_uninterrupted_run(micro_run, tmp_path):
    _, grid, reference = micro_run
    nodes = len(reference.plan.nodes)
    expected = reference.results.sort_values(["defense", "attack"]).reset_index(drop=True)[["defense", "attack", "BA", "RA", "ASR"]]
    rng = random.Random(2026)
    config = write_grid(tmp_path / "micro.yaml")
    outcomes = []
    for trial in range(TRIALS):
        cache = tmp_path / f"cache{trial}"
        target = rng.randint(1, nodes - 1)  # kill after this many artifacts landed, plus a random delay
        jitter = rng.uniform(0, 0.02)  # shorter than most stages: the last nodes land within milliseconds
        proc = subprocess.Popen([sys.executable, "-m", "daebench.cli", "run", str(config), "--cache-dir", str(cache),
                                 "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--no-estimate"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and len(_complete(cache)) < target and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(jitter)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before = _complete(cache)
        report = run_grid(grid, cache_dir=cache, runs_dir=None, progress=False)
        hits, computed = sum(report.hits.values()), sum(report.computed.values())
        assert hits == len(before), f"trial {trial}: a complete artifact was recomputed ({hits} hits, {len(before)} complete)"
        assert hits + computed == nodes
        got = report.results.sort_values(["defense", "attack"]).reset_index(drop=True)[expected.columns]
        pd.testing.assert_frame_equal(expected, got, check_dtype=False)
        assert not any((cache / ".tmp").iterdir()) if (cache / ".tmp").exists() else True
        assert not (cache / "partial").exists() or not any((cache / "partial").iterdir())
        outcomes.append(len(before))
    killed_mid_run = sum(0 < n < nodes for n in outcomes)
    print(f"{TRIALS} trials; killed with {sorted(outcomes)} of {nodes} artifacts complete; all resumed identically")
    assert killed_mid_run >= TRIALS // 2  # most kills really interrupted the grid
