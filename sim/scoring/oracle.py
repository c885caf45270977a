"""The ideal reference ("oracle"): one aggregate battery that follows the true demand instantly.

What it models (docs/scoring.md, "The reference"):

- Capacity, charge and discharge limits are the sums over the batteries; the usable energy lies
  between the summed firmware cut-off energies (``capacity_wh * charge_cutoff_pct / 100`` and
  ``capacity_wh * discharge_cutoff_pct / 100``); it starts with the summed stored energy.
- It sees the true ``net_w`` (no meter delay, noise or deadband), reacts within the same step,
  draws no standby power and never discharges while discharge is blocked.
- Each step: ``battery_ac_w = clamp(net_w, -max_charge, +max_discharge)``, then limited so the
  step ends exactly at the energy limit when the stored energy would not suffice (energy is
  conserved: the power is limited, the stored energy is never clamped afterwards).
- Efficiency: an equal split of the AC power across *all* n batteries (each runs ``P / n`` on
  its own curve), even when some real battery would be at its cut-off. This keeps the reference
  simple and slightly optimistic at low power; a policy that dispatches better than an equal
  split can legitimately beat it.

Conventions: AC power + = discharging (engine convention); DC power + = energy leaving the store.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.plant.params import BatteryParams
    from sim.plant.record import RunRecord

EfficiencyCurve = Sequence[tuple[float, float]]

_SECONDS_PER_HOUR = 3600.0
# Iteration cap when inverting a heterogeneous discharge curve; bisection alone would reach
# 2**-60 of a segment, far below any meaningful watt.
_MAX_ITERATIONS = 60


class ScoringInputError(ValueError):
    """Input to the oracle or the scoring is unusable (lengths differ, non-finite values, ...)."""


def interpolate_efficiency(curve: EfficiencyCurve, ac_w: float) -> float:
    """Efficiency (0..1] at AC power ``|ac_w|`` from ``(ac_w, efficiency)`` points.

    Linear between the points, held constant below the first and above the last point. The sign
    of ``ac_w`` is ignored, so callers may pass a signed battery power. Points must be sorted by
    power (``validate_efficiency_curve`` checks); this function is on hot paths and only rejects
    an empty curve. The battery model should use this same function so the plant and the
    reference share one interpolation.
    """
    if not curve:
        raise ScoringInputError("efficiency curve is empty")
    p_w = abs(ac_w)
    first_w, first_eff = curve[0]
    if p_w <= first_w:
        return first_eff
    for (p0_w, e0), (p1_w, e1) in pairwise(curve):
        if p_w <= p1_w:
            return e0 + (e1 - e0) * (p_w - p0_w) / (p1_w - p0_w)
    return curve[-1][1]


def validate_efficiency_curve(curve: EfficiencyCurve, *, name: str = "efficiency") -> None:
    """Raise ``ScoringInputError`` unless powers are finite, > 0 and strictly increasing and every
    efficiency is in (0, 1] (an efficiency above 1 would create energy)."""
    if not curve:
        raise ScoringInputError(f"{name}: curve is empty")
    prev_w = 0.0
    for p_w, eff in curve:
        if not (math.isfinite(p_w) and math.isfinite(eff)):
            raise ScoringInputError(f"{name}: non-finite point ({p_w}, {eff})")
        if p_w <= prev_w:
            raise ScoringInputError(f"{name}: powers must be > 0 and strictly increasing")
        if not 0.0 < eff <= 1.0:
            raise ScoringInputError(f"{name}: efficiency {eff} outside (0, 1]")
        prev_w = p_w


class _SideModel:
    """Total DC power of n batteries all running the same per-battery AC power, and its inverse.

    Between consecutive breakpoints (the union of every curve's powers) each battery's efficiency
    is linear, ``a + b * p``, so the total DC power has a closed form per segment:
    charging ``p * sum(a + b p)`` (DC stored), discharging ``sum(p / (a + b p))`` (DC drawn).
    """

    def __init__(self, curves: Sequence[EfficiencyCurve], *, charging: bool) -> None:
        self._charging = charging
        self._breaks_w: list[float] = sorted({p_w for curve in curves for p_w, _ in curve})
        # Segment s spans [breaks[s-1], breaks[s]]; segment 0 starts at 0, the last is open.
        bounds = [0.0, *self._breaks_w, self._breaks_w[-1] + 1.0]
        self._lows_w: list[float] = bounds[:-1]
        self._highs_w: list[float] = bounds[1:]
        # Charging: per segment (sum a, sum b). Discharging: per segment [(count, a, b), ...].
        self._charge_coefs: list[tuple[float, float]] = []
        self._discharge_coefs: list[list[tuple[int, float, float]]] = []
        for lo_w, hi_w in zip(self._lows_w, self._highs_w, strict=True):
            lines: dict[tuple[float, float], int] = {}
            for curve in curves:
                e_lo = interpolate_efficiency(curve, lo_w)
                e_hi = interpolate_efficiency(curve, hi_w)
                slope = (e_hi - e_lo) / (hi_w - lo_w)
                key = (e_lo - slope * lo_w, slope)
                lines[key] = lines.get(key, 0) + 1
            self._charge_coefs.append(
                (
                    sum(a * c for (a, _), c in lines.items()),
                    sum(b * c for (_, b), c in lines.items()),
                )
            )
            self._discharge_coefs.append([(c, a, b) for (a, b), c in lines.items()])
        # Total DC power at each breakpoint, to find the segment of a DC target by bisection.
        self._breaks_dc_w = [self.dc_w(p_w) for p_w in self._breaks_w]
        prev_dc_w = 0.0
        for dc_w in self._breaks_dc_w:
            if dc_w <= prev_dc_w:
                raise ScoringInputError(
                    "efficiency curves make DC power non-increasing in AC power"
                )
            prev_dc_w = dc_w

    def dc_w(self, p_w: float) -> float:
        """Total DC power when each battery runs AC power ``p_w`` (>= 0)."""
        seg = bisect_right(self._breaks_w, p_w)
        if self._charging:
            a, b = self._charge_coefs[seg]
            return p_w * (a + b * p_w)
        total_w = 0.0
        for count, a, b in self._discharge_coefs[seg]:
            total_w += count * p_w / (a + b * p_w)
        return total_w

    def ac_for_dc_w(self, dc_w: float) -> float:
        """Per-battery AC power at which the total DC power equals ``dc_w`` (>= 0)."""
        if dc_w <= 0.0:
            return 0.0
        seg = bisect_right(self._breaks_dc_w, dc_w)
        if self._charging:
            a, b = self._charge_coefs[seg]
            # b p^2 + a p - dc = 0, in the form that stays exact when b -> 0.
            return 2.0 * dc_w / (a + math.sqrt(max(0.0, a * a + 4.0 * b * dc_w)))
        lines = self._discharge_coefs[seg]
        if len(lines) == 1:
            count, a, b = lines[0]
            # dc = count p / (a + b p)  =>  p = dc a / (count - dc b)
            return dc_w * a / (count - dc_w * b)
        # Different curves: no closed form. Newton inside the segment, kept in a shrinking
        # bracket (falls back to bisection); only steps that hit the energy floor get here.
        lo_w = self._lows_w[seg]
        hi_w = self._highs_w[seg]
        while self.dc_w(hi_w) < dc_w:  # the last segment is open-ended
            hi_w *= 2.0
        p_w = 0.5 * (lo_w + hi_w)
        for _ in range(_MAX_ITERATIONS):
            f_w = -dc_w
            slope = 0.0
            for count, a, b in lines:
                denom = a + b * p_w
                f_w += count * p_w / denom
                slope += count * a / (denom * denom)
            if abs(f_w) <= 1e-12 * dc_w:
                break
            if f_w < 0.0:
                lo_w = p_w
            else:
                hi_w = p_w
            step_w = p_w - f_w / slope if slope > 0.0 else -1.0
            p_w = step_w if lo_w < step_w < hi_w else 0.5 * (lo_w + hi_w)
        return p_w


@dataclass(frozen=True, slots=True)
class OracleResult:
    """The reference's run, one sample per input step.

    ``grid_w[i] = net_w[i] - battery_w[i]``; ``battery_w`` is the aggregate AC power
    (+ discharging); ``dc_w`` the DC power (+ leaving the store); ``energy_wh[i]`` the stored
    energy at the end of step i. ``conversion_loss_wh`` is the energy lost to the efficiency
    curve (no standby draw).
    """

    grid_w: array[float]
    battery_w: array[float]
    dc_w: array[float]
    energy_wh: array[float]
    capacity_wh: float
    start_energy_wh: float
    min_energy_wh: float
    max_energy_wh: float
    conversion_loss_wh: float


def _check_series(name: str, values: Sequence[float], n_steps: int) -> None:
    if len(values) != n_steps:
        raise ScoringInputError(f"{name}: {len(values)} samples, expected {n_steps}")
    # One C-speed pass: the sum of finite values is finite; a NaN or inf anywhere is not.
    if not math.isfinite(sum(values)):
        raise ScoringInputError(f"{name}: contains a non-finite value")


def _check_battery(index: int, params: BatteryParams, soc_pct: float) -> None:
    label = f"battery {index + 1}"
    if not (math.isfinite(soc_pct) and 0.0 <= soc_pct <= 100.0):
        raise ScoringInputError(f"{label}: start soc_pct {soc_pct} outside 0..100")
    for field_name in ("capacity_wh", "max_charge_w", "max_discharge_w"):
        value = getattr(params, field_name)
        if not (math.isfinite(value) and value >= 0.0):
            raise ScoringInputError(f"{label}: {field_name} {value} must be finite and >= 0")
    if params.capacity_wh <= 0.0:
        raise ScoringInputError(f"{label}: capacity_wh must be > 0")
    lo, hi = params.discharge_cutoff_pct, params.charge_cutoff_pct
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi <= 100.0):
        raise ScoringInputError(
            f"{label}: cut-offs must satisfy 0 <= discharge ({lo}) <= charge ({hi}) <= 100"
        )
    validate_efficiency_curve(params.charge_efficiency, name=f"{label} charge_efficiency")
    validate_efficiency_curve(params.discharge_efficiency, name=f"{label} discharge_efficiency")


def simulate_oracle(
    t_s: Sequence[float],
    dt_s: Sequence[float],
    net_w: Sequence[float],
    discharge_blocked: Sequence[int] | Sequence[bool],
    batteries: Sequence[tuple[BatteryParams, float]],
) -> OracleResult:
    """Run the ideal aggregate battery over the steps ``[t_s[i], t_s[i] + dt_s[i])``.

    ``batteries`` holds ``(params, start soc_pct)`` per battery. A start SoC outside the cut-offs
    is kept (not clamped): the reference then only moves back towards the usable range.
    Raises ``ScoringInputError`` on mismatched lengths, non-finite values, ``dt_s <= 0``, no
    batteries, or invalid battery parameters.
    """
    n_steps = len(t_s)
    _check_series("t_s", t_s, n_steps)
    _check_series("dt_s", dt_s, n_steps)
    _check_series("net_w", net_w, n_steps)
    if len(discharge_blocked) != n_steps:
        raise ScoringInputError(
            f"discharge_blocked: {len(discharge_blocked)} samples, expected {n_steps}"
        )
    if n_steps and min(dt_s) <= 0.0:
        raise ScoringInputError("dt_s: every step must be > 0 s")
    if not batteries:
        raise ScoringInputError("batteries: at least one battery is needed")
    for index, (params, soc_pct) in enumerate(batteries):
        _check_battery(index, params, soc_pct)

    n_batt = len(batteries)
    capacity_wh = sum(p.capacity_wh for p, _ in batteries)
    min_energy_wh = sum(p.capacity_wh * p.discharge_cutoff_pct / 100.0 for p, _ in batteries)
    max_energy_wh = sum(p.capacity_wh * p.charge_cutoff_pct / 100.0 for p, _ in batteries)
    start_energy_wh = sum(p.capacity_wh * soc / 100.0 for p, soc in batteries)
    max_charge_w = sum(p.max_charge_w for p, _ in batteries)
    max_discharge_w = sum(p.max_discharge_w for p, _ in batteries)
    charge = _SideModel([p.charge_efficiency for p, _ in batteries], charging=True)
    discharge = _SideModel([p.discharge_efficiency for p, _ in batteries], charging=False)
    charge_dc_w = charge.dc_w
    discharge_dc_w = discharge.dc_w

    grid_out: array[float] = array("d", bytes(8 * n_steps))
    battery_out: array[float] = array("d", bytes(8 * n_steps))
    dc_out: array[float] = array("d", bytes(8 * n_steps))
    energy_out: array[float] = array("d", bytes(8 * n_steps))
    energy_wh = start_energy_wh
    loss_wh = 0.0
    for i, (step_net_w, step_dt_s, blocked) in enumerate(
        zip(net_w, dt_s, discharge_blocked, strict=True)
    ):
        hours = step_dt_s / _SECONDS_PER_HOUR
        if step_net_w > 0.0 and not blocked:
            ac_w = min(step_net_w, max_discharge_w)
            dc_w = discharge_dc_w(ac_w / n_batt)
            headroom_wh = energy_wh - min_energy_wh
            if dc_w * hours <= headroom_wh:
                energy_wh -= dc_w * hours
            elif headroom_wh > 0.0:
                # End the step exactly at the floor: DC fixed by the energy left, AC from it.
                dc_w = headroom_wh / hours
                ac_w = n_batt * discharge.ac_for_dc_w(dc_w)
                energy_wh = min_energy_wh
            else:
                ac_w = dc_w = 0.0
            loss_wh += (dc_w - ac_w) * hours
            battery_out[i] = ac_w
            dc_out[i] = dc_w
        elif step_net_w < 0.0:
            ac_w = min(-step_net_w, max_charge_w)
            dc_w = charge_dc_w(ac_w / n_batt)
            room_wh = max_energy_wh - energy_wh
            if dc_w * hours <= room_wh:
                energy_wh += dc_w * hours
            elif room_wh > 0.0:
                dc_w = room_wh / hours
                ac_w = n_batt * charge.ac_for_dc_w(dc_w)
                energy_wh = max_energy_wh
            else:
                ac_w = dc_w = 0.0
            loss_wh += (ac_w - dc_w) * hours
            battery_out[i] = -ac_w
            dc_out[i] = -dc_w
        grid_out[i] = step_net_w - battery_out[i]
        energy_out[i] = energy_wh

    return OracleResult(
        grid_w=grid_out,
        battery_w=battery_out,
        dc_w=dc_out,
        energy_wh=energy_out,
        capacity_wh=capacity_wh,
        start_energy_wh=start_energy_wh,
        min_energy_wh=min_energy_wh,
        max_energy_wh=max_energy_wh,
        conversion_loss_wh=loss_wh,
    )


def oracle_for_record(
    record: RunRecord, batteries: Sequence[tuple[BatteryParams, float]]
) -> OracleResult:
    """``simulate_oracle`` over a run's own steps, demand and discharge-block schedule."""
    return simulate_oracle(
        record.t_s, record.dt_s, record.net_w, record.discharge_blocked, batteries
    )
