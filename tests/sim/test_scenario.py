"""Scenario files and traces: every shipped scenario loads, holds, events and strict validation."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import tomllib
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from engine.core.settings import ControlSettings
from sim.plant.events import (
    Cycling,
    Event,
    EventKind,
    EventTimeline,
    LoadStep,
    Pulse,
    Ramp,
    Surge,
    cycle_edges,
)
from sim.plant.params import FAULT_KINDS, FaultKind
from sim.plant.traces import TraceError, load_trace
from sim.plant.world import World
from sim.scenario import (
    DEFAULT_SCENARIO,
    FAULT_SCENARIO_DIR,
    LONG_SCENARIO_DIR,
    PUSH_SCENARIO_DIR,
    SCENARIO_DIR,
    VARIANT_SCENARIO_DIR,
    Scenario,
    ScenarioError,
    load_scenario,
    load_scenarios,
    parse_scenario,
    resolve_scenario,
)

ALL_SCENARIO_FILES = sorted(SCENARIO_DIR.rglob("*.toml"))
MAIN_FILES = sorted(SCENARIO_DIR.glob("*.toml"))


def _write_csv(path: Path, header: list[str], rows: list[list[float]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _csv_column(path: Path, column: str) -> dict[float, float]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {float(r["timestamp_s"]): float(r[column]) for r in csv.DictReader(handle)}


# -- shipped scenarios -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_SCENARIO_FILES, ids=lambda p: str(p.relative_to(SCENARIO_DIR)))
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.description.strip()
    assert scenario.duration_s > 0
    assert 1 <= len(scenario.batteries) <= 3
    trace = scenario.load_trace()
    assert trace.duration_s == scenario.duration_s
    # The project never reads ../shared: every trace is a copy inside scenarios/traces.
    assert scenario.trace.file.resolve().parent == (SCENARIO_DIR / "traces").resolve()
    for t_s in (0.0, scenario.duration_s / 2, scenario.duration_s - 1):
        assert math.isfinite(trace.net_at(t_s))
    for event in scenario.events:
        assert event.at_s < scenario.duration_s


def test_shipped_set_covers_the_issue() -> None:
    main = load_scenarios([SCENARIO_DIR])
    assert len(main) >= 12
    assert {len(s.batteries) for s in main} == {1, 2, 3}
    socs = [b.soc_pct for s in main for b in s.batteries]
    assert min(socs) <= 15.0
    assert max(socs) >= 99.0
    replays = [s for s in main if not s.events]
    assert len(replays) >= 6
    scripted = {e.kind for s in main for e in s.events}
    assert scripted == set(EventKind)
    assert any(s.blocks for s in main)
    # Most of the main set stays short so the whole bench is fast.
    assert sum(s.duration_s <= 6 * 3600 for s in main) >= len(main) - 1

    faults = load_scenarios([FAULT_SCENARIO_DIR])
    kinds = {f.kind for s in faults for f in s.faults}
    assert kinds == FAULT_KINDS
    for s in faults:
        assert len(s.batteries) == 2
        assert 30 * 60 <= s.duration_s <= 60 * 60
    combined = [s for s in faults if len(s.faults) > 1]
    assert {frozenset(f.kind for f in s.faults) for s in combined} >= {
        frozenset({FaultKind.METER_OUTAGE, FaultKind.BATTERY_OFFLINE}),
        frozenset({FaultKind.BROKER_RESTART, FaultKind.BATTERY_REBOOT}),
    }

    long = load_scenarios([LONG_SCENARIO_DIR])
    assert [(s.name, len(s.batteries), s.duration_s) for s in long] == [
        ("day_24h_3bat", 3, 86400.0)
    ]


def test_all_scenario_names_are_unique() -> None:
    scenarios = load_scenarios(
        [
            SCENARIO_DIR,
            VARIANT_SCENARIO_DIR,
            FAULT_SCENARIO_DIR,
            LONG_SCENARIO_DIR,
            PUSH_SCENARIO_DIR,
        ]
    )
    assert len({s.name for s in scenarios}) == len(ALL_SCENARIO_FILES)


def test_default_scenario_is_a_real_fast_cooking_evening() -> None:
    scenario = load_scenario(DEFAULT_SCENARIO)
    assert scenario.name == "ukdale_cooking"
    assert len(scenario.batteries) == 2
    assert scenario.duration_s == 5400.0
    trace = scenario.load_trace()
    recorded = _csv_column(scenario.trace.file, "grid_w")
    assert trace.start_s == 8100.0
    # Rows every ~6 s, held between them: the start falls between the rows at 8098 and 8104.
    assert trace.net_at(0.0) == recorded[8098.0]
    assert trace.net_at(3.9) == recorded[8098.0]
    assert trace.net_at(4.0) == recorded[8104.0]
    assert trace.net_at(10.0) == recorded[8110.0]


@pytest.mark.parametrize(
    "variant", sorted(VARIANT_SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.stem
)
def test_variants_stay_in_step_with_their_base(variant: Path) -> None:
    slow = load_scenario(variant)
    base_name, _, kind = slow.name.rpartition("_slow_")
    base = load_scenario(SCENARIO_DIR / f"{base_name}.toml")
    same = ("events", "faults", "blocks", "control", "tariff", "seed", "duration_s", "pv_meter")
    for name in same:
        assert getattr(slow, name) == getattr(base, name), name
    assert slow.trace.file.resolve() == base.trace.file.resolve()
    assert dataclasses.replace(slow.trace, file=base.trace.file, pv_file=base.trace.pv_file) == (
        base.trace
    )
    if kind == "meter":
        assert (slow.meter.interval_s, slow.meter.latency_s) == (10.0, 1.0)
        assert slow.batteries == base.batteries
    else:
        assert kind == "battery"
        assert slow.meter == base.meter
        assert len(slow.batteries) == len(base.batteries)
        for s, b in zip(slow.batteries, base.batteries, strict=True):
            assert (s.params.dead_time_s, s.params.ramp_w_per_s) == (2.0, 400.0)
            assert s.soc_pct == b.soc_pct
            assert dataclasses.replace(s.params, dead_time_s=1.0, ramp_w_per_s=1000.0) == b.params


# The real 4-8 s whole-house recordings (issue 10).
FAST_TRACES = (
    "refit_house8_2013-11-02_morning.csv",
    "refit_house10_2013-11-20_afternoon.csv",
    "refit_house21_2014-03-07_evening.csv",
    "ukdale_house1_2013-04-15_evening.csv",
    "pvhouse_netgrid_2020-01-01_daytime.csv",
)


def test_real_fast_traces_are_in_the_main_set() -> None:
    fast = [s for s in load_scenarios([SCENARIO_DIR]) if s.trace.file.name in FAST_TRACES]
    assert len(fast) >= 8
    assert {s.trace.file.name for s in fast} == set(FAST_TRACES)
    assert {len(s.batteries) for s in fast} == {1, 2, 3}
    socs = [b.soc_pct for s in fast for b in s.batteries]
    assert min(socs) <= 16.0
    assert max(socs) >= 95.0
    assert any(30.0 <= soc <= 70.0 for soc in socs)
    # Mixed: one scenario whose batteries start more than 40 points apart.
    assert any(
        max(b.soc_pct for b in s.batteries) - min(b.soc_pct for b in s.batteries) > 40 for s in fast
    )
    # A window where the house exports (PV) most of the time.
    exporting = []
    for s in fast:
        trace = s.load_trace()
        held = [(b - a, trace.net_at(a)) for a, b in pairwise([*trace.times_s, s.duration_s])]
        exporting.append(sum(dt for dt, net_w in held if net_w < 0) / s.duration_s)
    assert max(exporting) > 0.8
    # Scripted cycling and compressor starts layered on the real traces.
    assert sum(any(isinstance(e, Cycling) for e in s.events) for s in fast) >= 3
    assert any(isinstance(e, Surge) for s in fast for e in s.events)
    # Short enough for the default bench.
    assert all(s.duration_s <= 2 * 3600 for s in fast)
    stems = {p.stem for p in VARIANT_SCENARIO_DIR.glob("*.toml")}
    both = [s.name for s in fast if {f"{s.name}_slow_meter", f"{s.name}_slow_battery"} <= stems]
    assert len(both) >= 3


def test_fast_traces_are_irregular_and_need_their_max_gap() -> None:
    for name in FAST_TRACES:
        path = SCENARIO_DIR / "traces" / name
        rows = _csv_column(path, "grid_w")
        spacings = {round(b - a, 3) for a, b in pairwise(rows)}
        assert len(spacings) > 3, name  # uneven rows, as recorded
        # Their drop-outs exceed the default (3 median spacings): the scenarios allow 30 s.
        with pytest.raises(TraceError, match=r"line \d+: .* since the previous row"):
            load_trace(path)
        trace = load_trace(path, max_gap_s=30.0)
        assert len(trace.times_s) == len(rows)
        assert trace.net_at(0.0) == rows[min(rows)]


def test_every_trace_file_is_attributed_in_the_readme() -> None:
    readme = (SCENARIO_DIR / "README.md").read_text(encoding="utf-8")
    attribution = readme.split("## Trace files and attribution", 1)[1]
    for path in sorted((SCENARIO_DIR / "traces").glob("*.csv")):
        # NREL's two days share one row of the table.
        assert path.name in attribution or path.name.startswith("nrel_serf_east_pv_"), path.name
    for credit in (
        "https://doi.org/10.1038/sdata.2016.122",  # REFIT
        "https://doi.org/10.15129/9ab14b0e-19ac-4279-938f-27f643078cec",
        "https://doi.org/10.1038/sdata.2015.7",  # UK-DALE
        "PV-Soft/Battery-Simulation repository (MIT licence, © 2020 Phisken)",
    ):
        assert credit in attribution


def test_at_least_four_scenarios_have_both_slow_variants() -> None:
    stems = {p.stem for p in VARIANT_SCENARIO_DIR.glob("*.toml")}
    bases = {s.removesuffix("_slow_meter") for s in stems if s.endswith("_slow_meter")}
    both = {b for b in bases if f"{b}_slow_battery" in stems}
    assert len(both) >= 4


def test_pv_file_on_a_shipped_scenario_adds_scaled_pv() -> None:
    scenario = load_scenario(SCENARIO_DIR / "summer_day_nrel_pv.toml")
    assert scenario.trace.pv_file is not None
    trace = scenario.load_trace()
    load = _csv_column(scenario.trace.file, "load_w")
    pv = _csv_column(scenario.trace.pv_file, "pv_w")
    absolute_s = 36000.0  # 10:00
    t_s = absolute_s - trace.start_s
    assert trace.net_at(t_s) == pytest.approx(load[absolute_s] - 0.8 * pv[absolute_s])
    assert trace.pv_at(t_s) == pytest.approx(0.8 * pv[absolute_s])


def test_resolve_scenario_finds_shipped_names_and_paths() -> None:
    assert resolve_scenario("default") == SCENARIO_DIR / "default.toml"  # the winter evening
    assert resolve_scenario("ukdale_cooking") == DEFAULT_SCENARIO
    assert resolve_scenario("meter_frozen") == FAULT_SCENARIO_DIR / "meter_frozen.toml"
    assert resolve_scenario(str(DEFAULT_SCENARIO)) == DEFAULT_SCENARIO
    with pytest.raises(ScenarioError, match="no shipped scenario"):
        resolve_scenario("no_such_scenario")


# -- traces ------------------------------------------------------------------------------------


@pytest.fixture
def grid_csv(tmp_path: Path) -> Path:
    return _write_csv(
        tmp_path / "grid.csv",
        ["timestamp_s", "grid_w", "load_w", "pv_w"],
        [[0, 100, 100, 0], [60, -500, -50, 450], [120, 300, 400, 100], [180, 200, 200, 0]],
    )


def test_trace_holds_each_sample_until_the_next(grid_csv: Path) -> None:
    trace = load_trace(grid_csv)
    assert (trace.start_s, trace.end_s, trace.resolution_s) == (0.0, 240.0, 60.0)
    assert [trace.net_at(t) for t in (0.0, 30.0, 59.999, 60.0, 119.0, 120.0, 239.0)] == [
        100.0,
        100.0,
        100.0,
        -500.0,
        -500.0,
        300.0,
        200.0,
    ]
    # Going back in time still answers correctly (the cursor is only a fast path).
    assert trace.net_at(10.0) == 100.0
    assert trace.net_at(125.0) == 300.0
    assert trace.net_at(1000.0) == 200.0  # held past the end
    with pytest.raises(ValueError, match=">= 0"):
        trace.net_at(-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        trace.net_at(math.nan)


def test_trace_window_starts_inside_a_sample(grid_csv: Path) -> None:
    trace = load_trace(grid_csv, start_s=90.0, duration_s=60.0)
    assert (trace.start_s, trace.duration_s) == (90.0, 60.0)
    assert trace.net_at(0.0) == -500.0  # the sample that covers 90 s
    assert trace.net_at(29.0) == -500.0
    assert trace.net_at(30.0) == 300.0
    assert trace.times_s == (0.0, 30.0)


def test_trace_replays_grid_unless_scaled(grid_csv: Path) -> None:
    # OPSD-like row at 60 s: load_w -50 (an interpolation artefact), grid -500.
    assert load_trace(grid_csv).net_at(60.0) == -500.0
    rebuilt = load_trace(grid_csv, load_scale=2.0)
    assert rebuilt.net_at(60.0) == 2.0 * 0.0 - 450.0  # load clipped at 0
    assert rebuilt.net_at(120.0) == 2.0 * 400.0 - 100.0
    assert load_trace(grid_csv, pv_scale=0.5).net_at(120.0) == 400.0 - 50.0
    assert load_trace(grid_csv, pv_scale=0.5).pv_at(60.0) == 225.0


def test_trace_without_pv_has_no_pv(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "g.csv", ["timestamp_s", "grid_w"], [[0, 1], [1, 2]])
    trace = load_trace(path)
    assert not trace.has_pv
    with pytest.raises(ValueError, match="no PV"):
        trace.pv_at(0.0)
    with pytest.raises(TraceError) as err:
        load_trace(path, load_scale=2.0)
    assert err.value.key == "load_scale"


def test_pv_file_is_merged_on_both_time_grids(tmp_path: Path) -> None:
    load = _write_csv(
        tmp_path / "load.csv", ["timestamp_s", "load_w"], [[0, 1000], [60, 2000], [120, 500]]
    )
    pv = _write_csv(
        tmp_path / "pv.csv",
        ["timestamp_s", "pv_w"],
        [[-30, 9], [0, 100], [30, 300], [60, 600], [90, 900], [120, 0], [150, 0]],
    )
    trace = load_trace(load, pv_path=pv, pv_scale=2.0)
    assert trace.times_s == (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
    expected = {0: 1000 - 200, 45: 1000 - 600, 60: 2000 - 1200, 100: 2000 - 1800, 170: 500}
    for t_s, net_w in expected.items():
        assert trace.net_at(t_s) == net_w
    assert trace.pv_at(100.0) == 1800.0
    short_pv = _write_csv(tmp_path / "short.csv", ["timestamp_s", "pv_w"], [[0, 1], [30, 1]])
    with pytest.raises(TraceError) as err:
        load_trace(load, pv_path=short_pv)
    assert err.value.key == "pv_file"


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([], "at least two samples"),
        ([["0", "1"]], "at least two samples"),
        ([["0", "1"], ["0", "2"]], "not increasing"),
        ([["0", "1"], ["60", "x"]], "not a number"),
        ([["0", "1"], ["60", "inf"]], "finite"),
        ([["0", "1"], ["60"]], "fields"),
        ([["0", "1"], ["60", "1"], ["120", "1"], ["1000", "1"]], "gap"),
    ],
)
def test_malformed_trace_files_raise_trace_error(
    tmp_path: Path, rows: list[list[str]], problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp_s,grid_w\n" + "\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(TraceError, match=problem):
        load_trace(path)


def test_irregular_fractional_rows_hold_until_the_next(tmp_path: Path) -> None:
    path = tmp_path / "irregular.csv"
    path.write_text(
        "timestamp_s,grid_w\n0.000,58\n5.098,57\n\n20.792,-56\n21.5,1096\n26.61,-300\n",
        encoding="utf-8",
    )
    trace = load_trace(path, max_gap_s=20.0)
    assert trace.times_s == (0.0, 5.098, 20.792, 21.5, 26.61)
    expected = {0.0: 58, 5.097: 58, 5.098: 57, 20.7: 57, 20.792: -56, 21.49: -56, 21.5: 1096}
    for t_s, net_w in expected.items():
        assert trace.net_at(t_s) == net_w, t_s
    assert trace.net_at(30.0) == -300.0
    # The default allows 3 median spacings (3 x 5.098 s): the 15.7 s gap is refused, and the
    # message names the row after the gap by its line in the file (the blank line counts).
    with pytest.raises(TraceError, match=r"line 5: 15\.694 s since the previous row") as err:
        load_trace(path)
    assert err.value.key == "file"
    assert "max_gap_s" in err.value.problem
    with pytest.raises(TraceError, match="largest gap allowed is 15 s"):
        load_trace(path, max_gap_s=15.0)


def test_only_gaps_inside_the_window_count(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "holes.csv",
        ["timestamp_s", "grid_w"],
        [[0, 1], [5, 2], [10, 3], [15, 4], [100, 5], [105, 6], [110, 7]],
    )
    assert load_trace(path, start_s=0.0, duration_s=15.0).net_at(14.0) == 3.0
    assert load_trace(path, start_s=100.0, duration_s=15.0).net_at(0.0) == 5.0
    # A window that starts inside the hole holds across it: refused.
    with pytest.raises(TraceError, match="line 6: 85 s"):
        load_trace(path, start_s=50.0, duration_s=60.0)
    with pytest.raises(TraceError, match="line 6: 85 s"):
        load_trace(path, start_s=10.0, duration_s=10.0)
    assert load_trace(path, start_s=10.0, duration_s=10.0, max_gap_s=85.0).net_at(6.0) == 4.0
    with pytest.raises(TraceError) as err:
        load_trace(path, max_gap_s=0.0)
    assert err.value.key == "max_gap_s"


def test_trace_window_must_lie_inside_the_trace(grid_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(TraceError) as err:
        load_trace(grid_csv, start_s=60.0, duration_s=200.0)
    assert err.value.key == "duration_s"
    with pytest.raises(TraceError) as err:
        load_trace(grid_csv, start_s=240.0)
    assert err.value.key == "start_s"
    with pytest.raises(TraceError, match="not found"):
        load_trace(tmp_path / "missing.csv")
    no_power = _write_csv(tmp_path / "np.csv", ["timestamp_s", "ev_w"], [[0, 1], [1, 1]])
    with pytest.raises(TraceError, match="grid_w or a load_w"):
        load_trace(no_power)


# -- events ------------------------------------------------------------------------------------


def test_event_shapes() -> None:
    step = LoadStep(at_s=10, power_w=2000, duration_s=5)
    assert [step.power_at(t) for t in (9.9, 10, 14.9, 15)] == [0, 2000, 2000, 0]
    pulse = Pulse(at_s=0, power_w=3000, duration_s=30, on_s=4, off_s=8)
    assert [pulse.power_at(t) for t in (0, 3.9, 4, 11.9, 12, 16, 24, 29, 30)] == [
        3000,
        3000,
        0,
        0,
        3000,
        0,
        3000,
        0,
        0,
    ]
    ramp = Ramp(at_s=100, power_w=1000, duration_s=60, ramp_s=10)
    assert [ramp.power_at(t) for t in (100, 105, 110, 150, 155, 160)] == [
        0,
        500,
        1000,
        1000,
        500,
        0,
    ]


def test_event_timeline_sums_overlapping_events_in_any_order() -> None:
    events: list[Event] = [
        Pulse(at_s=50, power_w=1000, duration_s=20, on_s=5, off_s=5),
        LoadStep(at_s=0, power_w=2000, duration_s=60),
        Ramp(at_s=55, power_w=-400, duration_s=40, ramp_s=10),
    ]
    timeline = EventTimeline(events)
    times = [0, 49, 50, 55, 59, 60, 65, 70, 80, 95, 200]
    expected = [sum(e.power_at(t) for e in events) for t in times]
    assert expected == [2000, 2000, 3000, 2000, 1840, 800, -400, -400, -400, 0, 0]
    assert [timeline.extra_w_at(t) for t in times] == pytest.approx(expected)
    # Backwards after a forward pass gives the same answers.
    assert [timeline.extra_w_at(t) for t in reversed(times)] == pytest.approx(expected[::-1])


def test_step_times_lists_load_step_edges_only() -> None:
    timeline = EventTimeline(
        [
            LoadStep(at_s=300, power_w=2500, duration_s=120),
            Pulse(at_s=10, power_w=1000, duration_s=60, on_s=5, off_s=5),
            LoadStep(at_s=100, power_w=-800, duration_s=50),
        ]
    )
    assert timeline.step_times() == [(100, -800), (150, 800), (300, 2500), (420, -2500)]


def test_surge_starts_high_then_runs() -> None:
    fridge = Surge(at_s=10, power_w=120, duration_s=600, surge_w=450, surge_s=1.5)
    assert [fridge.power_at(t) for t in (9.9, 10, 11.4, 11.5, 609.9, 610)] == [
        0,
        450,
        450,
        120,
        120,
        0,
    ]


def test_cycling_without_jitter_is_an_exact_duty_cycle() -> None:
    hob = Cycling(at_s=100, power_w=2800, duration_s=60, period_s=12, duty=0.5)
    assert cycle_edges(hob, 60.0) == [(u, u + 6.0) for u in (0.0, 12.0, 24.0, 36.0, 48.0)]
    times = [99.9, 100, 105.9, 106, 111.9, 112, 159.9, 160]
    assert [hob.power_at(t) for t in times] == [0, 2800, 2800, 0, 0, 2800, 0, 0]


@given(
    period_s=st.floats(min_value=4.0, max_value=30.0),
    duty=st.floats(min_value=0.3, max_value=0.7),
    jitter_share=st.floats(min_value=0.0, max_value=0.49),
    seed=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_cycling_jitter_keeps_each_cycle_in_bounds_and_is_seeded(
    period_s: float, duty: float, jitter_share: float, seed: int
) -> None:
    jitter_s = jitter_share * period_s
    event = Cycling(
        at_s=0,
        power_w=2000,
        duration_s=600,
        period_s=period_s,
        duty=duty,
        jitter_s=jitter_s,
        seed=seed,
    )
    edges = cycle_edges(event, 600.0)
    assert edges[0][0] == 0.0
    starts = [start for start, _ in edges]
    for (start, on_end), next_start in zip(edges, [*starts[1:], math.inf], strict=True):
        length_s = next_start - start
        if next_start < math.inf:
            assert period_s - jitter_s - 1e-9 <= length_s <= period_s + jitter_s + 1e-9
            assert on_end - start == pytest.approx(duty * length_s)
    # The same seed gives the same edges, whatever times were asked before.
    again = dataclasses.replace(event)
    assert [again.power_at(t) for t in (599.0, 3.0, 301.5)] == [
        event.power_at(t) for t in (599.0, 3.0, 301.5)
    ]
    assert cycle_edges(again, 600.0) == edges
    if jitter_s > 0.01:
        other = dataclasses.replace(event, seed=seed ^ 1)
        assert cycle_edges(other, 600.0) != edges


def test_unknown_event_kind_is_refused() -> None:
    table = {"at_s": 0, "kind": "kettle", "power_w": 1, "duration_s": 1}
    with pytest.raises(ValidationError, match="kettle"):
        TypeAdapter(Event).validate_python(table)


# -- validation --------------------------------------------------------------------------------

BASE_TOML = """
name = "t"
description = "test"

