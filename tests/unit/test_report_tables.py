"""Report tables: golden files pin each table's layout on a small fixed results store,
and the paper-reported block reproduces the paper's printed numbers.

The fixture (tests/data/report_fixture.csv) is synthetic: made-up seeded numbers that
only pin layouts. Regenerate the golden files after an intended layout change with
    DAEBENCH_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_report_tables.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daebench.errors import UnknownNameError
from daebench.report.paper import paper_results
from daebench.report.tables import TABLES, TableContext, build_table, paper_subset, to_latex, to_markdown, write_tables

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tables"


@pytest.fixture(scope="module")
def fixture_results() -> pd.DataFrame:
    return pd.read_csv(DATA / "report_fixture.csv")


@pytest.mark.parametrize("name", TABLES.names())
def test_table_layout_matches_golden_file(fixture_results, name):
    text = to_markdown(build_table(name, fixture_results))
    golden = GOLDEN / f"table{name}.md"
    if os.environ.get("DAEBENCH_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"no golden file {golden}; create it with DAEBENCH_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


def test_every_paper_table_has_a_builder():
    assert set(TABLES.names()) == {"1", "2", "3", "4", "5", "6", "7", "S1", "S2", "S3", "S4", "S5"}


def test_context_defaults_follow_the_paper(fixture_results):
    ctx = TableContext.defaults(fixture_results)
    assert (ctx.defense, ctx.attack, ctx.sweep) == ("zepad", "advencoder", "lambda")
    assert ctx.eps == pytest.approx(10 / 255)


def test_delta_rows_are_ours_minus_baseline(fixture_results):
    frame = build_table("2", fixture_results).frame
    block = frame.xs(("cifar10", "cifar10"), level=("D_p", "D_f and D_d"))
    np.testing.assert_allclose(block.loc["Δ"], block.loc["zepad"] - block.loc["baseline"])
    d = fixture_results
    expected = d[(d.method == "simclr") & (d.defense == "zepad") & (d.D_d == "cifar10") & (d.attack == "advencoder")
                 & (d.scenario == "semi_black_box") & np.isclose(d.eps, 10 / 255)].RA.iloc[0] * 100
    assert block.loc["zepad", "SimCLR"] == pytest.approx(expected)


def test_uncovered_cells_stay_empty_and_nothing_is_invented(fixture_results):
    only_simclr = fixture_results[fixture_results.method == "simclr"]
    frame = build_table("1", only_simclr, paper_subset(paper_results(), "1")).frame
    measured = frame.xs("measured", level="source")
    assert measured["W-MSE"].isna().all()  # the run has no W-MSE encoder
    assert measured["SimCLR"].notna().all()
    empty = build_table("6", fixture_results[fixture_results.defense_name != "zepad"])
    assert empty.empty and "nothing is invented" in to_markdown(empty)


def test_paper_reported_block_reproduces_the_printed_table():
    paper = paper_results()
    table = build_table("1", pd.DataFrame(columns=paper.columns), paper_subset(paper, "1"))
    block = table.frame.xs("paper-reported", level="source")
    row = block.xs(("cifar10", "cifar10"), level=("D_p", "D_f and D_d"))
    assert row.loc["baseline", "W-MSE"] == pytest.approx(90.17)
    assert row.loc["zepad", "W-MSE"] == pytest.approx(93.42)
    assert row.loc["Δ", "W-MSE"] == pytest.approx(3.25)
    assert row.loc["baseline", "AVG"] == pytest.approx(93.34, abs=0.01)  # printed AVG, recomputed
    seven = build_table("7", pd.DataFrame(columns=paper.columns), paper_subset(paper, "7")).frame
    simclr = seven.xs("paper-reported", level="source").xs("SimCLR", level="Model")
    assert simclr.loc["zepad", "BA"] == pytest.approx(82.07)
    assert simclr.loc["Δ", "BA"] == pytest.approx(13.38)  # "improvement over the second best"
    assert simclr.loc["Δ", "uap RA"] == pytest.approx(13.13)


def test_paper_block_is_labelled_in_every_format(fixture_results, tmp_path):
    files = write_tables(fixture_results, tmp_path, paper_results(), names=["2"])
    md = (tmp_path / "table2.md").read_text()
    assert "paper-reported" in md and "measured" in md
    assert "paper-reported" in (tmp_path / "table2.csv").read_text()
    assert "paper-reported" in (tmp_path / "table2.tex").read_text()
    assert tmp_path / "tables.md" in files


def test_latex_output(fixture_results):
    tex = to_latex(build_table("1", fixture_results))
    assert tex.startswith("\\begin{table}") and "tab:daebench-1" in tex
    assert "(\\%)" in tex and "$\\Delta$" in tex and "Δ" not in tex  # a bare % would comment out the caption
    assert "D\\_f" in tex


def test_unknown_table_name_gets_did_you_mean():
    with pytest.raises(UnknownNameError, match="S5"):
        TABLES.get("s5")
