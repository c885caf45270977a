"""The ``mmbc`` policy: the product's control logic with latency-aware, hunting-free control.

Each call of ``decide`` is one control cycle: snapshot in, plan out, time passed in.

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

from dataclasses import dataclass, field, replace

from engine.core.allocate import (
    Candidate,
    fill_in_order,
    fleet_loss_w,
    priority_order,
    split_proportional,
)
from engine.core.battery_fsm import BatteryFsm
from engine.core.estimator import (
    MeterCadence,
    NetDemandFilter,
    PowerHistory,
    PulsePredictor,
    ResponseTimer,
)
from engine.core.events import (
    BatteryLost,
    BatteryReturned,
    CutoffCleared,
    CutoffReached,
    DecisionEvent,
    Direction,
    Excluded,
    ExclusionEnded,
    HandoverEnded,
    HandoverStarted,
    LeaderChanged,
    SafeHoldCause,
    SafeHoldEntered,
    SafeHoldLeft,
)
from engine.core.fleet_fsm import FleetFsm
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.quality import Quality, QualityMonitor
from engine.core.settings import BatterySpec, ControlSettings
from engine.core.states import BatteryState, FleetState

KEEPALIVE_W = 1  # "1 W keeps the battery idle with its relay engaged" (HBC, peer survey)
FOLLOW_SETTLE_S = 8.0  # dead time + relay delay + ramp, with margin
FOLLOW_MIN_W = 100  # below this a miss is noise, not a fault
FOLLOW_FRACTION = 0.1  # delivering less than 10 % of the command counts as a miss
CUTOFF_MARGIN_PCT = 10.0  # firmware cut-offs may sit this far inside the configured limits
CUTOFF_CYCLES = 5  # cycles without delivery (relay, dead time and ramp have passed)
COUNT_HYSTERESIS_W = 5.0  # change the number of active batteries only to save this much loss


@dataclass(slots=True)
class _BatteryTrack:
    """What the policy remembers about one battery between cycles."""

    spec: BatterySpec
    fsm: BatteryFsm
    command_w: int = 0
    command_since_s: float = 0.0
    misses: int = 0
    excluded_until_s: float = float("-inf")
    last_active_s: float = float("-inf")  # last time it carried real power
    last_direction: int = 0
    telemetry: BatteryTelemetry | None = None
    stalled_cycles: int = 0  # cycles in a row it delivered nothing near a SoC limit
    cutoff_direction: int = 0  # +1: stopped discharging at the bottom, -1: charging at the top
    cutoff_soc_pct: float = 0.0


@dataclass(slots=True)
class _Handover:
    outgoing: str
    incoming: str
    since_s: float


@dataclass(slots=True)
class _Memory:
    target_w: float = 0.0  # fleet setpoint, + discharge
    demand_w: float = 0.0  # the house's estimated demand less the grid target
    anticipating: bool = False  # the target includes a predicted edge
    last_direction: int = 0  # the direction the fleet last worked in (kept through idle)
    split: bool = False
    active_n: int = 0  # batteries sharing the demand while split
    split_w: dict[str, float] = field(default_factory=dict)  # last split (magnitudes)
    split_direction: int = 0
    handover: _Handover | None = None


def healthy(t: BatteryTelemetry) -> bool:
    """A battery may be commanded only when it answered with a plausible SoC and power."""
    return t.online and t.soc_pct is not None and t.power_w is not None


def charge_limit_w(spec: BatterySpec, soc_pct: float, settings: ControlSettings) -> float:
    """Charge power allowed at ``soc_pct``: tapered near full (battery care)."""
    limit = float(spec.max_charge_w)
    if soc_pct >= settings.taper_full_soc_pct:
        limit = min(limit, settings.taper_full_power_w)
    elif soc_pct >= settings.taper_soc_pct:
        limit = min(limit, settings.taper_power_w)
    return limit


class MmbcPolicy:
    """MMBC's own policy. Stateful between cycles, but pure: no I/O, no clock of its own."""

    name = "mmbc"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.period_s = settings.loop_period_s
        self.fleet = FleetFsm()
        self._tracks = {
            spec.name: _BatteryTrack(
                spec=spec,
                fsm=BatteryFsm(
                    spec.name, min_soc_pct=settings.min_soc_pct, max_soc_pct=settings.max_soc_pct
                ),
            )
            for spec in settings.batteries
        }
        self._history = PowerHistory()
        self._cadence = MeterCadence()
        self._filter = NetDemandFilter(
            step_threshold_w=settings.step_threshold_w,
            alpha=settings.noise_alpha if settings.feature_noise_filter else 1.0,
            feedforward=settings.feature_step_feedforward,
            damping=settings.feature_oscillation_damping,
        )
        self._quality = QualityMonitor()
        self._predictor = PulsePredictor(threshold_w=settings.step_threshold_w)
        self._response = ResponseTimer()
        self._mem = _Memory()
        self._last_cycle_s = float("-inf")

    # ------------------------------------------------------------------ the cycle
    def decide(self, snap: Snapshot) -> Plan:
        now = snap.now_s
        events: list[DecisionEvent] = []
        if now - self._last_cycle_s > 1.5 * self.period_s:
            # Cycles were skipped (the runtime failed safe and put every battery at 0 W):
            # the batteries do not hold what we last commanded and the power history has a
            # gap, so the follow check and the demand estimate start afresh.
            for t in self._tracks.values():
                t.command_w = 0
                t.command_since_s = now
            self._history = PowerHistory()
            self._filter.reset()
        self._last_cycle_s = now
        self._sync_batteries(snap, events)
        usable = [t for t in self._tracks.values() if t.fsm.available]
        parts = {t.spec.name: t.telemetry.power_w or 0.0 for t in usable if t.telemetry is not None}
        self._history.add(now, parts)
        self._response.observe(now, sum(parts.values()))
        new_reading = self._cadence.observe(snap.meter_updated_s)

        if snap.mode is Mode.SELFCONTROL:
            self._apply_mode(snap, events)
            for t in usable:
                t.fsm.follow(0)
                t.command_w = 0
            return self._plan({}, events, release=tuple(t.spec.name for t in usable))

        stale_limit = self._cadence.stale_limit_s(self.settings.stale_after_s)
        if (
            snap.grid_w is None
            or snap.meter_updated_s is None
            or now - snap.meter_updated_s > stale_limit
        ):
            return self._safe_hold(snap, usable, events, SafeHoldCause.METER_STALE)

        self._apply_mode(snap, events)
        if new_reading:
            self._quality.add(now, snap.grid_w - self.settings.grid_target_w)

        if self.fleet.state is FleetState.CHARGE:
            setpoints = self._force_charge(usable, now)
            return self._plan(setpoints, events)

        if new_reading:
            self._update_target(snap)
        self._anticipate(now, usable)
        setpoints = self._allocate(now, usable, snap.discharge_blocked, events)
        return self._plan(setpoints, events)

    def _apply_mode(self, snap: Snapshot, events: list[DecisionEvent]) -> None:
        was_safe = self.fleet.state is FleetState.SAFE_HOLD
        self.fleet.apply_mode(snap.mode, discharge_blocked=snap.discharge_blocked)
        if was_safe:
            events.append(SafeHoldLeft(SafeHoldCause.METER_STALE))

    # ------------------------------------------------------------------ health
    def _sync_batteries(self, snap: Snapshot, events: list[DecisionEvent]) -> None:
        now = snap.now_s
        seen = {t.name: t for t in snap.batteries}
        for name, track in self._tracks.items():
            tel = seen.get(name)
            track.telemetry = tel
            fsm = track.fsm
            fsm.discharge_blocked = snap.discharge_blocked or snap.mode is Mode.HOLD
            if tel is None or not healthy(tel):
                if fsm.available:
                    fsm.lose()
                    events.append(BatteryLost(name))
                track.command_w = 0
                track.misses = 0
                continue
            if not fsm.available:
                fsm.recover()
                events.append(BatteryReturned(name))
                track.command_w = 0
                track.command_since_s = now
            fsm.soc_pct = tel.soc_pct
            if track.excluded_until_s != float("-inf") and now >= track.excluded_until_s:
                track.excluded_until_s = float("-inf")
                events.append(ExclusionEnded(name))
            self._check_following(track, tel, now, events)
            self._check_cutoff(track, tel, events)

    def _check_following(
        self, track: _BatteryTrack, tel: BatteryTelemetry, now: float, events: list[DecisionEvent]
    ) -> None:
        """Battery acknowledges but does not deliver: exclude it for a while (logged once)."""
        cmd = track.command_w
        if now < track.excluded_until_s:
            return  # already excluded: counted (and logged) once
        if abs(cmd) < FOLLOW_MIN_W or now - track.command_since_s < FOLLOW_SETTLE_S:
            return
        soc = tel.soc_pct if tel.soc_pct is not None else 50.0
        # The firmware's own SoC cut-offs stop it near the limits: not a fault.
        if (cmd > 0 and soc <= self.settings.min_soc_pct + 2) or (
            cmd < 0 and soc >= self.settings.max_soc_pct - 2
        ):
            return
        delivered = (tel.power_w or 0.0) * (1 if cmd > 0 else -1)
        if delivered < FOLLOW_FRACTION * abs(cmd):
            track.misses += 1
            if track.misses >= self.settings.not_following_cycles:
                track.excluded_until_s = now + self.settings.not_following_exclude_s
                track.misses = 0
                events.append(
                    Excluded(track.spec.name, track.excluded_until_s, tel.power_w or 0.0, cmd)
                )
        else:
            track.misses = 0

    def _check_cutoff(
        self, track: _BatteryTrack, tel: BatteryTelemetry, events: list[DecisionEvent]
    ) -> None:
        """Near a SoC limit, a battery that delivers nothing has reached its firmware cut-off.

        The firmware's own cut-off (e.g. 12 % or an older unit's 20 %) need not match the
        configured limits; the integer SoC cannot tell either. Such a battery is left out of
        that direction until its SoC has moved, so the others carry its share at once.
        """
        soc = tel.soc_pct if tel.soc_pct is not None else 50.0
        if track.cutoff_direction and (
            abs(soc - track.cutoff_soc_pct) >= 1.0 or track.cutoff_direction != track.last_direction
        ):
            track.cutoff_direction = 0
            events.append(CutoffCleared(track.spec.name))
        cmd = track.command_w
        direction = 1 if cmd > 0 else -1 if cmd < 0 else 0
        near_limit = (direction > 0 and soc <= self.settings.min_soc_pct + CUTOFF_MARGIN_PCT) or (
            direction < 0 and soc >= self.settings.max_soc_pct - CUTOFF_MARGIN_PCT
        )
        delivered = (tel.power_w or 0.0) * direction
        if near_limit and abs(cmd) > KEEPALIVE_W and delivered < FOLLOW_FRACTION * abs(cmd):
            track.stalled_cycles += 1
            if track.stalled_cycles >= CUTOFF_CYCLES:
                track.cutoff_direction = direction
                track.cutoff_soc_pct = soc
                track.stalled_cycles = 0
                events.append(CutoffReached(track.spec.name, Direction(direction), soc))
        else:
            track.stalled_cycles = 0

    # ------------------------------------------------------------------ safety
    def _safe_hold(
        self,
        snap: Snapshot,
        usable: list[_BatteryTrack],
        events: list[DecisionEvent],
        cause: SafeHoldCause,
    ) -> Plan:
        if self.fleet.state is not FleetState.SAFE_HOLD:
            events.append(SafeHoldEntered(cause))
        self.fleet.enter_safe_hold()
        self._filter.reset()
        self._predictor.forget()
        self._mem.target_w = 0.0
        self._mem.demand_w = 0.0
        self._end_handover(events, completed=False)
        setpoints: dict[str, int] = {}
        for t in usable:
            t.fsm.follow(0)
            self._set_command(t, 0, snap.now_s)
            setpoints[t.spec.name] = 0
        return self._plan(setpoints, events, safe=True)

    def _force_charge(self, usable: list[_BatteryTrack], now: float) -> dict[str, int]:
        setpoints: dict[str, int] = {}
        for t in usable:
            if now < t.excluded_until_s:  # does not follow: not counted on in charge mode either
                setpoints[t.spec.name] = t.fsm.follow(0, reason="ineligible")
                self._set_command(t, 0, now)
                continue
            soc = t.fsm.soc_pct if t.fsm.soc_pct is not None else 100.0
            want = -round(charge_limit_w(t.spec, soc, self.settings))
            setpoints[t.spec.name] = t.fsm.follow(want)
            # The follow check compares delivery with this command, not an older one.
            self._set_command(t, setpoints[t.spec.name], now)
        return setpoints

    # ------------------------------------------------------------------ control law
    def _update_target(self, snap: Snapshot) -> None:
        """New meter reading: re-estimate the house's demand at the instant it describes."""
        assert snap.grid_w is not None
        assert snap.meter_updated_s is not None
        s = self.settings
        seen_s = snap.meter_updated_s
        if not s.feature_latency_alignment:
            lo = hi = self._history.latest_w()
        elif s.feature_response_window:
            # The reading describes an instant between (seen - latency - one poll period)
            # and when it was seen: the batteries' power then lies within these bounds.
            lo, hi = self._history.bounds(seen_s - s.meter_latency_s - self.period_s, seen_s)
        else:
            lo = hi = self._history.at(seen_s - s.meter_latency_s - 0.5 * self.period_s)
        est = self._filter.update(snap.now_s, snap.grid_w + lo, snap.grid_w + hi)
        demand = est - s.grid_target_w
        mem = self._mem
        if (
            not s.feature_min_change
            or abs(demand - mem.demand_w) >= s.min_change_w
            or (demand != 0 and mem.demand_w == 0)
        ):
            if abs(demand - mem.demand_w) >= s.step_threshold_w and not mem.anticipating:
                fleet_w = self._history.latest_w()
                self._response.start(snap.now_s, fleet_w, fleet_w + demand - mem.demand_w)
            mem.demand_w = demand
        if s.feature_pulse_prediction:
            self._predictor.observe(
                seen_s - s.meter_latency_s,
                est,
                narrow=hi - lo <= 0.5 * s.step_threshold_w,
                grid_w=snap.grid_w,
                interval_s=self._cadence.typical_interval_s(),
                lead_s=self._response.lead_s,
            )

    def _anticipate(self, now: float, usable: list[_BatteryTrack]) -> None:
        """The fleet's target: the demand, or a rhythmic load's next level ahead of time.

        Only while the fleet can carry both levels of the rhythm: anticipating an edge it
        cannot follow would only turn import into export.
        """
        mem = self._mem
        s = self.settings
        predicted = None
        if s.feature_pulse_prediction and self._predictor.active:
            predicted = self._predictor.target_w(now, self._response.lead_s)
            for level in self._predictor.levels_w():
                need = level - s.grid_target_w
                direction = 1 if need > 0 else -1
                room = sum(c.limit_w for c in self._candidates(now, usable, direction))
                if abs(need) > room:
                    predicted = None
        mem.anticipating = predicted is not None
        self._filter.damping_enabled = (
            self.settings.feature_oscillation_damping and not mem.anticipating
        )
        if predicted is None:
            mem.target_w = mem.demand_w
        else:
            mem.target_w = predicted - self.settings.grid_target_w

    def _direction(self, target: float) -> int:
        """The fleet's direction: idle inside the idle band; a reversal needs a clear demand."""
        s = self.settings
        band = s.idle_band_w
        want = 1 if target > band else -1 if target < -band else 0
        last = self._mem.last_direction
        if (
            s.feature_direction_hysteresis
            and want
            and last
            and want != last
            and abs(target) <= band + s.deadband_w
        ):
            # Charging <-> discharging on a few watts is noise: rest instead of reversing.
            return 0
        return want

    def _allocate(
        self, now: float, usable: list[_BatteryTrack], blocked: bool, events: list[DecisionEvent]
    ) -> dict[str, int]:
        s = self.settings
        mem = self._mem
        target = mem.target_w
        direction = self._direction(target)
        if direction > 0 and (blocked or self.fleet.state is FleetState.HOLD):
            direction = 0
        candidates = self._candidates(now, usable, direction) if direction else []
        if direction and not candidates:
            direction = 0

        setpoints: dict[str, float] = {}
        wake: str | None = None
        if direction:
            magnitude = abs(target)
            if direction < 0 and s.feature_charge_taper:
                candidates = self._relax_taper(candidates, magnitude)
            order = self._select(now, candidates, direction, events)
            by_name = {c.name: c for c in candidates}
            ordered = [by_name[n] for n in order]
            threshold = s.split_threshold_w
            if mem.split and s.feature_split_hysteresis:
                threshold -= s.split_hysteresis_w
            mem.split = magnitude > threshold and len(ordered) > 1
            if mem.split:
                self._end_handover(events, completed=False)
                members = self._active_members(magnitude, ordered, direction)
                setpoints = self._split(magnitude, members, direction)
            else:
                mem.active_n = 1
                mem.split_w = {}
                ordered, wake = self._handover(now, ordered, events)
                setpoints = fill_in_order(magnitude, ordered)
            setpoints = {n: direction * p for n, p in setpoints.items()}
            mem.last_direction = direction
        else:
            mem.split = False
            mem.split_w = {}
            self._end_handover(events, completed=False)

        wants_blocked_discharge = target > s.idle_band_w and (
            blocked or self.fleet.state is FleetState.HOLD
        )
        eligible = {c.name for c in candidates}
        out: dict[str, int] = {}
        for t in usable:
            name = t.spec.name
            want = round(setpoints.get(name, 0.0))
            reason: str | None = None
            if want != 0:
                t.last_active_s = now
                t.last_direction = 1 if want > 0 else -1
            elif wants_blocked_discharge:
                reason = "blocked"
            elif now < t.excluded_until_s or (direction and name not in eligible):
                reason = "ineligible"
            elif name == wake:
                want = KEEPALIVE_W * direction  # engage its relay before it takes over
            else:
                want = self._keepalive(t, now, direction, blocked)
            allowed = t.fsm.follow(want, reason=reason)
            self._set_command(t, allowed, now)
            out[name] = allowed
        return out

    def _candidates(
        self, now: float, usable: list[_BatteryTrack], direction: int
    ) -> list[Candidate]:
        s = self.settings
        out = []
        for t in usable:
            soc = t.fsm.soc_pct
            if soc is None or now < t.excluded_until_s:
                continue
            wh_per_pct = t.spec.capacity_wh / 100.0
            if t.cutoff_direction == direction and s.feature_cutoff_detection:
                continue  # at its firmware cut-off in this direction
            if direction > 0 and soc > s.min_soc_pct:
                limit = float(t.spec.max_discharge_w)
                out.append(Candidate(t.spec.name, soc, limit, (soc - s.min_soc_pct) * wh_per_pct))
            elif direction < 0 and soc < s.max_soc_pct:
                limit = (
                    charge_limit_w(t.spec, soc, s)
                    if s.feature_charge_taper
                    else float(t.spec.max_charge_w)
                )
                out.append(Candidate(t.spec.name, soc, limit, (s.max_soc_pct - soc) * wh_per_pct))
        return out

    def _relax_taper(self, candidates: list[Candidate], magnitude: float) -> list[Candidate]:
        """The taper is care, not a cap on the house: it never makes the fleet export.

        When the surplus exceeds what the fleet takes at tapered power, the tapered batteries
        take more (each in proportion to what the taper withheld), up to their full limit.
        """
        tapered = sum(c.limit_w for c in candidates)
        if magnitude <= tapered:
            return candidates
        full = {c.name: float(self._tracks[c.name].spec.max_charge_w) for c in candidates}
        withheld = sum(full[c.name] - c.limit_w for c in candidates)
        if withheld <= 0:
            return candidates
        share = min(1.0, (magnitude - tapered) / withheld)
        return [
            replace(c, limit_w=c.limit_w + share * (full[c.name] - c.limit_w)) for c in candidates
        ]

    def _select(
        self, now: float, candidates: list[Candidate], direction: int, events: list[DecisionEvent]
    ) -> tuple[str, ...]:
        """The leader order, cached for ``reselect_interval_s`` (product rule)."""
        s = self.settings
        sel = self.fleet.selection
        names = {c.name for c in candidates}
        due = (
            sel.direction != direction
            or now - sel.chosen_s >= s.reselect_interval_s
            or not sel.order
            or sel.order[0] not in names
        )
        if not due:
            kept = tuple(n for n in sel.order if n in names)
            missing = tuple(n for n in priority_order(candidates, direction) if n not in kept)
            return kept + missing
        fresh = priority_order(candidates, direction)
        if (
            s.feature_soc_hysteresis
            and sel.direction == direction
            and sel.order
            and sel.order[0] in names
        ):
            # SoC hysteresis: keep the current leader unless another is clearly better.
            soc = {c.name: c.soc_pct for c in candidates}
            leader, best = sel.order[0], fresh[0]
            if direction * (soc[best] - soc[leader]) < s.soc_hysteresis_pct:
                fresh = (leader, *tuple(n for n in fresh if n != leader))
        if sel.order and fresh[0] != sel.order[0] and sel.direction == direction:
            old = sel.order[0]
            if (
                s.feature_handover
                and old in names
                and abs(self._tracks[old].command_w) > KEEPALIVE_W
                and not self._engaged(fresh[0])
            ):
                self._end_handover(events, completed=False)
                self._mem.handover = _Handover(outgoing=old, incoming=fresh[0], since_s=now)
                events.append(HandoverStarted(old, fresh[0]))
            events.append(LeaderChanged(old, fresh[0], Direction(direction)))
        sel.direction = direction
        sel.order = fresh
        sel.chosen_s = now
        return fresh

    def _engaged(self, name: str) -> bool:
        """The battery's relay is closed: it reports power (keep-alive or real)."""
        tel = self._tracks[name].telemetry
        return tel is not None and tel.power_w is not None and abs(tel.power_w) >= KEEPALIVE_W

    def _end_handover(self, events: list[DecisionEvent], *, completed: bool) -> None:
        ho = self._mem.handover
        if ho is not None:
            self._mem.handover = None
            events.append(HandoverEnded(ho.outgoing, ho.incoming, completed=completed))

    def _handover(
        self, now: float, ordered: list[Candidate], events: list[DecisionEvent]
    ) -> tuple[list[Candidate], str | None]:
        """Make-before-break: the outgoing leader carries on until the incoming one is ready.

        A battery in standby needs its relay to close before it delivers anything; the two
        batteries respond alike once it has. So the incoming leader is woken with the 1 W
        keep-alive while the outgoing one carries the demand, and the two swap in one cycle
        once the incoming one reports power: no gap, and no overlap of both at full power.
        """
        ho = self._mem.handover
        if ho is None:
            return ordered, None
        names = [c.name for c in ordered]
        if (
            ho.outgoing not in names
            or ho.incoming not in names
            or names[0] != ho.incoming
            or self._engaged(ho.incoming)
            or now - ho.since_s > self.settings.handover_timeout_s
        ):
            self._end_handover(events, completed=self._engaged(ho.incoming))
            return ordered, None
        outgoing = next(c for c in ordered if c.name == ho.outgoing)
        return [outgoing, *(c for c in ordered if c.name != ho.outgoing)], ho.incoming

    def _active_members(
        self, magnitude: float, ordered: list[Candidate], direction: int
    ) -> list[Candidate]:
        """How many batteries share a demand above the split threshold, and which.

        All eligible ones, unless the measured efficiency curve says fewer lose less (small
        shares run at poor efficiency); the count changes only for a clear gain (hysteresis).
        """
        mem = self._mem
        if not self.settings.feature_efficient_count or len(ordered) <= 2:
            mem.active_n = len(ordered)
            return ordered
        need = 2
        while need < len(ordered) and sum(c.limit_w for c in ordered[:need]) < magnitude:
            need += 1
        total = len(ordered)
        losses = {
            n: fleet_loss_w(magnitude, n, total, charging=direction < 0)
            for n in range(need, total + 1)
        }
        best = min(losses, key=lambda n: (losses[n], -n))
        keep = mem.active_n
        if keep in losses and losses[keep] - losses[best] < COUNT_HYSTERESIS_W:
            best = keep
        mem.active_n = best
        return ordered[:best]

    def _split(
        self, magnitude: float, members: list[Candidate], direction: int
    ) -> dict[str, float]:
        """Split over ``members``; a small change goes to one battery (the most off-balance)."""
        s = self.settings
        mem = self._mem
        ideal = split_proportional(
            magnitude, members, by_energy=s.feature_energy_split and direction < 0
        )
        prev = mem.split_w
        names = {c.name for c in members}
        if s.feature_small_correction and set(prev) == names and mem.split_direction == direction:
            delta = magnitude - sum(prev.values())
            if abs(delta) <= s.small_correction_w:
                sign = 1.0 if delta >= 0 else -1.0
                pick = max(members, key=lambda c: (sign * (ideal[c.name] - prev[c.name]), c.name))
                moved = prev[pick.name] + delta
                out = dict(prev)
                out[pick.name] = moved
                drift = max(abs(out[n] - ideal[n]) for n in names)
                if 0.0 <= moved <= pick.limit_w and drift <= 2 * s.small_correction_w:
                    mem.split_w = out
                    return out
        mem.split_w = ideal
        mem.split_direction = direction
        return ideal

    def _keepalive(self, t: _BatteryTrack, now: float, direction: int, blocked: bool) -> int:
        """1 W in the last direction keeps the relay engaged through a short idle gap."""
        if not self.settings.feature_relay_keepalive:
            return 0
        if now - t.last_active_s > self.settings.relay_hold_s or t.last_direction == 0:
            return 0
        if direction and direction != t.last_direction:
            return 0  # the fleet reversed: this battery rests for real
        if t.last_direction > 0 and blocked:
            return 0
        return KEEPALIVE_W * t.last_direction

    def _set_command(self, t: _BatteryTrack, power_w: int, now: float) -> None:
        if power_w != t.command_w:
            # The follow check waits FOLLOW_SETTLE_S after a fresh start: a new direction, or
            # a command the old level would not count as following. A mere change of level
            # must not restart it, or a dead battery under a changing load is never excluded.
            if (power_w > 0) != (t.command_w > 0) or abs(t.command_w) < max(
                FOLLOW_MIN_W, FOLLOW_FRACTION * abs(power_w)
            ):
                t.command_since_s = now
            t.command_w = power_w

    # ------------------------------------------------------------------ output
    def _plan(
        self,
        setpoints: dict[str, int],
        events: list[DecisionEvent],
        *,
        safe: bool = False,
        release: tuple[str, ...] = (),
    ) -> Plan:
        limited = self._limited()
        if safe:
            quality = Quality.SAFE_HOLD
        elif self.fleet.state is FleetState.SELFCONTROL:
            quality = Quality.IDLE
        else:
            quality = self._quality.verdict(limited=limited)
        return Plan(
            setpoints=setpoints,
            fleet_state=self.fleet.state,
            battery_states={n: t.fsm.state for n, t in self._tracks.items()},
            events=tuple(events),
            safe_hold=safe,
            release=release,
            quality=quality.value,
            grid_rms_w=self._quality.rms_w(),
            extra={"target_w": self._mem.target_w},
        )

    def _limited(self) -> bool:
        """True when the fleet cannot deliver what the house needs (full, empty, at max)."""
        target = self._mem.target_w
        if abs(target) <= self.settings.idle_band_w:
            return False
        active = [
            t
            for t in self._tracks.values()
            if t.fsm.state in (BatteryState.CHARGING, BatteryState.DISCHARGING)
        ]
        capacity = sum(
            t.spec.max_discharge_w if target > 0 else t.spec.max_charge_w for t in active
        )
        return not active or abs(target) > capacity