[trace]
file = "trace.csv"

[[battery]]
soc_pct = 50

[[battery]]
soc_pct = 60
capacity_wh = 10240
"""


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Path:
    _write_csv(
        tmp_path / "trace.csv",
        ["timestamp_s", "load_w", "pv_w"],
        [[t, 500 + t, 100] for t in range(0, 3600, 60)],
    )
    return tmp_path


def _load(directory: Path, text: str) -> Scenario:
    path = directory / "s.toml"
    path.write_text(text, encoding="utf-8")
    return load_scenario(path)


def test_valid_scenario_with_every_section(scenario_dir: Path) -> None:
    scenario = _load(
        scenario_dir,
        "seed = 7\n"
        + BASE_TOML
        + """
[meter]
interval_s = 10
latency_s = 1.0
noise_w = 0
[pv_meter]
enabled = true
[[event]]
at_s = 60
kind = "pulse"
power_w = 2000
duration_s = 600
on_s = 6
off_s = 6
label = "hob"
[[fault]]
at_s = 100
kind = "battery_offline"
duration_s = 30
battery = 2
[[fault]]
at_s = 200
kind = "meter_frozen"
duration_s = 30
[[block]]
at_s = 1000
duration_s = 100
[control]
deadband_w = 15
min_soc_pct = 20
[tariff]
import_eur_per_kwh = 0.4
""",
    )
    assert scenario.duration_s == 3600.0
    assert scenario.meter.interval_s == 10.0
    assert scenario.meter.seed == 7
    assert scenario.seed == 7
    assert scenario.pv_meter
    assert scenario.batteries[1].params.capacity_wh == 10240.0
    hob = scenario.events[0]
    assert isinstance(hob, Pulse)
    assert hob.on_s == 6.0
    assert [(f.kind, f.battery) for f in scenario.faults] == [
        ("battery_offline", 2),
        ("meter_frozen", None),
    ]
    assert scenario.blocks == ((1000.0, 100.0),)  # (at_s, duration_s)
    assert scenario.discharge_blocked_at(1050.0)
    assert not scenario.discharge_blocked_at(1100.0)
    settings_ = scenario.control_settings()
    assert (settings_.deadband_w, settings_.min_soc_pct) == (15, 20.0)
    assert isinstance(settings_.min_soc_pct, float)
    assert scenario.tariff.import_eur_per_kwh == 0.4
    assert scenario.tariff.export_eur_per_kwh == 0.05
    assert scenario.load_trace().net_at(61.0) == 560.0 - 100.0


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return edit


def _append(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


def _prepend(extra: str) -> Callable[[str], str]:
    return lambda text: extra + text


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (_prepend("surprise = 1\n"), "surprise", "unknown key"),
        (_replace("capacity_wh = 10240", "capacity_whh = 1"), "battery[2].capacity_whh", "unknown"),
        (_replace("soc_pct = 50", "capacity_wh = 1"), "battery[1].soc_pct", "missing"),
        (_replace('file = "trace.csv"', "pv_scale = 1"), "trace.file", "missing"),
        (_replace('name = "t"', ""), "name", "missing"),
        (_replace("soc_pct = 60", "soc_pct = 101"), "battery[2].soc_pct", "<= 100"),
        (_replace("soc_pct = 60", 'soc_pct = "60"'), "battery[2].soc_pct", "must be a number"),
        (_replace("soc_pct = 60", "soc_pct = true"), "battery[2].soc_pct", "must be a number"),
        (_replace("soc_pct = 60", "soc_pct = nan"), "battery[2].soc_pct", "finite"),
        (_replace("capacity_wh = 10240", "capacity_wh = -5"), "battery[2].capacity_wh", "> 0"),
        (_replace("capacity_wh = 10240", "max_charge_w = 3000"), "battery[2].max_charge_w", "2500"),
        (_replace("capacity_wh = 10240", "unit_id = 1.0"), "battery[2].unit_id", "integer"),
        (
            _replace("capacity_wh = 10240", "discharge_cutoff_pct = 100"),
            "battery[2].discharge_cutoff_pct",
            "< 100",
        ),
        (
            _replace("capacity_wh = 10240", "charge_efficiency = [[500, 0.9], [250, 0.8]]"),
            "battery[2].charge_efficiency[2]",
            "increase",
        ),
        (_replace('file = "trace.csv"', 'file = "nope.csv"'), "trace.file", "not found"),
        (_append("\n[trace2]\n"), "trace2", "unknown key"),
        (
            _replace('file = "trace.csv"', 'file = "trace.csv"\nduration_s = 7200'),
            "trace.duration_s",
            "ends",
        ),
        (
            _append('[[event]]\nat_s = 1\nkind = "kettle"\npower_w = 1\nduration_s = 1\n'),
            "event[1].kind",
            "must be one of",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "load_step"\npower_w = 1\nduration_s = 1\non_s = 1\n'
            ),
            "event[1].on_s",
            "not used",
        ),
        (
            _append('[[event]]\nat_s = 1\nkind = "pulse"\npower_w = 1\nduration_s = 9\non_s = 1\n'),
            "event[1].off_s",
            "missing",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "ramp"\npower_w = 1\nduration_s = 9\nramp_s = 5\n'
            ),
            "event[1].ramp_s",
            "half",
        ),
        (
            _append('[[event]]\nat_s = 3600\nkind = "load_step"\npower_w = 1\nduration_s = 1\n'),
            "event[1].at_s",
            "end",
        ),
        (
            _append('[[fault]]\nat_s = 1\nkind = "battery_offline"\nduration_s = 1\nbattery = 3\n'),
            "fault[1].battery",
            "out of range",
        ),
        (
            _append('[[fault]]\nat_s = 1\nkind = "battery_offline"\nduration_s = 1\nbattery = 0\n'),
            "fault[1].battery",
            "out of range",
        ),
        (
            _append('[[fault]]\nat_s = 1\nkind = "battery_stall"\nduration_s = 1\n'),
            "fault[1].battery",
            "missing",
        ),
        (
            _append('[[fault]]\nat_s = 1\nkind = "meter_outage"\nduration_s = 1\nbattery = 1\n'),
            "fault[1].battery",
            "not used",
        ),
        (
            _append('[[fault]]\nat_s = 1\nkind = "meteor"\nduration_s = 1\n'),
            "fault[1].kind",
            "must be one of",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "cycling"\npower_w = 1\nduration_s = 60\n'
                "period_s = 10\nduty = 0.5\njitter_s = 5\n"
            ),
            "event[1].jitter_s",
            "half of period_s",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "cycling"\npower_w = 1\nduration_s = 60\n'
                "period_s = 10\nduty = 1\n"
            ),
            "event[1].duty",
            "< 1",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "cycling"\npower_w = 1\nduration_s = 60\nduty = 0.5\n'
            ),
            "event[1].period_s",
            "required by kind 'cycling'",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "cycling"\npower_w = 1\nduration_s = 60\n'
                "period_s = 10\nduty = 0.5\non_s = 3\n"
            ),
            "event[1].on_s",
            "not used by kind 'cycling'",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "cycling"\npower_w = 1\nduration_s = 60\n'
                "period_s = 10\nduty = 0.5\nseed = 1.5\n"
            ),
            "event[1].seed",
            "integer",
        ),
        (
            _append(
                '[[event]]\nat_s = 1\nkind = "surge"\npower_w = 100\nduration_s = 2\n'
                "surge_w = 400\nsurge_s = 2\n"
            ),
            "event[1].surge_s",
            "shorter than duration_s",
        ),
        (
            _append('[[event]]\nat_s = 1\nkind = "surge"\npower_w = 100\nduration_s = 2\n'),
            "event[1].surge_w",
            "missing",
        ),
        (
            _replace('file = "trace.csv"', 'file = "trace.csv"\nmax_gap_s = 0'),
            "trace.max_gap_s",
            "> 0",
        ),
        (_replace('file = "trace.csv"', 'file = ""'), "trace.file", "empty"),
        (_replace('file = "trace.csv"', "file = 3"), "trace.file", "string"),
        (_append("[[block]]\nat_s = 1\nduration_s = 0\n"), "block[1].duration_s", "> 0"),
        (_append('[meter]\ninterval_s = "1"\n'), "meter.interval_s", "must be a number"),
        (_append("[meter]\nperiod_s = 1\n"), "meter.period_s", "unknown key"),
        (_append("[pv_meter]\n"), "pv_meter.enabled", "missing"),
        (_append("[control]\nbatteries = 1\n"), "control.batteries", "unknown key"),
        (_append("[control]\ndeadband_w = 2.5\n"), "control.deadband_w", "integer"),
        (_append("[control]\nmin_soc_pct = 120\n"), "control.min_soc_pct", "<= 100"),
        (_append("[control]\nloop_period_s = 0\n"), "control.loop_period_s", "> 0"),
        (_append("[tariff]\nimport_eur_per_kwh = inf\n"), "tariff.import_eur_per_kwh", "finite"),
        (
            lambda text: "battery = 3\n" + text.split("[[battery]]")[0],
            "battery",
            "must be an array of tables",
        ),
        (_append("[[battery]]\nsoc_pct = 1\n" * 15), "battery", "at most"),
        (_append("= broken\n"), "(toml)", ""),
        (_replace('name = "t"', 'name = "a b"'), "name", "letters"),
    ],
)
def test_each_validation_error_names_its_key(
    scenario_dir: Path, edit: Callable[[str], str], key: str, problem: str
) -> None:
    with pytest.raises(ScenarioError) as err:
        _load(scenario_dir, edit(BASE_TOML))
    assert err.value.key == key
    assert problem in err.value.problem
    assert f": {key}: " in str(err.value)


def test_cycling_seeds_come_from_the_scenario_seed(scenario_dir: Path) -> None:
    events = "".join(
        f'[[event]]\nat_s = {at_s}\nkind = "cycling"\npower_w = 2000\nduration_s = 300\n'
        f"period_s = 10\nduty = 0.5\njitter_s = 2\n{extra}"
        for at_s, extra in ((0, ""), (400, ""), (800, "seed = 5\n"))
    )
    first = _load(scenario_dir, "seed = 3\n" + BASE_TOML + events)
    again = _load(scenario_dir, "seed = 3\n" + BASE_TOML + events)
    other = _load(scenario_dir, "seed = 4\n" + BASE_TOML + events)
    seeds = [e.seed for e in first.events if isinstance(e, Cycling)]
    assert seeds == [e.seed for e in again.events if isinstance(e, Cycling)]
    assert len(set(seeds)) == 3
    assert seeds[2] == 5  # set in the file
    assert seeds[:2] != [e.seed for e in other.events if isinstance(e, Cycling)][:2]
    assert first.meter.seed not in seeds  # the jitter does not replay the meter's noise


def _meter_readings(scenario: Scenario) -> list[float]:
    world = World(scenario)
    readings: list[float] = []
    for _ in range(40):
        world.advance_to(world.now_s + 0.5)
        sample = world.meter.latest(world.now_s)
        if sample is not None:
            readings.append(sample.grid_w)
    return readings


def test_meter_seed_defaults_to_the_scenario_seed_and_is_honoured(scenario_dir: Path) -> None:
    by_scenario = _load(scenario_dir, "seed = 9\n" + BASE_TOML)
    by_meter = _load(scenario_dir, BASE_TOML + "[meter]\nseed = 9\n")
    other = _load(scenario_dir, "seed = 9\n" + BASE_TOML + "[meter]\nseed = 10\n")
    assert by_scenario.meter.seed == by_meter.meter.seed == 9
    assert by_scenario.seed != by_meter.seed
    readings = _meter_readings(by_scenario)
    assert len(readings) > 10
    assert _meter_readings(by_meter) == readings
    assert _meter_readings(other) != readings


def test_max_gap_s_is_a_trace_key(tmp_path: Path) -> None:
    _write_csv(
        tmp_path / "trace.csv",
        ["timestamp_s", "grid_w"],
        [[0, 100], [6, 120], [12, 130], [40, 140], [46, 150], [52, 160], [58, 170]],
    )
    with pytest.raises(ScenarioError) as err:
        _load(tmp_path, BASE_TOML)
    assert err.value.key == "trace.file"
    assert "line 5: 28 s since the previous row" in err.value.problem
    assert str(tmp_path / "trace.csv") in err.value.problem
    scenario = _load(
        tmp_path, BASE_TOML.replace('file = "trace.csv"', 'file = "trace.csv"\nmax_gap_s = 30')
    )
    assert scenario.trace.max_gap_s == 30.0
    assert scenario.load_trace().net_at(39.0) == 130.0


def test_every_problem_of_a_file_is_listed(scenario_dir: Path) -> None:
    text = BASE_TOML.replace("soc_pct = 60", "soc_pct = 101").replace(
        "capacity_wh = 10240", "capacity_wh = -1\nunit_id = 2.0"
    )
    with pytest.raises(ScenarioError) as err:
        _load(scenario_dir, text + "[meter]\nsed = 3\n")
    assert [key for key, _ in err.value.problems] == [
        "battery[2].capacity_wh",
        "battery[2].unit_id",
        "battery[2].soc_pct",
        "meter.sed",
    ]
    assert err.value.problems[-1][1] == "unknown key (did you mean 'seed'?)"
    lines = str(err.value).splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{scenario_dir / 's.toml'}: ") for line in lines)


def test_pv_meter_needs_pv(tmp_path: Path) -> None:
    _write_csv(tmp_path / "trace.csv", ["timestamp_s", "grid_w"], [[0, 1], [60, 2]])
    with pytest.raises(ScenarioError) as err:
        _load(tmp_path, BASE_TOML + "[pv_meter]\nenabled = true\n")
    assert err.value.key == "pv_meter.enabled"


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not found") as err:
        load_scenario(tmp_path / "missing.toml")
    assert err.value.key == "(file)"
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe name")
    with pytest.raises(ScenarioError, match="UTF-8"):
        load_scenario(tmp_path / "bin.toml")


def test_load_scenarios_rejects_duplicates_and_empty_dirs(scenario_dir: Path) -> None:
    (scenario_dir / "a.toml").write_text(BASE_TOML)
    (scenario_dir / "b.toml").write_text(BASE_TOML)
    with pytest.raises(ScenarioError, match="duplicate") as err:
        load_scenarios(scenario_dir)
    assert err.value.key == "name"
    empty = scenario_dir / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match="no"):
        load_scenarios([empty])
    assert [s.name for s in load_scenarios([scenario_dir / "a.toml"])] == ["t"]


def test_control_overrides_are_accepted_by_control_settings(scenario_dir: Path) -> None:
    overrides = "\n".join(
        f"{name} = {value!r}".replace("'", '"').replace("True", "true").replace("False", "false")
        for name, value in (
            (n, getattr(ControlSettings(), n)) for n in sorted(ControlSettings.field_names())
        )
    )
    scenario = _load(scenario_dir, BASE_TOML + "[control]\n" + overrides + "\n")
    assert scenario.control_settings() == ControlSettings()


# -- property: arbitrary input never escapes as another exception ------------------------------

_TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(
        [
            "trace.csv",
            "load_step",
            "pulse",
            "ramp",
            "cycling",
            "surge",
            "battery_offline",
            "meter_outage",
        ]
    ),
    st.dates(),
)
_KEYS = st.sampled_from(
    [
        "name",
        "description",
        "trace",
        "battery",
        "meter",
        "pv_meter",
        "event",
        "fault",
        "block",
        "control",
        "tariff",
        "seed",
        "file",
        "pv_file",
        "pv_scale",
        "start_s",
        "duration_s",
        "soc_pct",
        "capacity_wh",
        "charge_efficiency",
        "name",
        "at_s",
        "kind",
        "power_w",
        "on_s",
        "off_s",
        "ramp_s",
        "period_s",
        "duty",
        "jitter_s",
        "surge_w",
        "surge_s",
        "max_gap_s",
        "battery",
        "enabled",
        "interval_s",
        "deadband_w",
        "policy",
        "x",
    ]
)
_TOML_VALUES = st.recursive(
    _TOML_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


def _valid_document() -> dict[str, Any]:
    return tomllib.loads(
        BASE_TOML
        + """
