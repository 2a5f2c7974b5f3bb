"""`daebench estimate`: the work model, the calibration, cached stages, and the CLI."""

from __future__ import annotations

import json

import pytest

from daebench.config import parse_grid
from daebench.errors import ConfigError
from daebench.estimator import Calibration, config_key, estimate_grid, forward_flops, stage_config, stage_work, _Sizes
from daebench.plan import plan_grid
from daebench.plugins import Work
from tests.conftest import MICRO_GRID


def _fixed_calibration(grid, plan, train: float = 1e-3, forward: float = 2e-4) -> Calibration:
    """A calibration with round numbers, so an estimate can be computed by hand."""
    from daebench.estimator import encoder_configs

    cal = Calibration("test-device")
    for config in encoder_configs(plan, grid):
        cal.configs[config_key(config)] = {"train": train, "forward": forward}
        cal.flops[config_key(config)] = 1.0
    return cal


def test_work_adds_and_scales():
    assert Work(2, 1) + Work(1, 3) == Work(3, 4)
    assert 2 * Work(1, 2) == Work(1, 2) * 2 == Work(2, 4)
    assert not Work() and Work(forward=1)


def test_plugins_count_their_passes_from_their_parameters():
    from daebench.attacks import ATTACKS
    from daebench.defenses import DEFENSES
    from daebench.encoders.ssl import SSL_METHODS

    pgd_at = DEFENSES.get("pgd_at")
    params = pgd_at.resolve_params("paper", {"epochs": 3, "steps": 4}).model_dump()
    assert pgd_at.work(params, 100) == Work(train=100 * 3 * (4 + 2))  # PGD steps + adversarial and clean step
    capped = pgd_at.resolve_params("paper", {"epochs": 3, "steps": 4, "max_samples": 10}).model_dump()
    assert pgd_at.work(capped, 100) == Work(train=10 * 3 * 6)
    embed = ATTACKS.get("embedattack")
    assert embed.work(embed.resolve_params("paper", {"steps": 7}).model_dump(), 50) == Work(train=350)
    simclr, byol = SSL_METHODS.get("simclr"), SSL_METHODS.get("byol")
    assert simclr.work(simclr.resolve_params("paper", {"epochs": 2}).model_dump(), 10) == Work(train=40)
    assert byol.work(byol.resolve_params("paper", {"epochs": 2}).model_dump(), 10) == Work(train=40, forward=40)
    assert DEFENSES.get("none").work({}, 100) == Work() and ATTACKS.get("noise").work({}, 100) == Work()
    zepad, genaf = DEFENSES.get("zepad"), DEFENSES.get("genaf")
    z = zepad.resolve_params("paper", {"epochs": 1, "steps": 1, "selection": "last"})
    g = genaf.resolve_params("paper", {"epochs": 1, "steps": 1, "selection": "last", "stage2": False})
    assert zepad.work(z.model_dump(), 10) == 2 * genaf.work(g.model_dump(), 10)  # victim + one partner


def test_estimate_is_work_times_the_calibration_and_cached_stages_are_free(micro_run):
    root, grid, _ = micro_run
    plan = plan_grid(grid)
    cal = _fixed_calibration(grid, plan)
    estimate = estimate_grid(grid, calibration=cal, plan=plan)
    sizes = _Sizes(None)
    expected = 0.0
    for node in plan.nodes.values():
        work = stage_work(plan, node, sizes)
        expected += work.train * 1e-3 + work.forward * 2e-4
    assert estimate.total == pytest.approx(expected) and estimate.total > 0
    assert len(estimate.stages) == len(plan.nodes) and estimate.cached == 0
    assert set(estimate.by_stage()) >= {"pretrain", "craft", "defend", "features"}
    # the micro run's store holds every artifact: nothing left to pay for
    cached = estimate_grid(grid, calibration=cal, plan=plan, cache_dir=root / "cache")
    assert cached.total == 0 and cached.cached == len(plan.nodes)
    assert "0 stages to compute" in cached.describe()


