"""The control law's memory: what the house needs, estimated from the meter and the batteries.

Each new meter reading moves the estimate of the house's net demand at the instant the reading
describes (``engine.core.estimator``); between readings the target stays, unless a rhythmic
load is anticipated. The fleet's direction comes with hysteresis. How the target is split over
the batteries is the fleet's business (``engine.core.policy``, ``engine.core.allocate``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from engine.core.estimator import (
    FastLoadHold,
    FlickerFloor,
    MeterCadence,
    MeterNoise,
    NetDemandFilter,
    PowerHistory,
    PulsePredictor,
    ResponseTimer,
    proves_a_point,
)
from engine.core.events import Direction
from engine.core.model import Snapshot
from engine.core.settings import ControlSettings

# Looking up an enum member on its class costs a descriptor call; the per-cycle paths use
# these module constants instead (the same objects).
_NONE: Final = Direction.NONE
_CHARGE: Final = Direction.CHARGE
_DISCHARGE: Final = Direction.DISCHARGE


class DemandEstimator:
    """The fleet's target (+ discharge, W) and everything it is estimated from."""

    def __init__(self, settings: ControlSettings, period_s: float) -> None:
        self.settings = settings
        self.period_s = period_s
        self.history = PowerHistory()
        self.cadence = MeterCadence()
        self.filter = NetDemandFilter(
            step_threshold_w=settings.step_threshold_w,
            alpha=settings.noise_alpha if settings.feature_noise_filter else 1.0,
            feedforward=settings.feature_step_feedforward,
            damping=settings.feature_oscillation_damping,
        )
        self.predictor = PulsePredictor(threshold_w=settings.step_threshold_w)
        self.hold = FastLoadHold(
            threshold_w=settings.step_threshold_w, export_weight=settings.export_weight
        )
        self.response = ResponseTimer()
        self.noise = MeterNoise(threshold_w=settings.step_threshold_w)
        self.floor = FlickerFloor(
            threshold_w=settings.step_threshold_w,
            export_weight=settings.export_weight,
            noise=self.noise,
        )
        self.target_w = 0.0  # fleet setpoint, + discharge
        self.demand_w = 0.0  # the house's estimated demand less the grid target
        self.anticipating = False  # the target includes a predicted edge
        self.last_direction = Direction.NONE  # the fleet's last working direction
        self.reading_age_s = period_s  # how long the last reading may have waited for its poll

    # ------------------------------------------------------------------ inputs
    def restart(self) -> None:
        """Cycles were skipped: the power history has a gap, the filter starts afresh."""
        self.history = PowerHistory()
        self._forget_readings()

    def observe_batteries(self, now_s: float, parts: dict[str, float]) -> None:
        """The batteries' measured power (+ discharging) this cycle, by name (kept by the
        history: not to be changed afterwards)."""
        self.history.add(now_s, parts)
        if self.response.timing:  # else it has no use for the fleet's power
            self.response.observe(now_s, sum(parts.values()))

    def new_reading(self, meter_updated_s: float | None) -> bool:
        """Whether the meter's reading changed since the last cycle (and learn its cadence)."""
        return self.cadence.observe(meter_updated_s)

    def stale_limit_s(self) -> float:
        return self.cadence.stale_limit_s(self.settings.stale_after_s)

    def hold_at_zero(self) -> None:
        """Every battery at 0 W (safe hold): forget the estimate, start afresh after it."""
        self._forget_readings()
        self.predictor.forget()
        self.hold.forget()
        self.target_w = 0.0
        self.demand_w = 0.0

    def _forget_readings(self) -> None:
        """The readings before a gap say nothing of those after it (the learnt noise stays)."""
        self.filter.reset()
        self.floor.reset()
        self.noise.forget_last()

    # ------------------------------------------------------------------ the law
    def update(self, snap: Snapshot) -> None:
        """New meter reading: re-estimate the house's demand at the instant it describes."""
        assert snap.grid_w is not None
        assert snap.meter_updated_s is not None
        s = self.settings
        seen_s = snap.meter_updated_s
        if not s.feature_latency_alignment:
            lo = hi = self.history.latest_w()
        elif s.feature_response_window:
            # The reading describes an instant between (seen - latency - one poll period)
            # and when it was seen: the batteries' power then lies within these bounds.
            age_s = self.period_s if snap.reading_age_s is None else snap.reading_age_s
            self.reading_age_s = age_s
            lo, hi = self.history.bounds(seen_s - s.meter_latency_s - age_s, seen_s)
        else:
            lo = hi = self.history.at(seen_s - s.meter_latency_s - 0.5 * self.period_s)
        # What the reading proves of the demand, judged from the estimate before it (the
        # point itself while the batteries were steady): the meter's noise is learnt from it.
        lo_w, hi_w = snap.grid_w + lo, snap.grid_w + hi  # the demand, as the reading proves
        before = self.filter.value_w
        significant = None
        if before is not None:
            proved = min(max(before, lo_w), hi_w)
            self.noise.observe(snap.now_s, proved, hi - lo)
            if s.feature_learnt_noise and not self.floor.seen(proved):
                significant = self.noise.significant_change_w()
        est = self.filter.update(snap.now_s, lo_w, hi_w, significant_w=significant)
        level = est
        if s.feature_flicker_floor:
            # The floor sees what each reading proves of the demand, not the smoothed
            # estimate (smoothing lifts a flicker's low side towards its middle).
            point = min(max(est, lo_w), hi_w)
            level = self.floor.update(
                snap.now_s, point, est, 2.0 * self.loop_delay_s(), width_w=hi - lo
            )
        demand = level - s.grid_target_w
        if (
            not s.feature_min_change
            or abs(demand - self.demand_w) >= s.min_change_w
            or (demand != 0 and self.demand_w == 0)
        ):
            self.demand_w = demand
        if s.feature_fast_load_hold:
            self.hold.observe(seen_s - s.meter_latency_s, demand, self.loop_delay_s())
        if s.feature_pulse_prediction:
            self.predictor.observe(
                seen_s - s.meter_latency_s,
                est,
                narrow=proves_a_point(hi - lo, s.step_threshold_w),
                grid_w=snap.grid_w,
                interval_s=self.cadence.typical_interval_s(),
                lead_s=self.response.lead_s,
            )

    def anticipate(self, now_s: float, room_w: Callable[[Direction], float]) -> None:
        """The fleet's target: the demand, or a rhythmic load's next level ahead of time.

        Only while the fleet can carry both levels of the rhythm (``room_w``: what the
        batteries can give in a direction): anticipating an edge it cannot follow would
        only turn import into export.
        """
        s = self.settings
        predicted = None
        if s.feature_pulse_prediction and self.predictor.active:
            predicted = self.predictor.target_w(
                now_s,
                self.response.dead_s,
                self.response.ramp_w_per_s,
                cycle_s=self.period_s,
                export_weight=s.export_weight,
            )
            for level in self.predictor.levels_w():
                need = level - s.grid_target_w
                direction = Direction.DISCHARGE if need > 0 else Direction.CHARGE
                if abs(need) > room_w(direction):
                    predicted = None
        self.anticipating = predicted is not None
        self.filter.damping_enabled = s.feature_oscillation_damping and not self.anticipating
        before_w = self.target_w
        if predicted is not None:
            self.predictor.applied(now_s, predicted)
            self.target_w = predicted - s.grid_target_w
        else:
            if self.predictor.active:
                self.predictor.not_applied()
            if self.hold.active:
                self.target_w = self.hold.target_w(self.demand_w)
            else:
                self.target_w = self.demand_w
        if abs(self.target_w - before_w) >= s.step_threshold_w:
            # A large new setpoint: time how the batteries answer it (dead time, ramp).
            fleet_w = self.history.latest_w()
            self.response.start(now_s, fleet_w, fleet_w + self.target_w - before_w)

    def loop_delay_s(self) -> float:
        """From a load's change to the batteries matching it, as measured: the meter samples
        it (half its interval on average) and shows it after its latency, a poll sees it
        (half the poll's uncertainty), the batteries take their dead time and half their ramp
        (the response timer's lead)."""
        s = self.settings
        return (
            0.5 * self.cadence.typical_interval_s()
            + s.meter_latency_s
            + 0.5 * self.reading_age_s
            + self.response.lead_s
        )

    def direction(self, target_w: float | None = None) -> Direction:
        """The fleet's direction for ``target_w`` (default: the target): idle inside the idle
        band; a reversal needs a clear demand."""
        s = self.settings
        target = self.target_w if target_w is None else target_w
        band = s.idle_band_w
        want = _DISCHARGE if target > band else _CHARGE if target < -band else _NONE
        last = self.last_direction
        if (
            s.feature_direction_hysteresis
            and want is not _NONE
            and last is not _NONE
            and want is not last
            and abs(target) <= band + s.deadband_w
        ):
            # Charging <-> discharging on a few watts is noise: rest instead of reversing.
            return _NONE
        return want
