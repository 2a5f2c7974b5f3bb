import pytest

from daebench.config import load_grid, parse_fraction, parse_grid
from daebench.errors import ConfigError
from tests.conftest import MICRO_GRID


@pytest.mark.parametrize("name", ["quick", "ci", "paper"])
def test_bundled_grids_validate(name, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the ci grid's npz paths are relative to the repo root
    if name == "ci":
        from tests.conftest import shared_file

        shared_file("cifar10-subset.npz")
    grid = load_grid(name)
    assert grid.name == name


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