def test_an_unmeasured_configuration_is_scaled_by_its_flops():
    small = {"arch": "resnet18", "width": 8, "conv1_padding": 2, "image_size": 16}
    large = {**small, "width": 16}
    cal = Calibration("cpu", {config_key(small): {"train": 1e-3, "forward": 3e-4}}, {config_key(small): forward_flops(small)})
    ratio = forward_flops(large) / forward_flops(small)
    assert ratio > 3  # about 4x at twice the width
    assert cal.seconds(large, Work(train=10, forward=10)) == pytest.approx(10 * (1e-3 + 3e-4) * ratio)


def test_amp_stages_get_their_own_configuration():
    grid = parse_grid({**MICRO_GRID, "defenses": ["none", {"name": "pgd_at", "params": {"epochs": 1, "amp": True}}]})
    plan = plan_grid(grid)
    defend = next(n for n in plan.nodes.values() if n.stage == "defend" and n.spec.defense == "pgd_at")
    craft = next(n for n in plan.nodes.values() if n.stage == "craft")
    assert stage_config(plan, defend, grid)["amp"] and not stage_config(plan, craft, grid)["amp"]
    assert config_key(stage_config(plan, defend, grid)).endswith("/bf16-cl")


def test_calibration_round_trips_and_a_bad_file_is_one_clear_error(tmp_path):
    cal = Calibration("cuda", {"resnet18/w64/p1/64px": {"train": 1e-4, "forward": 3e-5}}, {"resnet18/w64/p1/64px": 5e8})
    cal.save(tmp_path / "h200.json")
    again = Calibration.load(tmp_path / "h200.json")
    assert again == cal
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read .*calibration/<device>.json"):
        Calibration.load(tmp_path / "bad.json")


def test_cli_estimate_from_a_calibration_file(tmp_path, capsys, micro_grid_path):
    from daebench.cli import main

    grid = parse_grid(MICRO_GRID)
    path = tmp_path / "cal.json"
    _fixed_calibration(grid, plan_grid(grid)).save(path)
    code = main(["estimate", str(micro_grid_path), "--calibration", str(path), "--cache-dir", str(tmp_path / "c"),
                 "--gpus", "2", "--top", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "on test-device with 2 in parallel" in out and "most expensive stages" in out
    assert json.loads(path.read_text())["device"] == "test-device"


def test_a_craft_counts_the_split_its_attack_perturbs():
    """A universal attack crafts on the attacker's training split; a per-sample one on
    the downstream test images (run_craft): counting the training split instead made
    the per-sample crafts of a 50 000 / 10 000 dataset 5x too dear."""
    from daebench.attacks import ATTACKS

    plan = plan_grid(parse_grid(MICRO_GRID))
    sizes = _Sizes(None)
    train, test = sizes.count("digits", "train"), sizes.count("digits", "test")
    assert train != test
    crafts = {n.spec.attack: n for n in plan.nodes.values() if n.stage == "craft"}
    for name, node in crafts.items():
        attack = ATTACKS.get(name)
        images = train if attack.universal else test
        assert attack.craft_split() == ("train" if attack.universal else "test")
        assert stage_work(plan, node, sizes) == attack.work(node.spec.params, images), name
    assert not ATTACKS.get("embedattack").universal and ATTACKS.get("uapgd").universal


def test_the_estimate_counts_its_work_in_passes_and_flops_whatever_the_device():
    grid = parse_grid(MICRO_GRID)
    plan = plan_grid(grid)
    fast = estimate_grid(grid, calibration=_fixed_calibration(grid, plan, 1e-3, 2e-4), plan=plan)
    slow = estimate_grid(grid, calibration=_fixed_calibration(grid, plan, 1e-2, 2e-3), plan=plan)
    assert slow.total == pytest.approx(10 * fast.total)
    assert slow.work == fast.work and slow.flops == fast.flops  # the device changes the time, not the work
    per_image = forward_flops(stage_config(plan, next(n for n in plan.nodes.values() if n.stage == "pretrain"), grid))
    assert fast.flops == pytest.approx((3 * fast.work.train + fast.work.forward) * per_image)  # one encoder config
    assert "PFLOP" in fast.describe() and fast.record()["flops"] == fast.flops
