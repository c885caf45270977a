"""The data that flows through the core: a snapshot of the world in, a plan out.

Signs follow ``engine.core.units``: grid + = import, battery + = discharging.
All times are seconds on the injected clock (``now_s``), never the wall clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from engine.core.events import DecisionEvent
from engine.core.states import BatteryState, FleetState


class Mode(StrEnum):
    """The fleet's operating mode, as set over MQTT (``control/mode``)."""

    NORMAL = "normal"  # keep the meter at zero
    HOLD = "hold"  # charging allowed, discharge blocked
    CHARGE = "charge"  # force-charge every battery
    SELFCONTROL = "selfcontrol"  # release RS485 control: the batteries run their own logic


# evcc sends battery modes as numbers 1-4.
MODE_BY_NUMBER: dict[int, Mode] = {
    1: Mode.NORMAL,
    2: Mode.HOLD,
    3: Mode.CHARGE,
    4: Mode.SELFCONTROL,
}


@dataclass(frozen=True, slots=True)
class BatteryIdentity:
    """What a battery says it is (read once per connection); ``None`` = not reported/invalid."""

    device_name: str | None = None  # 31000, e.g. "VNSE3-0"
    serial_number: str | None = None  # 31200
    software_version: str | None = None  # 31100 x 0.01, e.g. "1.53"
    ems_version: int | None = None  # 31101
    bms_version: int | None = None  # 31102

    @property
    def firmware(self) -> str | None:
        """The versions as one line (``"1.53 (EMS 153, BMS 213)"``); None if none is known."""
        parts = [
            f"{label} {value}"
            for label, value in (("EMS", self.ems_version), ("BMS", self.bms_version))
            if value is not None
        ]
        if self.software_version is None:
            return ", ".join(parts) or None
        return f"{self.software_version} ({', '.join(parts)})" if parts else self.software_version


class BatteryTelemetry(NamedTuple):
    """What one battery reported in this cycle. ``online=False`` means the read failed.

    The diagnostics (voltage to faults) feed reporting only, never the control law; like the
    counters they are read less often than every cycle and carry the last valid value.
    Immutable like the frozen dataclasses around it, but a named tuple: every battery builds
    one every cycle, at a fifth of a frozen dataclass's cost.
    """

    name: str
    online: bool
    soc_pct: float | None = None  # validated 0..100, else None
    power_w: float | None = None  # measured AC power, + discharging
    rs485_control: bool | None = None  # 42000 read back as 0x55AA; None = not read this cycle
    charge_total_wh: float | None = None  # lifetime AC energy charged (33000)
    discharge_total_wh: float | None = None  # lifetime AC energy discharged (33002)
    capacity_wh: float | None = None  # 32105 as reported
    identity: BatteryIdentity | None = None  # kept while offline: a serial does not change
    voltage_v: float | None = None  # DC (pack) voltage, 32100
    current_a: float | None = None  # DC current, + discharging (32101 counts + charging)
    temperature_c: float | None = None  # internal temperature, 35000
    alarms: tuple[str, ...] | None = None  # active alarm bits (36000) by name; () = none
    faults: tuple[str, ...] | None = None  # active fault bits (36100) by name; () = none


class Snapshot(NamedTuple):
    """Everything the core may decide on, gathered once per cycle by the shell.

    Immutable; a named tuple like ``BatteryTelemetry`` (one per cycle)."""

    now_s: float
    grid_w: float | None  # latest P1 reading, + import; None = no valid reading
    meter_updated_s: float | None  # clock time the meter's reading last changed
    batteries: tuple[BatteryTelemetry, ...]
    mode: Mode = Mode.NORMAL
    discharge_blocked: bool = False
    pv_w: float | None = None  # production (>= 0), reporting only: never used by the control law
    # How long the reading can at most have been visible when it was polled (the cycle
    # schedule's bound, engine.core.schedule); None: up to a loop period.
    reading_age_s: float | None = None


# A plan without extra figures shares this one (read-only: a named tuple's default is shared).
NO_EXTRA: Final[Mapping[str, float]] = MappingProxyType({})


class Plan(NamedTuple):
    """What the core decided. The shell writes ``setpoints`` and publishes the rest.

    ``setpoints`` holds one entry per battery that must be commanded this cycle
    (+ discharge, - charge, 0 idle). A battery without an entry gets no command
    (it is unavailable). ``release`` names batteries to hand back to their own logic.
    Immutable; a named tuple like ``Snapshot`` (one per cycle; a frozen dataclass sets each
    of its nine fields through ``object.__setattr__``).
    """

    setpoints: dict[str, int]
    fleet_state: FleetState
    battery_states: dict[str, BatteryState]
    events: tuple[DecisionEvent, ...] = ()
    safe_hold: bool = False
    release: tuple[str, ...] = ()
    quality: str | None = None  # control-quality verdict, when the policy computes one
    grid_rms_w: float | None = None
    extra: Mapping[str, float] = NO_EXTRA
