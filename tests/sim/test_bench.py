"""``mmbc-sim bench --jobs N``: the process pool changes the wall time, never the results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sim.replay.bench import run_bench
from sim.replay.result import RunResult
from sim.scenario import SCENARIO_DIR, Scenario, load_scenario


def trimmed(path: Path, duration_s: float) -> Scenario:
    scenario = load_scenario(path)
    return dataclasses.replace(scenario, duration_s=min(duration_s, scenario.duration_s))


def comparable(results: list[RunResult]) -> list[tuple[object, ...]]:
    """Everything a bench reports of a run, less its wall time."""
    return [
        (
            r.scenario,
            r.policy,
            r.metrics.replace(wall_seconds=0.0),
            r.invariants,
            r.report.first_violation_s,
            r.notes,
        )
        for r in results
    ]


def test_a_pool_gives_the_results_of_one_process() -> None:
    scenarios = [
        trimmed(SCENARIO_DIR / "kettle.toml", 600.0),
        trimmed(SCENARIO_DIR / "induction_hob.toml", 600.0),
        # Battery 1 offline from 600 s for 300 s: also run without it, for the fault cost.
        trimmed(SCENARIO_DIR / "faults" / "battery_offline.toml", 1080.0),
    ]
    policies = ("mmbc", "classic")
    one = run_bench(scenarios, policies, jobs=1)
    pooled = run_bench(scenarios, policies, jobs=3)

    assert comparable(pooled) == comparable(one)
    assert [(r.scenario, r.policy) for r in one] == [
        (s.name, p) for s in scenarios for p in policies
    ]
    faulty = [r for r in one if r.scenario == "battery_offline"]
    assert all(r.metrics.fault_cost_wh is not None for r in faulty)
    assert all(r.metrics.fault_cost_wh is None for r in one if r not in faulty)
    # The runs really differ from each other: the comparison is not of identical values.
    assert len({r.metrics.excess_wh for r in one}) == len(one)
