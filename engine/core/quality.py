"""The control-quality verdict users see: stable, oscillating, sluggish or battery-limited."""

from __future__ import annotations

import math
from collections import deque
from enum import StrEnum

WINDOW_S = 60.0
BAND_W = 20.0
OSCILLATING_CROSSINGS = 6  # ±20 W band crossings per minute
SLUGGISH_RMS_W = 100.0
LIMITED_RMS_W = 50.0
ONE_SIDED = 0.5  # |mean error| at least this share of the RMS: a lasting offset, not a swing


class Quality(StrEnum):
    STABLE = "stable"
    OSCILLATING = "oscillating"
    SLUGGISH = "sluggish"
    BATTERY_LIMITED = "battery_limited"
    IDLE = "idle"
    SAFE_HOLD = "safe_hold"


class QualityMonitor:
    """RMS grid error and ±20 W band crossings over the last minute of meter readings.

    Kept incrementally (running sums), because it is updated on every reading.
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        self._sum_sq = 0.0
        self._sum = 0.0
        self._crossings: deque[float] = deque()
        self._side = 0
        # The RMS of the window, taken when a reading is added (it is asked for twice a
        # cycle; it changes only here).
        self._rms_w: float | None = None

    def add(self, t_s: float, error_w: float) -> None:
        self._samples.append((t_s, error_w))
        self._sum_sq += error_w * error_w
        self._sum += error_w
        side = 1 if error_w > BAND_W else -1 if error_w < -BAND_W else 0
        if side:
            if self._side and side != self._side:
                self._crossings.append(t_s)
            self._side = side
        horizon = t_s - WINDOW_S
        while self._samples and self._samples[0][0] < horizon:
            _, old = self._samples.popleft()
            self._sum_sq -= old * old
            self._sum -= old
        while self._crossings and self._crossings[0] < horizon:
            self._crossings.popleft()
        # Never empty here: the reading just added is inside the window.
        self._rms_w = math.sqrt(max(0.0, self._sum_sq) / len(self._samples))

    def rms_w(self) -> float | None:
        return self._rms_w

    def mean_w(self) -> float | None:
        """Mean grid error over the window (+ import): a lasting offset shows here."""
        if not self._samples:
            return None
        return self._sum / len(self._samples)

    def crossings(self) -> int:
        return len(self._crossings)

    def verdict(self, *, limited: bool) -> Quality:
        rms = self.rms_w()
        if rms is None:
            return Quality.IDLE
        if limited and rms > LIMITED_RMS_W:
            return Quality.BATTERY_LIMITED
        if self.crossings() >= OSCILLATING_CROSSINGS:
            return Quality.OSCILLATING
        if rms > SLUGGISH_RMS_W:
            # A large error that stays on one side is a slow response; one that swings
            # both ways without crossing often is a load that changes faster than we follow.
            mean = self.mean_w() or 0.0
            return Quality.SLUGGISH if abs(mean) >= ONE_SIDED * rms else Quality.OSCILLATING
        return Quality.STABLE
