"""Plant parameters, one dataclass per device; each field's default and valid range written once.

Defaults are the plant of the scoring reference (docs/scoring.md). The dataclasses are plain at
run time: code may build any plant (a test's ideal battery has an infinite ramp). Scenario files
are validated against the ranges written beside each field (``Annotated``) by pydantic
(``sim.scenario``), so a TOML key and its dataclass field cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Annotated, Self

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AfterValidator, AllowInfNan, ConfigDict, Strict, model_validator, with_config
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from engine.core.allocate import CHARGE_EFFICIENCY as _ENGINE_CHARGE_EFFICIENCY
from engine.core.allocate import DISCHARGE_EFFICIENCY as _ENGINE_DISCHARGE_EFFICIENCY

# AC-side power (W) -> efficiency, measured on a Venus E (peer survey section 5.1). One copy,
# shared with the engine's own battery model (the simulator may import the engine, never the
# reverse).
CHARGE_EFFICIENCY = _ENGINE_CHARGE_EFFICIENCY
DISCHARGE_EFFICIENCY = _ENGINE_DISCHARGE_EFFICIENCY

# Registers 42020/42021 accept 0-2500 W: a model above that could never be commanded.
MAX_BATTERY_POWER_W = 2500.0
# The device name lives in 10 registers of 2 ASCII characters (31000).
MAX_BATTERY_NAME_CHARS = 20
# Beyond this a number is not a plausible power, time or price; the bound also keeps sums of
# powers and energies far from overflow.
MAX_ABS_NUMBER = 1e12
MAX_SEED = 2**63 - 1

# How scenario tables are read: an unknown key is an error, nothing is guessed. Strictness is
# per scalar type below (a table nested in a strict model would have to be an instance).
TABLE_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

# A finite number; an integer is accepted and becomes a float, a string or a boolean is not.
Number = Annotated[float, Strict(), AllowInfNan(False), Ge(-MAX_ABS_NUMBER), Le(MAX_ABS_NUMBER)]
NonNegative = Annotated[Number, Ge(0.0)]
Positive = Annotated[Number, Gt(0.0)]
Percent = Annotated[Number, Ge(0.0), Le(100.0)]
Seed = Annotated[int, Strict(), Ge(0), Le(MAX_SEED)]


def field_error(key: str | int, message: str, value: object) -> ValidationError:
    """A validation error at ``key`` of the table being validated (pydantic nests the path).

    For cross-field rules: raised inside a validator, it names the field at fault rather than
    the whole table.
    """
    detail = InitErrorDetails(
        type=PydanticCustomError("scenario", message), loc=(key,), input=value
    )
    return ValidationError.from_exception_data("scenario", [detail])


def _text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("scenario", "must not be empty")
    return value


Text = Annotated[str, Strict(), AfterValidator(_text)]


def _device_name(value: str) -> str:
    if not value.isascii() or not value.isprintable() or len(value) > MAX_BATTERY_NAME_CHARS:
        msg = f"must be printable ASCII, at most {MAX_BATTERY_NAME_CHARS} chars"
        raise PydanticCustomError("scenario", msg)
    return value


def _rising(curve: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    for i in range(1, len(curve)):
        if curve[i][0] <= curve[i - 1][0]:
            raise field_error(i, "power_w must increase from one point to the next", curve[i])
    return curve


# [power_w, efficiency] points, power increasing; an efficiency above 1 would create energy.
EfficiencyCurve = Annotated[
    tuple[tuple[Positive, Annotated[Positive, Le(1.0)]], ...],
    MinLen(1),
    AfterValidator(_rising),
]
BatteryPower = Annotated[Positive, Le(MAX_BATTERY_POWER_W)]


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True)
class BatteryParams:
    """One Marstek Venus E. Powers are AC side, W; times in s."""

    capacity_wh: Positive = 5120.0
    max_charge_w: BatteryPower = 2500.0
    max_discharge_w: BatteryPower = 2500.0
    dead_time_s: NonNegative = 1.0  # from a new setpoint until the output starts moving
    ramp_w_per_s: Positive = 1000.0
    relay_delay_s: NonNegative = 2.0  # extra delay when starting from standby (stop or 0 W)
    standby_w: NonNegative = 10.0  # drawn from the battery while idle
    # firmware stops charging at this SoC (44000)
    charge_cutoff_pct: Annotated[Positive, Le(100.0)] = 100.0
    # firmware stops discharging at this SoC (44001)
    discharge_cutoff_pct: Annotated[NonNegative, Lt(100.0)] = 12.0
    charge_efficiency: EfficiencyCurve = CHARGE_EFFICIENCY
    discharge_efficiency: EfficiencyCurve = DISCHARGE_EFFICIENCY
    unit_id: Annotated[int, Strict(), Ge(1), Le(247)] = 1
    name: Annotated[Text, AfterValidator(_device_name)] = "VNSE-SIM"

    @model_validator(mode="after")
    def _cutoffs_in_order(self) -> Self:
        if self.discharge_cutoff_pct >= self.charge_cutoff_pct:
            msg = f"must be below charge_cutoff_pct ({self.charge_cutoff_pct:g})"
            raise field_error("discharge_cutoff_pct", msg, self.discharge_cutoff_pct)
        return self

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


class MeterApi(StrEnum):
    """How the engine reads the P1 meter in a replay (the meter model serves both)."""

    V1 = "v1"  # HTTP polls on the cycle schedule
    V2 = "v2"  # HTTPS, and each new reading pushed over the websocket as it appears


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True)
class MeterParams:
    """The HomeWizard P1 meter."""

    interval_s: Positive = 1.0  # a new reading every interval (DSMR 5: 1 s, DSMR 4: 10 s)
    latency_s: NonNegative = 0.5  # a reading is visible this long after the instant it describes
    noise_w: NonNegative = 10.0  # Gaussian noise (sigma), W; readings are integer watts
    seed: Seed = 1
    api: MeterApi = MeterApi.V1

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True)
class Tariff:
    """Energy prices used for cost metrics."""

    import_eur_per_kwh: Number = 0.30
    export_eur_per_kwh: Number = 0.05


class FaultKind(StrEnum):
    """What a scripted ``[[fault]]`` breaks (scenarios/README.md describes each)."""

    METER_OUTAGE = "meter_outage"
    METER_HTTP_ERROR = "meter_http_error"
    METER_GARBAGE = "meter_garbage"
    METER_FROZEN = "meter_frozen"
    METER_API_DISABLED = "meter_api_disabled"
    BATTERY_OFFLINE = "battery_offline"
    BATTERY_STALL = "battery_stall"
    BATTERY_EXCEPTION = "battery_exception"
    CONTROL_MODE_LOST = "control_mode_lost"
    BATTERY_REBOOT = "battery_reboot"
    BATTERY_NOT_FOLLOWING = "battery_not_following"
    SOC_GARBAGE = "soc_garbage"
    BROKER_RESTART = "broker_restart"
    ENGINE_ERROR = "engine_error"


METER_FAULTS = frozenset(
    {
        FaultKind.METER_OUTAGE,
        FaultKind.METER_HTTP_ERROR,
        FaultKind.METER_GARBAGE,
        FaultKind.METER_FROZEN,
        FaultKind.METER_API_DISABLED,
    }
)
# Faults the battery's transport shows (no answer, late answers, exception responses).
TRANSPORT_FAULTS = frozenset(
    {FaultKind.BATTERY_OFFLINE, FaultKind.BATTERY_STALL, FaultKind.BATTERY_EXCEPTION}
)
BATTERY_FAULTS = TRANSPORT_FAULTS | frozenset(
    {
        FaultKind.CONTROL_MODE_LOST,
        FaultKind.BATTERY_REBOOT,
        FaultKind.BATTERY_NOT_FOLLOWING,
        FaultKind.SOC_GARBAGE,
    }
)
OTHER_FAULTS = frozenset({FaultKind.BROKER_RESTART, FaultKind.ENGINE_ERROR})
FAULT_KINDS = frozenset(FaultKind)


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted fault; ``battery`` is the 1-based battery it hits (battery faults only)."""

    at_s: NonNegative
    kind: FaultKind
    duration_s: Positive
    # The upper bound (the scenario's number of batteries) is checked with the whole scenario.
    battery: Annotated[int, Strict()] | None = None

    @model_validator(mode="after")
    def _battery_matches_kind(self) -> Self:
        if self.kind in BATTERY_FAULTS and self.battery is None:
            raise field_error("battery", f"missing (required by kind {self.kind.value!r})", None)
        if self.kind not in BATTERY_FAULTS and self.battery is not None:
            raise field_error("battery", f"not used by kind {self.kind.value!r}", self.battery)
        return self


@dataclass(frozen=True, slots=True)
class ScenarioBattery:
    soc_pct: float
    params: BatteryParams = field(default_factory=BatteryParams)
