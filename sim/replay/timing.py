"""When a replay's control cycles run: the phase against the meter's refresh, the message gap.

A real daemon's cycle falls at an arbitrary phase against the meter's refresh: right after a
new reading appears (the best case) or just before the next (the worst). Every replay
(in-process, ``--wire``) therefore runs its cycles at ``latency + phase + k * period`` with
the phase a fraction of ``min(meter interval, loop period)`` (the span over which the age of
the reading a cycle sees varies), drawn per run from the scenario's seed or swept
(``--phases N``), and paces Modbus requests with the daemon's default message gap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.core.settings import VENUS_E_MESSAGE_GAP_S
from sim.scenario import Scenario

# The daemon's own default (BATTERY_<n>_MESSAGE_GAP_S): the pause between Modbus requests.
DAEMON_MESSAGE_GAP_S: float = VENUS_E_MESSAGE_GAP_S
_PHASE_SALT = 0x9E3779B1  # keeps the phase's draw apart from the meter-noise stream


@dataclass(frozen=True, slots=True)
class Timing:
    """When the first cycle runs, and the gap between one battery's Modbus requests."""

    phase: float  # fraction of the phase span, 0 <= phase < 1 (0: the best case)
    first_tick_s: float
    message_gap_s: float = DAEMON_MESSAGE_GAP_S


def drawn_phase(scenario: Scenario) -> float:
    """The phase a run of ``scenario`` uses unless one is given: reproducible from its seed."""
    return random.Random(scenario.seed ^ _PHASE_SALT).random()


def swept_phases(n: int) -> tuple[float, ...]:
    """``n`` phases spread evenly over the span, the best case (0) first."""
    if n < 1:
        msg = f"need at least one phase, got {n}"
        raise ValueError(msg)
    return tuple(i / n for i in range(n))


def timing_for(
    scenario: Scenario,
    period_s: float,
    phase: float | None = None,
    *,
    message_gap_s: float = DAEMON_MESSAGE_GAP_S,
) -> Timing:
    """The cycle timing of one run: ``phase`` (a fraction) or the scenario's own draw."""
    fraction = drawn_phase(scenario) if phase is None else phase
    if not 0.0 <= fraction < 1.0:
        msg = f"phase must be a fraction in [0, 1), got {fraction}"
        raise ValueError(msg)
    span_s = min(scenario.meter.interval_s, period_s)
    # The first reading becomes visible after the meter's latency; the cycle falls the phase
    # later (phase 0: the moment it appears, the luckiest a daemon can be).
    first_s = scenario.meter.latency_s + fraction * span_s
    return Timing(phase=fraction, first_tick_s=first_s, message_gap_s=message_gap_s)
