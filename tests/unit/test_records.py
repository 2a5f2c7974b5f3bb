"""The records index of results/README.md is generated from the records and checked."""

from __future__ import annotations

import json

import pandas as pd

from daebench.cli import main
from daebench.report.records import END, START, index, record_row


def _grid_record(directory):
    directory.mkdir(parents=True)
    rows = [{"defense": d, "attack": "embedattack", "attack_name": "embedattack", "D_d": "cifar10-jpeg", "eps": 10 / 255,
             "BA": ba, "RA": ra, "ASR": 0.5, "n": 10_000} for d, ba, ra in [("none", 0.47, 0.12), ("pgd_at", 0.40, 0.35)]]
    pd.DataFrame(rows).to_csv(directory / "results.csv", index=False)
    (directory / "run.json").write_text(json.dumps({"grid": "full", "git_commit": "0123456789abcdef"}))
    (directory / "README.md").write_text("# Full data\n\nthe victim on all of it.\n")


def test_rows_come_from_the_table_or_the_readme(tmp_path):
    _grid_record(tmp_path / "2026-12-03-full")
    row = record_row(tmp_path / "2026-12-03-full")
    assert row["date"] == "2026-12-03" and row["grid"] == "`full`" and row["commit"] == "`01234567`"
    assert row["D_d"] == "cifar10-jpeg" and row["what"] == "Full data"
    assert row["headline"] == "2 cells; best mean RA pgd_at 35.0; none: BA 47.0, mean RA 12.0"
    bench = tmp_path / "2026-11-21-bench"
    bench.mkdir()
    (bench / "README.md").write_text("# A benchmark\n\n```\npython x.py\n```\n\n- a list\n\nReuse is 3x faster. More.\n")
    assert record_row(bench)["headline"] == "Reuse is 3x faster."


def test_cli_rewrites_only_the_index_and_check_detects_staleness(tmp_path, capsys):
    measured = tmp_path / "measured"
    _grid_record(measured / "2026-12-03-full")
    page = tmp_path / "README.md"
    page.write_text(f"# Results\n\nfindings\n\n{START}\nold\n{END}\n\nfooter\n")
    args = ["--file", str(page), "--measured", str(measured)]
    assert main(["records", "--check", *args]) == 1
    assert main(["records", *args]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nfindings") and text.endswith("footer\n") and "old" not in text
    assert "[2026-12-03-full](measured/2026-12-03-full/)" in text and index(measured) in text
    assert main(["records", "--check", *args]) == 0
    page.write_text("no markers\n")
    assert main(["records", *args]) == 2 and "records index" in capsys.readouterr().err
