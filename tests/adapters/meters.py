"""Driving a simulated meter from a test: one-second ticks of a ``FakeClock``."""

from __future__ import annotations

from sim.plant.meter import P1MeterModel
from tests.fakes import FakeClock


def tick(model: P1MeterModel, clock: FakeClock, power_w: float) -> None:
    """Set ``power_w`` now and let one second pass: the sample taken meanwhile is visible."""
    model.observe(clock.t_s, power_w)
    clock.t_s += 1.0
    model.observe(clock.t_s, power_w)
