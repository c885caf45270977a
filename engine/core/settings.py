"""Frozen control settings handed to the core: each default and bound written once, here.

Defaults reproduce upstream MMBC's behaviour. Values may arrive as text (environment, ``.env``)
or natively (TOML, JSON, Python): the ``*Setting`` types read both, strictly (``2.0`` is not an
integer, ``1_0`` is not ten, ``true`` is not a number).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Self, get_args

from pydantic import (
    AllowInfNan,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

VENUS_E_MAX_POWER_W: Final = 2500
VENUS_E_CAPACITY_WH: Final = 5120.0
# The default pause between two Modbus requests to one battery (BATTERY_<n>_MESSAGE_GAP_S);
# the replays pace their requests with it too, without loading the engine's settings models.
VENUS_E_MESSAGE_GAP_S: Final = 0.05
POWER_MAX_W: Final = 100_000  # sanity bound for fleet-level powers (40 Venus E)
DAY_S: Final = 86_400.0

# --- values from text or native ---------------------------------------------------------------

_INT_TEXT: Final = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT_TEXT: Final = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?")
_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def _int_from_text(value: object) -> object:
    # Anything else is left as it is, for the strict type to reject with the value in view.
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    return value


def _float_from_text(value: object) -> object:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        number = float(value.strip())
        return number if math.isfinite(number) else value
    return value


def _bool_from_text(value: object) -> object:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return value


def _lower_text(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


IntSetting = Annotated[int, BeforeValidator(_int_from_text), Strict()]
FloatSetting = Annotated[float, BeforeValidator(_float_from_text), Strict(), AllowInfNan(False)]
BoolSetting = Annotated[bool, BeforeValidator(_bool_from_text), Strict()]


@dataclass(frozen=True, slots=True)
class WarnAbove:
    """Field metadata: a value above ``limit`` is accepted but weakens a safety (``reason``)."""

    limit: float
    reason: str


# --- the settings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatterySpec:
    """What the core must know about one battery."""

    name: str
    max_charge_w: int = VENUS_E_MAX_POWER_W
    max_discharge_w: int = VENUS_E_MAX_POWER_W
    capacity_wh: float = VENUS_E_CAPACITY_WH


# The control laws a user can choose (engine.core.policies maps each to its class). Plain text,
# not an enum: scenario files and overrides compare and print it as the word.
PolicyName = Literal["mmbc", "classic"]
POLICY_NAMES: Final[tuple[PolicyName, ...]] = get_args(PolicyName)


def _power(default: int, *, low: int = 0) -> Any:
    return Field(default=default, ge=low, le=POWER_MAX_W)


def _period(default: float, *, positive: bool = False, high: float = DAY_S) -> Any:
    return (
        Field(default=default, gt=0.0, le=high)
        if positive
        else Field(default=default, ge=0.0, le=high)
    )


def _percent(default: float) -> Any:
    return Field(default=default, ge=0.0, le=100.0)


@pydantic_dataclass(
    frozen=True,
    slots=True,
    config=ConfigDict(extra="forbid", use_attribute_docstrings=True, hide_input_in_errors=True),
)
class ControlSettings:
    """Every threshold of the control law. All configurable; docs/configuration.md lists them.

    A frozen dataclass validated by pydantic: attributes are plain slots (the policy reads them
    every cycle), ``dataclasses.replace`` and ``fields`` work as on any dataclass.
    """

    batteries: tuple[BatterySpec, ...] = ()
    """One spec per battery (from the battery settings; not a setting of its own)."""
    policy: Annotated[PolicyName, BeforeValidator(_lower_text)] = "mmbc"
    """`mmbc`: the product's control law. `classic`: upstream MMBC v1.1's algorithm reproduced
    as a baseline (its own 3 s loop and ±30 W deadband; it uses the SoC limits but ignores
    most other settings)."""
    loop_period_s: FloatSetting = Field(default=1.0, ge=0.1, le=60.0)
    """Control cycle: read meter and batteries, decide, write. Below 0.1 s a cycle cannot
    even finish its Modbus requests."""
    split_threshold_w: IntSetting = _power(2500)
    """Below this net power one battery works (best inverter efficiency); above it the power is
    split over all eligible batteries."""
    max_soc_pct: FloatSetting = _percent(100.0)
    """A battery charges only while its SoC is below this."""
    min_soc_pct: FloatSetting = Field(default=11.0, ge=0.0, le=100.0, validate_default=True)
    """A battery discharges only while its SoC is above this; must be below `max_soc_pct`."""
    reselect_interval_s: FloatSetting = _period(300.0, positive=True)
    """The working battery is re-selected this often (charge: lowest SoC, discharge: highest),
    or at once when it becomes ineligible."""
    deadband_w: IntSetting = _power(20)
    """Grid deviations smaller than this are left alone (mmbc: a charge/discharge reversal
    needs `idle_band_w` + this)."""
    grid_target_w: IntSetting = _power(0, low=-POWER_MAX_W)
    """Grid power to aim for (+ = import); e.g. `20` keeps a small import instead of risking
    export."""
    stale_after_s: Annotated[
        FloatSetting,
        WarnAbove(
            30.0,
            "the batteries keep steering on a reading that old before the stale-meter"
            " safety takes them to 0 W",
        ),
    ] = _period(5.0, positive=True, high=120.0)
    """A meter reading older than this is stale: every battery goes to 0 W until readings
    return (a slower meter's own update interval is learnt and allowed for). Above 30 s a
    warning: the stale-meter safety then acts late."""
    control_recheck_s: FloatSetting = _period(60.0, positive=True)
    """How often each battery's RS485 control mode (register 42000) is read back; firmware
    sometimes drops it by itself."""
    not_following_cycles: IntSetting = Field(default=5, ge=1)
    """A battery that fails to deliver its setpoint this many cycles in a row is excluded ..."""
    not_following_exclude_s: FloatSetting = _period(300.0)
    """... for this long."""
    # mmbc policy refinements (the classic policy ignores these)
    meter_latency_s: FloatSetting = _period(0.5, high=60.0)
    """How long after the instant it describes a meter reading appears (mmbc policy)."""
    step_threshold_w: IntSetting = _power(150)
    """A jump this large is a real load step and is acted on at once (mmbc policy)."""
    noise_alpha: FloatSetting = Field(default=0.4, gt=0.0, le=1.0)
    """Smoothing of small changes (meter noise); 1 = none (mmbc policy)."""
    min_change_w: IntSetting = _power(5)
    """Smaller changes of the fleet setpoint are not written (mmbc policy)."""
    idle_band_w: IntSetting = _power(15)
    """Below this the fleet idles: hysteresis between charging and discharging (mmbc policy)."""
    relay_hold_s: FloatSetting = _period(300.0)
    """Keep the battery's relay engaged (1 W) through idle gaps shorter than this (mmbc
    policy)."""
    split_hysteresis_w: IntSetting = _power(300)
    """Stay split until the demand falls this far below the split threshold (mmbc policy)."""
    soc_hysteresis_pct: FloatSetting = _percent(3.0)
    """A new working battery must beat the current one by this much SoC (mmbc policy)."""
    handover_timeout_s: FloatSetting = _period(20.0)
    """Longest overlap when handing over to another battery, make-before-break (mmbc
    policy)."""
    taper_soc_pct: FloatSetting = _percent(97.0)
    """Charge taper (battery care; never at the cost of export) starts at this SoC ..."""
    taper_power_w: IntSetting = _power(1500)
    """... limiting charge power to this ..."""
    taper_full_soc_pct: FloatSetting = _percent(99.0)
    """... and from this SoC ..."""
    taper_full_power_w: IntSetting = _power(1000)
    """... to this."""
    small_correction_w: IntSetting = _power(60)
    """While split, a change this small goes to one battery (mmbc policy)."""
    export_weight: FloatSetting = Field(default=2.0, ge=1.0, le=10.0)
    """Deciding between two errors, an exported Wh counts this many imported ones: battery
    energy exported earns the export price and is then missing at the import price, energy
    imported while the battery holds back stays stored (mmbc policy)."""
    # Control features of the mmbc policy, each switchable; docs/control.md shows what each
    # one is worth on the bench (the suite with that feature off).
    feature_latency_alignment: BoolSetting = True
    """Estimate the house's demand as the grid reading plus the batteries' power at the instant
    the reading describes (off: plus their power now, the naive law)."""
    feature_response_window: BoolSetting = True
    """Act only on what a reading proves while the batteries move (set-membership over the
    reading's uncertain instant); off: assume one instant and interpolate."""
    feature_noise_filter: BoolSetting = True
    """Smooth small changes of the demand estimate (`noise_alpha`)."""
    feature_step_feedforward: BoolSetting = True
    """Take a change of at least `step_threshold_w` at once."""
    feature_learnt_noise: BoolSetting = True
    """Smooth only what the meter's noise, learnt from its readings, explains: a smaller
    change beyond it is taken at once (on an exact meter, every change)."""
    feature_oscillation_damping: BoolSetting = True
    """Damp a load that switches faster than the loop can follow."""
    feature_flicker_floor: BoolSetting = True
    """Hold a small fluctuation faster than the loop (well above the meter's noise) at its
    low side, the cheapest level (import, not export), not at its middle."""
    feature_pulse_prediction: BoolSetting = True
    """Learn the rhythm of a load that switches on and off regularly (hob, oven, microwave) and
    move the batteries ahead of each expected edge."""
    feature_direction_hysteresis: BoolSetting = True
    """A charge/discharge reversal needs a demand beyond `idle_band_w` + `deadband_w`."""
    feature_min_change: BoolSetting = True
    """Ignore demand changes below `min_change_w`."""
    feature_split_hysteresis: BoolSetting = True
    """Stay split until the demand falls `split_hysteresis_w` below the split threshold."""
    feature_efficient_count: BoolSetting = True
    """Above the split threshold, use the number of batteries the measured efficiency curve
    says loses least."""
    feature_soc_hysteresis: BoolSetting = True
    """Keep the working battery unless another beats it by `soc_hysteresis_pct`."""
    feature_handover: BoolSetting = True
    """Make-before-break: wake the new working battery (1 W) and swap once its relay is
    engaged."""
    feature_small_correction: BoolSetting = True
    """While split, give a change up to `small_correction_w` to one battery."""
    feature_energy_split: BoolSetting = True
    """While split and charging, share in proportion to the energy each battery can still
    take, so they fill up together."""
    feature_charge_taper: BoolSetting = True
    """Charge a nearly full battery at the taper power while the others can take the rest
    (never exporting because of it)."""
    feature_relay_keepalive: BoolSetting = True
    """Keep an idle battery's relay engaged with 1 W for `relay_hold_s`."""
    feature_cutoff_detection: BoolSetting = True
    """A battery that delivers nothing near a SoC limit has reached its firmware cut-off: it
    sits out that direction until its SoC moves, the others carry its share."""
    feature_phase_learning: BoolSetting = True
    """Cycles are placed just after the meter's refresh, learnt from which polls find a new
    reading (engine.core.schedule), so each reading is acted on as fresh as it can be."""
    feature_fast_load_hold: BoolSetting = True
    """A load component faster than the loop can follow (pulses shorter than twice the
    measured loop delay) is held at the level that costs least over its recent window, not
    chased; a level lasting longer than its pulses is followed at once."""

    @field_validator("min_soc_pct")
    @classmethod
    def _floor_below_ceiling(cls, min_soc_pct: float, info: ValidationInfo) -> float:
        max_soc_pct = info.data.get("max_soc_pct")
        if max_soc_pct is not None and min_soc_pct >= max_soc_pct:
            message = (
                f"the discharge floor min_soc_pct ({min_soc_pct:g} %) must be below the charge"
                f" ceiling max_soc_pct ({max_soc_pct:g} %)"
            )
            raise PydanticCustomError("related", message, {"partner": "max_soc_pct"})
        return min_soc_pct

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names a user may override (``[control]`` in scenarios and config files)."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.name != "batteries")

    def with_overrides(self, overrides: dict[str, Any]) -> Self:
        """A copy with ``overrides`` applied and validated.

        An unknown key raises ``KeyError`` naming it; a value of the wrong type or out of
        bounds raises pydantic's ``ValidationError`` (a ``ValueError``) naming the field.
        """
        known = self.field_names()
        for key in overrides:
            if key not in known:
                raise KeyError(key)
        return dataclasses.replace(self, **overrides)
