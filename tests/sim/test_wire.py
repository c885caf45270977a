"""``--wire``: the real engine over loopback sockets in virtual time, beside the replay."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from sim.replay.inprocess import run_scenario
from sim.replay.invariants import INVARIANTS
from sim.replay.wire import run_wire
from sim.scenario import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def trimmed(path: Path, duration_s: float) -> Scenario:
    scenario = load_scenario(path)
    return dataclasses.replace(scenario, duration_s=min(duration_s, scenario.duration_s))


@pytest.fixture(scope="module")
def kettle() -> Scenario:
    # The first 20 min: two kettle boils on a night base load, one battery.
    return trimmed(SCENARIOS / "kettle.toml", 1200.0)


# The metrics that say how well the meter was kept at zero, and what it cost.
SAME_METRICS = (
    "import_wh",
    "export_wh",
    "excess_wh",
    "tracking_score",
    "band_crossings_per_h",
    "conversion_loss_wh",
    "battery_throughput_wh",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "duration_s"),
    [
        ("kettle", 900.0),
        ("kitchen_rush_3bat", 900.0),
        ("refit21_cycling", 900.0),
        # The P1 over API v2: HTTPS and the websocket push against the in-process mirror.
        ("push/kettle_push", 900.0),
        ("push/refit21_cycling_push", 900.0),
    ],
)
def test_wire_and_in_process_give_the_same_metrics_within_one_percent(
    name: str, duration_s: float
) -> None:
    """One cycle, two transports: the daemon's loop over sockets and the in-process replay."""
    scenario = trimmed(SCENARIOS / f"{name}.toml", duration_s)
    wire = run_wire(scenario).metrics
    replay = run_scenario(scenario, "mmbc").metrics
    for key in SAME_METRICS:
        assert wire.get(key) == pytest.approx(replay.get(key), rel=0.01, abs=0.05), key


@pytest.mark.slow
def test_wire_scores_like_the_in_process_replay(kettle: Scenario) -> None:
    wire = run_wire(kettle)
    replay = run_scenario(kettle, "mmbc")
    assert wire.policy == "mmbc"
    assert set(wire.invariants) == set(INVARIANTS)
    assert all(wire.invariants.values()), wire.report.details
    w, r = wire.metrics, replay.metrics
    assert w.sim_seconds == r.sim_seconds == 1200.0
    # The same engine logic on the same plant: the same order of control quality.
    assert r.excess_wh > 0
    assert 0.5 * r.excess_wh <= w.excess_wh <= 2.0 * r.excess_wh + 2.0
    assert w.tracking_score == pytest.approx(r.tracking_score, abs=0.05)
    assert w.tracking_score > 0.8
    # Every request went over a socket, and the driver counted them.
    assert w.modbus_reads > 1000
    assert w.modbus_writes > 10
    # About one cycle a second from the first reading on; each has a latency sample.
    assert w.cycles is not None
    assert 1150 <= w.cycles <= 1200 * 1.05  # a few polls are followed up sooner
    assert w.cycle_latency_median_ms is not None
    assert w.cycle_latency_p99_ms is not None
    assert 0 < w.cycle_latency_median_ms <= w.cycle_latency_p99_ms
    assert any("cycle latency" in note for note in wire.notes)


@pytest.mark.slow
def test_battery_offline_over_the_wire_keeps_every_invariant() -> None:
    # Battery 1 refuses connections from 10 to 15 min; 18 min cover its return.
    scenario = trimmed(SCENARIOS / "faults" / "battery_offline.toml", 1080.0)
    result = run_wire(scenario)
    assert all(result.invariants.values()), result.report.details
    # The engine saw it go and come back (the plan's reasons, with their times).
    went = [n for n in result.notes if "battery_1 unavailable" in n]
    back = [n for n in result.notes if "battery_1 available again" in n]
    assert went
    assert 600.0 <= float(went[0].split()[0]) <= 605.0
    assert any(900.0 <= float(n.split()[0]) <= 940.0 for n in back)
    assert result.metrics.tracking_score > 0.8


def test_progress_is_reported_in_scenario_seconds(kettle: Scenario) -> None:
    short = dataclasses.replace(kettle, duration_s=60.0)
    seen: list[tuple[float, float]] = []
    result = run_wire(short, progress=lambda done, total: seen.append((done, total)))
    assert seen
    assert all(total == 60.0 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert result.invariants["shutdown_safe"]
    assert result.record.t_s[-1] == pytest.approx(59.5)
    # The controller's cycles were noted (--series): what the meter showed it, what it sent.
    record = result.record
    assert len(record.cycle_t_s) >= 55
    last = len(record.t_s) - 1
    assert record.meter_w[last] == pytest.approx(record.grid_w[last], abs=150.0)
    assert record.command_w[0][last] > 0  # discharging into the night load
    assert math.isnan(record.meter_w[0])  # nothing seen before the first cycle


def test_wire_with_push_decides_on_the_pushed_readings() -> None:
    scenario = trimmed(SCENARIOS / "push" / "kettle_push.toml", 120.0)
    result = run_wire(scenario)
    assert all(result.invariants.values()), result.report.details
    (note,) = [n for n in result.notes if n.startswith("wire: ")]
    found = re.search(r"(\d+) cycles \((\d+) on pushed readings, (\d+) polls\)", note)
    assert found is not None, note
    cycles, pushed, polls = (int(x) for x in found.groups())
    assert pushed >= 0.95 * cycles
    assert polls <= 2  # before the stream is up


@pytest.mark.slow
def test_wire_with_the_dashboard_open_streams_every_cycle() -> None:
    scenario = trimmed(SCENARIOS / "kettle.toml", 300.0)
    result = run_wire(scenario, dashboard=True)
    assert all(result.invariants.values()), result.report.details
    note = next(n for n in result.notes if n.startswith("dashboard:"))
    events, scrapes, refreshes, reconnects = (int(w) for w in re.findall(r"\d+", note))
    # One status per cycle (plus the first snapshot), a scrape every 15 s, the long history
    # every minute.
    assert result.metrics.cycles is not None
    assert events >= result.metrics.cycles
    assert scrapes >= 300 // 15 - 1
    assert refreshes >= 300 // 60 - 1
    assert reconnects == 0
