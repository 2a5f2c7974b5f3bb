"""Acceptance checks on real data (the ci grid: CIFAR-10 / GTSRB subsets). Minutes: marked slow."""

from __future__ import annotations

import os

import pytest

from daebench.config import load_grid
from daebench.results import run_grid
from tests.conftest import REPO, shared_file

pytestmark = pytest.mark.slow


def _run_bundled(name: str, tmp_path_factory):
    """Run a bundled real-data grid (sharing $DAEBENCH_CACHE with other runs when set)."""
    shared_file("cifar10-subset.npz")
    shared_file("gtsrb-subset.npz")
    cwd = os.getcwd()
    os.chdir(REPO)  # the grids' npz paths are relative to the repository root
    try:
        grid = load_grid(name)
        cache = os.environ.get("DAEBENCH_CACHE") or tmp_path_factory.mktemp(name) / "cache"
        report = run_grid(grid, cache_dir=cache, runs_dir=tmp_path_factory.mktemp("runs"), progress=False)
    finally:
        os.chdir(cwd)
    return report.results


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory):
    return _run_bundled("ci", tmp_path_factory)


def _cell(df, defense, attack, d_d="cifar10-subset"):
    rows = df[(df.defense == defense) & (df.attack == attack) & (df.D_d == d_d)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_embedattack_flips_most_baseline_predictions(ci_results):
    # measured (results/measured/2026-11-28-ci-defenses-v3): BA 43.6, RA 20.3, ASR 72.1
    base = _cell(ci_results, "none", "embedattack")
    assert base.BA - base.RA >= 0.15 and base.ASR >= 0.5, (base.BA, base.RA, base.ASR)


def test_pgd_at_is_more_robust_than_the_baseline(ci_results):
    for attack in ("embedattack", "uapgd"):
        assert _cell(ci_results, "pgd_at", attack).RA > _cell(ci_results, "none", attack).RA


def test_every_attack_lowers_baseline_accuracy_on_both_downstream_sets(ci_results):
    base = ci_results[ci_results.defense == "none"]
    assert set(base.D_d) == {"cifar10-subset", "gtsrb-subset"}
    assert (base.RA < base.BA).all()


@pytest.fixture(scope="module")
def ci_attack_results(tmp_path_factory):
    return _run_bundled("ci-attacks", tmp_path_factory)


@pytest.mark.heavy  # every attack's crafting on the subsets: about 45 minutes on 2 AVX2 cores, beyond CI's budget
def test_every_attack_beats_uniform_noise_on_a_real_encoder(ci_attack_results):
    """Contract on real data: each attack lowers the baseline's downstream accuracy
    more than uniform random noise of the same eps does."""
    df = ci_attack_results[ci_attack_results.defense == "none"]
    for d_d, rows in df.groupby("D_d"):
        noise_ra = rows[rows.attack == "noise"].RA.item()
        for _, row in rows[rows.attack != "noise"].iterrows():
            assert row.RA < noise_ra, f"{row.attack} on {d_d}: RA {row.RA:.3f} vs noise {noise_ra:.3f}"
            assert row.RA < row.BA


@pytest.fixture(scope="module")
def ci_defense_results(tmp_path_factory):
    return _run_bundled("ci-defenses", tmp_path_factory)


@pytest.mark.heavy
def test_every_adversarially_trained_defense_beats_the_baseline_under_uapgd(ci_defense_results):
    """Contract on real data (the defenses issue): under uapgd, each defense that trains
    adversarially has a higher RA than the undefended encoder, on the CIFAR-10 subset;
    ZePAD reports a detection accuracy."""
    df = ci_defense_results[(ci_defense_results.attack == "uapgd") & (ci_defense_results.D_d == "cifar10-subset")]
    base = df[df.defense == "none"].RA.item()
    for defense in ("pgd_at", "trades", "mart", "deacl", "genaf", "zepad"):
        assert df[df.defense == defense].RA.item() > base, defense
    zepad = ci_defense_results[ci_defense_results.defense == "zepad"]
    assert zepad.detection_accuracy.between(0, 1).all()
