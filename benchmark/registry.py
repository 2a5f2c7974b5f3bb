"""One generic plugin registry, used for attacks, defenses, encoders, datasets, ...

Why one class: every kind of plugin gets the same behaviour for free --
decorator registration, lazy "module:attr" entries (nothing heavy is imported
just to list names), did-you-mean errors, collision errors, and discovery of
outside plugins through a package entry-point group.

    ATTACKS = Registry("attack", entry_point_group="daebench.attacks",
                       builtin_modules=["daebench.attacks.embedattack", ...])

    @ATTACKS.register("my_attack")
    class MyAttack(Attack): ...

An outside package adds, in its pyproject.toml,

    [project.entry-points."daebench.attacks"]
    my_attack = "my_package.my_attack"             # a module that registers itself
    other = "my_package.other:OtherAttack"         # or an object, registered under 'other'
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Generic, Iterable, TypeVar

from daebench.errors import IncompletePluginError, RegistryCollisionError, UnknownNameError

T = TypeVar("T")


def _import_object(target: str):
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest valid name, or '' if none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Name -> plugin object, filled by decorators, lazy entries and entry points."""

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        builtin_modules: Iterable[str] = (),
        builtin_package: str | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtin_modules = list(builtin_modules)
        self._builtin_package = builtin_package
        self._objects: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._discovered = False

    # -- registration ----------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """Register `obj` under `name`; used bare as a decorator when obj is None."""

        def add(target: T) -> T:
            where = origin or getattr(target, "__module__", "?")
            known = self._origins.get(name)
            if name in self._objects and self._objects[name] is not target:
                raise RegistryCollisionError(
                    f"Cannot register {self.kind} '{name}' from {where}: that name is "
                    f"already taken by {known}. Pick another name for one of them."
                )
            missing = target.missing_methods() if isinstance(target, type) and hasattr(target, "missing_methods") else []
            if missing:
                bases = ", ".join(b.__name__ for b in target.__mro__[1:] if b.__module__.startswith("daebench"))
                raise IncompletePluginError(
                    f"Cannot register {self.kind} '{name}' ({where}.{target.__name__}): it does not implement "
                    f"{', '.join(f'`{m}`' for m in missing)}, which its base class ({bases.split(', ')[0]}) requires. "
                    f"Define {'them' if len(missing) > 1 else 'it'} in the class.")
            self._objects[name] = target
            self._origins[name] = where
            self._lazy.pop(name, None)
            if hasattr(target, "__dict__") and not isinstance(target, type(importlib)):
                try:
                    setattr(target, "registry_name", name)
                except (AttributeError, TypeError):
                    pass
            return target

        return add(obj) if obj is not None else add

    def register_lazy(self, name: str, target: str) -> None:
        """Register 'module:attr', imported only when `name` is first looked up."""
        if name in self._objects or (name in self._lazy and self._lazy[name] != target):
            raise RegistryCollisionError(
                f"Cannot register {self.kind} '{name}' as {target}: that name is already "
                f"taken by {self._origins.get(name) or self._lazy[name]}."
            )
        self._lazy[name] = target
        self._origins[name] = target

    # -- discovery ---------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in self._builtin_modules + self._package_modules():
            importlib.import_module(module)
        if self.entry_point_group:
            for ep in entry_points(group=self.entry_point_group):
                if ":" in ep.value:
                    if ep.name not in self._objects:
                        self.register_lazy(ep.name, ep.value)
                else:  # a module that registers its plugins when imported
                    importlib.import_module(ep.value)

    def _package_modules(self) -> list[str]:
        """Every module of the built-in package (one plugin per file), bar base/private ones."""
        if not self._builtin_package:
            return []
        import pkgutil

        package = importlib.import_module(self._builtin_package)
        return [f"{self._builtin_package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_") and m.name != "base"]

    # -- lookup ------------------------------------------------------------
    def names(self) -> list[str]:
        self._discover()
        return sorted(set(self._objects) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        self._discover()
        if name in self._objects:
            return self._objects[name]
        if name in self._lazy:
            obj = _import_object(self._lazy.pop(name))
            self._objects[name] = obj
            return obj
        valid = self.names()
        raise UnknownNameError(
            f"Unknown {self.kind} '{name}'.{did_you_mean(name, valid)} "
            f"Valid {self.kind} names: {', '.join(valid) or '(none registered)'}."
        )

    def check(self, name: str) -> str:
        """Raise the did-you-mean error for an unknown name without importing it."""
        if name not in self:
            self.get(name)
        return name

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self.names())} entries)"

