"""The ``mmbc`` policy: the product's control logic with latency-aware, hunting-free control.

Each call of ``decide`` is one control cycle: snapshot in, plan out, time passed in. The
state lives in the machines: one ``BatteryFsm`` per battery (its availability, last command,
exclusion and cut-off), the fleet's ``FleetFsm`` (mode, fail-safe hold, and the selection:
leader order, reselection timer, hand-over, split), and the law's ``DemandEstimator``. A cycle
feeds the readings to them (``observe``), lets the fleet machine pick its state (``tick``) and
runs that state's handler (``HANDLERS``, one per fleet state, OpenEMS style). The handlers
compute watts with the pure functions of ``engine.core.allocate``.

Product rules (README "Control logic"): below the split threshold a single battery works
(charging: lowest SoC, discharging: highest SoC); above it the power is split over all
eligible batteries; eligibility by SoC limits; the selection is re-evaluated every
``reselect_interval_s`` or at once when the leading battery becomes ineligible.

How it keeps the meter at zero (docs/control.md explains each feature and what it is worth;
each has a ``feature_*`` switch in ``ControlSettings``):
- it estimates the house's net demand at the instant the meter reading describes (grid + the
  batteries' power then), and moves the estimate only as far as the reading proves while the
  batteries ramp, so a correction already on its way is never issued twice;
- small changes are smoothed (meter noise), large ones taken at once (load steps); a load
  with a steady on/off rhythm is anticipated, other fast pulsing is damped;
- direction hysteresis and a minimum change;
- hysteresis on the split threshold and on the SoC ranking, the number of active batteries
  from the efficiency curve, make-before-break hand-over, small corrections to one battery,
  a charging split in proportion to the energy each battery can take, batteries stuck at
  their firmware cut-off left out;
- battery care: a charge taper near full that never causes export, relay keep-alive (1 W)
  through short idle gaps;
- fail-safe: a stale meter puts every battery at 0 W; an unhealthy battery gets no command;
  a battery that does not follow is excluded for a while.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Final

from engine.core.allocate import (
    Candidate,
    fill_in_order,
    fleet_loss_w,
    priority_order,
    split_proportional,
)
from engine.core.battery_fsm import KEEPALIVE_W, BatteryFsm, Rest
from engine.core.demand import DemandEstimator
from engine.core.events import DecisionEvent, Direction, LeaderChanged
from engine.core.fleet_fsm import FleetFsm, SelectionState
from engine.core.model import Mode, Plan, Snapshot
from engine.core.quality import LIMITED_RMS_W, Quality, QualityMonitor
from engine.core.settings import BatterySpec, ControlSettings
from engine.core.states import BatteryState, FleetState
from engine.core.timers import exceeded

COUNT_HYSTERESIS_W: Final = 5.0  # change the number of active batteries only to save this much

# Looking up an enum member on its class costs a descriptor call; the per-cycle paths compare
# against these module constants instead (the same objects).
_UNAVAILABLE: Final = BatteryState.UNAVAILABLE
_CHARGING: Final = BatteryState.CHARGING
_DISCHARGING: Final = BatteryState.DISCHARGING
_HOLD: Final = FleetState.HOLD
_CHARGE: Final = Direction.CHARGE
_DISCHARGE: Final = Direction.DISCHARGE
_SPLIT: Final = SelectionState.SPLIT
_SELFCONTROL: Final = FleetState.SELFCONTROL
_NONE: Final = Direction.NONE
_REST_IDLE: Final = Rest.IDLE
_REST_BLOCKED: Final = Rest.BLOCKED
_REST_INELIGIBLE: Final = Rest.INELIGIBLE
_MODE_HOLD: Final = Mode.HOLD
# A verdict's published text; ``Quality.value`` is a property call per cycle.
_QUALITY_VALUE: Final = {q: q.value for q in Quality}


def charge_limit_w(spec: BatterySpec, soc_pct: float, settings: ControlSettings) -> float:
    """Charge power allowed at ``soc_pct``: tapered near full (battery care)."""
    limit = float(spec.max_charge_w)
    if soc_pct >= settings.taper_full_soc_pct:
        limit = min(limit, settings.taper_full_power_w)
    elif soc_pct >= settings.taper_soc_pct:
        limit = min(limit, settings.taper_power_w)
    return limit


@dataclass(slots=True)
class Cycle:
    """One cycle's inputs and outputs, handed to the fleet state's handler."""

    snap: Snapshot
    usable: list[BatteryFsm]  # available batteries, in configured order
    new_reading: bool
    events: list[DecisionEvent] = field(default_factory=list)
    setpoints: dict[str, int] = field(default_factory=dict)
    release: tuple[str, ...] = ()
    # What the batteries out of reach still deliver (their last commands, + discharge).
    # Fixed once the cycle's readings are observed: a handler commands only usable ones.
    out_of_reach_w: int = 0


class MmbcPolicy:
    """MMBC's own policy. Stateful between cycles, but pure: no I/O, no clock of its own."""

    name = "mmbc"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.period_s = settings.loop_period_s
        self.learns_meter_phase = settings.feature_phase_learning
        self.fleet = FleetFsm(
            reselect_interval_s=settings.reselect_interval_s,
            handover_timeout_s=settings.handover_timeout_s,
        )
        self.specs = {spec.name: spec for spec in settings.batteries}
        self._wh_per_pct = {spec.name: spec.capacity_wh / 100.0 for spec in settings.batteries}
        # Each battery's last candidate per direction. A candidate is a function of the SoC
        # alone (the spec and the settings are fixed), and the SoC moves by a whole percent
        # about once in hundreds of cycles: the same SoC gives back the same candidate.
        self._last_candidate: dict[Direction, dict[str, Candidate]] = {
            _CHARGE: {},
            _DISCHARGE: {},
        }
        self.batteries = {
            spec.name: BatteryFsm(
                spec.name,
                min_soc_pct=settings.min_soc_pct,
                max_soc_pct=settings.max_soc_pct,
                not_following_cycles=settings.not_following_cycles,
                not_following_exclude_s=settings.not_following_exclude_s,
            )
            for spec in settings.batteries
        }
        self.demand = DemandEstimator(settings, self.period_s)
        self._quality = QualityMonitor()
        self._last_cycle_s = float("-inf")

    # ------------------------------------------------------------------ the cycle
    def decide(self, snap: Snapshot) -> Plan:
        now = snap.now_s
        if now - self._last_cycle_s > 1.5 * self.period_s:
            # Cycles were skipped (the runtime failed safe and put every battery at 0 W):
            # the batteries do not hold what we last commanded and the power history has a
            # gap, so the follow check and the demand estimate start afresh.
            for b in self.batteries.values():
                b.command_w = 0
                b.command_since_s = now
            self.demand.restart()
        self._last_cycle_s = now
        events: list[DecisionEvent] = []
        seen = {t.name: t for t in snap.batteries}
        blocked = snap.discharge_blocked or snap.mode is _MODE_HOLD
        cutoff_check = self.settings.feature_cutoff_detection
        usable: list[BatteryFsm] = []
        parts: dict[str, float] = {}
        away: list[BatteryFsm] = []
        for b in self.batteries.values():
            # Its reading first (availability, the exclusion timer, the checks), then where
            # it stands this cycle.
            b.discharge_blocked = blocked
            b.observe(seen.get(b.name), now, events, cutoff_check=cutoff_check)
            if b.state is _UNAVAILABLE:
                away.append(b)
            else:
                usable.append(b)
                if b.telemetry is not None:
                    parts[b.name] = b.telemetry.power_w or 0.0
        # A battery out of reach keeps its last setpoint (no watchdog): it is counted as
        # still delivering it, in the house's demand and in what the others must carry.
        # Were it stopped, the meter shows the difference and the others take it up.
        # (After the usable ones: the order the batteries' power is summed in.)
        for b in away:
            if b.assumed_w:
                parts[b.name] = float(b.assumed_w)
        self.demand.observe_batteries(now, parts)
        cycle = Cycle(
            snap,
            usable,
            self.demand.new_reading(snap.meter_updated_s),
            events,
            out_of_reach_w=sum(b.assumed_w for b in away) if away else 0,
        )
        meter_fresh = (
            snap.grid_w is not None
            and snap.meter_updated_s is not None
            and not exceeded(now, snap.meter_updated_s, self.demand.stale_limit_s())
        )
        state = self.fleet.tick(
            snap.mode,
            discharge_blocked=snap.discharge_blocked,
            meter_fresh=meter_fresh,
            events=events,
        )
        HANDLERS[state](self, cycle)
        return self._plan(cycle)

    # ------------------------------------------------------------------ handlers
    def _hold_at_zero(self, cycle: Cycle) -> None:
        """Starting or holding safe: every available battery at 0 W, the law forgets."""
        self.demand.hold_at_zero()
        self.fleet.selection.end_handover(cycle.events, completed=False)
        for b in cycle.usable:
            cycle.setpoints[b.name] = b.command(0, cycle.snap.now_s)

    def _release(self, cycle: Cycle) -> None:
        """Self-control: RS485 control handed back; the batteries run their own logic."""
        for b in cycle.usable:
            b.command(0, cycle.snap.now_s)
        cycle.release = tuple(b.name for b in cycle.usable)

    def _force_charge(self, cycle: Cycle) -> None:
        """Charge mode: every battery charges at what it may take (tapered near full)."""
        self._note_reading(cycle)
        now = cycle.snap.now_s
        for b in cycle.usable:
            soc = b.soc_pct if b.soc_pct is not None else 100.0
            want = -round(charge_limit_w(self.specs[b.name], soc, self.settings))
            cycle.setpoints[b.name] = b.command(want, now, at_zero=Rest.INELIGIBLE)

    def _balance(self, cycle: Cycle) -> None:
        """Normal and hold: keep the meter at zero (hold never discharges)."""
        self._note_reading(cycle)
        if cycle.new_reading:
            self.demand.update(cycle.snap)
        now = cycle.snap.now_s
        self.demand.anticipate(now, lambda d: self._room_w(now, cycle.usable, d))
        self._allocate(cycle)

    def _note_reading(self, cycle: Cycle) -> None:
        snap = cycle.snap
        if cycle.new_reading and snap.grid_w is not None:
            self._quality.add(snap.now_s, snap.grid_w - self.settings.grid_target_w)

    # ------------------------------------------------------------------ allocation
    def _allocate(self, cycle: Cycle) -> None:
        s = self.settings
        now = cycle.snap.now_s
        events = cycle.events
        sel = self.fleet.selection
        target = self.demand.target_w - cycle.out_of_reach_w
        discharge_blocked = cycle.snap.discharge_blocked
        hold = discharge_blocked or self.fleet.state is _HOLD
        direction = self.demand.direction(target)
        if direction is _DISCHARGE and hold:
            direction = _NONE
        candidates = self._candidates(cycle.usable, direction) if direction else []
        if direction and not candidates:
            direction = _NONE

        shares: dict[str, float] = {}  # magnitudes: the direction is applied per battery
        wake: str | None = None
        # The candidates by name: who is eligible, and the leader order's lookup.
        by_name = {c.name: c for c in candidates}
        if direction:
            magnitude = abs(target)
            if direction is _CHARGE and s.feature_charge_taper:
                relaxed = self._relax_taper(candidates, magnitude)
                if relaxed is not candidates:
                    candidates = relaxed
                    by_name = {c.name: c for c in candidates}
            order = self._select(now, candidates, by_name.keys(), direction, events)
            ordered = [by_name[n] for n in order]
            threshold = s.split_threshold_w
            if sel.state is _SPLIT and s.feature_split_hysteresis:
                threshold -= s.split_hysteresis_w
            if magnitude > threshold and len(ordered) > 1:
                sel.go_split(events)
                members = self._active_members(magnitude, ordered, direction)
                shares = self._split(magnitude, members, direction)
            else:
                sel.go_single(events)
                ordered, wake = self._handover(now, ordered, events)
                shares = fill_in_order(magnitude, ordered)
            self.demand.last_direction = direction
        else:
            sel.go_idle(events)

        wants_blocked_discharge = target > s.idle_band_w and hold
        for b in cycle.usable:
            want = round(direction * shares.get(b.name, 0.0))
            at_zero = _REST_IDLE
            if want != 0:
                b.note_wanted(want, now)
            elif wants_blocked_discharge:
                at_zero = _REST_BLOCKED
            elif direction and b.name not in by_name:
                at_zero = _REST_INELIGIBLE
            elif b.name == wake:
                want = KEEPALIVE_W * direction  # engage its relay before it takes over
            else:
                want = self._keepalive(b, now, direction, discharge_blocked)
            cycle.setpoints[b.name] = b.command(want, now, at_zero=at_zero)

    def _candidates(self, usable: list[BatteryFsm], direction: Direction) -> list[Candidate]:
        """The batteries that may take part in ``direction``, with what each can do now."""
        s = self.settings
        out = []
        discharging = direction is _DISCHARGE
        charging = direction is _CHARGE
        last_candidates = self._last_candidate.get(direction, {})
        for b in usable:
            soc = b.soc_pct
            if soc is None or not b.usable_for(direction):
                continue  # excluded, or at its firmware cut-off in this direction
            name = b.name
            last = last_candidates.get(name)
            if last is not None and last.soc_pct == soc:
                out.append(last)  # what it can do depends only on its SoC here
                continue
            if discharging and soc > s.min_soc_pct:
                limit = float(self.specs[name].max_discharge_w)
                headroom = (soc - s.min_soc_pct) * self._wh_per_pct[name]
            elif charging and soc < s.max_soc_pct:
                spec = self.specs[name]
                limit = (
                    charge_limit_w(spec, soc, s)
                    if s.feature_charge_taper
                    else float(spec.max_charge_w)
                )
                headroom = (s.max_soc_pct - soc) * self._wh_per_pct[name]
            else:
                continue
            candidate = Candidate(name, soc, limit, headroom)
            last_candidates[name] = candidate
            out.append(candidate)
        return out

    def _room_w(self, now: float, usable: list[BatteryFsm], direction: Direction) -> float:
        del now  # the candidates do not depend on time; kept for the law's call signature
        return sum(c.limit_w for c in self._candidates(usable, direction))

    def _relax_taper(self, candidates: list[Candidate], magnitude: float) -> list[Candidate]:
        """The taper is care, not a cap on the house: it never makes the fleet export.

        When the surplus exceeds what the fleet takes at tapered power, the tapered batteries
        take more (each in proportion to what the taper withheld), up to their full limit.
        """
        tapered = sum(c.limit_w for c in candidates)
        if magnitude <= tapered:
            return candidates
        full = {c.name: float(self.specs[c.name].max_charge_w) for c in candidates}
        withheld = sum(full[c.name] - c.limit_w for c in candidates)
        if withheld <= 0:
            return candidates
        share = min(1.0, (magnitude - tapered) / withheld)
        return [
            replace(c, limit_w=c.limit_w + share * (full[c.name] - c.limit_w)) for c in candidates
        ]

    def _select(
        self,
        now: float,
        candidates: list[Candidate],
        names: AbstractSet[str],
        direction: Direction,
        events: list[DecisionEvent],
    ) -> tuple[str, ...]:
        """The leader order, kept for ``reselect_interval_s`` (product rule). ``names``: the
        candidates' names."""
        s = self.settings
        sel = self.fleet.selection
        if not sel.reselection_due(now, direction, names):
            if len(sel.order) == len(names) and names == set(sel.order):
                return sel.order  # the same batteries as when it was chosen (most cycles)
            kept = tuple(n for n in sel.order if n in names)
            if len(kept) == len(names):
                return kept  # every candidate is in the order: none to append
            missing = tuple(n for n in priority_order(candidates, direction) if n not in kept)
            return kept + missing
        fresh = priority_order(candidates, direction)
        same_direction = sel.direction is direction
        if s.feature_soc_hysteresis and same_direction and sel.order and sel.order[0] in names:
            # SoC hysteresis: keep the current leader unless another is clearly better.
            soc = {c.name: c.soc_pct for c in candidates}
            leader, best = sel.order[0], fresh[0]
            if direction * (soc[best] - soc[leader]) < s.soc_hysteresis_pct:
                fresh = (leader, *tuple(n for n in fresh if n != leader))
        if sel.order and fresh[0] != sel.order[0] and same_direction:
            old = sel.order[0]
            if (
                s.feature_handover
                and old in names
                and abs(self.batteries[old].command_w) > KEEPALIVE_W
                and not self.batteries[fresh[0]].engaged()
            ):
                sel.begin_handover(old, fresh[0], now, events)
            events.append(LeaderChanged(old, fresh[0], direction))
        sel.choose(fresh, direction, now)
        return fresh

    def _handover(
        self, now: float, ordered: list[Candidate], events: list[DecisionEvent]
    ) -> tuple[list[Candidate], str | None]:
        """Make-before-break: the outgoing leader carries on until the incoming one is ready.

        A battery in standby needs its relay to close before it delivers anything; the two
        batteries respond alike once it has. So the incoming leader is woken with the 1 W
        keep-alive while the outgoing one carries the demand, and the two swap in one cycle
        once the incoming one reports power: no gap, and no overlap of both at full power.
        """
        sel = self.fleet.selection
        ho = sel.handover
        if ho is None:
            return ordered, None
        names = [c.name for c in ordered]
        incoming_ready = self.batteries[ho.incoming].engaged()
        if (
            ho.outgoing not in names
            or ho.incoming not in names
            or names[0] != ho.incoming
            or incoming_ready
            or sel.handover_over(now)
        ):
            sel.end_handover(events, completed=incoming_ready)
            return ordered, None
        outgoing = next(c for c in ordered if c.name == ho.outgoing)
        return [outgoing, *(c for c in ordered if c.name != ho.outgoing)], ho.incoming

    def _active_members(
        self, magnitude: float, ordered: list[Candidate], direction: Direction
    ) -> list[Candidate]:
        """How many batteries share a demand above the split threshold, and which.

        All eligible ones, unless the measured efficiency curve says fewer lose less (small
        shares run at poor efficiency); the count changes only for a clear gain (hysteresis).
        """
        sel = self.fleet.selection
        if not self.settings.feature_efficient_count or len(ordered) <= 2:
            sel.active_n = len(ordered)
            return ordered
        need = 2
        while need < len(ordered) and sum(c.limit_w for c in ordered[:need]) < magnitude:
            need += 1
        total = len(ordered)
        losses = {
            n: fleet_loss_w(magnitude, n, total, charging=direction is Direction.CHARGE)
            for n in range(need, total + 1)
        }
        best = min(losses, key=lambda n: (losses[n], -n))
        keep = sel.active_n
        if keep in losses and losses[keep] - losses[best] < COUNT_HYSTERESIS_W:
            best = keep
        sel.active_n = best
        return ordered[:best]

    def _split(
        self, magnitude: float, members: list[Candidate], direction: Direction
    ) -> dict[str, float]:
        """Split over ``members``; a small change goes to one battery (the most off-balance)."""
        s = self.settings
        sel = self.fleet.selection
        ideal = split_proportional(
            magnitude, members, by_energy=s.feature_energy_split and direction is Direction.CHARGE
        )
        prev = sel.split_w
        names = {c.name for c in members}
        if s.feature_small_correction and set(prev) == names and sel.split_direction is direction:
            delta = magnitude - sum(prev.values())
            if abs(delta) <= s.small_correction_w:
                sign = 1.0 if delta >= 0 else -1.0
                pick = max(members, key=lambda c: (sign * (ideal[c.name] - prev[c.name]), c.name))
                moved = prev[pick.name] + delta
                out = dict(prev)
                out[pick.name] = moved
                drift = max(abs(out[n] - ideal[n]) for n in names)
                if 0.0 <= moved <= pick.limit_w and drift <= 2 * s.small_correction_w:
                    sel.split_w = out
                    return out
        sel.split_w = ideal
        sel.split_direction = direction
        return ideal

    def _keepalive(self, b: BatteryFsm, now: float, direction: Direction, blocked: bool) -> int:
        """1 W in the last direction keeps the relay engaged through a short idle gap."""
        if not self.settings.feature_relay_keepalive:
            return 0
        if exceeded(now, b.last_active_s, self.settings.relay_hold_s) or not b.last_direction:
            return 0
        if direction and direction is not b.last_direction:
            return 0  # the fleet reversed: this battery rests for real
        if b.last_direction is _DISCHARGE and blocked:
            return 0
        return KEEPALIVE_W * b.last_direction

    # ------------------------------------------------------------------ output
    def _plan(self, cycle: Cycle) -> Plan:
        safe = self.fleet.holds_at_zero
        rms_w = self._quality.rms_w()
        if safe:
            quality = Quality.SAFE_HOLD
        elif self.fleet.state is _SELFCONTROL:
            quality = Quality.IDLE
        else:
            # The verdict asks whether the fleet is limited only for an error above
            # LIMITED_RMS_W; below it the answer is not needed (and not computed).
            limited = rms_w is not None and rms_w > LIMITED_RMS_W and self._limited()
            quality = self._quality.verdict(limited=limited)
        return Plan(
            setpoints=cycle.setpoints,
            fleet_state=self.fleet.state,
            battery_states={n: b.state for n, b in self.batteries.items()},
            events=tuple(cycle.events),
            safe_hold=safe,
            release=cycle.release,
            quality=_QUALITY_VALUE[quality],
            grid_rms_w=rms_w,
            # What the reachable batteries were to carry (less what is out of reach).
            extra={"target_w": self.demand.target_w - cycle.out_of_reach_w},
        )

    def _limited(self) -> bool:
        """True when the fleet cannot deliver what the house needs (full, empty, at max)."""
        target = self.demand.target_w
        if abs(target) <= self.settings.idle_band_w:
            return False
        active = False
        capacity = 0
        for b in self.batteries.values():
            if b.state is _CHARGING or b.state is _DISCHARGING:
                active = True
                spec = self.specs[b.name]
                capacity += spec.max_discharge_w if target > 0 else spec.max_charge_w
        return not active or abs(target) > capacity


Handler = Callable[[MmbcPolicy, Cycle], None]

# Each fleet state's handler (OpenEMS style: the state machine picks, the handler acts).
HANDLERS: Final[dict[FleetState, Handler]] = {
    FleetState.STARTING: MmbcPolicy._hold_at_zero,
    FleetState.SAFE_HOLD: MmbcPolicy._hold_at_zero,
    FleetState.NORMAL: MmbcPolicy._balance,
    FleetState.HOLD: MmbcPolicy._balance,
    FleetState.CHARGE: MmbcPolicy._force_charge,
    FleetState.SELFCONTROL: MmbcPolicy._release,
}
