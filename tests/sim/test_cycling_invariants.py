"""Random fast cycling loads and small flickers on slices of the real 4-8 s traces: every
fail-safe invariant holds."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.plant.events import Cycling
from sim.replay.inprocess import run_scenario
from sim.replay.invariants import INVARIANTS
from sim.scenario import SCENARIO_DIR, Scenario, parse_scenario

TRACES = SCENARIO_DIR / "traces"
SLICE_S = 300.0
# (file, start_s): short windows of each real recording with something going on.
SLICES = (
    ("refit_house21_2014-03-07_evening.csv", 7800.0),  # after the fast cycling, 0.4 kW base
    ("refit_house10_2013-11-20_afternoon.csv", 10800.0),  # the thermostat load switching
    ("refit_house8_2013-11-02_morning.csv", 3000.0),  # washing-machine drum steps
    ("ukdale_house1_2013-04-15_evening.csv", 9600.0),  # fast 0.6-1 kVA cycling
    ("pvhouse_netgrid_2020-01-01_daytime.csv", 12300.0),  # PV export and a 1.1 kW spike
)


@st.composite
def cycling_tables(draw: st.DrawFn) -> dict[str, Any]:
    """One ``[[event]]`` of the family: 1-3.5 kW, 4-30 s period, 30-70 % duty, jitter."""
    period_s = draw(st.floats(min_value=4.0, max_value=30.0))
    at_s = draw(st.floats(min_value=0.0, max_value=SLICE_S / 2))
    return {
        "at_s": at_s,
        "kind": "cycling",
        "power_w": draw(st.floats(min_value=1000.0, max_value=3500.0)),
        "duration_s": draw(st.floats(min_value=30.0, max_value=SLICE_S - at_s)),
        "period_s": period_s,
        "duty": draw(st.floats(min_value=0.3, max_value=0.7)),
        "jitter_s": draw(st.floats(min_value=0.0, max_value=period_s / 3)),
    }


@st.composite
def flicker_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A small load flickering faster than the loop (TV, PC, pump): 20-150 W, 2-8 s period."""
    period_s = draw(st.floats(min_value=2.0, max_value=8.0))
    return {
        "at_s": 0.0,
        "kind": "cycling",
        "power_w": draw(st.floats(min_value=20.0, max_value=150.0)),
        "duration_s": SLICE_S,
        "period_s": period_s,
        "duty": draw(st.floats(min_value=0.3, max_value=0.7)),
        "jitter_s": draw(st.floats(min_value=0.0, max_value=period_s / 3)),
    }


@st.composite
def cycling_scenarios(draw: st.DrawFn) -> Scenario:
    file, start_s = draw(st.sampled_from(SLICES))
    document = {
        "name": "random_cycling",
        "description": "random cycling loads on a slice of a real 4-8 s trace",
        "seed": draw(st.integers(min_value=0, max_value=2**32)),
        "trace": {
            "file": str(TRACES / file),
            "start_s": start_s,
            "duration_s": SLICE_S,
            "max_gap_s": 30.0,
        },
        "battery": [
            {"soc_pct": draw(st.floats(min_value=13.0, max_value=99.0))}
            for _ in range(draw(st.integers(min_value=1, max_value=2)))
        ],
        "event": draw(st.lists(cycling_tables(), min_size=1, max_size=2))
        + draw(st.lists(flicker_tables(), max_size=1)),
    }
    return parse_scenario(document, SCENARIO_DIR / "random_cycling.toml")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=cycling_scenarios())
def test_random_cycling_loads_keep_every_invariant(scenario: Scenario) -> None:
    assert all(isinstance(event, Cycling) for event in scenario.events)
    result = run_scenario(scenario, "mmbc")
    assert set(result.invariants) == set(INVARIANTS)
    failed = {name: result.report.details.get(name) for name, ok in result.invariants.items()}
    assert all(result.invariants.values()), {k: v for k, v in failed.items() if v}
    # The replayed house is the trace plus the cycling, switching on and off.
    trace = scenario.load_trace()
    timeline = scenario.timeline()
    record = result.record
    # A record cell is the mean over its span; where a trace row falls inside a cell the
    # trace's value changes within it, so compare the cells the trace holds constant over.
    rows = trace.times_s
    held = [
        (t_s, net_w)
        for t_s, dt_s, net_w in zip(record.t_s, record.dt_s, record.net_w, strict=True)
        if bisect_right(rows, t_s) == bisect_left(rows, t_s + dt_s)
    ]
    assert len(held) > 0.8 * len(record.t_s)
    extra_w = [net_w - trace.net_at(t_s) for t_s, net_w in held]
    assert extra_w == pytest.approx([timeline.extra_w_at(t_s) for t_s, _ in held])
    assert max(extra_w) >= 1000.0
    assert min(extra_w) == 0.0
