"""Estimating the house's net demand from a delayed, noisy meter and the batteries' own power.

The grid reading describes an instant in the past (meter latency, poll phase); the batteries
have moved since. Adding the battery power *of that same instant* gives the house's net
demand then (net = grid + batteries), which no command of ours can change. Commanding that
demand never re-issues a correction that is already on its way: there is no loop gain on a
stale error, which is what makes naive controllers hunt.
"""

from __future__ import annotations

from collections import deque
from statistics import median


class PowerHistory:
    """Recent (time, fleet battery power) samples, interpolated at past instants."""

    def __init__(self, horizon_s: float = 30.0) -> None:
        self.horizon_s = horizon_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t_s: float, power_w: float) -> None:
        self._samples.append((t_s, power_w))
        while len(self._samples) > 2 and self._samples[1][0] < t_s - self.horizon_s:
            self._samples.popleft()

    def at(self, t_s: float) -> float | None:
        """Battery power at ``t_s`` (linear between samples, held at the ends)."""
        samples = self._samples
        if not samples:
            return None
        if t_s <= samples[0][0]:
            return samples[0][1]
        prev_t, prev_p = samples[-1]
        if t_s >= prev_t:
            return prev_p
        for i in range(len(samples) - 1, 0, -1):
            t0, p0 = samples[i - 1]
            t1, p1 = samples[i]
            if t0 <= t_s <= t1:
                if t1 - t0 <= 0:
                    return p1
                return p0 + (p1 - p0) * (t_s - t0) / (t1 - t0)
        return samples[0][1]


class MeterCadence:
    """Learns how often the meter updates, so a DSMR 4 meter (10 s) is not called stale."""

    def __init__(self) -> None:
        self.last_update_s: float | None = None
        self._intervals: deque[float] = deque(maxlen=9)

    def observe(self, updated_s: float | None) -> bool:
        """Record the meter's last-change time; True when it is a new reading."""
        if updated_s is None or updated_s == self.last_update_s:
            return False
        if self.last_update_s is not None and updated_s > self.last_update_s:
            self._intervals.append(updated_s - self.last_update_s)
        self.last_update_s = updated_s
        return True

    def typical_interval_s(self) -> float:
        return median(self._intervals) if len(self._intervals) >= 3 else 1.0

    def stale_limit_s(self, configured_s: float) -> float:
        """Configured limit, stretched for slow meters (never beyond 30 s)."""
        return max(configured_s, min(30.0, 2.5 * self.typical_interval_s()))


class NetDemandFilter:
    """Rejects meter noise without delaying real steps.

    Small deviations are smoothed (exponential, ``alpha``); a deviation beyond the step
    threshold is taken at once (one-shot feed-forward). While the grid oscillates the
    smoothing is strengthened (damping) so a pulsing load is not chased half a period late.
    """

    def __init__(self, *, step_threshold_w: float, alpha: float) -> None:
        self.step_threshold_w = step_threshold_w
        self.alpha = alpha
        self.value_w: float | None = None
        self.damping = 0.0  # 0 = none .. 1 = frozen
        self._recent_jumps: deque[tuple[float, int]] = deque()

    def update(self, t_s: float, sample_w: float) -> float:
        if self.value_w is None:
            self.value_w = sample_w
            return sample_w
        deviation = sample_w - self.value_w
        if abs(deviation) >= self.step_threshold_w:
            self._note_jump(t_s, 1 if deviation > 0 else -1)
            if self.damping > 0.5:
                # An oscillating load (induction hob, oven thermostat): follow its mean.
                self.value_w += deviation * (1.0 - self.damping)
            else:
                self.value_w = sample_w
        else:
            self.value_w += deviation * self.alpha
        return self.value_w

    def _note_jump(self, t_s: float, sign: int) -> None:
        jumps = self._recent_jumps
        jumps.append((t_s, sign))
        while jumps and jumps[0][0] < t_s - 60.0:
            jumps.popleft()
        reversals = sum(1 for a, b in zip(jumps, list(jumps)[1:], strict=False) if a[1] != b[1])
        # Many up/down jumps within a minute: the load pulses faster than we can follow.
        self.damping = min(0.8, max(0.0, (reversals - 5) * 0.1))

    def reset(self) -> None:
        self.value_w = None
        self.damping = 0.0
        self._recent_jumps.clear()
