"""`--only` slices: narrower lists, the same stage keys as the whole grid, clear errors."""

from __future__ import annotations

import pytest

import daebench
from daebench.cli import main
from daebench.config import format_eps, load_grid, parse_grid
from daebench.errors import ConfigError
from daebench.plan import plan_grid
from daebench.slicing import parse_only, slice_grid
from tests.conftest import MICRO_GRID


def test_a_slice_narrows_the_lists_and_keeps_every_stage_key_of_the_whole_grid():
    grid = load_grid("quick")
    sliced = slice_grid(grid, ["attack=embedattack,pap", "defense=zepad,none"])
    assert [a.name for a in sliced.attacks] == ["embedattack", "pap"]
    assert sorted(d.name for d in sliced.defenses) == ["none", "zepad"]
    assert sliced.name == "quick--only-attack=embedattack+pap-defense=zepad+none"
    assert sliced.cell_count() == grid.cell_count() * 4 // (len(grid.attacks) * len(grid.defenses))
    whole, part = plan_grid(grid), plan_grid(sliced)
    assert set(part.nodes) < set(whole.nodes)  # every stage of the slice is a stage of the whole grid


def test_slice_keys_match_labels_methods_and_eps_as_written():
    grid = parse_grid({**MICRO_GRID, "eps": ["8/255", "10/255"],
                       "attacks": [{"name": "uapgd", "label": "uapgd-ref"}, "embedattack"]})
    assert [a.label for a in slice_grid(grid, {"attack": "uapgd-ref"}).attacks] == ["uapgd-ref"]
    assert slice_grid(grid, {"eps": "10/255"}).eps == [pytest.approx(10 / 255)]
    assert len(slice_grid(grid, {"encoder": "simclr"}).encoders) == 1
    assert slice_grid(grid, {"defenses": ["none"]}).defenses[0].name == "none"  # the grid's own key works too


@pytest.mark.parametrize("only, message", [
    (["attack"], "a slice is KEY=VALUE"),
    (["atack=pap"], "unknown slice key; the keys are attack, defense"),
    (["attack=fgsm"], "grid 'micro' has no such attacks; it has embedattack, uapgd"),
    (["eps=3/255"], "has no such eps values; it has 10/255"),
])
def test_bad_slices_are_one_clear_error(only, message):
    with pytest.raises(ConfigError, match=message):
        slice_grid(parse_grid(MICRO_GRID), only)


def test_parse_only_merges_repeated_keys():
    assert parse_only(["defense=none", "defense=pgd_at,zepad"]) == {"defense": ["none", "pgd_at", "zepad"]}


def test_format_eps_reads_as_written():
    assert format_eps(10 / 255) == "10/255" and format_eps(0.03) == "0.03"


def test_cli_validate_and_the_api_take_the_slice(tmp_path, capsys):
    assert main(["validate", "quick", "--only", "attack=embedattack", "--only", "defense=none"]) == 0
    out = capsys.readouterr().out
    assert "quick--only-attack=embedattack-defense=none" in out and "with 2 cells" in out
    assert main(["validate", "quick", "--only", "attack=nope"]) == 2
    assert "no such attacks" in capsys.readouterr().err
    df = daebench.run(MICRO_GRID, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r",
                      only={"defense": "none", "attack": "embedattack"})
    assert list(zip(df.defense, df.attack)) == [("none", "embedattack")]
    assert (tmp_path / "r" / "micro--only-defense=none-attack=embedattack" / "results.csv").is_file()
