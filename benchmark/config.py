"""Grid configs: YAML in, a validated `GridSpec` out, clear errors otherwise.

Everything is checked before anything runs: unknown keys, wrong types, plugin
names (with did-you-mean), plugin hyper-parameters (against each plugin's own
pydantic `Params`), eps in (0, 1], dataset names and npz paths. A config that
validates can still fail later only for reasons outside it (a dataset that must be
downloaded while offline), and those errors are clear too.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daebench.errors import ConfigError, DAEBenchError
from daebench.encoders.spec import EncoderSpec  # noqa: F401 (part of a grid's vocabulary)
from daebench.heads import HeadParams

CONFIG_DIR = Path(__file__).parent / "configs"
Scenario = Literal["semi_black_box", "white_box", "transfer"]
_FRACTION = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)\s*$")


def parse_fraction(value: Any) -> float:
    """Accept 0.0392, '0.0392' or '10/255' (as papers write budgets)."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        try:
            return float(m.group(1)) / float(m.group(2)) if m else float(value)
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"'{value}' is not a number or a fraction like 10/255") from err
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number or a fraction like 10/255, got {type(value).__name__} {value!r}")
    return float(value)


def format_eps(eps: float) -> str:
    """eps as people write it: 10/255 for a multiple of 1/255, else its decimal value."""
    scaled = eps * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:.4g}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` command-line items as parameter overrides, each value read as YAML
    (so `epochs=5` is an int and `amp=true` a bool, as they would be in a grid file)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DAEBenchError(f"--set expects KEY=VALUE (e.g. --set epochs=5), got {item!r}.")
        overrides[key] = yaml.safe_load(value)
    return overrides


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginSpec(_Strict):
    """An attack or defense of the grid: a registered name, a profile and overrides."""

    name: str
    profile: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None  # a display name, when one plugin appears with several settings

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def display(self) -> str:
        return self.label or self.name


class GridSpec(_Strict):
    """One benchmark grid: encoders x attacks x defenses x D_f x D_d x eps x seeds."""

    name: str
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    image_size: int = Field(32, ge=8, le=512)
    eps: list[float] = Field(default_factory=lambda: [10 / 255], min_length=1)
    clamp: bool = True
    # semi_black_box: the surrogate is the public victim; white_box: every public
    # encoder the defense uses (the victim + e.g. ZePAD's auxiliary encoders);
    # transfer: the encoder named by `transfer_from` (from `encoders` or `surrogates`).
    scenarios: list[Scenario] = Field(default_factory=lambda: ["semi_black_box"], min_length=1)
    transfer_from: str | None = None
    surrogates: list[EncoderSpec] = Field(default_factory=list, description="encoders used only as attack surrogates")
    profile: str = "paper"
    datasets: dict[str, str] = Field(default_factory=dict)
    data_root: str | None = None
    download: bool = True
    encoders: list[EncoderSpec] = Field(min_length=1)
    attacks: list[PluginSpec] = Field(min_length=1)
    attacker_data: str = "cifar10"
    defenses: list[PluginSpec] = Field(min_length=1)
    fine_tune_data: list[str] = Field(min_length=1)
    downstream: list[str] = Field(min_length=1)
    pairing: Literal["all", "same", "different"] = Field(
        "all", description="which (D_f, D_d) pairs run: all of fine_tune_data x downstream, only D_f = D_d (the "
                           "paper's Tables 1-2, 6), or only D_f != D_d (Tables 3-4)")
    heads: HeadParams = Field(default_factory=HeadParams)
    heads_by_dataset: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-D_d overrides of `heads` (the reference trains ImageNet20 heads 50 epochs)")
    device: str = "auto"
    precision: Literal["auto", "float32", "bf16"] = Field(
        "auto", description="how the training stages' encoder passes run (the pre-training recipes' and defenses' "
                            "`amp` + `channels_last` switches, where a plugin's params do not set them): bf16 autocast "
                            "+ channels-last on CUDA and float32 on CPU (`auto`), or the one named for every device. "
                            "On a CPU without native bf16 (no AVX512-BF16 / AMX) bf16 is emulated and about 10x slower "
                            "than float32. The resolved switches are in the artifact keys.")
    batch_size: int = Field(512, ge=1, description="inference batch size for features")

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        out = []
        for v in values:
            eps = parse_fraction(v)
            if not (0 < eps <= 1) or math.isnan(eps):
                raise ValueError(
                    f"eps {v!r} = {eps} is outside (0, 1]: eps is an L-inf budget on [0, 1] images "
                    f"(the paper uses 10/255 = {10 / 255:.4f}); write it as a number or a fraction like 10/255"
                )
            out.append(eps)
        return out

    @model_validator(mode="after")
    def _check_names(self) -> "GridSpec":
        names = [e.name for e in self.encoders + self.surrogates]
        if "transfer" in self.scenarios:
            if self.transfer_from is None:
                raise ValueError("the transfer scenario needs `transfer_from`: the name of the surrogate encoder")
            if self.transfer_from not in names:
                from daebench.registry import did_you_mean

                raise ValueError(f"transfer_from '{self.transfer_from}' is not an encoder of this grid."
                                 f"{did_you_mean(self.transfer_from, names)} Encoders: {', '.join(names)}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"encoder names must be unique; repeated: {dupes} (set `name:` to tell them apart)")
        for kind, plugins in (("attack", self.attacks), ("defense", self.defenses)):
            labels = [p.display for p in plugins]
            dupes = sorted({n for n in labels if labels.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}s appear twice: {dupes}; give each a distinct `label:`")
        if not self.data_pairs():
            raise ValueError(f"pairing '{self.pairing}' leaves no (D_f, D_d) pair: fine_tune_data "
                             f"{self.fine_tune_data}, downstream {self.downstream}")
        for name, override in self.heads_by_dataset.items():
            if name not in self.downstream:
                raise ValueError(f"heads_by_dataset names '{name}', which is not a downstream dataset of this grid "
                                 f"(downstream: {', '.join(self.downstream)})")
            try:
                HeadParams(**{**self.heads.model_dump(), **override})
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: "
                                     f"{'unknown head setting' if e['type'] == 'extra_forbidden' else e['msg']}"
                                     for e in err.errors())
                raise ValueError(f"heads_by_dataset.{name}: {problems} (valid: {', '.join(HeadParams.model_fields)})") from None
        return self

    # -- dataset references ------------------------------------------------
    def dataset_source(self, name: str) -> str:
        """A dataset name of the grid -> a loadable source (alias, registry name, npz:path)."""
        return self.datasets.get(name, name)

    def all_dataset_names(self) -> list[str]:
        names = [self.attacker_data, *self.fine_tune_data, *self.downstream]
        names += [e.dataset for e in self.encoders + self.surrogates if e.dataset]
        return list(dict.fromkeys(names))

    def data_pairs(self) -> list[tuple[str, str]]:
        """The (D_f, D_d) pairs the grid runs, in fine_tune_data x downstream order."""
        keep = {"all": lambda f, d: True, "same": lambda f, d: f == d, "different": lambda f, d: f != d}[self.pairing]
        return [(f, d) for f in self.fine_tune_data for d in self.downstream if keep(f, d)]

    def cell_count(self) -> int:
        """Rows the grid's results table will have (what the planner expands: every scenario too)."""
        sizes = (self.encoders, self.attacks, self.defenses, self.data_pairs(), self.eps, self.seeds, self.scenarios)
        count = 1
        for axis in sizes:
            count *= len(axis)
        return count

    def heads_for(self, downstream: str) -> HeadParams:
        """The head settings of one D_d: `heads` with that dataset's `heads_by_dataset` overrides."""
        return self.heads.model_copy(update=self.heads_by_dataset.get(downstream, {}))

    def dataset_names(self) -> set[str]:
        """Every dataset the grid can load: its aliases and the datasets it uses (so a
        defense may build on one, e.g. ZePAD's released BMP encoder on `cifar10`)."""
        return set(self.datasets) | set(self.all_dataset_names())


def _fields_at(model: Any, path: tuple) -> list[str]:
    """The keys valid at `path` inside `model` (a pydantic class), following fields, list
    items and dict values; [] where the path leaves the models."""
    import typing

    from pydantic import BaseModel

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for a in typing.get_args(annotation) for m in models_in(a)]

    current = [model]
    for part in path:
        nxt = []
        for m in current:
            if isinstance(part, str) and part in m.model_fields:
                nxt += models_in(m.model_fields[part].annotation)
            elif not isinstance(part, str) or part not in m.model_fields:
                nxt.append(m)  # a list index or a dict key: the same model's items
        current = nxt
        if not current:
            return []
    return sorted({name for m in current for name in m.model_fields})


def _format_validation_error(err: ValidationError, where: str, model: Any = None) -> str:
    from daebench.registry import did_you_mean

    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ").rstrip(".")
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, tuple(e["loc"][:-1])) if model is not None else []
            close = did_you_mean(str(e["loc"][-1]), valid)
            msg = ("unknown key;" + close.replace(" Did", " did").rstrip("?") + "?" if close
                   else "unknown key" + (f" (valid keys here: {', '.join(valid)})" if valid else ""))
        if e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{loc}: {msg}")
    return f"Invalid grid config {where}: " + "; ".join(lines) + "."


def resolve_config_path(name_or_path: str) -> Path:
    """'quick' / 'ci' / 'paper' name a bundled config; anything else is a path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"Grid config file '{path}' does not exist. Bundled grids: {', '.join(bundled_configs())}.")
        return path
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    from daebench.registry import did_you_mean

    raise ConfigError(
        f"'{name_or_path}' is neither a grid config file nor a bundled grid.{did_you_mean(name_or_path, bundled_configs())} "
        f"Bundled grids: {', '.join(bundled_configs())}; or pass a path to a .yaml file."
    )


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_grid(name_or_path: str) -> GridSpec:
    """Read, parse and fully validate a grid config (registries included)."""
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"Grid config '{path}' is not valid YAML{at}: {problem}. Nothing was run.") from None
    return parse_grid(raw, where=f"'{path}'")


def parse_grid(raw: Any, where: str = "(inline)") -> GridSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"Grid config {where} must be a mapping of keys (name, encoders, attacks, ...), got {type(raw).__name__}.")
    try:
        grid = GridSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where, GridSpec)) from None
    validate_against_registries(grid, where)
    return grid


def dataset_problem(name: str, source: str) -> str | None:
    """What is wrong with a dataset reference (an npz file that is not there, an unknown
    registry name with its did-you-mean), or None."""
    from daebench.data import DATASETS

    if source.startswith("npz:"):
        path = Path(source[4:]).expanduser()
        if not path.is_file():
            return f"dataset '{name}': npz file '{source[4:]}' does not exist (relative paths are read from {Path.cwd()})"
        from daebench.data import npz_problem

        problem = npz_problem(path)
        return f"dataset '{name}': {problem}" if problem else None
    if source.startswith("imagefolder:"):
        from daebench.imagefolder import tree_root

        try:
            tree_root(source)
        except DAEBenchError as err:
            return f"dataset '{name}': {err}"
        return None
    try:
        DATASETS.check(source)
    except DAEBenchError as err:
        return str(err)
    return None


def validate_against_registries(grid: GridSpec, where: str = "") -> None:
    """Names and plugin parameters, checked against what is registered."""
    from daebench.attacks import ATTACKS
    from daebench.encoders import ENCODERS
    from daebench.encoders.ssl import SSL_METHODS
    from daebench.defenses import DEFENSES

    problems: list[str] = []

    def guard(fn, *args) -> Any:
        try:
            return fn(*args)
        except DAEBenchError as err:
            problems.append(str(err))
        except (ValueError, TypeError) as err:
            problems.append(str(err))
        return None

    for enc in grid.encoders + grid.surrogates:
        guard(ENCODERS.check, enc.arch)
        if enc.method:
            method = guard(SSL_METHODS.get, enc.method)
            if method is not None:
                guard(method.resolve_params, method.profile_for(enc.profile, grid.profile), enc.params, f"encoder '{enc.name}'")
        if enc.checkpoint and not Path(enc.checkpoint).is_file():
            problems.append(f"encoder '{enc.name}': checkpoint file '{enc.checkpoint}' does not exist")
    for spec in grid.attacks:
        cls = guard(ATTACKS.get, spec.name)
        if cls is not None:
            guard(cls.resolve_params, cls.profile_for(spec.profile, grid.profile), spec.params, f"attack '{spec.display}'")
    for spec in grid.defenses:
        cls = guard(DEFENSES.get, spec.name)
        if cls is not None:
            guard(cls.resolve_params, cls.profile_for(spec.profile, grid.profile), spec.params, f"defense '{spec.display}'")
    for name in grid.all_dataset_names():
        if (problem := dataset_problem(name, grid.dataset_source(name))) is not None:
            problems.append(problem)
    if problems:
        raise ConfigError(f"Grid config {where} names things that do not exist: " + "; ".join(problems) + ". Nothing was run.")
