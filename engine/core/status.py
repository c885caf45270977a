"""The published state of the fleet, built purely from one cycle's snapshot and plan.

Signs follow ``engine.core.units`` (battery + = discharging). Conversion to the MQTT
conventions (battery + = charging) happens in ``engine.adapters.mqtt``, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from engine.core.events import MeterEvent, StatusEvent
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.settings import VENUS_E_CAPACITY_WH
from engine.core.states import BatteryState, FleetState

SAFE_HOLD_QUALITY = "safe_hold"


@dataclass(frozen=True, slots=True)
class BatteryStatus:
    """One battery as published. ``power_w``: + = discharging (engine convention)."""

    index: int  # 1-based position in the configured battery list: battery/<index>/...
    name: str
    soc_pct: float | None
    power_w: float | None
    state: BatteryState | None  # the battery machine's state; None: the core did not judge it
    online: bool
    setpoint_w: int | None = None  # what the plan commands (+ discharge); None: not commanded


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The whole fleet as published. ``None`` = unknown this cycle: nothing is published for it.

    ``battery_power_w``: + = discharging (engine convention); grid + = import.
    """

    soc_pct: float | None
    battery_power_w: float | None
    grid_w: float | None
    pv_w: float | None
    charge_total_wh: float | None
    discharge_total_wh: float | None
    discharge_blocked: bool
    mode: Mode
    batteries: tuple[BatteryStatus, ...]
    quality: str | None = None
    grid_rms_w: float | None = None
    fleet_state: FleetState | None = None
    now_s: float = 0.0  # the cycle's time on the engine's clock
    meter_age_s: float | None = None  # how old the meter's reading was when the cycle ran
    # What the cycle saw of the meter, then what the core decided, worth telling.
    events: tuple[StatusEvent, ...] = ()
    # Measured by the runtime (latency clock): the whole cycle, and from the meter's answer
    # to the last battery write.
    cycle_duration_s: float | None = None
    cycle_latency_s: float | None = None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _weight_wh(battery: BatteryTelemetry, capacities: Mapping[str, float]) -> float:
    """The SoC weight: configured capacity, else the reported one, else a Venus E's."""
    for candidate in (capacities.get(battery.name), battery.capacity_wh):
        if candidate is not None and math.isfinite(candidate) and candidate > 0:
            return candidate
    return VENUS_E_CAPACITY_WH


def fleet_soc_pct(
    batteries: tuple[BatteryTelemetry, ...], capacities: Mapping[str, float]
) -> float | None:
    """Capacity-weighted mean SoC of the online batteries that report a valid SoC."""
    total_wh = 0.0
    weighted = 0.0
    for battery in batteries:
        soc_pct = _finite(battery.soc_pct)
        if not battery.online or soc_pct is None or not 0.0 <= soc_pct <= 100.0:
            continue
        weight_wh = _weight_wh(battery, capacities)
        total_wh += weight_wh
        weighted += weight_wh * soc_pct
    if total_wh <= 0.0:
        return None
    return weighted / total_wh


def _fleet_power_w(batteries: tuple[BatteryTelemetry, ...]) -> float | None:
    measured = [
        power_w
        for battery in batteries
        if battery.online and (power_w := _finite(battery.power_w)) is not None
    ]
    return math.fsum(measured) if measured else None


def _fleet_total_wh(counters: list[float | None]) -> float | None:
    # A partial sum (one battery not read this cycle) would drop, and Home Assistant reads
    # a drop of a total_increasing sensor as a meter reset: publish only complete sums.
    if not counters or any(_finite(value) is None for value in counters):
        return None
    return math.fsum(value for value in counters if value is not None)


def build_status(
    snapshot: Snapshot,
    plan: Plan,
    capacities: Mapping[str, float],
    *,
    meter_events: tuple[MeterEvent, ...] = (),
    cycle_duration_s: float | None = None,
    cycle_latency_s: float | None = None,
) -> FleetStatus:
    """The state to publish after one cycle.

    - ``soc_pct``: capacity-weighted mean of the online batteries with a valid SoC
      (``capacities`` by battery name; falls back to the reported, then nominal capacity).
    - ``battery_power_w``: sum of the measured power of the online batteries (+ discharging).
    - totals: sums of the lifetime counters in Wh, ``None`` unless every battery reported one.
    - ``quality``: ``"safe_hold"`` while the plan holds safe, else the policy's verdict.
    - ``setpoint_w``: the plan's setpoint; ``None`` for a battery it releases or leaves out.
    - ``events``: ``meter_events`` (seen while reading), then the plan's.
    """
    batteries = tuple(
        BatteryStatus(
            index=position,
            name=battery.name,
            soc_pct=_finite(battery.soc_pct),
            power_w=_finite(battery.power_w) if battery.online else None,
            state=plan.battery_states.get(
                battery.name, None if battery.online else BatteryState.UNAVAILABLE
            ),
            online=battery.online,
            setpoint_w=None if battery.name in plan.release else plan.setpoints.get(battery.name),
        )
        for position, battery in enumerate(snapshot.batteries, start=1)
    )
    return FleetStatus(
        soc_pct=fleet_soc_pct(snapshot.batteries, capacities),
        battery_power_w=_fleet_power_w(snapshot.batteries),
        grid_w=_finite(snapshot.grid_w),
        pv_w=_finite(snapshot.pv_w),
        charge_total_wh=_fleet_total_wh([b.charge_total_wh for b in snapshot.batteries]),
        discharge_total_wh=_fleet_total_wh([b.discharge_total_wh for b in snapshot.batteries]),
        discharge_blocked=snapshot.discharge_blocked,
        mode=snapshot.mode,
        batteries=batteries,
        quality=SAFE_HOLD_QUALITY if plan.safe_hold else plan.quality,
        grid_rms_w=_finite(plan.grid_rms_w),
        fleet_state=plan.fleet_state,
        now_s=snapshot.now_s,
        # A reading that arrived during the cycle is fresh, not from the future.
        meter_age_s=None
        if snapshot.meter_updated_s is None
        else max(0.0, snapshot.now_s - snapshot.meter_updated_s),
        events=(*meter_events, *plan.events),
        cycle_duration_s=cycle_duration_s,
        cycle_latency_s=cycle_latency_s,
    )
