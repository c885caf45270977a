"""A meter reading and the tracker that tells a fresh reading from a stale or missing one.

Pure: the poller (``engine.runtime``) feeds every poll's outcome with the clock's time; the
tracker answers what the core may decide on. ``updated_s`` moves only when the reading's body
changes, because a frozen dongle keeps answering 200 with the same body and only its age gives
it away. Availability changes are returned to the caller, which logs them once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class P1Reading(NamedTuple):
    """One validated meter answer. Power + = import (the meter's own sign).

    Immutable; a named tuple rather than a frozen dataclass because one is built at every
    poll (a fifth of the cost)."""

    active_power_w: float
    total_power_import_kwh: float | None = None
    total_power_export_kwh: float | None = None
    active_power_l1_w: float | None = None
    active_power_l2_w: float | None = None
    active_power_l3_w: float | None = None
    # Equal exactly when the whole bodies are equal (the parser's ``BodyFingerprint``), so a
    # dongle that stops updating (same body, counters included) is told apart from a steady
    # load. Compared, never looked into.
    fingerprint: object = ""


class Availability(StrEnum):
    """A change of a device's availability, reported once per change."""

    CONNECTED = "connected"  # the first good answer since start
    LOST = "lost"
    RETURNED = "returned"


class MeterTracker:
    """Availability and freshness of one meter (sync, no I/O, no clock of its own)."""

    def __init__(self, name: str = "p1") -> None:
        self.name = name
        self._reading: P1Reading | None = None
        self._updated_s: float | None = None
        self._polled_s: float | None = None
        self._online: bool | None = None  # None until the first poll

    def update(self, reading: P1Reading, now_s: float) -> Availability | None:
        """A successful poll at ``now_s``; returns the availability change, if any."""
        if self._reading is None or reading.fingerprint != self._reading.fingerprint:
            self._updated_s = now_s
        self._reading = reading
        self._polled_s = now_s
        previous = self._online
        self._online = True
        if previous is None:
            return Availability.CONNECTED
        return Availability.RETURNED if previous is False else None

    def failed(self, now_s: float) -> Availability | None:
        """A failed poll at ``now_s``; returns ``LOST`` when the meter goes unavailable."""
        previous = self._online
        self._online = False
        self._polled_s = now_s
        return Availability.LOST if previous is not False else None

    @property
    def online(self) -> bool:
        return self._online is True

    @property
    def reading(self) -> P1Reading | None:
        return self._reading

    @property
    def grid_w(self) -> float | None:
        """Latest valid ``active_power_w`` (kept while offline; check ``online``/age)."""
        return None if self._reading is None else self._reading.active_power_w

    @property
    def updated_s(self) -> float | None:
        """Clock time at which the body last changed."""
        return self._updated_s

    @property
    def polled_s(self) -> float | None:
        """Clock time of the last poll, successful or not."""
        return self._polled_s

    def age_s(self, now_s: float) -> float | None:
        """Seconds since the body last changed; None before the first reading."""
        return None if self._updated_s is None else now_s - self._updated_s
