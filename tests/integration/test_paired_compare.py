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
