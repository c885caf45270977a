"""Estimating the house's net demand from a delayed, noisy meter and the batteries' own power.

The grid reading describes an instant in the past (meter latency, poll phase); the batteries
have moved since. Adding the battery power *of that same instant* gives the house's net
demand then (net = grid + batteries), which no command of ours can change. Commanding that
demand never re-issues a correction that is already on its way: there is no loop gain on a
stale error, which is what makes naive controllers hunt.

The instant a reading describes is only known to lie in a window (the meter's latency and the
unknown phase between its updates and our polls). While the batteries are steady that does
not matter; while they ramp, the reading only proves that the demand lies in an interval.
The filter then moves its estimate no further than into that interval: it acts on what the
reading proves, and waits for a reading that post-dates the batteries' response for the rest.
"""

from __future__ import annotations

from collections import deque
from statistics import median


class PowerHistory:
    """Recent per-battery power samples (one per control cycle), for past instants."""

    def __init__(self, horizon_s: float = 30.0) -> None:
        self.horizon_s = horizon_s
        self._times: deque[float] = deque()
        self._parts: deque[dict[str, float]] = deque()

    def add(self, t_s: float, parts: dict[str, float]) -> None:
        """The batteries' measured power (+ discharging) at ``t_s``, by name."""
        self._times.append(t_s)
        self._parts.append(dict(parts))
        while len(self._times) > 2 and self._times[1] < t_s - self.horizon_s:
            self._times.popleft()
            self._parts.popleft()

    def latest_w(self) -> float:
        return sum(self._parts[-1].values()) if self._parts else 0.0

    def at(self, t_s: float) -> float:
        """Fleet power at ``t_s``: linear between samples, held at the ends."""
        times = self._times
        if not times:
            return 0.0
        if t_s <= times[0]:
            return sum(self._parts[0].values())
        if t_s >= times[-1]:
            return sum(self._parts[-1].values())
        for i in range(len(times) - 1, 0, -1):
            t0, t1 = times[i - 1], times[i]
            if t0 <= t_s <= t1:
                p0 = sum(self._parts[i - 1].values())
                p1 = sum(self._parts[i].values())
                if t1 - t0 <= 0:
                    return p1
                return p0 + (p1 - p0) * (t_s - t0) / (t1 - t0)
        return sum(self._parts[0].values())

    def bounds(self, t0_s: float, t1_s: float) -> tuple[float, float]:
        """Least and most fleet power possible somewhere in [t0_s, t1_s].

        Between two samples a battery moves monotonically (its goal changes only with a
        command, and commands are issued at the sampling instants), so its power in the
        window lies between the extremes of the samples that bracket the window.
        """
        times = self._times
        if not times:
            return 0.0, 0.0
        n = len(times)
        first = 0
        for i in range(n - 1, -1, -1):
            if times[i] <= t0_s:
                first = i
                break
        last = n - 1
        for i in range(first, n):
            if times[i] >= t1_s:
                last = i
                break
        names: set[str] = set()
        for i in range(first, last + 1):
            names.update(self._parts[i])
        lo = hi = 0.0
        for name in names:
            values = [self._parts[i].get(name, 0.0) for i in range(first, last + 1)]
            lo += min(values)
            hi += max(values)
        return lo, hi


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

    Each reading bounds the net demand to an interval (a point while the batteries are
    steady). The estimate moves towards the nearest point of that interval: a small move is
    smoothed (exponential, ``alpha``: meter noise), a move of at least ``step_threshold_w``
    is taken at once (a real load step: one-shot feed-forward, no smoothing lag). While the
    load oscillates (many alternating steps a minute) large moves are damped, so a pulsing
    load is not chased half a period late.
    """

    def __init__(
        self,
        *,
        step_threshold_w: float,
        alpha: float,
        feedforward: bool = True,
        damping: bool = True,
    ) -> None:
        self.step_threshold_w = step_threshold_w
        self.alpha = alpha
        self.feedforward = feedforward
        self.damping_enabled = damping
        self.value_w: float | None = None
        self.damping = 0.0  # 0 = none .. 1 = frozen
        self._recent_jumps: deque[tuple[float, int]] = deque()

    def update(self, t_s: float, lo_w: float, hi_w: float | None = None) -> float:
        """A new reading: the net demand lies in [lo_w, hi_w] (the point lo_w without hi_w)."""
        hi_w = lo_w if hi_w is None else max(lo_w, hi_w)
        if self.value_w is None:
            self.value_w = 0.5 * (lo_w + hi_w)
            return self.value_w
        # Move no further than into what the reading proves.
        nearest_w = min(max(self.value_w, lo_w), hi_w)
        deviation = nearest_w - self.value_w
        if abs(deviation) >= self.step_threshold_w:
            self._note_jump(t_s, 1 if deviation > 0 else -1)
            if self.damping > 0.5:
                # An oscillating load (induction hob, oven thermostat): follow its mean.
                self.value_w += deviation * (1.0 - self.damping)
            elif self.feedforward:
                self.value_w = nearest_w
            else:
                self.value_w += deviation * self.alpha
        else:
            self.value_w += deviation * self.alpha
        return self.value_w

    def _note_jump(self, t_s: float, sign: int) -> None:
        if not self.damping_enabled:
            return
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