[[event]]
at_s = 1
kind = "ramp"
power_w = 100
duration_s = 60
ramp_s = 5
[[event]]
at_s = 2
kind = "cycling"
power_w = 1500
duration_s = 60
period_s = 10
duty = 0.5
jitter_s = 1
[[fault]]
at_s = 1
kind = "battery_stall"
duration_s = 5
battery = 1
[[block]]
at_s = 1
duration_s = 2
[meter]
interval_s = 1
[control]
deadband_w = 10
"""
    )


def _mutate(doc: Any, path: list[Any], value: Any, delete: bool) -> None:
    """Replace (or delete) the item at ``path`` inside nested dicts/lists, if it exists."""
    node = doc
    for step in path[:-1]:
        in_dict = isinstance(node, dict) and step in node
        in_list = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if not (in_dict or in_list):
            return
        node = node[step]
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        if delete:
            del node[last]
        else:
            node[last] = value


@pytest.fixture(scope="module")
def property_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("prop")
    _write_csv(
        directory / "trace.csv",
        ["timestamp_s", "load_w", "pv_w"],
        [[t, 400, 50] for t in range(0, 600, 60)],
    )
    return directory


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(
            st.lists(
                st.one_of(_KEYS, st.integers(min_value=0, max_value=2)), min_size=1, max_size=3
            ),
            _TOML_VALUES,
            st.booleans(),
        ),
        max_size=4,
    )
)
def test_mutated_documents_give_a_scenario_or_a_scenario_error(
    property_dir: Path, mutations: list[tuple[list[Any], Any, bool]]
) -> None:
    doc = _valid_document()
    for path, value, delete in mutations:
        _mutate(doc, path, value, delete)
    error: ScenarioError | None = None
    try:
        scenario = parse_scenario(doc, property_dir / "s.toml")
    except ScenarioError as exc:
        error = exc
    if error is not None:
        assert error.key
        assert str(error).startswith(str(property_dir / "s.toml"))
    else:
        assert scenario.duration_s > 0
        assert all(0 <= b.soc_pct <= 100 for b in scenario.batteries)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_KEYS, _TOML_VALUES, max_size=6))
def test_arbitrary_documents_give_a_scenario_or_a_scenario_error(
    property_dir: Path, doc: dict[str, Any]
) -> None:
    with contextlib.suppress(ScenarioError):
        parse_scenario(doc, property_dir / "s.toml")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_arbitrary_bytes_give_a_scenario_error(property_dir: Path, raw: bytes) -> None:
    path = property_dir / "raw.toml"
    path.write_bytes(raw)
    with pytest.raises(ScenarioError):
        load_scenario(path)
