"""What the core decided that is worth telling: typed decision events, one per change.

A plan carries the events of its cycle. The runtime turns them into log lines, the MQTT and
HTTP adapters into published state, and the simulator's invariant checkers match on their
types, never on text, so rewording a log line cannot break a check.

Meter events are not decisions: the runtime sees them when it polls the meter and reports
them beside the cycle's decision events (``StatusEvent``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TypeAlias


class Direction(IntEnum):
    """Which way power flows through a battery or the fleet (engine convention: + discharge)."""

    CHARGE = -1
    NONE = 0
    DISCHARGE = 1


class SafeHoldCause(StrEnum):
    METER_STALE = "meter_stale"  # no fresh reading within the stale limit
    INTERNAL_ERROR = "internal_error"  # the cycle raised: every battery to 0 W


@dataclass(frozen=True, slots=True)
class BatteryConnected:
    """A battery gave its first valid reading since the engine started."""

    battery: str


@dataclass(frozen=True, slots=True)
class BatteryLost:
    """A battery stopped giving a valid reading: it gets no command until it returns."""

    battery: str


@dataclass(frozen=True, slots=True)
class BatteryReturned:
    """A battery gives valid readings again and is commanded from this cycle on."""

    battery: str


@dataclass(frozen=True, slots=True)
class Excluded:
    """A battery acknowledged commands but did not deliver: left out until ``until_s``."""

    battery: str
    until_s: float
    delivered_w: float
    commanded_w: int


@dataclass(frozen=True, slots=True)
class ExclusionEnded:
    battery: str


@dataclass(frozen=True, slots=True)
class CutoffReached:
    """Near a SoC limit the battery stopped delivering: its firmware cut-off, not a fault."""

    battery: str
    direction: Direction
    soc_pct: float


@dataclass(frozen=True, slots=True)
class CutoffCleared:
    battery: str


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """Below the split threshold another battery leads (reselection or ineligibility)."""

    old: str
    new: str
    direction: Direction


@dataclass(frozen=True, slots=True)
class HandoverStarted:
    """Make-before-break: the incoming leader is woken while the outgoing one carries on."""

    outgoing: str
    incoming: str


@dataclass(frozen=True, slots=True)
class HandoverEnded:
    outgoing: str
    incoming: str
    completed: bool  # False: timed out or abandoned (the incoming one never engaged)


@dataclass(frozen=True, slots=True)
class SafeHoldEntered:
    """Every battery to 0 W until the cause is gone."""

    cause: SafeHoldCause


@dataclass(frozen=True, slots=True)
class SafeHoldLeft:
    cause: SafeHoldCause


DecisionEvent: TypeAlias = (
    BatteryConnected
    | BatteryLost
    | BatteryReturned
    | Excluded
    | ExclusionEnded
    | CutoffReached
    | CutoffCleared
    | LeaderChanged
    | HandoverStarted
    | HandoverEnded
    | SafeHoldEntered
    | SafeHoldLeft
)


@dataclass(frozen=True, slots=True)
class MeterLost:
    """A meter stopped answering; the core sees its reading age and holds safe when stale."""

    meter: str
    reason: str


@dataclass(frozen=True, slots=True)
class MeterReturned:
    meter: str


MeterEvent: TypeAlias = MeterLost | MeterReturned
StatusEvent: TypeAlias = DecisionEvent | MeterEvent
