"""What one replay produces: its metrics, its invariant report, its record and notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.plant.record import RunRecord
from sim.replay.invariants import InvariantReport


@dataclass
class RunResult:
    scenario: str
    policy: str
    metrics: dict[str, float]
    invariants: dict[str, bool]
    report: InvariantReport
    record: RunRecord
    notes: list[str] = field(default_factory=list)
    phase: float = 0.0  # where its cycles fell against the meter's refresh (sim.replay.timing)


def result_json(r: RunResult) -> dict[str, Any]:
    return {
        "scenario": r.scenario,
        "policy": r.policy,
        "metrics": r.metrics,
        "invariants": r.invariants,
        "first_violation_s": r.report.first_violation_s if r.report else {},
        "violations": r.report.details if r.report else {},
    }
