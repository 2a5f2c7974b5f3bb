"""Slices of a grid without writing YAML: `--only attack=embedattack --only defense=zepad,none`.

A slice keeps the grid's every setting and narrows its lists, so each stage of the
slice has the same key as in the whole grid: a slice reuses what the whole grid
cached and vice versa. It is run under its own name (`GRID--only-...`), so its
results table never replaces the whole grid's.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from daebench.config import GridSpec, parse_fraction
from daebench.errors import ConfigError

#: slice key -> (grid field, what it is called in messages)
KEYS = {
    "attack": ("attacks", "attacks"),
    "defense": ("defenses", "defenses"),
    "encoder": ("encoders", "victim encoders"),
    "D_d": ("downstream", "downstream datasets"),
    "D_f": ("fine_tune_data", "fine-tuning datasets"),
    "eps": ("eps", "eps values"),
    "seed": ("seeds", "seeds"),
    "scenario": ("scenarios", "scenarios"),
}
ALIASES = {"attacks": "attack", "defenses": "defense", "encoders": "encoder", "downstream": "D_d",
           "fine_tune_data": "D_f", "seeds": "seed", "scenarios": "scenario", "d_d": "D_d", "d_f": "D_f"}


def parse_only(items: Iterable[str] | dict[str, Any] | None) -> dict[str, list[str]]:
    """`["attack=a,b", "defense=c"]` (or a dict of str / list values) as {key: [values]}."""
    if not items:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ConfigError(f"--only {item!r}: a slice is KEY=VALUE[,VALUE...], e.g. attack=embedattack or "
                                  f"defense=zepad,none; keys: {', '.join(KEYS)}.")
            pairs.append((key, value))
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        key = ALIASES.get(str(key).strip(), str(key).strip())
        if key not in KEYS:
            raise ConfigError(f"--only {key}=...: unknown slice key; the keys are {', '.join(KEYS)}.")
        values = value.split(",") if isinstance(value, str) else [str(v) for v in value]
        out.setdefault(key, []).extend(v.strip() for v in values if str(v).strip())
    return out


def _names(key: str, item: Any) -> set[str]:
    """The names a grid entry answers to under a slice key."""
    if key in ("attack", "defense"):
        return {item.name, *([item.label] if item.label else [])}
    if key == "encoder":
        return {n for n in (item.name, item.method) if n}
    return {str(item)}


def _matches(key: str, item: Any, wanted: str) -> bool:
    if key == "eps":
        try:
            return abs(float(item) - parse_fraction(wanted)) < 1e-9
        except (ValueError, TypeError):
            return False
    if key == "seed":
        return str(item) == wanted
    return wanted in _names(key, item)


def slice_grid(grid: GridSpec, only: Iterable[str] | dict[str, Any] | None) -> GridSpec:
    """The grid narrowed to the values named per key; a clear error for a value it lacks."""
    selection = parse_only(only)
    if not selection:
        return grid
    update: dict[str, Any] = {}
    for key, wanted in selection.items():
        field, what = KEYS[key]
        entries = getattr(grid, field)
        missing = [w for w in wanted if not any(_matches(key, e, w) for e in entries)]
        if missing:
            have = sorted({n for e in entries for n in _names(key, e)}) if key not in ("eps",) else \
                [f"{e * 255:g}/255" for e in entries]
            raise ConfigError(f"--only {key}={','.join(missing)}: grid '{grid.name}' has no such {what}; it has "
                              f"{', '.join(map(str, have))}.")
        update[field] = [e for e in entries if any(_matches(key, e, w) for w in wanted)]
    sliced = grid.model_copy(update={**update, "name": f"{grid.name}--only-{_slug(selection)}"})
    if sliced.cell_count() == 0:
        raise ConfigError(f"the slice {_slug(selection)} of grid '{grid.name}' selects no cell (its pairing is "
                          f"'{grid.pairing}'); widen it.")
    return sliced


def _slug(selection: dict[str, list[str]]) -> str:
    text = "-".join(f"{k}={'+'.join(v)}" for k, v in selection.items())
    return re.sub(r"[^A-Za-z0-9=+._-]", "_", text)
