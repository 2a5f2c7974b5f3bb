"""`precision`: bf16 + channels-last on CUDA, float32 on CPU, in every key it changes."""

from __future__ import annotations

import pytest
import torch

from daebench.config import parse_grid
from daebench.plan import bf16_by_default, grid_hash, plan_grid
from tests.conftest import MICRO_GRID


def _nodes(grid, stage):
    return [n for n in plan_grid(grid).nodes.values() if n.stage == stage]


def test_auto_is_bf16_on_cuda_and_float32_elsewhere():
    assert bf16_by_default("auto", "cuda") and bf16_by_default("auto", "cuda:3")
    assert not bf16_by_default("auto", "cpu")
    assert bf16_by_default("auto", "auto") == torch.cuda.is_available()
    assert bf16_by_default("bf16", "cpu") and not bf16_by_default("float32", "cuda")


def test_on_cuda_every_encoder_pass_runs_bf16_and_the_keys_say_so():
    cpu = parse_grid({**MICRO_GRID, "device": "cpu"})
    cuda = parse_grid({**MICRO_GRID, "device": "cuda"})
    for stage in ("pretrain", "defend"):
        for node in _nodes(cuda, stage):
            params = node.spec.params
            if "amp" in params or stage == "pretrain":  # `none` has no switches
                assert params.get("amp") is True and params.get("channels_last") is True, node.label
    for stage in ("craft", "features"):
        assert all(n.spec.precision == "bf16" for n in _nodes(cuda, stage))
        assert all(n.spec.precision is None for n in _nodes(cpu, stage))
    cpu_keys = set(plan_grid(cpu).nodes)
    assert not cpu_keys & set(plan_grid(cuda).nodes)  # nothing of another precision is reused


def test_float32_keys_are_the_keys_grids_always_had():
    """`precision` left at auto on a CPU adds nothing to any key or to the grid hash."""
    grid = parse_grid({**MICRO_GRID, "device": "cpu"})
    explicit = parse_grid({**MICRO_GRID, "device": "cpu", "precision": "float32"})
    assert set(plan_grid(grid).nodes) == set(plan_grid(explicit).nodes)
    assert grid_hash(grid) == grid_hash(parse_grid({**MICRO_GRID, "device": "cpu"}))
    for node in _nodes(grid, "defend"):
        assert "amp" not in node.spec.params  # the switches stay out of float32 dumps
    craft = _nodes(grid, "craft")[0]
    assert "precision" not in craft.spec.hashed()


def test_a_plugins_own_switch_wins_over_the_grid():
    raw = {**MICRO_GRID, "device": "cuda",
           "defenses": ["none", {"name": "pgd_at", "params": {"epochs": 1, "amp": False, "channels_last": False}}]}
    (defend,) = [n for n in _nodes(parse_grid(raw), "defend") if n.spec.defense == "pgd_at"]
    assert "amp" not in defend.spec.params


def test_estimates_for_a_gpu_calibration_plan_the_gpus_precision():
    from daebench.estimator import Calibration, estimate_grid

    grid = parse_grid({**MICRO_GRID, "device": "cpu"})
    cal = Calibration("cuda", configs={"resnet18/w8/p2/16px/bf16-cl": {"train": 1e-4, "forward": 1e-5}},
                      flops={"resnet18/w8/p2/16px/bf16-cl": 1.0})
    estimate = estimate_grid(grid, calibration=cal)
    assert estimate.device == "cuda" and estimate.total > 0


@pytest.mark.parametrize("precision", ["fp16", "half", ""])
def test_unknown_precision_is_a_clear_error(precision):
    from daebench.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        parse_grid({**MICRO_GRID, "precision": precision})
