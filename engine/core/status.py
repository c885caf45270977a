"""The published state of the fleet, built purely from one cycle's snapshot and plan.

Signs follow ``engine.core.units`` (battery + = discharging). Conversion to the MQTT
conventions (battery + = charging) happens in ``engine.adapters.mqtt``, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from engine.core.energy import EnergyTotals
from engine.core.events import MeterEvent, StatusEvent
from engine.core.model import BatteryIdentity, BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.settings import VENUS_E_CAPACITY_WH
from engine.core.states import BatteryState, FleetState

SAFE_HOLD_QUALITY = "safe_hold"
# The longest the core ever waits before calling a reading stale (its limit stretched for a
# slow meter): an older reading is never shown, whatever the mode.
METER_STALE_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class BatteryStatus:
    """One battery as published. ``power_w`` and ``current_a``: + = discharging (engine).

    ``index`` is the battery's configured number (``BATTERY_<n>_*``): ``battery/<index>/...``.
    ``available`` says whether its readings mean anything now (online, and not judged
    unavailable by the core); the values below are ``None`` when unknown.
    """

    index: int
    name: str
    soc_pct: float | None
    power_w: float | None
    state: BatteryState | None  # the battery machine's state; None: the core did not judge it
    online: bool
    identity: BatteryIdentity | None = None
    charge_total_wh: float | None = None  # the battery's own lifetime counters (33000/33002)
    discharge_total_wh: float | None = None
    stored_energy_wh: float | None = None  # SoC x capacity
    voltage_v: float | None = None
    current_a: float | None = None
    temperature_c: float | None = None
    alarms: tuple[str, ...] | None = None
    faults: tuple[str, ...] | None = None
    setpoint_w: int | None = None  # what the plan commands (+ discharge); None: not commanded

    @property
    def available(self) -> bool:
        return self.online and self.state is not BatteryState.UNAVAILABLE


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
    discharge_blocked: bool  # what the engine does: blocked by the user or by hold mode
    mode: Mode
    batteries: tuple[BatteryStatus, ...]
    quality: str | None = None
    grid_rms_w: float | None = None
    fleet_state: FleetState | None = None
    now_s: float = 0.0  # the cycle's time on the engine's clock
    meter_age_s: float | None = None  # how old the meter's reading was when the cycle ran
    # What the cycle saw of the meter, then what the core decided, worth telling.
    events: tuple[StatusEvent, ...] = ()
    # Whether grid_w (and grid_rms_w) is a fresh reading the core acted on; a stale or
    # missing one is published as unavailable, never as a value.
    meter_fresh: bool = True
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


def _stored_energy_wh(battery: BatteryTelemetry, capacities: Mapping[str, float]) -> float | None:
    soc_pct = _finite(battery.soc_pct)
    if soc_pct is None:
        return None
    return soc_pct / 100.0 * _weight_wh(battery, capacities)


def meter_is_fresh(
    snapshot: Snapshot, plan: Plan, *, stale_after_s: float = METER_STALE_AFTER_S
) -> bool:
    """Whether the grid reading may be shown as a value now.

    Not when there is none, when the core holds safe because it is stale, while starting,
    or (for modes that do not judge the meter, such as ``selfcontrol``) when it is older
    than ``stale_after_s``.
    """
    if _finite(snapshot.grid_w) is None or snapshot.meter_updated_s is None:
        return False
    if plan.fleet_state in (FleetState.SAFE_HOLD, FleetState.STARTING):
        return False
    return snapshot.now_s - snapshot.meter_updated_s <= stale_after_s


def build_status(
    snapshot: Snapshot,
    plan: Plan,
    capacities: Mapping[str, float],
    *,
    numbers: Mapping[str, int] | None = None,
    energy: EnergyTotals | None = None,
    meter_stale_after_s: float = METER_STALE_AFTER_S,
    meter_events: tuple[MeterEvent, ...] = (),
    cycle_duration_s: float | None = None,
    cycle_latency_s: float | None = None,
) -> FleetStatus:
    """The state to publish after one cycle.

    - ``numbers``: battery name -> configured number (``battery/<n>``); default: position.
    - ``soc_pct``: capacity-weighted mean of the online batteries with a valid SoC
      (``capacities`` by battery name; falls back to the reported, then nominal capacity).
    - ``battery_power_w``: sum of the measured power of the online batteries (+ discharging).
    - totals: ``energy`` (an ``EnergyLedger``'s, monotonic); unknown without one.
    - ``discharge_blocked``: blocked by the user or by hold mode (what the engine does).
    - ``meter_fresh``: see :func:`meter_is_fresh`.
    - ``quality``: ``"safe_hold"`` while the plan holds safe, else the policy's verdict.
    - ``setpoint_w``: the plan's setpoint; ``None`` for a battery it releases or leaves out.
    - ``events``: ``meter_events`` (seen while reading), then the plan's.
    """
    numbering = numbers or {}
    batteries = tuple(
        BatteryStatus(
            index=numbering.get(battery.name, position),
            name=battery.name,
            soc_pct=_finite(battery.soc_pct),
            power_w=_finite(battery.power_w) if battery.online else None,
            state=plan.battery_states.get(
                battery.name, None if battery.online else BatteryState.UNAVAILABLE
            ),
            online=battery.online,
            identity=battery.identity,
            charge_total_wh=_finite(battery.charge_total_wh) if battery.online else None,
            discharge_total_wh=_finite(battery.discharge_total_wh) if battery.online else None,
            stored_energy_wh=_stored_energy_wh(battery, capacities) if battery.online else None,
            voltage_v=_finite(battery.voltage_v) if battery.online else None,
            current_a=_finite(battery.current_a) if battery.online else None,
            temperature_c=_finite(battery.temperature_c) if battery.online else None,
            alarms=battery.alarms if battery.online else None,
            faults=battery.faults if battery.online else None,
            setpoint_w=None if battery.name in plan.release else plan.setpoints.get(battery.name),
        )
        for position, battery in enumerate(snapshot.batteries, start=1)
    )
    totals = energy or EnergyTotals(None, None)
    return FleetStatus(
        soc_pct=fleet_soc_pct(snapshot.batteries, capacities),
        battery_power_w=_fleet_power_w(snapshot.batteries),
        grid_w=_finite(snapshot.grid_w),
        pv_w=_finite(snapshot.pv_w),
        charge_total_wh=_finite(totals.charge_wh),
        discharge_total_wh=_finite(totals.discharge_wh),
        discharge_blocked=snapshot.discharge_blocked or snapshot.mode is Mode.HOLD,
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
        meter_fresh=meter_is_fresh(snapshot, plan, stale_after_s=meter_stale_after_s),
        cycle_duration_s=cycle_duration_s,
        cycle_latency_s=cycle_latency_s,
    )
