"""Physics of one simulated Marstek Venus E: stored energy, response dynamics, losses, cut-offs."""

from __future__ import annotations

import math
from collections import deque

from engine.core.allocate import efficiency
from sim.plant.params import BatteryParams

# Once the firmware has stopped charging at the cut-off it resumes only this far below it, so
# the standby draw cannot make the battery click between "full" and "charging" every few seconds.
CHARGE_RESUME_HYSTERESIS_PCT = 1.0

# Times closer than this are the same instant (accumulated float steps of the replay loop).
_TIME_EPS_S = 1e-6
# Bisection iterations to find when a ramp exhausts the available energy (rare path).
_BISECT_ITERATIONS = 48
_WS_PER_WH = 3600.0
# Marks a pending switch-off (reboot) in the command queue.
_SWITCH_OFF = math.nan


def _check_curve(name: str, curve: tuple[tuple[float, float], ...]) -> None:
    if not curve:
        raise ValueError(f"{name}: efficiency curve is empty")
    last_w = -math.inf
    for power_w, eta in curve:
        if not (math.isfinite(power_w) and power_w > last_w):
            raise ValueError(f"{name}: powers must be finite and strictly increasing")
        if not (math.isfinite(eta) and 0.0 < eta <= 1.0):
            raise ValueError(f"{name}: efficiency {eta!r} outside (0, 1]")
        last_w = power_w


def interpolate_efficiency(curve: tuple[tuple[float, float], ...], power_w: float) -> float:
    """Efficiency at AC power ``power_w`` (>= 0): linear between points, held at the ends."""
    return efficiency(curve, power_w)


