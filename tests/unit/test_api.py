"""The Python API: `daebench.run`, `daebench.load_results`, `daebench.estimate`."""

from __future__ import annotations

import pandas as pd
import pytest

import daebench
from daebench.api import InternalError
from daebench.errors import DAEBenchError
from tests.conftest import MICRO_GRID


def test_run_returns_the_results_table_and_a_rerun_is_cached(tmp_path):
    df = daebench.run(MICRO_GRID, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r")
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert ((df.RA <= df.BA + 1e-9) | (df.attack == "noise")).all() and df.BA.between(0, 1).all()
    again = daebench.run(MICRO_GRID, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r")
    pd.testing.assert_frame_equal(df.drop(columns=["time_utc"]), again.drop(columns=["time_utc"]))
    loaded = daebench.load_results("micro", runs_dir=tmp_path / "r")
    assert list(loaded.BA) == list(df.BA)


def test_overrides_are_validated_like_a_grid_file(tmp_path):
    with pytest.raises(DAEBenchError, match="eps"):
        daebench.run(MICRO_GRID, cache_dir=tmp_path / "c", runs_dir=None, eps=["3"])
    with pytest.raises(DAEBenchError, match="unknown key; did you mean 'seeds'"):
        daebench.run(MICRO_GRID, cache_dir=tmp_path / "c", runs_dir=None, sedes=[1])
    with pytest.raises(DAEBenchError, match="at least 1"):
        daebench.run(MICRO_GRID, workers=0)


def test_estimate_is_an_object_with_totals(tmp_path):
    est = daebench.estimate(MICRO_GRID, cache_dir=tmp_path / "c")
    assert est.total > 0 and set(est.by_stage()) >= {"pretrain", "craft", "defend"}
    assert "most expensive stages" in est.describe(workers=2)


def test_an_unforeseen_exception_becomes_one_internal_error_with_its_cause(tmp_path, monkeypatch):
    from daebench import results

    def boom(*args, **kwargs):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(results, "run_grid", boom)
    with pytest.raises(InternalError, match=r"daebench\.run\(.*\) failed with an internal error "
                                            r"\(ZeroDivisionError: deliberate\)") as info:
        daebench.run(MICRO_GRID, cache_dir=tmp_path / "c")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_import_daebench_stays_light():
    import subprocess
    import sys

    code = "import sys, daebench; print('torch' in sys.modules, callable(daebench.run))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
