"""Timing comparisons that hold on a loaded machine: interleaved, repeated, summarised
by the median of the per-repeat ratios and their spread.

One run of each side compares the machine's load at two moments, and the first side
pays the warm-up (imports, allocator, caches). `interleave` runs every side once
untimed, then `repeats` rounds of A B (C ...) A B ..., so load that comes and goes
falls on both sides of each round; `Comparison.ratio(slow, fast)` is the median of
the rounds' ratios, with their range and quartiles (`Ratio`).

    cmp = interleave({"shared": run_shared, "cells": run_cells}, repeats=5)
    print(cmp.ratio("cells", "shared").describe("reuse vs cell-by-cell"))
    # reuse vs cell-by-cell: 3.1x (median of 5, range 2.8-3.4)

A side that must keep setup or teardown out of its time returns `Timed(seconds, value)`
instead of its plain value; what a side returns is kept (`Comparison.values`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple


class Timed(NamedTuple):
    """What a side returns when it measures its own seconds (leaving setup out)."""

    seconds: float
    value: Any = None


@dataclass(frozen=True)
class Ratio:
    """Per-repeat ratios and their summary: the median, the range, the quartiles."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a ratio needs at least one repeat")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(Q1, Q3), linearly interpolated between the sorted ratios (equal for one repeat)."""
        if self.n == 1:
            return self.values[0], self.values[0]
        q1, _, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
        return q1, q3

    def describe(self, label: str, digits: int = 1) -> str:
        """e.g. 'reuse vs cell-by-cell: 3.1x (median of 5, range 2.8-3.4)'."""
        f = f".{digits}f"
        if self.n == 1:
            return f"{label}: {self.median:{f}}x (1 repeat, no spread)"
        return (f"{label}: {self.median:{f}}x (median of {self.n}, range {self.low:{f}}-{self.high:{f}})")

    def as_dict(self) -> dict[str, Any]:
        q1, q3 = self.quartiles
        return {"median": self.median, "min": self.low, "max": self.high, "q1": q1, "q3": q3, "repeats": self.n,
                "per_repeat": list(self.values)}


@dataclass
class Comparison:
    """The counted seconds of each side, in the order they ran, and what each run returned."""

    order: list[str]  # every timed run, warm-up included, as it happened: "A", "B", "A", "B", ...
    seconds: dict[str, list[float]] = field(default_factory=dict)  # counted repeats only
    warmup_seconds: dict[str, float] = field(default_factory=dict)
    values: dict[str, list[Any]] = field(default_factory=dict)  # counted repeats only

    @property
    def repeats(self) -> int:
        return min((len(s) for s in self.seconds.values()), default=0)

    def ratio(self, slow: str, fast: str) -> Ratio:
        """seconds(slow) / seconds(fast), one ratio per round (the two ran back to back)."""
        return Ratio(tuple(s / f if f > 0 else float("inf") for s, f in zip(self.seconds[slow], self.seconds[fast])))

    def median_seconds(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def as_dict(self) -> dict[str, Any]:
        return {"repeats": self.repeats, "seconds": self.seconds, "warmup_seconds": self.warmup_seconds,
                "median_seconds": {name: self.median_seconds(name) for name in self.seconds}}


def interleave(sides: Mapping[str, Callable[[], Any]], repeats: int = 3, warmup: bool = True,
               clock: Callable[[], float] = time.perf_counter) -> Comparison:
    """Run each side once untimed (`warmup`), then `repeats` rounds of every side in turn
    (A B A B ...), timing each run with `clock` unless it returns `Timed`."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: at least one counted repeat is needed")
    if not sides:
        raise ValueError("nothing to compare")
    cmp = Comparison(order=[], seconds={name: [] for name in sides}, values={name: [] for name in sides})
    for round_ in range(repeats + (1 if warmup else 0)):
        for name, side in sides.items():
            started = clock()
            out = side()
            elapsed = clock() - started
            if isinstance(out, Timed):
                elapsed, out = out.seconds, out.value
            cmp.order.append(name)
            if warmup and round_ == 0:
                cmp.warmup_seconds[name] = elapsed
            else:
                cmp.seconds[name].append(elapsed)
                cmp.values[name].append(out)
    return cmp
