"""What one replay produces: its metrics, its invariant report, its record and notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.plant.record import RunRecord
from sim.replay.invariants import InvariantReport
from sim.scoring.metrics import Metrics


@dataclass
class RunResult:
    scenario: str
    policy: str
    metrics: Metrics
    invariants: dict[str, bool]
    report: InvariantReport
    record: RunRecord
    notes: list[str] = field(default_factory=list)
    # where its cycles fell against the meter's refresh (sim.replay.timing); None: the mean
    # of a sweep over several phases (then metrics.worst_excess_wh is the worst one's)
    phase: float | None = 0.0


def result_json(r: RunResult) -> dict[str, Any]:
    return {
        "scenario": r.scenario,
        "policy": r.policy,
        "phase": r.phase,
        "metrics": r.metrics.as_json(),
        "invariants": r.invariants,
        "first_violation_s": r.report.first_violation_s if r.report else {},
        "violations": r.report.details if r.report else {},
    }
