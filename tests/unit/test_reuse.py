"""daebench.reuse: the reuse factor from a plan and recorded stage seconds, no timing run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import yaml

from daebench.plan import Cell, Node, Plan
from daebench.reuse import (cell_chain, reuse_figure, reuse_from_run, seconds_from_log, seconds_from_stage_totals,
                            seconds_from_store)
from daebench.specs import Ref


@dataclass(frozen=True)
class FakeSpec:
    stage: str
    deps: tuple[Ref, ...] = field(default_factory=tuple)

    def inputs(self) -> dict[str, Ref]:
        return {f"in{i}": ref for i, ref in enumerate(self.deps)}


def tiny_plan() -> Plan:
    """pretrain P -> defend D; craft C (on P); three cells, two of them on D:

        cell 1: E1 <- P, C            (chain P C E1)
        cell 2: E2 <- D, C; D <- P    (chain P C D E2: P reached twice, counted once)
        cell 3: E3 <- D, C            (chain P C D E3)
    """
    plan = Plan()

    def add(key, stage, *deps):
        plan.nodes[key] = Node(FakeSpec(stage, tuple(Ref(stage=plan.nodes[d].stage, key=d) for d in deps)),
                               f"{stage} {key}", key)

    add("P", "pretrain")
    add("C", "craft", "P")
    add("D", "defend", "P")
    add("E1", "evaluate", "P", "C")
    add("E2", "evaluate", "D", "C")
    add("E3", "evaluate", "D", "C")
    plan.cells = [Cell({"cell": i}, key) for i, key in enumerate(["E1", "E2", "E3"])]
    return plan


SECONDS = {"P": 10.0, "C": 2.0, "D": 4.0, "E1": 0.5, "E2": 0.5, "E3": 0.5}


def test_cell_chain_is_the_evaluation_and_every_ancestor_once():
    plan = tiny_plan()
    assert cell_chain(plan, plan.cells[0]) == {"P", "C", "E1"}
    assert cell_chain(plan, plan.cells[1]) == {"P", "C", "D", "E2"}


def test_reuse_figure_on_a_tiny_plan():
    figure = reuse_figure(tiny_plan(), SECONDS)
    assert figure.unique_seconds == pytest.approx(17.5)
    # cell 1: 10 + 2 + 0.5; cells 2 and 3: 10 + 2 + 4 + 0.5 each
    assert figure.cell_by_cell_seconds == pytest.approx(12.5 + 16.5 + 16.5)
    assert figure.ratio == pytest.approx(45.5 / 17.5)
    assert (figure.cells, figure.unique_stages, figure.cell_by_cell_stages, figure.untimed) == (3, 6, 11, 0)
    assert figure.by_stage["pretrain"] == (10.0, 30.0)
    assert figure.by_stage["defend"] == (4.0, 8.0)
    assert list(figure.by_stage) == ["pretrain", "craft", "defend", "evaluate"]  # dependency order
    assert "2.6x (3 cells" in figure.describe()
    assert figure.as_dict()["ratio"] == pytest.approx(2.6)


def test_untimed_stages_count_as_zero_and_are_said():
    figure = reuse_figure(tiny_plan(), {k: v for k, v in SECONDS.items() if k != "D"})
    assert figure.untimed == 1
    assert figure.unique_seconds == pytest.approx(13.5)
    assert "1 untimed" in figure.describe()


def test_seconds_from_a_log_and_from_stage_totals():
    plan = tiny_plan()
    log = ["12:00:00 [1/6] done: pretrain P (10.0 s)", "noise", "12:00:02 [2/6] done: craft C (1.0 s)",
           "12:00:03 [3/6] done: craft C (3.0 s)", "12:00:04 [4/6] failed: defend D (4.0 s)"]
    assert seconds_from_log(plan, log) == {"P": 10.0, "C": 2.0}  # repeated labels: their mean; failures left out
    means = seconds_from_stage_totals(plan, {"evaluate": 3.0, "pretrain": 10.0}, {"evaluate": 3, "pretrain": 1})
    assert means == {"P": 10.0, "E1": 1.0, "E2": 1.0, "E3": 1.0}


def test_seconds_from_the_store(tmp_path):
    import torch

    from daebench.store import ArtifactStore

    plan = tiny_plan()
    store = ArtifactStore(tmp_path)
    store.save("pretrain", "P", {"w": torch.zeros(1)}, {"seconds": 7.5})
    store.save("craft", "C", {"w": torch.zeros(1)}, {})  # no seconds recorded: untimed
    assert seconds_from_store(plan, store) == {"P": 7.5}


def test_reuse_from_a_run_record_without_its_store(tmp_path):
    """A real (micro) grid re-planned from grid.yaml, timed from run.json's per-type totals,
    with the log's per-stage seconds taking precedence where it has them."""
    from tests.conftest import MICRO_GRID

    run = tmp_path / "micro"
    run.mkdir()
    (run / "grid.yaml").write_text(yaml.safe_dump(MICRO_GRID))
    computed = {"pretrain": 1, "defend": 2, "craft": 2, "features": 8, "head": 2, "evaluate": 4}
    (run / "run.json").write_text(json.dumps({"cache_dir": str(tmp_path / "gone"), "computed": computed,
                                              "stage_seconds": {s: float(n) for s, n in computed.items()}}))
    (run / "run.log").write_text("10:00:00 [1/19] done: pretrain simclr-digits (33.0 s)\n")
    figure = reuse_from_run("micro", runs_dir=tmp_path)
    assert figure.sources == {"run.log": 1, "run.json per-type means": 18}
    assert (figure.cells, figure.unique_stages, figure.untimed) == (4, 19, 0)
    assert figure.unique_seconds == pytest.approx(33.0 + 18.0)  # every other stage at its type's mean, 1 s
    assert figure.by_stage["pretrain"] == (33.0, 4 * 33.0)  # the one encoder, in every cell's chain
    assert figure.ratio > 1


def test_a_missing_run_is_a_clear_error(tmp_path):
    from daebench.errors import DAEBenchError

    with pytest.raises(DAEBenchError, match="grid.yaml"):
        reuse_from_run("nowhere", runs_dir=tmp_path)
