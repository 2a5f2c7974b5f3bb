import re

import numpy as np
import pytest

from daebench.config import bundled_configs, load_grid, parse_fraction, parse_grid
from daebench.errors import ConfigError
from tests.conftest import MICRO_GRID


def _checkpoint_placeholders(name: str, root) -> bool:
    """Empty files where a grid expects user-provided checkpoints (validation checks only that they exist)."""
    from daebench.config import CONFIG_DIR

    paths = re.findall(r"checkpoint: (checkpoints/[^,}\s]+)", (CONFIG_DIR / f"{name}.yaml").read_text())
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"placeholder")
    return bool(paths)


@pytest.mark.parametrize("name", bundled_configs())
def test_bundled_grids_validate(name, monkeypatch, tmp_path):
    from tests.conftest import REPO

    if _checkpoint_placeholders(name, tmp_path):
        monkeypatch.chdir(tmp_path)  # the grid's checkpoint paths are relative to where daebench runs
    else:
        monkeypatch.chdir(REPO)  # the ci grids' npz paths are relative to the repo root
    if name.startswith("ci") or name == "full-cifar10":  # grids on ../shared/data
        from tests.conftest import shared_file

        shared_file("cifar10-subset.npz")
        if name.startswith("ci"):
            shared_file("gtsrb-subset.npz")
        if name in ("ci-full", "full-cifar10"):
            shared_file("cifar10-jpeg")
    grid = load_grid(name)
    assert grid.name == name


def test_a_grid_missing_its_checkpoints_names_every_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_grid("paper-table7")
    for method in ("simclr", "mocov2plus"):
        assert f"checkpoint file 'checkpoints/imagenet100/{method}.ckpt' does not exist" in str(err.value)


def test_the_paper_grid_is_the_papers_full_grid():
    from daebench.encoders.ssl import SSL_METHODS

    grid = load_grid("paper")
    assert {e.method for e in grid.encoders} == set(SSL_METHODS.names()) and len(grid.encoders) == 11
    assert {d.name for d in grid.defenses} == {"none", "pgd_at", "trades", "mart", "deacl", "genaf", "zepad"}
    assert {a.name for a in grid.attacks} == {"advencoder", "pap", "uap", "uapgd", "ssp", "embedattack"}
    assert set(grid.fine_tune_data) == set(grid.downstream) == {"cifar10", "stl10", "animals10", "gtsrb", "imagenet20", "svhn"}
    assert set(grid.scenarios) == {"semi_black_box", "white_box"} and grid.image_size == 64
    assert grid.cell_count() == 11 * 6 * 7 * 36 * 2


def _digits_npz(path):
    from daebench.data import load_dataset

    d = load_dataset("digits", image_size=16)
    nhwc = lambda x: x.permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez(path, x_train=nhwc(d.x_train[:40]), y_train=d.y_train[:40].numpy(),
             x_test=nhwc(d.x_test[:20]), y_test=d.y_test[:20].numpy())
    return f"npz:{path}"


@pytest.mark.parametrize("pairing, fine_tune, expected", [
    ("all", ["digits", "x"], {("digits", "digits"), ("digits", "x"), ("x", "digits"), ("x", "x")}),
    ("same", ["digits", "x"], {("digits", "digits"), ("x", "x")}),
    ("different", ["digits", "x"], {("digits", "x"), ("x", "digits")}),
    ("same", ["x"], {("x", "x")}),
])
def test_pairing_selects_the_data_pairs_the_planner_expands(pairing, fine_tune, expected, tmp_path):
    from daebench.plan import plan_grid

    source = _digits_npz(tmp_path / "x.npz")
    grid = parse_grid(_grid(datasets={"x": source}, fine_tune_data=fine_tune, downstream=["digits", "x"],
                            pairing=pairing))
    plan = plan_grid(grid)
    assert {(c.row["D_f"], c.row["D_d"]) for c in plan.cells} == expected
    assert len(plan.cells) == grid.cell_count()
    # a D_f without a D_d is not defended for nothing
    defended_on = {n.spec.data.source for n in plan.nodes.values() if n.stage == "defend"}
    assert defended_on == {grid.dataset_source(f) for f, _ in expected}


def test_a_pairing_that_leaves_no_pair_is_rejected():
    with pytest.raises(ConfigError, match="pairing 'same' leaves no"):
        parse_grid(_grid(fine_tune_data=["digits"], downstream=["cifar10"], pairing="same"))


def test_fractions():
    assert parse_fraction("10/255") == pytest.approx(10 / 255)
    assert parse_fraction(0.5) == 0.5
    with pytest.raises(ValueError):
        parse_fraction("ten")


def _grid(**over):
    return {**MICRO_GRID, **over}


@pytest.mark.parametrize("eps", [0, -0.1, 1.5, "300/255", "nan"])
def test_eps_outside_unit_interval_is_rejected(eps):
    with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
        parse_grid(_grid(eps=[eps]))


def test_unknown_attack_gets_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'embedattack'") as err:
        parse_grid(_grid(attacks=["embedatack"]))
    assert "Nothing was run" in str(err.value)


def test_unknown_defense_dataset_and_method_are_all_reported():
    with pytest.raises(ConfigError) as err:
        parse_grid(_grid(defenses=["pgdat"], downstream=["cifar1O"],
                         encoders=[{"method": "simclrr", "dataset": "digits"}]))
    msg = str(err.value)
    assert "'pgd_at'" in msg and "'cifar10'" in msg and "'simclr'" in msg


def test_unknown_key_and_wrong_type():
    with pytest.raises(ConfigError, match="attackz: unknown key"):
        parse_grid(_grid(attackz=[]))
    with pytest.raises(ConfigError, match="image_size"):
        parse_grid(_grid(image_size="big"))


def test_empty_axis_is_rejected():
    with pytest.raises(ConfigError, match="attacks"):
        parse_grid(_grid(attacks=[]))


def test_bad_plugin_parameter_names_valid_ones():
    with pytest.raises(ConfigError, match="stepz: unknown parameter.*Valid parameters: .*steps"):
        parse_grid(_grid(attacks=[{"name": "embedattack", "params": {"stepz": 3}}]))
    with pytest.raises(ConfigError, match="steps"):
        parse_grid(_grid(attacks=[{"name": "embedattack", "params": {"steps": -1}}]))


def test_unknown_explicit_profile():
    with pytest.raises(ConfigError, match="unknown profile 'tinny'.*Did you mean 'tiny'"):
        parse_grid(_grid(attacks=[{"name": "embedattack", "profile": "tinny"}]))


def test_missing_npz_path():
    with pytest.raises(ConfigError, match="does not exist"):
        parse_grid(_grid(downstream=["x"], datasets={"x": "npz:/nope/missing.npz"}))


def test_malformed_yaml_reports_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nattacks: [embedattack\ndefenses: none\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_grid(str(bad))


def test_unknown_bundled_grid_name():
    with pytest.raises(ConfigError, match="Did you mean 'quick'"):
        load_grid("quik")


def test_quick_grid_covers_every_registered_attack_and_defense():
    from daebench.attacks import ATTACKS
    from daebench.defenses import DEFENSES

    grid = load_grid("quick")
    assert {a.name for a in grid.attacks} == set(ATTACKS.names())
    assert {d.name for d in grid.defenses} == set(DEFENSES.names())
