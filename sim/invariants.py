"""The fail-safe invariants, checked over every run and reported by name (issue: fail safe).

Each check sees every control cycle: what the engine was shown, what it commanded, and the
simulator's ground truth (which faults are active). A violation records its first time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.core.model import Plan, Snapshot
from engine.core.settings import ControlSettings

INVARIANTS: tuple[str, ...] = (
    "meter_stale_idles_all",
    "unavailable_gets_no_command",
    "control_reapplied",
    "not_following_excluded",
    "limits_respected",
    "no_crash",
    "shutdown_safe",
)


@dataclass
class InvariantReport:
    """First violation time per invariant (None = held)."""

    first_violation_s: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(INVARIANTS)
    )
    details: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, t_s: float, detail: str) -> None:
        if self.first_violation_s[name] is None:
            self.first_violation_s[name] = t_s
            self.details[name] = detail

    def passed(self) -> dict[str, bool]:
        return {k: v is None for k, v in self.first_violation_s.items()}


class InvariantChecker:
    """Checks one run's cycles against the invariants. Ground truth comes from the world."""

    def __init__(self, settings: ControlSettings, names: list[str]) -> None:
        self.settings = settings
        self.names = names
        self.report = InvariantReport()
        self._meter_bad_since: float | None = None
        self._unavailable_since: dict[str, float] = {}
        self._control_lost_since: dict[str, float] = {}
        self._not_following_since: dict[str, float] = {}

    def cycle(
        self,
        snap: Snapshot,
        plan: Plan,
        *,
        meter_fault: str | None,
        unavailable: set[str],
        control_lost: set[str],
        not_following: set[str],
        period_s: float,
    ) -> None:
        now = snap.now_s
        s = self.settings
        grace = period_s + 0.01
        # 1. stale meter: after stale_after_s (+ one cycle) every command is 0 W.
        if meter_fault is not None:
            if self._meter_bad_since is None:
                self._meter_bad_since = now
            if now - self._meter_bad_since > s.stale_after_s + 2 * grace and any(
                p != 0 for p in plan.setpoints.values()
            ):
                self.report.fail(
                    "meter_stale_idles_all", now, f"{meter_fault}: commands {plan.setpoints}"
                )
        else:
            self._meter_bad_since = None
        # 2. an unavailable battery gets no command (from the cycle after it failed).
        for name in self.names:
            if name in unavailable:
                since = self._unavailable_since.setdefault(name, now)
                if now - since > grace and plan.setpoints.get(name, 0) != 0:
                    self.report.fail(
                        "unavailable_gets_no_command",
                        now,
                        f"{name} commanded {plan.setpoints[name]} W while unavailable",
                    )
            else:
                self._unavailable_since.pop(name, None)
        # 3. control mode lost: re-applied within control_recheck_s (+ slack).
        for name in self.names:
            if name in control_lost:
                since = self._control_lost_since.setdefault(name, now)
                if now - since > s.control_recheck_s + 2 * grace:
                    self.report.fail(
                        "control_reapplied", now, f"{name} out of RS485 control since {since:.0f} s"
                    )
            else:
                self._control_lost_since.pop(name, None)
        # 4. a battery that does not follow is excluded within a bounded time.
        limit = 8.0 + (s.not_following_cycles + 2) * period_s + 10.0
        for name in self.names:
            if name in not_following:
                since = self._not_following_since.setdefault(name, now)
                if now - since > limit and abs(plan.setpoints.get(name, 0)) > 1:
                    self.report.fail(
                        "not_following_excluded",
                        now,
                        f"{name} still commanded {plan.setpoints[name]} W while not following",
                    )
            else:
                self._not_following_since.pop(name, None)
        # 5. limits: discharge while blocked, charge when full, discharge when empty, > max.
        soc = {b.name: b.soc_pct for b in snap.batteries}
        specs = {b.name: b for b in s.batteries}
        for name, p in plan.setpoints.items():
            spec = specs.get(name)
            level = soc.get(name)
            if p > 0 and snap.discharge_blocked:
                self.report.fail("limits_respected", now, f"{name} discharge {p} W while blocked")
            if p < 0 and level is not None and level >= s.max_soc_pct:
                self.report.fail("limits_respected", now, f"{name} charge {p} W at {level} %")
            if p > 1 and level is not None and level <= s.min_soc_pct:
                self.report.fail("limits_respected", now, f"{name} discharge {p} W at {level} %")
            if spec is not None and (p > spec.max_discharge_w or -p > spec.max_charge_w):
                self.report.fail("limits_respected", now, f"{name} setpoint {p} W above limit")

    def crashed(self, t_s: float, detail: str) -> None:
        self.report.fail("no_crash", t_s, detail)

    def shutdown(self, t_s: float, *, all_idle: bool, released: bool) -> None:
        if not (all_idle and released):
            self.report.fail(
                "shutdown_safe", t_s, f"after shutdown: idle={all_idle} released={released}"
            )
