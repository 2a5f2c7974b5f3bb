from types import SimpleNamespace

import pytest

from daebench.errors import RegistryCollisionError, UnknownNameError
from daebench.registry import Registry


def test_decorator_registration_and_lookup():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"]
    assert "alpha" in reg and "beta" not in reg
    assert Alpha.registry_name == "alpha"


def test_unknown_name_suggests_the_closest_and_lists_valid_names():
    reg = Registry("attack")
    reg.register("embedattack", object())
    reg.register("uapgd", object())
    with pytest.raises(UnknownNameError) as err:
        reg.get("embedatack")
    msg = str(err.value)
    assert "Did you mean 'embedattack'?" in msg
    assert "embedattack, uapgd" in msg


def test_collision_is_an_error():
    reg = Registry("defense")
    reg.register("x", object())
    with pytest.raises(RegistryCollisionError, match="already taken"):
        reg.register("x", object())


def test_lazy_entries_import_only_on_lookup():
    reg = Registry("thing")
    reg.register_lazy("od", "collections:OrderedDict")
    assert "od" in reg
    from collections import OrderedDict

    assert reg.get("od") is OrderedDict


def test_entry_point_discovery(monkeypatch):
    import daebench.registry as registry_module

    eps = [SimpleNamespace(name="ordered", value="collections:OrderedDict"),
           SimpleNamespace(name="mod", value="json")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps if group == "daebench.test" else [])
    reg = Registry("plugin", entry_point_group="daebench.test")
    assert "ordered" in reg.names()
    from collections import OrderedDict

    assert reg.get("ordered") is OrderedDict


def test_builtin_registries_hold_the_first_plugins():
    from daebench.attacks import ATTACKS
    from daebench.data import DATASETS
    from daebench.encoders import ENCODERS
    from daebench.encoders.ssl import SSL_METHODS
    from daebench.defenses import DEFENSES

    assert {"embedattack", "uapgd"} <= set(ATTACKS.names())
    assert {"none", "pgd_at"} <= set(DEFENSES.names())
    assert {"resnet18", "resnet20", "resnet56"} <= set(ENCODERS.names())
    assert {"simclr", "byol"} <= set(SSL_METHODS.names())
    assert {"digits", "cifar10", "stl10", "svhn", "gtsrb", "animals10", "imagenet20"} <= set(DATASETS.names())
