"""Timers on the injected clock, immune to the clock's rounding.

A cycle runs once a period, so "10 s since" is checked at instants that are themselves sums of
periods: whether 10.000000 or 9.999999 s have passed is rounding, not time, and must not move
a periodic read or a reselection a whole cycle. Every interval the engine keeps is therefore
compared with a slack far below any duration that matters and far above any clock's rounding.
"""

from __future__ import annotations

from typing import Final

TIMER_SLACK_S: Final = 1e-3


def elapsed(now_s: float, since_s: float, interval_s: float) -> bool:
    """``interval_s`` has passed since ``since_s`` (within the slack)."""
    return now_s - since_s >= interval_s - TIMER_SLACK_S


def reached(now_s: float, at_s: float) -> bool:
    """The instant ``at_s`` has come (within the slack)."""
    return now_s >= at_s - TIMER_SLACK_S


def exceeded(now_s: float, since_s: float, limit_s: float) -> bool:
    """More than ``limit_s`` has passed since ``since_s`` (beyond the slack)."""
    return now_s - since_s > limit_s + TIMER_SLACK_S
