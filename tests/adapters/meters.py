"""Helpers for driving a simulated meter from a test: a manual clock, one-second ticks."""

from __future__ import annotations

from sim.plant.meter import P1MeterModel


class ManualClock:
    """The server's notion of now, moved by the test (no real time involved)."""

    def __init__(self) -> None:
        self.t_s = 0.0

    def now(self) -> float:
        return self.t_s


def tick(model: P1MeterModel, clock: ManualClock, power_w: float) -> None:
    """Set ``power_w`` now and let one second pass: the sample taken meanwhile is visible."""
    model.observe(clock.t_s, power_w)
    clock.t_s += 1.0
    model.observe(clock.t_s, power_w)
