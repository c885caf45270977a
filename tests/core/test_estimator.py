"""The estimator's building blocks: fleet power history and the meter's learnt cadence."""

from __future__ import annotations

import math
import statistics
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.estimator import MeterCadence, PowerHistory

POWER = st.floats(-2600.0, 2600.0).map(lambda p: round(p, 1))


def _history(samples: list[tuple[float, dict[str, float]]], order: list[str]) -> PowerHistory:
    h = PowerHistory()
    for t_s, parts in samples:
        h.add(t_s, {n: parts[n] for n in order if n in parts})
    return h


def test_fleet_power_does_not_depend_on_battery_order() -> None:
    """Regression: a plain sum gave 1277.0 one way and 1277.0000000000002 the other."""
    parts = {"a": -1901.3, "b": 1806.7, "c": 1371.6}
    forward = _history([(0.0, parts)], ["a", "b", "c"])
    backward = _history([(0.0, parts)], ["c", "b", "a"])
    assert forward.latest_w() == backward.latest_w() == 1277.0
    assert forward.at(0.0) == backward.at(0.0)
    assert forward.bounds(-1.0, 0.0) == backward.bounds(-1.0, 0.0)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries({"a": POWER, "b": POWER, "c": POWER}), min_size=1),
    order=st.permutations(["a", "b", "c"]),
    t_s=st.floats(-2.0, 30.0),
    width_s=st.floats(0.0, 5.0),
)
def test_history_is_invariant_under_battery_order(
    rows: list[dict[str, float]], order: list[str], t_s: float, width_s: float
) -> None:
    samples = [(float(i), row) for i, row in enumerate(rows)]
    a = _history(samples, ["a", "b", "c"])
    b = _history(samples, order)
    assert a.latest_w() == b.latest_w()
    assert a.at(t_s) == b.at(t_s)
    assert a.bounds(t_s, t_s + width_s) == b.bounds(t_s, t_s + width_s)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), POWER | st.sampled_from([0.0, -0.0])),
        min_size=1,
        max_size=8,
    ),
    t_s=st.floats(-2.0, 10.0),
    width_s=st.floats(0.0, 5.0),
)
def test_history_bounds_are_each_batterys_extremes_in_the_window(
    rows: list[dict[str, float]], t_s: float, width_s: float
) -> None:
    """The one-pass bounds equal the definition: per battery the least and most of the
    bracketing samples, a battery missing from a sample counting as 0 W then."""
    h = PowerHistory()
    for i, row in enumerate(rows):
        h.add(float(i), row)
    t0_s, t1_s = t_s, t_s + width_s
    times = [float(i) for i in range(len(rows))]
    first = max([i for i, t in enumerate(times) if t <= t0_s], default=0)
    last = min([i for i, t in enumerate(times) if i >= first and t >= t1_s], default=len(rows) - 1)
    window = rows[first : last + 1]
    names = {n for row in window for n in row}
    lows = [min(row.get(n, 0.0) for row in window) for n in names]
    highs = [max(row.get(n, 0.0) for row in window) for n in names]
    got = h.bounds(t0_s, t1_s)
    assert [repr(v) for v in got] == [repr(math.fsum(lows)), repr(math.fsum(highs))]


def test_history_interpolates_and_bounds_a_ramp() -> None:
    h = PowerHistory()
    h.add(0.0, {"a": 0.0})
    h.add(1.0, {"a": 400.0})
    h.add(2.0, {"a": 400.0})
    assert h.at(0.5) == pytest.approx(200.0)
    assert h.at(-5.0) == 0.0
    assert h.at(9.0) == 400.0
    assert h.bounds(0.5, 1.5) == (0.0, 400.0)  # the ramp lies within the window
    assert h.bounds(1.5, 2.0) == (400.0, 400.0)


def test_cadence_learns_a_slow_meter_and_caps_the_stale_limit() -> None:
    cadence = MeterCadence()
    assert cadence.stale_limit_s(5.0) == 5.0  # nothing learnt: the configured limit
    for t_s in (0.0, 10.0, 20.0, 30.0):
        assert cadence.observe(t_s)
    assert not cadence.observe(30.0), "the same reading again is not new"
    assert not cadence.observe(None)
    assert cadence.stale_limit_s(5.0) == 25.0  # 2.5 readings of 10 s
    for t_s in (60.0, 90.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0):
        cadence.observe(t_s)
    assert cadence.stale_limit_s(5.0) == 30.0  # never beyond 30 s
    assert cadence.stale_limit_s(40.0) == 40.0  # a longer configured limit wins


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.sampled_from([0.998, 1.0, 1.148, 10.0, 0.0]), max_size=40))
def test_cadence_is_the_median_of_the_last_nine_intervals(steps: list[float]) -> None:
    """Kept as the median of the last nine intervals (a repeated interval leaving as the same
    one comes in keeps it without recomputing)."""
    cadence = MeterCadence()
    t_s = 0.0
    seen = [t_s]
    cadence.observe(t_s)
    for step in steps:
        t_s += step
        cadence.observe(t_s)
        if t_s != seen[-1]:
            seen.append(t_s)
        intervals = [b - a for a, b in pairwise(seen)][-9:]
        expected = statistics.median(intervals) if len(intervals) >= 3 else 1.0
        assert cadence.typical_interval_s() == expected
