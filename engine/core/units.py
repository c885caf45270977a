"""The one sign convention used everywhere inside the engine, and the edge conversions.

Inside the engine:
- grid power ``grid_w``: + = import from the grid, - = export (same as the P1 meter).
- battery power ``power_w``: + = discharging (delivering AC to the house), - = charging
  (same as Marstek register 32202 and OpenEMS).

Edges that differ convert here and only here:
- MQTT ``status/battery_power``: + = charging (the product brief's topic table); a
  battery's current on MQTT follows its power (+ = charging).
- A PV kWh meter usually reads negative while producing; its sign is configurable.
"""

from __future__ import annotations


def battery_power_for_mqtt(power_w: float) -> int:
    """Engine battery power (+ discharge) to the MQTT topic's convention (+ charging)."""
    return -round(power_w)


def battery_current_for_mqtt(current_a: float) -> float:
    """Engine battery current (+ discharge) to the MQTT convention of its power (+ charging)."""
    return -current_a


def pv_power_from_meter(active_power_w: float, *, negative_when_producing: bool) -> float:
    """A PV meter's ``active_power_w`` to produced power (>= 0 while producing)."""
    return -active_power_w if negative_when_producing else active_power_w


def charging_w(power_w: float) -> float:
    """Charge power (>= 0) of an engine battery power."""
    return max(0.0, -power_w)


def discharging_w(power_w: float) -> float:
    """Discharge power (>= 0) of an engine battery power."""
    return max(0.0, power_w)
