"""The fail-safe invariants of issue 4, checked over every run and reported by name.

Each check sees every control cycle: the snapshot the engine decided on, the plan it made,
and the simulator's ground truth (``Truth``: what the meter really served, which batteries
really are unreachable, out of RS485 control or not delivering, what each firmware steers
to, the house's real demand). The checks are stated from that truth, not from the engine's
own view of the world, so an engine that misjudges a fault fails them. A violation records
its first time and one detail line.

1. ``meter_stale_idles_all``: once the newest reading the meter served is older than the
   stale limit, every healthy battery is commanded 0 W in every cycle until a fresh reading
   arrives (a frozen meter serves no fresh reading); in self-control mode nothing is
   commanded at all.
2. ``unavailable_gets_no_command``: a battery that is unreachable or reports garbage gets no
   command and its state is ``unavailable``; the others' commands cover the demand from the
   second cycle on; it is commanded again within ``REJOIN_BOUND_S`` once healthy.
3. ``control_reapplied``: a reachable battery out of RS485 control gets it back within
   ``control_recheck_s`` + one cycle; a battery in control holds the engine's command.
4. ``not_following_excluded``: a battery that does not deliver is not commanded (at least
   ``FOLLOW_MIN_W``, in one direction, away from its SoC limits) for longer than
   ``not_following_bound_s``; the others cover the demand once it is excluded; the
   exclusion is logged once (one reason line), and only for a battery that does not deliver.
5. ``limits_respected``: never a discharge while blocked, a charge at or above the max SoC,
   a discharge at or below the min SoC, a setpoint above the battery's limit.
6. ``no_crash``: no exception but an injected one; after an injected error every battery is
   at 0 W and the next cycle runs.
7. ``shutdown_safe``: after the shutdown path (also in the middle of a fault) every reachable
   battery steers to 0 W, is released, and delivers 0 W within ``SHUTDOWN_BUDGET_S``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from engine.core.events import Excluded
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.settings import BatterySpec, ControlSettings
from engine.core.timers import TIMER_SLACK_S
from sim.plant.params import FaultKind

if TYPE_CHECKING:
    from sim.plant.world import World

INVARIANTS: tuple[str, ...] = (
    "meter_stale_idles_all",
    "unavailable_gets_no_command",
    "control_reapplied",
    "not_following_excluded",
    "limits_respected",
    "no_crash",
    "shutdown_safe",
)

EPS_S = TIMER_SLACK_S  # the engine's own slack on time comparisons (a clock's rounding)
# A battery delivering nothing for a smaller command cannot be told from meter noise.
FOLLOW_MIN_W = 100
# This close to its min (max) SoC a battery's own cut-off may stop its discharge (charge).
NEAR_LIMIT_PCT = 2.0
# A slow meter (DSMR 4, 10 s) would always look stale at 5 s: the engine stretches its limit
# to 2.5 meter intervals, never beyond 30 s (engine.core.estimator.MeterCadence).
STALE_STRETCH_INTERVALS = 2.5
STALE_STRETCH_MAX_S = 30.0
# The Modbus driver's reconnect backoff doubles up to 30 s; then one read and one cycle.
REJOIN_BOUND_S = 35.0
# The others must carry the demand from the second cycle after a battery dropped out;
# a mismatch lasting longer than this many cycles is a violation (load steps and meter
# latency legitimately cost one or two).
TAKEOVER_CYCLES = 2
# The engine smooths deviations smaller than its step threshold (meter noise) on purpose, so
# a shortfall that small may last; the tolerance is that threshold (at least this) + 5 %.
TAKEOVER_TOLERANCE_W = 75.0
TAKEOVER_TOLERANCE_FRACTION = 0.05
# How long a Venus E may take to deliver a new command: dead time, relay, ramp, margin.
FOLLOW_SETTLE_S = 10.0
SHUTDOWN_BUDGET_S = 5.0
INJECTED_ERROR_NAME = "InjectedEngineError"


_NO_POWERS: Mapping[str, float] = MappingProxyType({})  # a shared default, read-only


class Truth(NamedTuple):
    """The simulator's ground truth at one cycle, after the cycle's writes.

    Immutable; a named tuple (one per cycle, a fifth of a frozen dataclass's cost)."""

    # The instant the reading a poll gets now describes; None = no valid reading served.
    meter_sample_s: float | None
    failed: frozenset[str] = frozenset()  # unreachable (offline, stalled, rebooting) or garbage
    out_of_control: frozenset[str] = frozenset()  # reachable, 42000 is not 0x55AA
    not_delivering: frozenset[str] = frozenset()  # acknowledges commands, delivers 0 W
    net_w: float = 0.0  # the house's demand now (load - PV, + import)
    battery_w: Mapping[str, float] = _NO_POWERS  # actual AC power, + discharge
    firmware_w: Mapping[str, float] = _NO_POWERS  # what each firmware steers to
    engine_error: bool = False  # an engine error is being injected


@dataclass
class InvariantReport:
    """First violation time per invariant (None = held), and what it was."""

    first_violation_s: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(INVARIANTS)
    )
    details: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, t_s: float, detail: str) -> None:
        if name not in self.first_violation_s:
            msg = f"unknown invariant {name!r}"
            raise KeyError(msg)
        if self.first_violation_s[name] is None:
            self.first_violation_s[name] = t_s
            self.details[name] = detail

    def passed(self) -> dict[str, bool]:
        return {k: v is None for k, v in self.first_violation_s.items()}


