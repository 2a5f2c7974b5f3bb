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


@pytest.mark.parametrize("name, full", [("5", "adv_ft=1;mpae=1;bmp=1"), ("S3", "fusion=rfdm"), ("S5", "lambda=20")])
def test_paper_block_ours_is_the_full_method_and_the_caption_says_so(name, full):
    """Not the first variant printed (the all-off ablation, fusion=average, lambda=1)."""
    paper = paper_subset(paper_results(), name)
    assert TableContext.defaults(paper).defense == full
    table = build_table(name, pd.DataFrame(columns=paper.columns), paper)
    caption = table.context.split("paper-reported block: ")[1]
    assert caption.startswith(f"ours = {full} ")
    assert "ours is the full method, zepad at its default parameters" in caption


def test_full_method_without_an_unlabelled_member_is_the_variant_at_the_defaults(fixture_results):
    from daebench.report.tables import full_method

    relabelled = fixture_results.replace({"defense": {"zepad": "zepad-rfdm"}})
    assert full_method(relabelled, "zepad-l10") == "zepad-rfdm"  # fusion rfdm and lambda 20: ZePAD's defaults
    assert TableContext.defaults(relabelled).defense == "zepad-rfdm"
    caption = build_table("5", relabelled, defense="zepad-l10").context
    assert "ours = zepad-l10" in caption and "a variant of zepad, not its full method zepad-rfdm" in caption
    assert "full method" not in build_table("1", fixture_results).context  # no variants in Table 1: no note


def test_detection_table_at_chance_says_so_in_its_caption(fixture_results):
    zepad = fixture_results.defense == "zepad"
    at_chance = fixture_results.assign(detection_accuracy=np.where(zepad, 0.51, np.nan))  # n = 1000 per side
    caption = build_table("6", at_chance).context
    assert "The measured detector is at chance in every cell" in caption and "mean accuracy 51.0%" in caption
    assert "at chance" in to_markdown(build_table("6", at_chance)).split("\n\n")[1]  # the caption line
    separating = at_chance.assign(detection_auroc=np.where(zepad, 0.9, np.nan))
    caption = build_table("6", separating).context
    assert "detector is at chance" not in caption and "the threshold, not the scores, fails" in caption
    assert "chance" not in build_table("6", fixture_results).context  # 50-90%, n = 1000: above chance
    mixed = fixture_results.assign(detection_accuracy=np.where(zepad & (fixture_results.D_d == "stl10"), 0.5,
                                                               fixture_results.detection_accuracy))
    assert "In 2 of 4 measured cells the detector is at chance" in build_table("6", mixed).context
