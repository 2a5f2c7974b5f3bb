"""A plugin's parameter dump (its artifact key) must rebuild the very parameters the stage runs."""

from __future__ import annotations

import pytest

from daebench.attacks import ATTACKS
from daebench.defenses import DEFENSES
from daebench.encoders.ssl import SSL_METHODS

PLUGINS = [(kind, name, reg.get(name)) for kind, reg in (("attack", ATTACKS), ("defense", DEFENSES), ("ssl", SSL_METHODS))
           for name in reg.names()]


def _omitted(params_cls) -> dict:
    out: dict = {}
    for cls in reversed(params_cls.__mro__):
        out |= vars(cls).get("omitted_when", {})
    return {k: v for k, v in out.items() if k in params_cls.model_fields}


@pytest.mark.parametrize("kind, name, plugin", PLUGINS, ids=[f"{k}:{n}" for k, n, _ in PLUGINS])
def test_every_option_set_to_its_omitted_value_survives_the_dump(kind, name, plugin):
    """Stages rebuild `Params(**spec.params)`: an option left out of the dump must come back
    as what the user set, also where the plugin's default differs (ZePAD's `selection`)."""
    for option, value in _omitted(plugin.Params).items():
        params = plugin.resolve_params("paper", {option: value})
        assert plugin.Params(**params.model_dump()) == params, (option, value)


def test_zepad_selection_last_is_kept_in_its_key():
    zepad = DEFENSES.get("zepad")
    last = zepad.resolve_params("paper", {"selection": "last"})
    assert last.model_dump()["selection"] == "last"
    assert "selection" not in DEFENSES.get("pgd_at").resolve_params("paper", {"selection": "last"}).model_dump()
