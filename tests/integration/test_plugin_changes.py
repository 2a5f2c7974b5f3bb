"""Editing a plugin never silently reuses stale results: a warning names the plugin and the
remedies, and `--recompute NAME` recomputes its artifacts and everything built on them."""

from __future__ import annotations

import logging

import pytest
import torch

from daebench.attacks import ATTACKS
from daebench.config import parse_grid
from daebench.errors import DAEBenchError, IncompletePluginError
from daebench.results import run_grid
from tests.conftest import MICRO_GRID

GRID = {**MICRO_GRID, "attacks": [{"name": "embedattack", "params": {"steps": 3}}], "defenses": ["none"]}


def _embedattack():
    return ATTACKS.get("embedattack")


def test_an_edited_plugin_is_flagged_and_recompute_reruns_it(tmp_path, monkeypatch, caplog):
    grid = parse_grid(GRID)
    cache = tmp_path / "cache"
    first = run_grid(grid, cache, None, progress=False)
    ra = float(first.results.RA.iloc[0])

    # "edit" the objective: invert it, as a user would by mistake (the source digest changes with it)
    cls = _embedattack()
    original = cls.loss
    monkeypatch.setattr(cls, "loss", lambda self, s, x_adv, x, clean: -original(self, s, x_adv, x, clean))
    monkeypatch.setattr(cls, "source_digest", classmethod(lambda c: "edited"))
    with caplog.at_level(logging.WARNING, logger="daebench"):
        stale = run_grid(grid, cache, None, progress=False)
    assert stale.computed.total() == 0 and float(stale.results.RA.iloc[0]) == ra  # reused, as the key says
    (message,) = stale.changed_plugins.values()
    assert "attack 'embedattack'" in message and "bump `version`" in message and "--recompute embedattack" in message
    assert message in caplog.text

    fresh = run_grid(grid, cache, None, progress=False, recompute=["embedattack"])
    assert fresh.computed["craft"] == 1 and fresh.computed["evaluate"] == 1 and fresh.computed["pretrain"] == 0
    assert float(fresh.results.RA.iloc[0]) > ra  # the inverted objective barely moves the features
    assert not fresh.changed_plugins
    assert any((cache / "quarantine").iterdir())  # the stale artifacts are kept aside, not deleted


def test_recompute_names_must_be_plugins_of_the_grid(tmp_path):
    with pytest.raises(DAEBenchError, match="--recompute names 'uapdg'.*Nothing was recomputed"):
        run_grid(parse_grid(GRID), tmp_path / "cache", None, progress=False, recompute=["uapdg"])


def test_a_plugin_without_its_required_method_fails_at_registration():
    from daebench.attacks.base import PerSamplePGDAttack
    from daebench.registry import Registry

    registry = Registry("attack")

    class NoLoss(PerSamplePGDAttack):
        """Forgot its loss."""

    with pytest.raises(IncompletePluginError, match="does not implement `loss`"):
        registry.register("no_loss", NoLoss)

    class WithLoss(PerSamplePGDAttack):
        def loss(self, surrogate, x_adv, x, clean_features):
            return torch.zeros(len(x))

    assert registry.register("with_loss", WithLoss) is WithLoss


def test_a_plugin_without_the_grids_profile_is_named_once(caplog):
    from daebench.defenses.base import Defense, DefendedModel
    from daebench.plan import PluginResolver

    class Slow(Defense):
        registry_name = "slow"

        def defend(self, victim, data):
            return DefendedModel([victim])

    resolve = PluginResolver("tiny")
    with caplog.at_level(logging.WARNING, logger="daebench"):
        resolve("defense", Slow, None, {})
        resolve("defense", Slow, None, {})
    assert len(resolve.warnings) == 1 and "defense 'slow' has no 'tiny' profile" in resolve.warnings[0]
    assert not PluginResolver("tiny").warnings
    Slow.profile_free = True
    quiet = PluginResolver("tiny")
    quiet("defense", Slow, None, {})
    assert not quiet.warnings
