"""The leaderboard's ranking rules on hand-made records: controls apart, intervals, ties,
BA change against the baseline, the attacks' ranking, and the reproduction check."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from daebench.report.leaderboard import (generate, rank_attacks, rank_by_interval, rank_defenses,
                                         reproduction_check)


def _rows(spec: dict[str, dict[str, float]], ba: dict[str, float], n: int = 10_000) -> pd.DataFrame:
    """One cell per (defense, attack) on one D_d, with n test images."""
    rows = []
    for defense, by_attack in spec.items():
        for attack, ra in by_attack.items():
            rows.append({"encoder": "simclr-x", "defense": defense, "attack": attack, "attack_name": attack,
                         "D_f": "x", "D_d": "x", "eps": 10 / 255, "seed": 0, "scenario": "semi_black_box",
                         "BA": ba[defense], "RA": ra, "ASR": 1 - ra / ba[defense], "n": n})
    return pd.DataFrame(rows)


def test_controls_are_shown_apart_and_never_averaged_in():
    df = _rows({"none": {"embedattack": 0.10, "pap": 0.30, "noise": 0.60},
                "pgd_at": {"embedattack": 0.40, "pap": 0.42, "noise": 0.45}}, {"none": 0.62, "pgd_at": 0.46})
    ranked = rank_defenses(df).set_index("defense")
    assert ranked.loc["none", "mean RA"] == pytest.approx(0.20)  # (0.10 + 0.30) / 2, noise left out
    assert ranked.loc["none", "RA noise (control)"] == pytest.approx(0.60)
    assert ranked.loc["pgd_at", "worst attack"] == "embedattack"
    assert list(ranked.index) == ["pgd_at", "none"]
    attacks = rank_attacks(df)
    assert list(attacks.attack) == ["embedattack", "pap", "noise"] and attacks["rank"].iloc[-1] == "control"


def test_overlapping_intervals_share_a_rank_and_separated_ones_do_not():
    # 70.4 vs 70.3 on 1 000 images: intervals overlap -> tied; 50.0 is wholly below both
    df = _rows({"pgd_at": {"a": 0.704}, "trades": {"a": 0.703}, "none": {"a": 0.500}},
               {"pgd_at": 0.8, "trades": 0.8, "none": 0.8}, n=1000)
    ranked = rank_defenses(df).set_index("defense")
    assert ranked.loc["pgd_at", "rank"] == ranked.loc["trades", "rank"] == "=1"
    assert ranked.loc["none", "rank"] == "3"
    lo, hi = ranked.loc["pgd_at", "RA lo"], ranked.loc["pgd_at", "RA hi"]
    assert lo < 0.704 < hi and 0.02 < hi - lo < 0.07  # a Wilson interval of +-2.8 points


def test_rank_is_one_plus_entries_wholly_above():
    means = pd.Series([0.9, 0.8, 0.5], index=list("abc"))
    lo, hi = means - 0.04, means + 0.04
    assert rank_by_interval(means, lo, hi).tolist() == [1, 2, 3]
    wide = pd.Series([0.9, 0.8, 0.4], index=list("abc"))
    assert rank_by_interval(wide, wide - 0.15, wide + 0.15).tolist() == [1, 1, 3]  # a, b tied; both above c


def test_ba_change_is_against_the_baseline_and_says_when_it_separates():
    df = _rows({"none": {"a": 0.3}, "zepad": {"a": 0.4}, "genaf": {"a": 0.35}},
               {"none": 0.50, "zepad": 0.60, "genaf": 0.505})
    ranked = rank_defenses(df).set_index("defense")
    assert ranked.loc["zepad", "BA change"] == pytest.approx(0.10) and ranked.loc["zepad", "BA separates"]
    assert ranked.loc["genaf", "BA change"] == pytest.approx(0.005) and not ranked.loc["genaf", "BA separates"]


def _record(directory, df: pd.DataFrame, name: str = "g", info: dict | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    df.to_csv(directory / "results.csv", index=False)
    (directory / "grid.yaml").write_text(f"name: {name}\n")
    (directory / "run.json").write_text(json.dumps({"grid": name, "git_commit": "abc", "time_utc": "2026-12-03",
                                                    **(info or {})}))
    return directory


def test_section_is_regenerated_from_records_with_interval_per_attack_columns_and_controls(tmp_path):
    df = _rows({"none": {"embedattack": 0.10, "noise": 0.60}, "pgd_at": {"embedattack": 0.40, "noise": 0.45}},
               {"none": 0.62, "pgd_at": 0.46})
    rec = _record(tmp_path / "measured" / "rec", df)
    text = generate([str(rec)], tmp_path / "runs")
    assert "RA embedattack" in text and "RA noise (control)" in text and "controls, not averaged: noise" in text
    assert "10.0 [" in text  # the baseline's mean RA with its interval
    assert generate([str(rec)], tmp_path / "runs") == text  # the same records give the same text


MACHINE = {"device": "cpu", "cpu": "Some CPU (AVX512)", "torch": "2.13.0+cpu", "torch_threads": 2}


def test_reproduction_check_names_the_cells_that_differ_on_the_record_s_machine(tmp_path):
    df = _rows({"none": {"a": 0.30}, "pgd_at": {"a": 0.40}}, {"none": 0.6, "pgd_at": 0.5})
    rec = _record(tmp_path / "measured" / "rec", df, info=MACHINE)
    board = tmp_path / "leaderboard.md"
    board.write_text(f"<!-- daebench:leaderboard:start runs={rec} -->\n<!-- daebench:leaderboard:end -->\n")
    _record(tmp_path / "runs" / "g", df, info=MACHINE)
    same = reproduction_check("g", board, tmp_path / "runs")
    assert same.same_machine and same.problems == [] and same.differences == []
    changed = df.copy()
    changed.loc[changed.defense == "pgd_at", "RA"] = 0.41
    (tmp_path / "runs" / "g" / "results.csv").write_text(changed.to_csv(index=False))
    problems = reproduction_check("g", board, tmp_path / "runs").problems
    assert len(problems) == 1 and "pgd_at" in problems[0] and "RA 41.0 vs recorded 40.0" in problems[0]


@pytest.mark.parametrize("other", [{"cpu": "Another CPU (AVX2)"}, {"torch_threads": 1}, {"cpu": None}])
def test_on_another_machine_differences_are_listed_not_failed_but_missing_cells_fail(tmp_path, other):
    df = _rows({"none": {"a": 0.30}, "pgd_at": {"a": 0.40}}, {"none": 0.6, "pgd_at": 0.5})
    rec = _record(tmp_path / "measured" / "rec", df, info=MACHINE)
    board = tmp_path / "leaderboard.md"
    board.write_text(f"<!-- daebench:leaderboard:start runs={rec} -->\n<!-- daebench:leaderboard:end -->\n")
    changed = df.copy()
    changed.loc[changed.defense == "pgd_at", "RA"] = 0.43
    _record(tmp_path / "runs" / "g", changed, info={**MACHINE, **other})
    check = reproduction_check("g", board, tmp_path / "runs")
    assert not check.same_machine and check.problems == []
    assert len(check.differences) == 1 and "RA 43.0 vs recorded 40.0" in check.differences[0]
    assert "Some CPU" in check.machines[0]
    (tmp_path / "runs" / "g" / "results.csv").write_text(changed[changed.defense == "none"].to_csv(index=False))
    missing = reproduction_check("g", board, tmp_path / "runs").problems
    assert len(missing) == 1 and "in the record but not in the run" in missing[0]