class VenusE:
    """One battery: AC power + discharging / - charging, energy in Wh, time in s.

    The firmware layer commands a target with ``set_target``; the replay integrates with
    ``advance``. Response: after ``dead_time_s`` the output ramps at ``ramp_w_per_s`` towards
    the target; if the relay is open (standby: output settled at 0 W) an extra
    ``relay_delay_s`` passes before it moves. The firmware cut-offs make the battery itself
    deliver 0 W in the blocked direction. Energy is conserved by limiting power: a step that
    would overfill or overdrain ends the flow exactly at the limit.
    """

    def __init__(self, params: BatteryParams, soc_pct: float, name: str | None = None) -> None:
        if not (math.isfinite(params.capacity_wh) and params.capacity_wh > 0.0):
            raise ValueError("capacity_wh must be a positive number")
        for field_name in ("max_charge_w", "max_discharge_w", "standby_w", "dead_time_s"):
            value = getattr(params, field_name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{field_name} must be a finite number >= 0")
        if not (math.isfinite(params.relay_delay_s) and params.relay_delay_s >= 0.0):
            raise ValueError("relay_delay_s must be a finite number >= 0")
        if math.isnan(params.ramp_w_per_s) or params.ramp_w_per_s < 0.0:
            raise ValueError("ramp_w_per_s must be >= 0 (0 or inf: instant)")
        _check_curve("charge_efficiency", params.charge_efficiency)
        _check_curve("discharge_efficiency", params.discharge_efficiency)
        if not (math.isfinite(soc_pct) and 0.0 <= soc_pct <= 100.0):
            raise ValueError(f"soc_pct {soc_pct!r} outside 0..100")

        self.params = params
        self.name = name if name is not None else params.name
        self._capacity_wh = float(params.capacity_wh)
        self.stored_wh = self._capacity_wh * soc_pct / 100.0
        # Firmware cut-offs; the firmware layer may change them (registers 44000/44001).
        # Setting one also sets the stored energy it stops at (_ceiling_wh, _floor_wh).
        self.charge_cutoff_pct = float(params.charge_cutoff_pct)
        self.discharge_cutoff_pct = float(params.discharge_cutoff_pct)
        # Fault hook: the battery acknowledges commands but delivers 0 W.
        self.not_following = False

        # Lifetime counters (AC side unless named otherwise).
        self.charged_wh = 0.0
        self.discharged_wh = 0.0
        self.conversion_loss_wh = 0.0  # AC<->DC losses plus standby draw
        self.standby_loss_wh = 0.0  # the standby part of conversion_loss_wh
        self.throughput_wh = 0.0
        self.direction_changes = 0

        self._ramp = params.ramp_w_per_s if 0.0 < params.ramp_w_per_s < math.inf else math.inf
        self._charge_curve = params.charge_efficiency
        self._discharge_curve = params.discharge_efficiency
        self._charge_breaks = tuple(w for w, _ in params.charge_efficiency)
        self._discharge_breaks = tuple(w for w, _ in params.discharge_efficiency)
        self._t_s: float | None = None  # integrated up to here
        self._p_w = 0.0  # output at _t_s
        self._goal_w = 0.0  # the commanded target currently in effect (after the dead time)
        self._commanded_w = 0.0  # the latest commanded target (maybe still pending)
        self._pending: deque[tuple[float, float]] = deque()  # (effective at s, target W)
        self._relay_closed = False
        self._relay_ready_s: float | None = None  # relay closing: output may move from here
        self._last_sign = 0
        self._charge_blocked = self.stored_wh >= self._ceiling_wh
        # Cache of the DC draw at the last constant power (the common case is a held output).
        self._dc_cache_p_w = 0.0
        self._dc_cache_w = 0.0

    # ---------------------------------------------------------------- cut-offs
    @property
    def capacity_wh(self) -> float:
        """Usable capacity (fixed: the cut-offs' energies are derived from it)."""
        return self._capacity_wh

    @property
    def charge_cutoff_pct(self) -> float:
        """SoC at which the firmware stops charging (register 44000)."""
        return self._charge_cutoff_pct

    @charge_cutoff_pct.setter
    def charge_cutoff_pct(self, pct: float) -> None:
        self._charge_cutoff_pct = pct
        # Stored energy at the cut-off: kept with the cut-off, as it is read at every step.
        self._ceiling_wh = self._capacity_wh * min(pct, 100.0) / 100.0

    @property
    def discharge_cutoff_pct(self) -> float:
        """SoC at which the firmware stops discharging (register 44001)."""
        return self._discharge_cutoff_pct

    @discharge_cutoff_pct.setter
    def discharge_cutoff_pct(self, pct: float) -> None:
        self._discharge_cutoff_pct = pct
        self._floor_wh = self._capacity_wh * max(pct, 0.0) / 100.0  # (as _ceiling_wh)

    # ---------------------------------------------------------------- observation
    @property
    def soc_pct(self) -> float:
        """State of charge, exact."""
        return 100.0 * self.stored_wh / self._capacity_wh

    @property
    def ac_power_w(self) -> float:
        """Instantaneous AC output at the end of the last step (+ discharging)."""
        return self._p_w

    @property
    def dc_power_w(self) -> float:
        """Instantaneous DC power into the cells (+ charging, as register 32102)."""
        if self._p_w == 0.0:
            return -self.params.standby_w if self.stored_wh > 0.0 else 0.0
        return -self.dc_draw_w(self._p_w)

    @property
    def target_w(self) -> float:
        """The latest commanded target (+ discharge), possibly not yet in effect."""
        return self._commanded_w

    @property
    def time_s(self) -> float | None:
        """The instant the model has been integrated up to (None before the first step)."""
        return self._t_s

    @property
    def is_standby(self) -> bool:
        """Relay open: the next start pays the relay delay."""
        return not self._relay_closed

    @property
    def charge_blocked(self) -> bool:
        return self._charge_blocked

    @property
    def discharge_blocked(self) -> bool:
        return self.stored_wh <= self._floor_wh + 1e-9

    def dc_draw_w(self, ac_w: float) -> float:
        """DC power drawn from the cells at AC output ``ac_w`` (negative while charging)."""
        if ac_w > 0.0:
            return ac_w / interpolate_efficiency(self._discharge_curve, ac_w)
        if ac_w < 0.0:
            return ac_w * interpolate_efficiency(self._charge_curve, -ac_w)
        return 0.0

    # ---------------------------------------------------------------- commands
    def set_target(self, power_w: float, now_s: float) -> None:
        """Command ``power_w`` (+ discharge, - charge) at ``now_s``; it acts after the dead time."""
        if not math.isfinite(power_w):
            raise ValueError(f"target {power_w!r} is not a finite power")
        if not math.isfinite(now_s):
            raise ValueError(f"time {now_s!r} is not finite")
        power_w = float(power_w)
        if power_w == self._commanded_w:
            return
        self._commanded_w = power_w
        effective_s = now_s + self.params.dead_time_s
        if self._t_s is not None and effective_s < self._t_s:
            effective_s = self._t_s
        if self._pending and effective_s < self._pending[-1][0]:
            effective_s = self._pending[-1][0]
        self._pending.append((effective_s, power_w))

    def switch_off(self, now_s: float) -> None:
        """Inverter off at ``now_s`` (reboot): output 0 W at once, relay open, commands dropped."""
        self._commanded_w = 0.0
        if self._t_s is not None and now_s > self._t_s:
            # Later than the integrated time: commands due before then still act, then off.
            while self._pending and self._pending[-1][0] >= now_s:
                self._pending.pop()
            self._pending.append((now_s, _SWITCH_OFF))
            return
        self._pending.clear()
        self._off()

    def _off(self) -> None:
        self._goal_w = 0.0
        self._p_w = 0.0
        self._relay_closed = False
        self._relay_ready_s = None

    # ---------------------------------------------------------------- integration
    def advance(self, now_s: float, dt_s: float) -> float:
        """Integrate over [now_s, now_s + dt_s]; return the mean AC power (+ discharging)."""
        if not dt_s > 0.0:
            if dt_s == 0.0:
                return self._p_w
            raise ValueError(f"dt_s {dt_s!r} must be > 0")
        t_s = self._t_s
        if t_s is not None and now_s - t_s > _TIME_EPS_S:
            # A gap: keep the state consistent, but report only the requested window.
            self._integrate(t_s, now_s)
        elif t_s is not None and t_s - now_s > _TIME_EPS_S:
            raise ValueError(f"step starts at {now_s} but the model is already at {t_s}")
        return self._integrate(now_s, now_s + dt_s) / dt_s

    def _effective_goal(self) -> float:
        goal = self._goal_w
        if goal > 0.0:
            if self.not_following or self.stored_wh <= self._floor_wh + 1e-9:
                return 0.0
            return min(goal, self.params.max_discharge_w)
        if goal < 0.0:
            if self.not_following or self._charge_blocked:
                return 0.0
            return max(goal, -self.params.max_charge_w)
        return 0.0

    def _note_sign(self, p_w: float) -> None:
        sign = 1 if p_w > 0.0 else -1
        if sign != self._last_sign:
            if self._last_sign != 0:
                self.direction_changes += 1
            self._last_sign = sign

    def _integrate(self, t_s: float, t_end_s: float) -> float:
        """Integrate from ``t_s`` to ``t_end_s``; return the AC energy delivered in W*s."""
        ac_ws = 0.0
        pending = self._pending
        if not pending or pending[0][0] >= t_end_s:
            # Nothing due before the end (the common case): an output settled at zero or held
            # is the loop's first piece, taken here without the checks that cannot apply.
            p_w = self._p_w
            if p_w == 0.0 and self._goal_w == 0.0:
                if t_end_s - t_s > 1e-12:
                    if self._charge_blocked:  # (the test first: no call in the common case)
                        self._unblock_charge()
                    self._relay_closed = False
                    self._relay_ready_s = None
                    self._idle(t_end_s - t_s)
                    t_s = t_end_s
                self._t_s = t_s
                return ac_ws
            if (
                p_w != 0.0
                and self._relay_closed
                and not self._charge_blocked
                and t_end_s - t_s > 1e-12
                and p_w == self._effective_goal()
            ):
                # Holding its output: the loop's hold piece; what is left (a cut-off, or a
                # rounding remainder of the time) goes on in the loop.
                piece_ws, elapsed_s = self._hold(p_w, t_end_s - t_s)
                ac_ws += piece_ws
                t_s += elapsed_s
        while t_end_s - t_s > 1e-12:
            while pending and pending[0][0] <= t_s + 1e-12:
                goal_w = pending.popleft()[1]
                if math.isnan(goal_w):  # _SWITCH_OFF (set_target never queues NaN)
                    self._off()
                else:
                    self._goal_w = goal_w
            seg_end_s = pending[0][0] if pending and pending[0][0] < t_end_s else t_end_s
            if self._charge_blocked:
                self._unblock_charge()
            goal_w = self._effective_goal()
            p_w = self._p_w

            if goal_w != 0.0 and not self._relay_closed:
                if self._relay_ready_s is None:
                    self._relay_ready_s = t_s + self.params.relay_delay_s
                if self._relay_ready_s > t_s + 1e-12:
                    seg_end_s = min(seg_end_s, self._relay_ready_s)
                    self._idle(seg_end_s - t_s)
                    t_s = seg_end_s
                    continue
                self._relay_closed = True
                self._relay_ready_s = None
            elif goal_w == 0.0 and not self._relay_closed:
                self._relay_ready_s = None

            if p_w == goal_w:
                if p_w == 0.0:
                    # Settled at zero: the relay drops out, the battery idles.
                    self._relay_closed = False
                    self._idle(seg_end_s - t_s)
                    t_s = seg_end_s
                else:
                    piece_ws, elapsed_s = self._hold(p_w, seg_end_s - t_s)
                    ac_ws += piece_ws
                    t_s += elapsed_s
                continue

            # Ramp towards the goal; a reversal is split at 0 W so each piece has one sign.
            piece_goal_w = 0.0 if p_w * goal_w < 0.0 else goal_w
            # Split at the efficiency curve's points too: between them the curve is linear
            # and Simpson's rule is (nearly) exact.
            piece_goal_w = self._next_breakpoint(p_w, piece_goal_w)
            reach_s = t_s + abs(piece_goal_w - p_w) / self._ramp
            if reach_s - t_s <= 1e-12:
                self._p_w = piece_goal_w  # instant ramp (or a negligible remainder)
                if piece_goal_w != 0.0:
                    self._note_sign(piece_goal_w)
                continue
            if reach_s <= seg_end_s:
                seg_end_s = reach_s
                p_end_w = piece_goal_w
            else:
                slope = self._ramp if piece_goal_w > p_w else -self._ramp
                p_end_w = p_w + slope * (seg_end_s - t_s)
            piece_ws, elapsed_s = self._ramp_piece(p_w, p_end_w, seg_end_s - t_s)
            ac_ws += piece_ws
            t_s += elapsed_s
        self._t_s = t_s
        return ac_ws

    def _unblock_charge(self) -> None:
        if self._charge_blocked and self.stored_wh < self._ceiling_wh - (
            self._capacity_wh * CHARGE_RESUME_HYSTERESIS_PCT / 100.0
        ):
            self._charge_blocked = False

    def _next_breakpoint(self, p_w: float, goal_w: float) -> float:
        """The first efficiency-curve point passed on the way from ``p_w`` to ``goal_w``."""
        if p_w + goal_w > 0.0:
            sign, breaks = 1.0, self._discharge_breaks
        else:
            sign, breaks = -1.0, self._charge_breaks
        start_w, end_w = abs(p_w), abs(goal_w)
        if start_w < end_w:
            for point_w in breaks:
                if start_w < point_w < end_w:
                    return sign * point_w
        else:
            for point_w in reversed(breaks):
                if end_w < point_w < start_w:
                    return sign * point_w
        return goal_w

    def _idle(self, duration_s: float) -> None:
        draw_wh = self.params.standby_w * duration_s / _WS_PER_WH
        draw_wh = min(draw_wh, self.stored_wh)  # the draw stops when the cells are empty
        self.stored_wh -= draw_wh
        self.conversion_loss_wh += draw_wh
        self.standby_loss_wh += draw_wh

    def _hold(self, p_w: float, duration_s: float) -> tuple[float, float]:
        """Constant output ``p_w`` (non-zero) for up to ``duration_s``: (AC W*s, elapsed s)."""
        if p_w != self._dc_cache_p_w:
            self._dc_cache_p_w = p_w
            self._dc_cache_w = self.dc_draw_w(p_w)
        dc_w = self._dc_cache_w
        dc_wh = dc_w * duration_s / _WS_PER_WH
        if dc_w > 0.0:
            limit_wh = max(self.stored_wh - self._floor_wh, 0.0)
            if dc_wh >= limit_wh:
                elapsed_s = duration_s * limit_wh / dc_wh
                return self._cut_at_limit(p_w * elapsed_s, limit_wh, elapsed_s, charging=False)
        else:
            limit_wh = -max(self._ceiling_wh - self.stored_wh, 0.0)
            if dc_wh <= limit_wh:
                elapsed_s = duration_s * limit_wh / dc_wh
                return self._cut_at_limit(p_w * elapsed_s, limit_wh, elapsed_s, charging=True)
        return self._book(p_w * duration_s, dc_wh), duration_s

    def _ramp_energy_ws(self, p_a_w: float, p_b_w: float, duration_s: float) -> float:
        """DC energy drawn over a linear ramp (Simpson's rule on the efficiency curve)."""
        return (
            duration_s
            * (
                self.dc_draw_w(p_a_w)
                + 4.0 * self.dc_draw_w(0.5 * (p_a_w + p_b_w))
                + self.dc_draw_w(p_b_w)
            )
            / 6.0
        )

    def _ramp_piece(self, p_a_w: float, p_b_w: float, duration_s: float) -> tuple[float, float]:
        """Linear ramp from ``p_a_w`` to ``p_b_w`` (one sign or touching 0): (AC W*s, elapsed s)."""
        dc_wh = self._ramp_energy_ws(p_a_w, p_b_w, duration_s) / _WS_PER_WH
        if dc_wh > 0.0:
            limit_wh = max(self.stored_wh - self._floor_wh, 0.0)
            over = dc_wh >= limit_wh
        else:
            limit_wh = -max(self._ceiling_wh - self.stored_wh, 0.0)
            over = dc_wh <= limit_wh
        if not over:
            self._p_w = p_b_w
            if p_b_w != 0.0:
                self._note_sign(p_b_w)
            return self._book(0.5 * (p_a_w + p_b_w) * duration_s, dc_wh), duration_s
        # The limit falls inside the ramp: find when (the piece has one sign, so the DC energy
        # grows monotonically with time) and cut the output there.
        slope = (p_b_w - p_a_w) / duration_s
        lo_s, hi_s = 0.0, duration_s
        target_ws = limit_wh * _WS_PER_WH
        for _ in range(_BISECT_ITERATIONS):
            mid_s = 0.5 * (lo_s + hi_s)
            energy_ws = self._ramp_energy_ws(p_a_w, p_a_w + slope * mid_s, mid_s)
            if abs(energy_ws) < abs(target_ws):
                lo_s = mid_s
            else:
                hi_s = mid_s
        hit_s = lo_s
        p_hit_w = p_a_w + slope * hit_s
        if p_hit_w != 0.0:
            self._note_sign(p_hit_w)
        # Book exactly the energy that was available (the bisection residue is sub-mWh).
        return self._cut_at_limit(
            0.5 * (p_a_w + p_hit_w) * hit_s, limit_wh, hit_s, charging=p_a_w + p_b_w < 0.0
        )

    def _cut_at_limit(
        self, ac_ws: float, dc_wh: float, elapsed_s: float, *, charging: bool
    ) -> tuple[float, float]:
        """Book the last flow before a cut-off; the firmware stops the output at once."""
        self._book(ac_ws, dc_wh)
        if charging:
            self._charge_blocked = True
        self._p_w = 0.0
        return ac_ws, elapsed_s

    def _book(self, ac_ws: float, dc_wh: float) -> float:
        """Account AC energy ``ac_ws`` (+ out) with DC energy ``dc_wh`` (+ drawn from the cells)."""
        ac_wh = ac_ws / _WS_PER_WH
        self.stored_wh -= dc_wh
        if ac_wh > 0.0:
            self.discharged_wh += ac_wh
            self.throughput_wh += ac_wh
        else:
            self.charged_wh -= ac_wh
            self.throughput_wh -= ac_wh
        self.conversion_loss_wh += dc_wh - ac_wh
        return ac_ws