def healthy(t: BatteryTelemetry) -> bool:
    """What the engine may command: the read worked, with a SoC and a power."""
    return t.online and t.soc_pct is not None and t.power_w is not None


def charge_limit_w(spec: BatterySpec, soc_pct: float, settings: ControlSettings) -> float:
    """The charge power a battery may take at ``soc_pct`` (the configured taper near full)."""
    limit = float(spec.max_charge_w)
    if soc_pct >= settings.taper_full_soc_pct:
        return min(limit, settings.taper_full_power_w)
    if soc_pct >= settings.taper_soc_pct:
        return min(limit, settings.taper_power_w)
    return limit


class InvariantChecker:
    """Checks one run's cycles against the invariants. Ground truth comes from the world."""

    def __init__(
        self,
        settings: ControlSettings,
        names: list[str],
        *,
        meter_interval_s: float = 1.0,
        period_s: float | None = None,
        takeover_cycles: int = TAKEOVER_CYCLES,
    ) -> None:
        self.settings = settings
        self.takeover_cycles = takeover_cycles
        self.names = list(names)
        self.specs = {b.name: b for b in settings.batteries}
        self.report = InvariantReport()
        self.period_s = period_s if period_s is not None else settings.loop_period_s
        self.meter_interval_s = meter_interval_s
        self.cycles = 0
        self.crashes = 0
        self.failing = False  # the last cycle raised
        self._first_s: float | None = None
        self._meter_sample_s: float | None = None
        self._fresh_s: float | None = None
        self._failed_since: dict[str, float] = {}
        self._rejoin_due: dict[str, float] = {}
        self._lost_since: dict[str, float] = {}
        self._idle_since: dict[str, float] = {}  # does not deliver, not commanded since
        self._tracking_since_s: float | None = None  # in a mode that follows the meter since
        # does not deliver, commanded in one direction since: (direction, since)
        self._nf_commanded_since: dict[str, tuple[int, float]] = {}
        self._nf_seen_s: dict[str, float] = {}
        self._excluded_logged_s: dict[str, float] = {}
        self._crash_pending_s: float | None = None
        self._under_cycles = 0
        self._over_cycles = 0
        self._recent_demand: deque[tuple[float, float]] = deque()  # (t, what others must carry)

    @classmethod
    def for_world(
        cls, settings: ControlSettings, world: World, period_s: float
    ) -> InvariantChecker:
        """A checker for ``world``'s batteries and meter."""
        return cls(
            settings,
            world.names,
            meter_interval_s=world.scenario.meter.interval_s,
            period_s=period_s,
        )

    @property
    def stale_limit_s(self) -> float:
        """How old the newest reading may be before every battery must be at 0 W.

        The configured ``stale_after_s``, stretched for a meter (or a poll) slower than it.
        """
        interval_s = max(self.meter_interval_s, self.period_s)
        return max(
            self.settings.stale_after_s,
            min(STALE_STRETCH_MAX_S, STALE_STRETCH_INTERVALS * interval_s),
        )

    @property
    def not_following_bound_s(self) -> float:
        """Longest a battery that does not deliver may keep being commanded."""
        return FOLLOW_SETTLE_S + (self.settings.not_following_cycles + 1) * self.period_s

    # ------------------------------------------------------------------ per cycle
    def cycle(
        self, snap: Snapshot, plan: Plan, truth: Truth, period_s: float | None = None
    ) -> None:
        """One completed cycle: ``plan`` was decided on ``snap`` and written."""
        if period_s is not None:
            self.period_s = period_s
        now = snap.now_s
        self._next_cycle_ran(now)
        self.cycles += 1
        self.failing = False
        stale = self._check_stale(snap, plan, truth)
        self._check_unavailable(now, plan, truth)
        self._check_control(now, plan, truth)
        self._check_not_following(snap, plan, truth)
        self._check_takeover(snap, plan, truth, stale=stale)
        self._check_limits(snap, plan)

    def crashed(self, t_s: float, detail: str, truth: Truth | None = None) -> None:
        """A cycle raised; the caller has put every battery at 0 W (``truth`` after that).

        Only an injected error is allowed; any other exception is an engine bug.
        """
        self._next_cycle_ran(t_s)
        self.crashes += 1
        self.failing = True
        injected = truth.engine_error if truth is not None else INJECTED_ERROR_NAME in detail
        if not injected:
            last = detail.strip().splitlines()[-1] if detail.strip() else "exception"
            self.report.fail("no_crash", t_s, f"unexpected exception: {last}")
        if truth is not None:
            self._note_meter(t_s, truth)
            self._note_demand(t_s, truth, truth.failed | truth.not_delivering)
            moving = {n: w for n, w in truth.firmware_w.items() if n not in truth.failed and w != 0}
            if moving:
                self.report.fail(
                    "no_crash", t_s, f"after an error not every battery at 0 W: {moving}"
                )
        self._crash_pending_s = t_s
        self._nf_commanded_since.clear()  # every battery was just commanded 0 W

    def finish(self, end_s: float) -> None:
        """The run ended at ``end_s``: an error must have been followed by another cycle."""
        self._next_cycle_ran(end_s, final=True)

    def shutdown(self, t_s: float, *, all_idle: bool, released: bool, detail: str = "") -> None:
        """The shutdown path ran at ``t_s``: every reachable battery idle and released."""
        if not (all_idle and released):
            self.report.fail(
                "shutdown_safe",
                t_s,
                f"after shutdown: idle={all_idle} released={released} {detail}".strip(),
            )

    # ------------------------------------------------------------------ 6. next cycle
    def _next_cycle_ran(self, now: float, *, final: bool = False) -> None:
        pending = self._crash_pending_s
        if pending is not None and now > pending + EPS_S:
            if now - pending > 2 * self.period_s + EPS_S:
                what = "run ended" if final else "next cycle"
                self.report.fail(
                    "no_crash", now, f"error at {pending:.1f} s: {what} only at {now:.1f} s"
                )
            if not final:
                self._crash_pending_s = None
        if self._first_s is None and not final:
            self._first_s = now

    # ------------------------------------------------------------------ 1. stale meter
    def _note_meter(self, now: float, truth: Truth) -> None:
        """A reading describing a new instant is a fresh one."""
        sample = truth.meter_sample_s
        if sample is not None and sample != self._meter_sample_s:
            self._meter_sample_s = sample
            self._fresh_s = now

    def _check_stale(self, snap: Snapshot, plan: Plan, truth: Truth) -> bool:
        now = snap.now_s
        self._note_meter(now, truth)
        since = self._fresh_s if self._fresh_s is not None else self._first_s
        assert since is not None
        age = now - since
        if age <= self.stale_limit_s + EPS_S:
            return False
        if snap.mode is Mode.SELFCONTROL:
            return True  # handed to the batteries' own logic by the user: nothing to command
        ok = {t.name for t in snap.batteries if t.name in self.specs and healthy(t)}
        moving = {n: p for n, p in plan.setpoints.items() if p != 0}
        missing = sorted(ok - plan.setpoints.keys())
        if moving or missing or plan.release:
            self.report.fail(
                "meter_stale_idles_all",
                now,
                f"newest reading {age:.1f} s old: commands {moving}, not commanded {missing}",
            )
        return True

    # ------------------------------------------------------------------ 2. unavailable
    def _check_unavailable(self, now: float, plan: Plan, truth: Truth) -> None:
        if not truth.failed and not self._failed_since and not self._rejoin_due:
            return  # none unreachable, none was: the loop below would do nothing
        for name in self.names:
            if name in truth.failed:
                self._rejoin_due.pop(name, None)
                self._failed_since.setdefault(name, now)
                if name in plan.setpoints or name in plan.release:
                    self.report.fail(
                        "unavailable_gets_no_command",
                        now,
                        f"{name} commanded {plan.setpoints.get(name, 'release')} while"
                        " unreachable or reporting garbage",
                    )
                state = plan.battery_states.get(name)
                if state is not None and state != "unavailable":
                    self.report.fail(
                        "unavailable_gets_no_command",
                        now,
                        f"{name} unreachable or reporting garbage but its state is {state}",
                    )
                continue
            if self._failed_since.pop(name, None) is not None:
                self._rejoin_due[name] = now + REJOIN_BOUND_S
            due = self._rejoin_due.get(name)
            if due is None:
                continue
            if name in plan.setpoints or name in plan.release:
                del self._rejoin_due[name]
            elif now > due + EPS_S:
                del self._rejoin_due[name]
                self.report.fail(
                    "unavailable_gets_no_command",
                    now,
                    f"{name} healthy again but not commanded within {REJOIN_BOUND_S:.0f} s",
                )

    # ------------------------------------------------------------------ 3. RS485 control
    def _check_control(self, now: float, plan: Plan, truth: Truth) -> None:
        limit = self.settings.control_recheck_s + self.period_s + EPS_S
        for name in self.names:
            if name in truth.failed or name in plan.release:
                self._lost_since.pop(name, None)  # unreachable or handed back: not ours now
                continue
            if name in truth.out_of_control:
                since = self._lost_since.setdefault(name, now)
                if now - since > limit:
                    self.report.fail(
                        "control_reapplied",
                        now,
                        f"{name} out of RS485 control since {since:.1f} s",
                    )
                continue
            self._lost_since.pop(name, None)
            command = plan.setpoints.get(name)
            held = truth.firmware_w.get(name)
            if command is not None and held is not None and abs(held - command) > 0.5:
                self.report.fail(
                    "control_reapplied",
                    now,
                    f"{name} firmware steers to {held:.0f} W, engine commanded {command} W",
                )

    # ------------------------------------------------------------------ 4. not following
    def _check_not_following(self, snap: Snapshot, plan: Plan, truth: Truth) -> None:
        now = snap.now_s
        s = self.settings
        bound = self.not_following_bound_s
        # With none that does not deliver, and none commanded so, the loop would do nothing.
        names = self.names if truth.not_delivering or self._nf_commanded_since else ()
        soc = {t.name: t.soc_pct for t in snap.batteries} if names else {}
        for name in names:
            command = plan.setpoints.get(name, 0)
            if name in truth.not_delivering:
                self._nf_seen_s[name] = now
            level = soc.get(name)
            # Near its SoC limits a battery's own cut-offs may stop it: not a fault.
            near_limit = level is not None and (
                (command > 0 and level <= s.min_soc_pct + NEAR_LIMIT_PCT)
                or (command < 0 and level >= s.max_soc_pct - NEAR_LIMIT_PCT)
            )
            if name in truth.not_delivering and abs(command) >= FOLLOW_MIN_W and not near_limit:
                # A new direction restarts the battery (relay, ramp): it gets the bound anew.
                direction = 1 if command > 0 else -1
                run = self._nf_commanded_since.get(name)
                if run is None or run[0] != direction:
                    run = self._nf_commanded_since[name] = (direction, now)
                since = run[1]
                if now - since > bound + EPS_S:
                    self.report.fail(
                        "not_following_excluded",
                        now,
                        f"{name} delivers nothing but is still commanded {command} W"
                        f" after {now - since:.0f} s",
                    )
            else:
                self._nf_commanded_since.pop(name, None)
        for event in plan.events:
            if not isinstance(event, Excluded):
                continue
            name = event.battery
            seen = self._nf_seen_s.get(name)
            if seen is None or now - seen > bound + EPS_S:
                self.report.fail(
                    "not_following_excluded",
                    now,
                    f"{name} excluded while delivering: {event.delivered_w:.0f} W"
                    f" of {event.commanded_w} W",
                )
            last = self._excluded_logged_s.get(name)
            if last is not None and now - last < self.settings.not_following_exclude_s - EPS_S:
                self.report.fail(
                    "not_following_excluded",
                    now,
                    f"{name} exclusion logged again {now - last:.0f} s after the last one",
                )
            self._excluded_logged_s[name] = now

    # ------------------------------------------------------------------ 2./4. take-over
    def _check_takeover(self, snap: Snapshot, plan: Plan, truth: Truth, *, stale: bool) -> None:
        """Batteries that dropped out: the others' commands cover what the house needs.

        Out are the batteries that are unreachable or report garbage, and those that do not
        deliver. What the others must carry is the house's real demand minus what the
        dropped-out batteries really deliver (an unreachable Venus E keeps its last
        setpoint), limited by what the others may do (SoC limits, taper, block, power
        limits). The check starts ``TAKEOVER_CYCLES`` after a battery became unreachable,
        or after one that does not deliver was last commanded (the engine needs up to
        ``not_following_bound_s`` to tell; while it is still commanded the check waits,
        and the bound is checked on its own). A battery that did not deliver recently
        and is not commanded may still be excluded (``not_following_exclude_s``): out.
        Too little for longer than ``TAKEOVER_CYCLES`` fails; too much is allowed for
        ``handover_timeout_s`` (make-before-break between leaders).
        """
        now = snap.now_s
        s = self.settings
        settle_s = TAKEOVER_CYCLES * self.period_s - EPS_S  # redistributed in the 2nd cycle
        excluded_s = s.not_following_exclude_s + self.not_following_bound_s
        out: dict[str, bool] = {}  # dropped out -> settled
        # None unreachable or not delivering, now or lately: none is out, nothing to forget.
        maybe_out = truth.failed or truth.not_delivering or self._nf_seen_s or self._idle_since
        for name in self.names if maybe_out else ():
            if name in truth.failed:
                out[name] = now - self._failed_since.get(name, now) >= settle_s
            elif name in truth.not_delivering:
                if abs(plan.setpoints.get(name, 0)) >= FOLLOW_MIN_W:
                    out[name] = False  # still commanded: the engine may not know yet
                    self._idle_since.pop(name, None)
                else:
                    out[name] = now - self._idle_since.setdefault(name, now) >= settle_s
                continue
            seen = self._nf_seen_s.get(name)
            if (
                seen is not None
                and now - seen <= excluded_s
                and abs(plan.setpoints.get(name, 0)) < FOLLOW_MIN_W
            ):
                out[name] = True  # follows again, but may rightly stay excluded for a while
                continue
            self._idle_since.pop(name, None)
        recent = self._note_demand(now, truth, set(out) if out else _NONE)
        fresh_s = self._fresh_s if self._fresh_s is not None else now
        if snap.mode in (Mode.CHARGE, Mode.SELFCONTROL):
            self._tracking_since_s = None  # the meter is not followed in these modes
        elif self._tracking_since_s is None:
            self._tracking_since_s = now
        if (
            not out
            or not all(out.values())
            or stale
            or self._tracking_since_s is None
            or fresh_s < self._tracking_since_s  # no reading since the engine tracks again
            or plan.safe_hold
            or len(out) == len(self.names)
        ):
            self._under_cycles = self._over_cycles = 0
            return
        tel = {t.name: t for t in snap.batteries}
        group = [n for n in self.names if n not in out and n in tel and healthy(tel[n])]
        carried_w = float(sum(plan.setpoints.get(n, 0) for n in group))
        blocked = snap.discharge_blocked or snap.mode is Mode.HOLD
        discharge_cap_w = 0.0
        charge_cap_w = 0.0
        for n in group:
            soc = tel[n].soc_pct
            spec = self.specs.get(n)
            if soc is None or spec is None:
                continue
            if soc > s.min_soc_pct and not blocked:
                discharge_cap_w += spec.max_discharge_w
            if soc < s.max_soc_pct:
                charge_cap_w += charge_limit_w(spec, soc, s)
        best: tuple[float, float] | None = None  # (excess over the tolerance, target)
        for _, want_w in recent:
            target_w = min(max(want_w, -charge_cap_w), discharge_cap_w)
            tolerance_w = max(TAKEOVER_TOLERANCE_W, s.step_threshold_w) + (
                TAKEOVER_TOLERANCE_FRACTION * abs(target_w)
            )
            excess_w = abs(carried_w - target_w) - tolerance_w
            if best is None or excess_w < best[0]:
                best = (excess_w, target_w)
        assert best is not None
        excess_w, target_w = best
        if excess_w <= 0:
            self._under_cycles = self._over_cycles = 0
            return
        too_much = (carried_w - target_w) * (1 if target_w >= 0 else -1) > 0
        if too_much:
            self._over_cycles += 1
            self._under_cycles = 0
            limit = self.takeover_cycles + s.handover_timeout_s / self.period_s
            cycles = self._over_cycles
        else:
            self._under_cycles += 1
            self._over_cycles = 0
            limit = self.takeover_cycles
            cycles = self._under_cycles
        if cycles > limit:
            which = "unavailable_gets_no_command"
            if not any(n in truth.failed for n in out):
                which = "not_following_excluded"
            self.report.fail(
                which,
                now,
                f"{sorted(out)} out: the others are commanded {carried_w:.0f} W for a need of"
                f" {target_w:.0f} W, {cycles} cycles in a row",
            )

    def _note_demand(
        self, now: float, truth: Truth, out: set[str] | frozenset[str]
    ) -> deque[tuple[float, float]]:
        """Record what the batteries not ``out`` must carry now; return the recent ones.

        The engine knows the demand only as of the instant its newest reading describes:
        any demand from two cycles before that instant on will do.
        """
        # With none out (most cycles) nothing is summed: x - 0.0 is x, to the bit.
        out_w = sum(truth.battery_w.get(n, 0.0) for n in out) if out else 0.0
        demand_w = truth.net_w - out_w - self.settings.grid_target_w
        recent = self._recent_demand
        recent.append((now, demand_w))
        described_s = self._meter_sample_s if self._meter_sample_s is not None else now
        lag_s = self.takeover_cycles * self.period_s
        while len(recent) > 1 and recent[0][0] < described_s - lag_s:
            recent.popleft()
        return recent

    # ------------------------------------------------------------------ 5. limits
    def _check_limits(self, snap: Snapshot, plan: Plan) -> None:
        now = snap.now_s
        s = self.settings
        soc = {b.name: b.soc_pct for b in snap.batteries}
        blocked = snap.discharge_blocked or snap.mode is Mode.HOLD
        for name, p in plan.setpoints.items():
            spec = self.specs.get(name)
            level = soc.get(name)
            if spec is None:
                self.report.fail("limits_respected", now, f"setpoint for unknown battery {name}")
                continue
            if p > 0 and blocked:
                self.report.fail("limits_respected", now, f"{name} discharge {p} W while blocked")
            if p < 0 and (level is None or level >= s.max_soc_pct):
                self.report.fail("limits_respected", now, f"{name} charge {p} W at SoC {level}")
            if p > 0 and (level is None or level <= s.min_soc_pct):
                self.report.fail("limits_respected", now, f"{name} discharge {p} W at SoC {level}")
            if p > spec.max_discharge_w or -p > spec.max_charge_w:
                self.report.fail("limits_respected", now, f"{name} setpoint {p} W above limit")


