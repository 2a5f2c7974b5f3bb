"""scripts/paired_compare.py: each defense against the baseline, paired per image, from the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import MICRO_GRID

REPO = Path(__file__).resolve().parents[2]


def test_paired_comparison_agrees_with_the_results_table(micro_run, tmp_path):
    root, _, report = micro_run
    grid = tmp_path / "micro.yaml"
    grid.write_text(yaml.safe_dump(MICRO_GRID))
    out = tmp_path / "paired.json"
    done = subprocess.run([sys.executable, "scripts/paired_compare.py", str(grid), "--cache-dir", str(root / "cache"),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    table = report.results.set_index(["defense", "attack"])
    attacks = sorted(table.loc["none"].index)
    assert [(r["metric"], r["attack"]) for r in rows] == [("BA", None)] + [("RA", a) for a in attacks]
    for r in rows:  # the paired difference is exactly the difference of the table's rates
        metric, attack = r["metric"], r["attack"] or attacks[0]
        expected = table.loc[("pgd_at", attack), metric] - table.loc[("none", attack), metric]
        assert r["difference"] == pytest.approx(expected, abs=1e-9)
        assert r["difference_lo"] <= r["difference"] <= r["difference_hi"] and 0 <= r["p_value"] <= 1
        assert r["n"] == table.loc[("none", attack), "n"]
    assert "| pgd_at | BA |" in done.stdout


def test_any_defense_can_be_the_baseline_and_an_absent_one_is_named(micro_run, tmp_path):
    root, _, report = micro_run
    grid = tmp_path / "micro.yaml"
    grid.write_text(yaml.safe_dump(MICRO_GRID))
    out = tmp_path / "paired.json"
    command = [sys.executable, "scripts/paired_compare.py", str(grid), "--cache-dir", str(root / "cache")]
    done = subprocess.run(command + ["--baseline", "pgd_at", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    table = report.results.set_index(["defense", "attack"])
    assert {r["defense"] for r in rows} == {"none"} and {r["baseline"] for r in rows} == {"pgd_at"}
    for r in rows:  # the other way round: none - pgd_at
        attack = r["attack"] or sorted(table.loc["none"].index)[0]
        expected = table.loc[("none", attack), r["metric"]] - table.loc[("pgd_at", attack), r["metric"]]
        assert r["difference"] == pytest.approx(expected, abs=1e-9)
    absent = subprocess.run(command + ["--baseline", "zepad"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert absent.returncode != 0 and "'zepad'" in absent.stderr and "pgd_at" in absent.stderr
    assert "Traceback" not in absent.stderr
