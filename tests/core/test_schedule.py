"""The cycle schedule against a meter whose refresh it cannot see, only infer from its polls."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.schedule import CREEP_S, MARGIN_S, RETRY_S, CycleSchedule

WORK_S = 0.05  # how long each cycle's reads and writes take


@dataclass
class Meter:
    """Refreshes every ``interval_s`` from ``phase_s`` on (its clock may run ``drift`` fast)."""

    interval_s: float
    phase_s: float
    drift: float = 0.0

    def index(self, t_s: float) -> int:
        return math.floor((t_s * (1.0 + self.drift) - self.phase_s) / self.interval_s)

    def refreshed_at(self, index: int) -> float:
        return (self.phase_s + index * self.interval_s) / (1.0 + self.drift)


@dataclass
class Run:
    polls: list[float] = field(default_factory=list)
    ages_s: list[float] = field(default_factory=list)  # per new reading: poll - its refresh


def drive(
    meter: Meter, *, period_s: float = 1.0, seconds: float = 300.0, learn: bool = True
) -> Run:
    schedule = CycleSchedule(period_s, learn_phase=learn)
    run = Run()
    t_s, last, updated_s = 0.0, None, None
    while t_s < seconds:
        run.polls.append(t_s)
        index = meter.index(t_s)
        if index != last:
            last, updated_s = index, t_s
            run.ages_s.append(t_s - meter.refreshed_at(index))
        t_s = schedule.next_s(t_s, meter_updated_s=updated_s, busy_until_s=t_s + WORK_S)
    return run


@settings(max_examples=60, deadline=None)
@given(phase=st.floats(0.001, 0.999), interval=st.sampled_from([1.0, 2.0, 5.0, 10.0]))
def test_the_polls_find_the_refresh_from_any_phase_and_any_interval(
    phase: float, interval: float
) -> None:
    meter = Meter(interval, phase * interval)
    run = drive(meter, seconds=max(120.0, 60.0 * interval))
    settled = run.ages_s[40:]
    assert settled
    # Each new reading is found at most a retry and the margin after it appeared (plus the
    # creep accumulated since the refresh was caught).
    assert max(settled) <= RETRY_S + MARGIN_S + 30 * CREEP_S + 1e-6, run.ages_s
    # The period is kept once the refresh is known: few follow-up polls.
    half_s = run.polls[-1] / 2
    assert len([t for t in run.polls if t >= half_s]) <= 1.15 * half_s + 2


@settings(max_examples=30, deadline=None)
@given(phase=st.floats(0.001, 0.999), drift=st.sampled_from([-2e-4, 2e-4]))
def test_the_polls_follow_a_meter_clock_that_drifts(phase: float, drift: float) -> None:
    # 200 ppm: 0.2 ms a second, 0.24 s over the 20 minutes, larger than the retry.
    meter = Meter(1.0, phase, drift)
    run = drive(meter, seconds=1200.0)
    assert max(run.ages_s[40:]) <= RETRY_S + MARGIN_S + 30 * CREEP_S + 1e-6


def test_a_fixed_grid_without_learning_keeps_the_phase_it_started_with() -> None:
    meter = Meter(1.0, 0.3)  # refresh 0.3 s into each second; the polls start at 0
    run = drive(meter, seconds=60.0, learn=False)
    assert run.polls[:5] == [0.0, 1.0, 2.0, 3.0, 4.0]
    ages = run.ages_s[1:]
    assert min(ages) > 0.6  # every reading waits 0.7 s for its poll
    # With learning the same meter is caught within a few readings.
    assert max(drive(meter, seconds=60.0).ages_s[20:]) < 0.2


def test_a_meter_that_went_away_and_came_back_at_another_phase_is_found_again() -> None:
    schedule = CycleSchedule(1.0, learn_phase=True)
    first, second = Meter(1.0, 0.2), Meter(1.0, 0.75)
    t_s, last, updated_s = 0.0, None, None
    ages: list[float] = []
    while t_s < 200.0:
        meter = first if t_s < 80.0 else second
        rebooting = 80.0 <= t_s < 90.0  # the reading does not change for ten seconds
        index = last if rebooting else meter.index(t_s) + (1000 if meter is second else 0)
        if index != last:
            last, updated_s = index, t_s
            ages.append(t_s - meter.refreshed_at(meter.index(t_s)))
        t_s = schedule.next_s(t_s, meter_updated_s=updated_s, busy_until_s=t_s + WORK_S)
    assert max(ages[-60:]) <= RETRY_S + MARGIN_S + 30 * CREEP_S + 1e-6
