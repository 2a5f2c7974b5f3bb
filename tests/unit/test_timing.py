"""daebench.timing: interleaved, repeated comparisons and their median ratio, on a fake clock."""

from __future__ import annotations

import pytest

from daebench.timing import Ratio, Timed, interleave


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sides(clock: FakeClock, durations: dict[str, list[float]], log: list[str]):
    """Sides that log their call and advance the clock by their next duration."""
    def side(name):
        calls = iter(durations[name])

        def run():
            log.append(name)
            clock.now += next(calls)
            return f"{name}{len(log)}"
        return run
    return {name: side(name) for name in durations}


def test_interleaves_after_one_uncounted_warmup():
    clock, log = FakeClock(), []
    # the warm-up (first entry) is slow on both sides and must not count
    sides = _sides(clock, {"A": [100.0, 1.0, 1.0, 2.0], "B": [50.0, 3.0, 4.0, 5.0]}, log)
    cmp = interleave(sides, repeats=3, clock=clock)
    assert log == ["A", "B"] * 4
    assert cmp.order == log
    assert cmp.warmup_seconds == {"A": 100.0, "B": 50.0}
    assert cmp.seconds == {"A": [1.0, 1.0, 2.0], "B": [3.0, 4.0, 5.0]}
    assert cmp.values["A"] == ["A3", "A5", "A7"]  # what each counted run returned
    assert cmp.repeats == 3
    ratio = cmp.ratio("B", "A")
    assert ratio.values == (3.0, 4.0, 2.5)  # round by round, never across rounds
    assert ratio.median == 3.0 and (ratio.low, ratio.high) == (2.5, 4.0)
    assert cmp.median_seconds("B") == 4.0


def test_three_sides_and_no_warmup():
    clock, log = FakeClock(), []
    sides = _sides(clock, {"A": [1, 1], "B": [2, 2], "C": [4, 4]}, log)
    cmp = interleave(sides, repeats=2, warmup=False, clock=clock)
    assert log == ["A", "B", "C", "A", "B", "C"]
    assert cmp.warmup_seconds == {}
    assert cmp.ratio("C", "A").values == (4.0, 4.0)


def test_a_side_that_times_itself():
    clock = FakeClock()

    def with_setup():
        clock.now += 10.0  # setup the side leaves out of its time
        return Timed(2.0, "v")

    cmp = interleave({"self-timed": with_setup, "plain": lambda: setattr(clock, "now", clock.now + 1.0)},
                     repeats=2, clock=clock)
    assert cmp.seconds == {"self-timed": [2.0, 2.0], "plain": [1.0, 1.0]}
    assert cmp.values["self-timed"] == ["v", "v"]


def test_ratio_summary_and_description():
    ratio = Ratio((3.4, 2.8, 3.1, 3.0, 3.2))
    assert ratio.median == 3.1 and ratio.low == 2.8 and ratio.high == 3.4
    assert ratio.quartiles == pytest.approx((3.0, 3.2))
    assert ratio.describe("reuse vs cell-by-cell") == "reuse vs cell-by-cell: 3.1x (median of 5, range 2.8-3.4)"
    assert ratio.as_dict()["per_repeat"] == [3.4, 2.8, 3.1, 3.0, 3.2]
    assert Ratio((2.0, 4.0)).median == 3.0  # an even count: the mean of the middle two
    one = Ratio((1.94,))
    assert one.quartiles == (1.94, 1.94) and "1 repeat" in one.describe("x", digits=2)


def test_bad_arguments():
    with pytest.raises(ValueError):
        interleave({"A": lambda: None}, repeats=0)
    with pytest.raises(ValueError):
        interleave({}, repeats=1)
    with pytest.raises(ValueError):
        Ratio(())