_NONE: frozenset[str] = frozenset()


def observe_world(world: World) -> Truth:
    """The ground truth of ``world`` now (call after the cycle's writes)."""
    names = world.names
    now_s = world.now_s
    failed: set[str] = set()
    out_of_control: set[str] = set()
    not_delivering: set[str] = set()
    battery_w: dict[str, float] = {}
    firmware_w: dict[str, float] = {}
    any_fault = bool(world.active_faults)
    for i, (name, fw) in enumerate(zip(names, world.firmwares, strict=True), start=1):
        battery_w[name] = fw.battery.ac_power_w
        firmware_w[name] = fw.target_w
        if (any_fault or fw.offline_until_s > now_s) and (
            world.transport_fault(i) is not None or world.fault_active(FaultKind.SOC_GARBAGE, i)
        ):
            failed.add(name)
        elif not fw.control_enabled:
            out_of_control.add(name)
        # Out of RS485 control, a battery ignores its setpoints: it does not deliver either.
        if name in out_of_control or (
            any_fault and world.fault_active(FaultKind.BATTERY_NOT_FOLLOWING, i)
        ):
            not_delivering.add(name)
    return Truth(
        meter_sample_s=world.meter_sample_s(now_s),
        # (the common case, nobody: one shared empty set instead of three new ones)
        failed=frozenset(failed) if failed else _NONE,
        out_of_control=frozenset(out_of_control) if out_of_control else _NONE,
        not_delivering=frozenset(not_delivering) if not_delivering else _NONE,
        net_w=world.net_at(now_s),
        battery_w=battery_w,
        firmware_w=firmware_w,
        engine_error=any_fault and world.fault_active(FaultKind.ENGINE_ERROR),
    )
