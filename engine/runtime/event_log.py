"""Decision events as the log lines a user reads: one line per event, the words in one place."""

from __future__ import annotations

import logging

from engine.core.events import (
    BatteryConnected,
    BatteryLost,
    BatteryReturned,
    CutoffCleared,
    CutoffReached,
    Direction,
    Excluded,
    ExclusionEnded,
    HandoverEnded,
    HandoverStarted,
    LeaderChanged,
    MeterLost,
    MeterReturned,
    SafeHoldCause,
    SafeHoldEntered,
    SafeHoldLeft,
    StatusEvent,
)

_DIRECTION_WORD = {
    Direction.CHARGE: "charging",
    Direction.DISCHARGE: "discharging",
    Direction.NONE: "idle",
}
_CAUSE_WORDS = {
    SafeHoldCause.METER_STALE: "meter stale",
    SafeHoldCause.INTERNAL_ERROR: "internal error",
}


def describe(event: StatusEvent) -> str:
    """One human-readable line for ``event``."""
    match event:
        case BatteryConnected(battery=name):
            return f"{name} connected"
        case BatteryLost(battery=name):
            return f"{name} unavailable: no valid reading; it gets no command"
        case BatteryReturned(battery=name):
            return f"{name} available again"
        case Excluded(battery=name, delivered_w=delivered, commanded_w=commanded):
            return (
                f"{name} excluded: delivers {delivered:.0f} W of {commanded} W commanded;"
                " the others take its share"
            )
        case ExclusionEnded(battery=name):
            return f"{name} exclusion over: it is commanded again"
        case CutoffReached(battery=name, direction=direction, soc_pct=soc):
            return (
                f"{name} at its firmware cut-off at {soc:.0f} % SoC:"
                f" sits out {_DIRECTION_WORD[direction]}"
            )
        case CutoffCleared(battery=name):
            return f"{name} off its firmware cut-off"
        case LeaderChanged(old=old, new=new, direction=direction):
            return f"leader {old} -> {new} ({_DIRECTION_WORD[direction]})"
        case HandoverStarted(outgoing=outgoing, incoming=incoming):
            return f"hand-over {outgoing} -> {incoming}: waking {incoming}"
        case HandoverEnded(outgoing=outgoing, incoming=incoming, completed=completed):
            how = "done" if completed else "abandoned"
            return f"hand-over {outgoing} -> {incoming} {how}"
        case SafeHoldEntered(cause=cause):
            return f"{_CAUSE_WORDS[cause]}: every battery at 0 W"
        case SafeHoldLeft(cause=cause):
            return f"{_CAUSE_WORDS[cause]} over: control resumes"
        case MeterLost(meter=meter, reason=reason):
            return f"meter {meter} is unavailable: {reason}"
        case MeterReturned(meter=meter):
            return f"meter {meter} is available again"
    raise AssertionError(f"no description for {event!r}")  # pragma: no cover - exhaustive


def severity(event: StatusEvent) -> int:
    """How much ``event`` matters to a person watching: safety and faults warn (the
    dashboard's event list marks them), selection changes inform."""
    if isinstance(event, SafeHoldEntered | BatteryLost | Excluded | MeterLost):
        return logging.WARNING
    return logging.INFO


def level(event: StatusEvent) -> int:
    """The log level of ``event``: its severity, except that a battery's availability is the
    driver's to log (once, with the reason: engine.adapters.venus_commander); the core's view of it
    only shows in the debug log."""
    if isinstance(event, BatteryConnected | BatteryLost | BatteryReturned):
        return logging.DEBUG
    return severity(event)
