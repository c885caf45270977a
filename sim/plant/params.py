"""Plant parameters, one dataclass per device; every field settable per scenario.

Defaults are the plant of the scoring reference (docs/scoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from engine.core.allocate import CHARGE_EFFICIENCY as _ENGINE_CHARGE_EFFICIENCY
from engine.core.allocate import DISCHARGE_EFFICIENCY as _ENGINE_DISCHARGE_EFFICIENCY

# AC-side power (W) -> efficiency, measured on a Venus E (peer survey section 5.1). One copy,
# shared with the engine's own battery model (the simulator may import the engine, never the
# reverse).
CHARGE_EFFICIENCY = _ENGINE_CHARGE_EFFICIENCY
DISCHARGE_EFFICIENCY = _ENGINE_DISCHARGE_EFFICIENCY


@dataclass(frozen=True, slots=True)
class BatteryParams:
    """One Marstek Venus E. Powers are AC side, W; times in s."""

    capacity_wh: float = 5120.0
    max_charge_w: float = 2500.0
    max_discharge_w: float = 2500.0
    dead_time_s: float = 1.0  # from a new setpoint until the output starts moving
    ramp_w_per_s: float = 1000.0
    relay_delay_s: float = 2.0  # extra delay when starting from standby (stop or 0 W)
    standby_w: float = 10.0  # drawn from the battery while idle
    charge_cutoff_pct: float = 100.0  # firmware stops charging at this SoC (44000)
    discharge_cutoff_pct: float = 12.0  # firmware stops discharging at this SoC (44001)
    charge_efficiency: tuple[tuple[float, float], ...] = CHARGE_EFFICIENCY
    discharge_efficiency: tuple[tuple[float, float], ...] = DISCHARGE_EFFICIENCY
    unit_id: int = 1
    name: str = "VNSE-SIM"

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True)
class MeterParams:
    """The HomeWizard P1 meter."""

    interval_s: float = 1.0  # a new reading every interval (DSMR 5: 1 s, DSMR 4: 10 s)
    latency_s: float = 0.5  # a reading is visible this long after the instant it describes
    noise_w: float = 10.0  # Gaussian noise (sigma), W; readings are integer watts
    seed: int = 1

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True)
class Tariff:
    """Energy prices used for cost metrics."""

    import_eur_per_kwh: float = 0.30
    export_eur_per_kwh: float = 0.05


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted fault: ``kind`` from ``FAULT_KINDS``; ``battery`` is 1-based or None."""

    at_s: float
    kind: str
    duration_s: float
    battery: int | None = None


METER_FAULTS = frozenset(
    {"meter_outage", "meter_http_error", "meter_garbage", "meter_frozen", "meter_api_disabled"}
)
BATTERY_FAULTS = frozenset(
    {
        "battery_offline",
        "battery_stall",
        "battery_exception",
        "control_mode_lost",
        "battery_reboot",
        "battery_not_following",
        "soc_garbage",
    }
)
OTHER_FAULTS = frozenset({"broker_restart", "engine_error"})
FAULT_KINDS = METER_FAULTS | BATTERY_FAULTS | OTHER_FAULTS


@dataclass(frozen=True, slots=True)
class Event:
    """A scripted appliance event on top of the trace: ``power_w`` extra load (negative: PV).

    kind ``load_step``: a constant step for ``duration_s``.
    kind ``pulse``: ``power_w`` on for ``on_s``, off for ``off_s``, repeated for ``duration_s``
    (induction hob, oven thermostat, washing-machine heater).
    kind ``ramp``: linear from 0 to ``power_w`` over ``ramp_s``, held, then back (heat pump, EV).
    """

    at_s: float
    kind: str
    power_w: float
    duration_s: float
    on_s: float = 0.0
    off_s: float = 0.0
    ramp_s: float = 0.0
    label: str = ""


EVENT_KINDS = frozenset({"load_step", "pulse", "ramp"})


@dataclass(frozen=True, slots=True)
class ScenarioBattery:
    soc_pct: float
    params: BatteryParams = field(default_factory=BatteryParams)
