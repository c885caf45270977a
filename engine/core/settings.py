"""Frozen control settings handed to the core. Defaults reproduce upstream MMBC's behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

VENUS_E_MAX_POWER_W = 2500
VENUS_E_CAPACITY_WH = 5120.0


@dataclass(frozen=True, slots=True)
class BatterySpec:
    """What the core must know about one battery."""

    name: str
    max_charge_w: int = VENUS_E_MAX_POWER_W
    max_discharge_w: int = VENUS_E_MAX_POWER_W
    capacity_wh: float = VENUS_E_CAPACITY_WH


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """Every threshold of the control law. All configurable; see README for meanings."""

    batteries: tuple[BatterySpec, ...] = field(default_factory=tuple)
    policy: str = "mmbc"
    loop_period_s: float = 1.0
    split_threshold_w: int = 2500
    max_soc_pct: float = 100.0  # charge only while SoC is below this
    min_soc_pct: float = 11.0  # discharge only while SoC is above this
    reselect_interval_s: float = 300.0
    deadband_w: int = 20
    grid_target_w: int = 0
    stale_after_s: float = 5.0
    control_recheck_s: float = 60.0
    not_following_cycles: int = 5
    not_following_exclude_s: float = 300.0
    offline_after_failures: int = 1
    # mmbc policy refinements (the classic policy ignores these)
    meter_latency_s: float = 0.5  # how long after the instant it describes a reading appears
    step_threshold_w: int = 150  # a jump this large is a real load step: act on it at once
    noise_alpha: float = 0.4  # smoothing of small changes (meter noise), 1 = none
    min_change_w: int = 5  # smaller changes of the fleet setpoint are not written
    idle_band_w: int = 15  # below this the fleet idles (direction hysteresis band)
    relay_hold_s: float = 300.0  # keep the relay engaged (1 W) through idle gaps this short
    split_hysteresis_w: int = 300  # stay split until the demand falls this far below the threshold
    soc_hysteresis_pct: float = 3.0  # a new leader must beat the current one by this much SoC
    handover_timeout_s: float = 20.0  # make-before-break: longest overlap when switching leader
    taper_soc_pct: float = 97.0  # charge taper starts here (battery care)
    taper_power_w: int = 1500  # charge limit at and above taper_soc_pct
    taper_full_soc_pct: float = 99.0
    taper_full_power_w: int = 1000
    small_correction_w: int = 60  # split: a change this small goes to one battery
    # Control features of the mmbc policy, each switchable; docs/control.md shows what each
    # one is worth on the bench (the suite with that feature off).
    feature_latency_alignment: bool = True  # net demand = grid + battery power at its instant
    feature_response_window: bool = True  # act only on what a reading proves (post-response)
    feature_noise_filter: bool = True  # smooth small changes (meter noise)
    feature_step_feedforward: bool = True  # take a large step at once
    feature_oscillation_damping: bool = True  # damp a load that pulses faster than we follow
    feature_pulse_prediction: bool = True  # anticipate the edges of a rhythmic load
    feature_direction_hysteresis: bool = True  # a reversal needs idle band + deadband
    feature_min_change: bool = True  # ignore setpoint changes below min_change_w
    feature_split_hysteresis: bool = True  # stay split down to threshold - hysteresis
    feature_efficient_count: bool = True  # number of active batteries from the efficiency curve
    feature_soc_hysteresis: bool = True  # keep the leader unless another beats it clearly
    feature_handover: bool = True  # make-before-break when the leader changes
    feature_small_correction: bool = True  # split: small corrections to one battery
    feature_energy_split: bool = True  # split in proportion to the energy each can give
    feature_charge_taper: bool = True  # charge a nearly full battery gently (battery care)
    feature_relay_keepalive: bool = True  # 1 W keeps the relay engaged through short gaps
    feature_cutoff_detection: bool = True  # a battery stuck at its firmware cut-off sits out

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names a user may override (``[control]`` in scenarios and config files)."""
        return frozenset(f.name for f in fields(cls) if f.name != "batteries")

    def with_overrides(self, overrides: dict[str, Any]) -> ControlSettings:
        """A copy with ``overrides`` applied; an unknown key raises ``KeyError`` naming it."""
        known = self.field_names()
        for key in overrides:
            if key not in known:
                raise KeyError(key)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in overrides.items():
            current = values[key]
            if isinstance(current, bool) or not isinstance(current, (int, float, str)):
                values[key] = value
            elif isinstance(current, float) and isinstance(value, int):
                values[key] = float(value)
            elif type(value) is not type(current):
                msg = f"{key}: expected {type(current).__name__}, got {type(value).__name__}"
                raise TypeError(msg)
            else:
                values[key] = value
        return ControlSettings(**values)
