"""One control cycle, shared by the daemon and the simulator: snapshot in, write jobs out.

The runtime (``engine.runtime.controller``) reads the devices concurrently, the in-process
replay (``sim.replay.inprocess``) reads the simulated firmware directly; both then hand the
readings to ``ControlCycle``, which builds the snapshot, runs the policy with the fail-safe
around it (a decision that raises becomes 0 W for every battery) and turns the plan into the
writes to make, releasing RS485 control only once. The caller executes the jobs and reports
their outcome; nothing here knows sockets, tasks or clocks.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from engine.core.events import SafeHoldCause, SafeHoldEntered
from engine.core.meter import MeterTracker
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.policies import Policy
from engine.core.states import FleetState

TRACEBACK_FRAMES = 5  # enough to find the bug, short enough for one log record


@dataclass(slots=True)
class UserInputs:
    """What the user asked for (MQTT, the dashboard); applied at the next cycle."""

    mode: Mode = Mode.NORMAL
    discharge_blocked: bool = False


class Command(NamedTuple):
    """Write ``power_w`` (+ discharge, - charge, 0 idle) to ``battery``."""

    battery: str
    power_w: int


class Release(NamedTuple):
    """Idle ``battery`` and hand it back to its own logic (RS485 control off)."""

    battery: str


WriteJob: TypeAlias = Command | Release


class CycleResult(NamedTuple):
    """What one cycle decided: the plan, the writes to make, and a failure, if any.

    Immutable; a named tuple like ``Snapshot`` (one per cycle)."""

    snapshot: Snapshot
    plan: Plan
    jobs: tuple[WriteJob, ...]
    failure: str | None = None  # the traceback of a decision that raised (fail-safe plan)
    error: Exception | None = None  # and the exception itself, for the log


def safe_plan(names: Sequence[str]) -> Plan:
    """Every battery to 0 W: what a cycle does when its decision failed."""
    return Plan(
        setpoints=dict.fromkeys(names, 0),
        fleet_state=FleetState.SAFE_HOLD,
        battery_states={},
        events=(SafeHoldEntered(SafeHoldCause.INTERNAL_ERROR),),
        safe_hold=True,
    )


class ControlCycle:
    """Snapshot → fail-safe decision → write jobs, with release-once. Synchronous and pure."""

    def __init__(self, policy: Policy, battery_names: Sequence[str]) -> None:
        self.policy = policy
        self.battery_names = tuple(battery_names)
        self._released: set[str] = set()  # released by a plan; not commanded since

    @staticmethod
    def snapshot(
        now_s: float,
        meter: MeterTracker,
        batteries: tuple[BatteryTelemetry, ...],
        inputs: UserInputs,
        pv_w: float | None = None,
        reading_age_s: float | None = None,
    ) -> Snapshot:
        """What the decision may see: a reading only while the meter answers."""
        return Snapshot(
            now_s=now_s,
            grid_w=meter.grid_w if meter.online else None,
            meter_updated_s=meter.updated_s,
            batteries=batteries,
            mode=inputs.mode,
            discharge_blocked=inputs.discharge_blocked,
            pv_w=pv_w,
            reading_age_s=reading_age_s,
        )

    def run(self, snap: Snapshot) -> CycleResult:
        """Decide; a decision that raises puts every battery at 0 W and says why."""
        try:
            plan = self.policy.decide(snap)
        except Exception as exc:  # the one place a decision may fail: fail safe, go on
            return self.fail_safe(snap, exc)
        return CycleResult(snap, plan, self.jobs(plan))

    def fail_safe(self, snap: Snapshot, exc: Exception) -> CycleResult:
        """The cycle failed (the decision, or a bug in the shell): 0 W everywhere."""
        plan = safe_plan(self.battery_names)
        failure = "".join(traceback.format_exception(exc, limit=TRACEBACK_FRAMES))
        return CycleResult(snap, plan, self.jobs(plan), failure, exc)

    def jobs(self, plan: Plan) -> tuple[WriteJob, ...]:
        """The writes ``plan`` asks for: a release once, then nothing until commanded again."""
        setpoints = plan.setpoints
        if not plan.release and not self._released:
            # Nothing to release and nothing released (most cycles): only the commands.
            return tuple([Command(n, setpoints[n]) for n in self.battery_names if n in setpoints])
        jobs: list[WriteJob] = []
        for name in self.battery_names:
            if name in plan.release:
                if name not in self._released:
                    self._released.add(name)
                    jobs.append(Release(name))
            elif name in plan.setpoints:
                self._released.discard(name)
                jobs.append(Command(name, plan.setpoints[name]))
        return tuple(jobs)
