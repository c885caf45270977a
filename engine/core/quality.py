"""The control-quality verdict users see: stable, oscillating, sluggish or battery-limited."""

from __future__ import annotations

import math
from collections import deque
from enum import StrEnum

WINDOW_S = 60.0
BAND_W = 20.0


class Quality(StrEnum):
    STABLE = "stable"
    OSCILLATING = "oscillating"
    SLUGGISH = "sluggish"
    BATTERY_LIMITED = "battery_limited"
    IDLE = "idle"
    SAFE_HOLD = "safe_hold"


class QualityMonitor:
    """RMS grid error and band crossings over the last minute of meter readings."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t_s: float, error_w: float) -> None:
        self._samples.append((t_s, error_w))
        while self._samples and self._samples[0][0] < t_s - WINDOW_S:
            self._samples.popleft()

    def rms_w(self) -> float | None:
        if not self._samples:
            return None
        return math.sqrt(sum(e * e for _, e in self._samples) / len(self._samples))

    def crossings(self) -> int:
        side = 0
        count = 0
        for _, e in self._samples:
            now = 1 if e > BAND_W else -1 if e < -BAND_W else 0
            if now and side and now != side:
                count += 1
            if now:
                side = now
        return count

    def verdict(self, *, limited: bool) -> Quality:
        rms = self.rms_w()
        if rms is None:
            return Quality.IDLE
        if limited and rms > 50.0:
            return Quality.BATTERY_LIMITED
        if self.crossings() >= 6:
            return Quality.OSCILLATING
        if rms > 100.0:
            return Quality.SLUGGISH
        return Quality.STABLE
