"""Replays of a P1 meter that pushes its readings (``[meter] api = "v2"``): the scenario key,
the push variants, and the in-process loop acting on each reading as it becomes visible."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import pytest

from engine.core.model import Plan, Snapshot
from engine.core.schedule import PUSHED_READING_AGE_S
from sim.plant.params import MeterApi
from sim.plant.world import World
from sim.replay.inprocess import run_scenario
from sim.scenario import (
    FAULT_SCENARIO_DIR,
    PUSH_SCENARIO_DIR,
    SCENARIO_DIR,
    Scenario,
    ScenarioError,
    load_scenario,
)

PUSH_VARIANTS = sorted(PUSH_SCENARIO_DIR.glob("*.toml"))


def with_api(scenario: Scenario, api: MeterApi, duration_s: float | None = None) -> Scenario:
    return dataclasses.replace(
        scenario,
        meter=dataclasses.replace(scenario.meter, api=api),
        duration_s=duration_s or scenario.duration_s,
    )


@pytest.mark.parametrize("variant", PUSH_VARIANTS, ids=lambda p: p.stem)
def test_push_variants_stay_in_step_with_their_base(variant: Path) -> None:
    pushed = load_scenario(variant)
    base = load_scenario(SCENARIO_DIR / f"{pushed.name.removesuffix('_push')}.toml")
    assert pushed.meter.api is MeterApi.V2
    assert base.meter.api is MeterApi.V1
    assert pushed.meter == dataclasses.replace(base.meter, api=MeterApi.V2)
    assert pushed.trace.file.resolve() == base.trace.file.resolve()
    same = ("events", "faults", "blocks", "control", "tariff", "seed", "duration_s", "batteries")
    for name in same:
        assert getattr(pushed, name) == getattr(base, name), name


def test_the_push_variants_cover_kettle_oven_and_a_real_trace() -> None:
    assert {p.stem for p in PUSH_VARIANTS} >= {
        "kettle_push",
        "oven_cycling_push",
        "refit21_cycling_push",
    }


def test_an_unknown_meter_api_names_the_key(tmp_path: Path) -> None:
    text = (PUSH_SCENARIO_DIR / "kettle_push.toml").read_text(encoding="utf-8")
    bad = tmp_path / "push" / "bad.toml"
    bad.parent.mkdir()
    bad.write_text(text.replace('api = "v2"', 'api = "v3"'), encoding="utf-8")
    (tmp_path / "traces").symlink_to(SCENARIO_DIR / "traces")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert err.value.key == "meter.api"


def cycle_log(scenario: Scenario) -> list[tuple[float, float | None, float | None]]:
    """(cycle start, when its reading was first seen, the reading's age bound) per cycle."""
    seen: list[tuple[float, float | None, float | None]] = []

    def note(world: World, snap: Snapshot, plan: Plan | None) -> None:
        seen.append((snap.now_s, snap.meter_updated_s, snap.reading_age_s))

    run_scenario(scenario, "mmbc", phase=0.5, on_cycle=note)
    return seen


def at_visible_instant(t_s: float, scenario: Scenario) -> bool:
    interval_s, latency_s = scenario.meter.interval_s, scenario.meter.latency_s
    k = round((t_s - latency_s) / interval_s)
    return math.isclose(k * interval_s + latency_s, t_s, abs_tol=1e-9)


def visible_before(t_s: float, scenario: Scenario) -> float:
    """When the newest sample visible at ``t_s`` became visible."""
    interval_s, latency_s = scenario.meter.interval_s, scenario.meter.latency_s
    return math.floor((t_s - latency_s) / interval_s + 1e-9) * interval_s + latency_s


def test_with_push_each_cycle_runs_as_its_reading_becomes_visible() -> None:
    kettle = load_scenario(SCENARIO_DIR / "kettle.toml")
    pushed = cycle_log(with_api(kettle, MeterApi.V2, 600.0))
    polled = cycle_log(with_api(kettle, MeterApi.V1, 600.0))
    # The first cycle polls: the stream subscribes as it runs.
    on_push = [c for c in pushed[1:] if at_visible_instant(c[0], kettle)]
    assert len(on_push) >= 0.95 * len(pushed)
    for now_s, seen_s, age_s in on_push:
        assert seen_s == pytest.approx(now_s, abs=1e-9)  # the reading arrived with the cycle
        assert age_s == PUSHED_READING_AGE_S
    # Polled, the same meter's readings are found some time after they appear (the cycle
    # schedule keeps its polls a margin after the refresh it expects).
    delays = [seen_s - visible_before(seen_s, kettle) for _, seen_s, _ in polled if seen_s]
    assert statistics.mean(delays) > 0.02
    assert len(polled) == pytest.approx(len(pushed), rel=0.05)


@pytest.mark.parametrize("name", ["meter_frozen", "meter_outage", "meter_garbage"])
def test_meter_faults_with_push_keep_every_invariant(name: str) -> None:
    """No push during the fault: the cycles poll, the stale meter is caught as without push,
    and pushes take over again after it."""
    scenario = with_api(load_scenario(FAULT_SCENARIO_DIR / f"{name}.toml"), MeterApi.V2)
    result = run_scenario(scenario, "mmbc")
    assert all(result.invariants.values()), result.report.details
    assert any("meter stale" in note for note in result.notes)
