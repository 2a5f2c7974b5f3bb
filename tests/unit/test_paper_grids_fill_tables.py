"""Each paper grid fills its paper table: every cell the paper reports has a measured cell
beside it, at the same row and column, once the grid has run.

No grid runs here (they are GPU-sized): the planned cells' rows, the ones a run's results
table would hold, get seeded random metrics, and the table builders run on them beside the
paper-reported block (`daebench tables RUN --paper`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daebench.config import load_grid
from daebench.plan import plan_grid
from daebench.report.paper import paper_results
from daebench.report.tables import build_table, paper_subset
from tests.unit.test_config import _checkpoint_placeholders

#: the paper's white-box columns are encoder pairs whose setting it does not state; DAEBench's
#: are per victim (docs/FIDELITY.md#protocol), so these stay empty in the measured block
WHITE_BOX_PAIRS = {"W-MSE+BYOL", "NNCLR+VibCreg", "MoCo2++MoCo3", "SupCon+RESSL", "DINO+SwAV", "W-MSE+VibCreg",
                   "BYOL+NNCLR", "SwAV+MoCo2+", "MoCo3+SupCon", "RESSL+DINO"}


_PLANNED: dict[str, pd.DataFrame] = {}  # planning `paper` takes seconds: once per session


def planned_results(name: str, monkeypatch, tmp_path) -> pd.DataFrame:
    """The rows a run of the bundled grid would report, with seeded made-up metrics."""
    if name not in _PLANNED:
        _PLANNED[name] = _planned_results(name, monkeypatch, tmp_path)
    return _PLANNED[name].copy()


def _planned_results(name: str, monkeypatch, tmp_path) -> pd.DataFrame:
    if _checkpoint_placeholders(name, tmp_path):
        monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    rows = []
    for cell in plan_grid(load_grid(name)).cells:
        metrics = {"BA": rng.uniform(0.5, 0.9), "RA": rng.uniform(0.1, 0.5), "ASR": rng.uniform(0, 1)}
        if cell.row["defense_name"] == "zepad":
            metrics["detection_accuracy"] = rng.uniform(0.5, 1)
        rows.append({**cell.row, **metrics})
    return pd.DataFrame(rows)


def unfilled(table: str, measured: pd.DataFrame) -> list[tuple]:
    """The paper-reported cells of `table` with no measured cell at the same row and column."""
    frame = build_table(table, measured, paper_subset(paper_results(), table)).frame
    mine, paper = frame.xs("measured", level="source"), frame.xs("paper-reported", level="source")
    return [(row, col) for row in paper.index for col in paper.columns
            if pd.notna(paper.loc[row, col]) and (row not in mine.index or pd.isna(mine.loc[row, col]))]


@pytest.mark.parametrize("grid, table", [("paper-table5", "5"), ("paper-table6", "6"), ("paper-table7", "7"),
                                         ("paper-tableS3", "S3"), ("paper-tableS4", "S4"), ("paper-tableS5", "S5")])
def test_a_per_table_grid_fills_its_table(grid, table, monkeypatch, tmp_path):
    measured = planned_results(grid, monkeypatch, tmp_path)
    assert unfilled(table, measured) == []


def test_the_paper_grids_fill_tables_1_to_4_and_the_victims_of_s1_s2(monkeypatch, tmp_path):
    measured = pd.concat([planned_results("paper", monkeypatch, tmp_path),
                          planned_results("paper-imagenet", monkeypatch, tmp_path)])
    for table in ("1", "2", "3", "4"):  # CIFAR-10 victims the upper halves, ImageNet checkpoints the lower
        assert unfilled(table, measured) == [], table
    for table in ("S1", "S2"):
        assert {col for _, col in unfilled(table, measured)} == WHITE_BOX_PAIRS, table


def test_tables_without_a_pretraining_level_show_one_pretraining_set(monkeypatch, tmp_path):
    """Checkpoints labelled with their method share the CIFAR-10 victims' columns, so Table 3
    (D_f != D_d, no D_p level) must not average the two victims of a column."""
    cifar = planned_results("paper", monkeypatch, tmp_path)
    imagenet = planned_results("paper-imagenet", monkeypatch, tmp_path)
    both = build_table("3", pd.concat([cifar, imagenet])).frame
    assert both.equals(build_table("3", cifar).frame)
    assert build_table("3", pd.concat([cifar, imagenet]), pretrain="imagenet").frame.equals(
        build_table("3", imagenet).frame)
    assert "victims pre-trained on cifar10" in build_table("3", pd.concat([cifar, imagenet])).context
    assert "pre-trained on" not in build_table("1", pd.concat([cifar, imagenet])).context  # a D_p level: both


def test_table5_rows_carry_the_papers_switches_and_the_caption_keys_them(monkeypatch, tmp_path):
    measured = planned_results("paper-table5", monkeypatch, tmp_path)
    table = build_table("5", measured)
    assert list(table.frame.index.get_level_values("Defense")) == [
        "adv_ft=0;mpae=0;bmp=0", "adv_ft=0;mpae=1;bmp=0", "adv_ft=1;mpae=0;bmp=1", "adv_ft=1;mpae=1;bmp=0",
        "adv_ft=1;mpae=1;bmp=1"]
    assert set(table.frame.index.get_level_values("Victim")) == {"DINO"}
    assert "zepad-no-mpad = adv_ft=1;mpae=0;bmp=1" in table.context and "none = adv_ft=0;mpae=0;bmp=0" in table.context


def test_a_checkpoint_labelled_with_an_unknown_method_is_rejected():
    from daebench.encoders.spec import EncoderSpec

    with pytest.raises(ValueError, match="trained_with 'simclrr' is not an SSL method; valid: .*simclr"):
        EncoderSpec(checkpoint="x.ckpt", trained_with="simclrr")
    with pytest.raises(ValueError, match="describe a `checkpoint`"):
        EncoderSpec(method="simclr", dataset="cifar10", trained_on="imagenet")


def test_the_figure_s2_grid_draws_the_number_of_auxiliary_encoders(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    from daebench.report.plots import draw
    from daebench.report.tables import TableContext
    from daebench.results import RunRecord

    measured = planned_results("paper-figS2", monkeypatch, tmp_path)
    run = RunRecord("paper-figS2", tmp_path, measured, {}, {})
    fig = draw(run, "param_sweep", TableContext.defaults(measured))
    lines = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]
    assert lines and all(list(line.get_xdata()) == [1, 2, 3, 4, 5, 6] for line in lines)
    assert "number of aux_methods" in {ax.get_xlabel() for ax in fig.axes}
    plt.close(fig)
