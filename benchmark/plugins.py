"""What attacks, defenses and SSL recipes share: typed hyper-parameters with profiles.

A plugin declares its hyper-parameters as a pydantic `Params` model (defaults =
the paper's values) and named `profiles` of overrides (`tiny` for CPU runs).
`resolve_params(profile, overrides)` gives the validated, complete parameter set
that goes into the artifact key, so two specs that mean the same thing hash the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer

from daebench.errors import ConfigError
from daebench.registry import did_you_mean


F = TypeVar("F", bound=Callable[..., Any])


def required(method: F) -> F:
    """Marks a base class's stub that every registered plugin must implement (override):
    the registry refuses a class that leaves one unimplemented, naming it, so a missing
    `loss` fails when the plugin is registered, not deep inside a run."""
    method.__daebench_required__ = True  # type: ignore[attr-defined]
    return method


@dataclass(frozen=True)
class Work:
    """A stage's cost in encoder passes: images through a forward + backward (`train`) and
    through a forward alone (`forward`); `daebench estimate` times them per device."""

    train: float = 0.0
    forward: float = 0.0

    def __add__(self, other: "Work") -> "Work":
        return Work(self.train + other.train, self.forward + other.forward)

    def __mul__(self, factor: float) -> "Work":
        return Work(self.train * factor, self.forward * factor)

    __rmul__ = __mul__

    def __bool__(self) -> bool:
        return bool(self.train or self.forward)


class Params(BaseModel):
    """A plugin's hyper-parameters. `omitted_when` (merged along the class hierarchy) names
    options left out of the dump -- and so of artifact keys -- while they hold the given
    value: an option added later, at a value that computes what the plugin computed
    before it, keeps every artifact already cached valid."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    omitted_when: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _omit_options_at_their_old_value(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        for cls in type(self).__mro__:
            for name, value in vars(cls).get("omitted_when", {}).items():
                # only where this class's default is that value too: the dump must rebuild the same params
                if name in data and data[name] == value and name in fields and fields[name].default == value:
                    del data[name]
        return data


def capped(params: Params, images: int) -> int:
    """The images a plugin trains on: `max_samples` / `max_images` caps them when set."""
    cap = getattr(params, "max_samples", None) or getattr(params, "max_images", None)
    return min(images, cap) if cap else images


class Configurable:
    Params: ClassVar[type[Params]] = Params
    #: profile name -> overrides of Params' defaults; "paper" is the defaults themselves.
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Part of every artifact key: bump it when a change alters what the plugin computes.
    version: ClassVar[int] = 1
    #: True for a plugin whose cost no profile changes (nothing trained, no iteration
    #: budget): it needs no `tiny` profile, and a grid does not warn that it lacks one.
    profile_free: ClassVar[bool] = False

    @classmethod
    def source_digest(cls) -> str:
        """A digest of the source file that defines the plugin, recorded with every artifact
        it makes: when the code changes under an unchanged `version`, a cached artifact's
        digest no longer matches and the run says so (its key, like the version, does not
        change: reformatting a built-in plugin throws no cached work away)."""
        return _module_digest(cls.__module__)

    @classmethod
    def record(cls) -> dict[str, Any]:
        """What an artifact records of the plugin that made it."""
        return {"name": getattr(cls, "registry_name", cls.__name__), "version": cls.version, "digest": cls.source_digest()}

    @classmethod
    def missing_methods(cls) -> list[str]:
        """The `required` methods this class still leaves to its base class's stub."""
        return sorted(name for name in dir(cls) if getattr(getattr(cls, name, None), "__daebench_required__", False))

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Encoder passes of one run of the plugin over `images` images, from its resolved
        parameters: the cost model of `daebench estimate`. Default: `epochs` x `steps`
        forward + backward passes over at most `max_samples` (or `max_images`) images;
        nothing for a profile-free plugin. Override where the algorithm costs otherwise."""
        if cls.profile_free:
            return Work()
        p = cls.Params.model_validate(params)
        return Work(train=capped(p, images) * getattr(p, "epochs", 1) * getattr(p, "steps", 1))

    @classmethod
    def profile_names(cls) -> list[str]:
        return sorted({"paper", *cls.profiles})

    @classmethod
    def profile_for(cls, explicit: str | None, grid_default: str) -> str:
        """An explicit profile must exist; the grid-wide default falls back to 'paper'."""
        if explicit:
            return explicit
        return grid_default if grid_default in cls.profile_names() else "paper"

    @classmethod
    def resolve_params(cls, profile: str | None, overrides: dict[str, Any] | None = None, where: str = "") -> Params:
        profile = profile or "paper"
        where = where or getattr(cls, "registry_name", cls.__name__)
        if profile != "paper" and profile not in cls.profiles:
            raise ConfigError(
                f"{where}: unknown profile '{profile}'.{did_you_mean(profile, cls.profile_names())} "
                f"Valid profiles: {', '.join(cls.profile_names())}"
            )
        values = {**cls.profiles.get(profile, {}), **(overrides or {})}
        try:
            return cls.Params(**values)
        except ValidationError as err:
            valid = ", ".join(f"{k} (default {_default_text(f)})" for k, f in cls.Params.model_fields.items())
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '?'}: {'unknown parameter' if e['type'] == 'extra_forbidden' else e['msg']}"
                for e in err.errors()
            )
            raise ConfigError(f"{where}: invalid parameters: {problems}. Valid parameters: {valid}.") from None


def _default_text(field: Any) -> str:
    """A field's default for an error message (nested settings shown as 'nested settings')."""
    if field.default_factory is not None:
        value = field.default_factory()
        return "nested settings" if hasattr(value, "model_dump") else repr(value)
    return repr(field.default)


@functools.lru_cache(maxsize=None)
def _module_digest(module_name: str) -> str:
    import hashlib
    import inspect
    import sys

    try:
        source = inspect.getsource(sys.modules[module_name])
    except (KeyError, OSError, TypeError):  # a module without source (built on the fly): nothing to compare
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]
