"""The states of the battery and fleet machines: the vocabulary every layer publishes."""

from __future__ import annotations

from enum import StrEnum


class BatteryState(StrEnum):
    IDLE = "idle"
    CHARGING = "charging"
    DISCHARGING = "discharging"
    BLOCKED = "blocked"  # would discharge, but discharge is blocked (MQTT or hold mode)
    INELIGIBLE = "ineligible"  # at a SoC limit for the fleet's direction
    EXCLUDED = "excluded"  # acknowledged commands but did not deliver: left out for a while
    CUTOFF = "cutoff"  # stopped at its firmware's own SoC cut-off: sits that direction out
    UNAVAILABLE = "unavailable"  # offline, stalled or reporting garbage: gets no command


class FleetState(StrEnum):
    STARTING = "starting"  # no valid meter reading yet
    NORMAL = "normal"  # keep the meter at zero
    HOLD = "hold"  # keep the meter at zero, but never discharge
    CHARGE = "charge"  # force-charge every battery
    SELFCONTROL = "selfcontrol"  # batteries released to their own logic
    SAFE_HOLD = "safe_hold"  # meter stale or an internal error: every battery at 0 W
