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

import math
from collections import deque
from itertools import pairwise
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
        return _total(self._parts[-1]) if self._parts else 0.0

    def at(self, t_s: float) -> float:
        """Fleet power at ``t_s``: linear between samples, held at the ends."""
        times = self._times
        if not times:
            return 0.0
        if t_s <= times[0]:
            return _total(self._parts[0])
        if t_s >= times[-1]:
            return _total(self._parts[-1])
        for i in range(len(times) - 1, 0, -1):
            t0, t1 = times[i - 1], times[i]
            if t0 <= t_s <= t1:
                p0 = _total(self._parts[i - 1])
                p1 = _total(self._parts[i])
                if t1 - t0 <= 0:
                    return p1
                return p0 + (p1 - p0) * (t_s - t0) / (t1 - t0)
        return _total(self._parts[0])

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
        lows: list[float] = []
        highs: list[float] = []
        for name in names:
            values = [self._parts[i].get(name, 0.0) for i in range(first, last + 1)]
            lows.append(min(values))
            highs.append(max(values))
        return math.fsum(lows), math.fsum(highs)


def _total(parts: dict[str, float]) -> float:
    # fsum is exact, so the fleet's power does not depend on the order the batteries are
    # listed in (a plain sum may differ in the last bit and flip a rounding downstream).
    return math.fsum(parts.values())


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
            self.damping = 0.0
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


class ResponseTimer:
    """Learns how long the batteries take to get half-way to a new setpoint.

    Started on a large setpoint change, it watches the fleet's measured power and records
    when it crossed the half-way mark (interpolated between cycles). That is the lead a
    prediction needs: dead time plus half the ramp.
    """

    def __init__(self, initial_s: float = 2.0, timeout_s: float = 15.0) -> None:
        self.lead_s = initial_s
        self.samples = 0
        self.timeout_s = timeout_s
        self._start: tuple[float, float, float] | None = None  # t, from W, half-way W
        self._last: tuple[float, float] | None = None

    def start(self, t_s: float, from_w: float, to_w: float) -> None:
        self._start = (t_s, from_w, 0.5 * (from_w + to_w))
        self._last = (t_s, from_w)

    def observe(self, t_s: float, power_w: float) -> None:
        if self._start is None or self._last is None:
            return
        t0, from_w, half_w = self._start
        last_t, last_w = self._last
        self._last = (t_s, power_w)
        if t_s - t0 > self.timeout_s:
            self._start = None  # it never got there (saturated, blocked): no sample
            return
        rising = half_w > from_w
        crossed = power_w >= half_w if rising else power_w <= half_w
        if not crossed:
            return
        span = power_w - last_w
        frac = (half_w - last_w) / span if span else 1.0
        sample = last_t + min(max(frac, 0.0), 1.0) * (t_s - last_t) - t0
        self.samples += 1
        weight = 1.0 / min(self.samples, 5)
        self.lead_s += weight * (sample - self.lead_s)
        self._start = None


class PulsePredictor:
    """Anticipates a load that switches on and off with a steady rhythm.

    Induction hobs, oven and grill thermostats, microwaves at part power and washing-machine
    drums switch a fixed power on and off with fixed on and off times. Following such a load
    costs the loop's whole response (meter latency, dead time, ramp) at every edge. Once the
    rhythm is established (two full periods with consistent on and off times, known more
    precisely than the batteries respond), the fleet's target follows the rhythm ``lead_s``
    ahead, so that the batteries' ramp is centred on each edge.

    Edges are learnt from readings taken while the batteries were steady (their instant does
    not matter then). While anticipating, steady readings keep the two levels up to date, and
    the timing is corrected at every edge from the grid itself: the grid energy around an
    edge is its size times how late (import) or early (export) the batteries were. A steady
    reading that contradicts the rhythm is a miss: anticipation stops until the next edge, and
    after two misses in a row the rhythm is forgotten (the loop follows the load again).
    """

    def __init__(self, *, threshold_w: float) -> None:
        self.threshold_w = threshold_w
        self._edges: deque[tuple[float, int, float]] = deque(maxlen=8)  # t, sign, size
        self._level_w: float | None = None
        self._last_narrow_s: float | None = None
        self.active = False
        # The rhythm: "on" edges (sign ``_rise``) at t_on + k * period, "off" at + on_s.
        self._rise = 1
        self._size_w = 0.0
        self._base_w = 0.0  # the demand while "off"
        self._t_on = 0.0
        self._on_s = 0.0
        self._period_s = 0.0
        self._misses = 0
        self._suppress_until_s = float("-inf")
        self._edge: tuple[float, int] | None = None  # the edge whose grid energy is summed
        self._residual: list[tuple[float, float]] = []
        self._response_s = 6.0  # lead and readings: how long an edge shows on the grid

    # ---------------------------------------------------------------- observation
    def observe(
        self,
        t_s: float,
        value_w: float,
        *,
        narrow: bool,
        grid_w: float,
        interval_s: float,
        lead_s: float,
    ) -> None:
        """A reading of instant ``t_s``: demand estimate ``value_w`` (``narrow``: exact)."""
        self._response_s = 2.0 * lead_s + 2.0 * interval_s
        if self.active:
            self._correct_timing(t_s, grid_w)
        if not narrow:
            return
        previous_s = self._last_narrow_s
        self._last_narrow_s = t_s
        if self.active:
            self._track_levels(t_s, value_w)
            return
        if self._level_w is None or previous_s is None or t_s - previous_s > MAX_PERIOD_S:
            self._level_w = value_w
            self._edges.clear()
            return
        step_w = value_w - self._level_w
        if abs(step_w) < self.threshold_w:
            self._level_w += 0.3 * step_w  # the level drifts (base load, noise)
            return
        self._level_w = value_w
        if t_s - previous_s > 1.5 * interval_s + 1e-9:
            self._edges.clear()  # the edge's time is not known well enough to learn from
            return
        self._edges.append((0.5 * (t_s + previous_s), 1 if step_w > 0 else -1, abs(step_w)))
        self._learn(interval_s, lead_s, value_w)

    def _learn(self, interval_s: float, lead_s: float, value_w: float) -> None:
        """Two full periods of alternating edges with steady timing make a rhythm."""
        edges = list(self._edges)[-LEARN_EDGES:]
        if len(edges) < LEARN_EDGES:
            return
        signs = [e[1] for e in edges]
        if any(a == b for a, b in pairwise(signs)):
            return
        d = [b[0] - a[0] for a, b in pairwise(edges)]
        on, off = d[0::2], d[1::2]  # "on": the phase after an edge like the last one
        tolerance_s = 1.5 * interval_s
        if max(on) - min(on) > tolerance_s or max(off) - min(off) > tolerance_s:
            return
        sizes = [e[2] for e in edges]
        if max(sizes) > 1.6 * min(sizes) or d[0] + d[1] > MAX_PERIOD_S:
            return
        # Worth it only when the timing is known better than the batteries respond.
        if interval_s > lead_s + 1e-9:
            return
        last_t, last_sign, _ = edges[-1]
        self._rise = last_sign
        self._on_s = sum(on) / len(on)
        self._period_s = self._on_s + sum(off) / len(off)
        self._t_on = last_t
        self._size_w = sum(sizes) / len(sizes)
        self._base_w = value_w - self._rise * self._size_w
        self._misses = 0
        self._suppress_until_s = float("-inf")
        self._edge = None
        self.active = True

    def _track_levels(self, t_s: float, value_w: float) -> None:
        """A steady reading while anticipating: follow the levels; check the rhythm."""
        high_w = self._base_w + self._rise * self._size_w
        seen = 1 if abs(value_w - high_w) < abs(value_w - self._base_w) else 0
        # Readings near an edge may show either level; elsewhere they must fit the rhythm.
        guard_s = min(self._window_s(), 0.25 * min(self._on_s, self._period_s - self._on_s))
        near_s = min(t_s - self._last_edge_until(t_s)[0], self._next_edge_after(t_s)[0] - t_s)
        if near_s <= guard_s:
            return
        if seen != self._state_at(t_s):
            self._miss(t_s)
            return
        if seen == 1:
            self._size_w += 0.3 * (self._rise * (value_w - self._base_w) - self._size_w)
        else:
            self._base_w += 0.3 * (value_w - self._base_w)
        if self._size_w < self.threshold_w:
            self.forget()

    def _window_s(self) -> float:
        """How long around an edge the batteries' response shows on the grid."""
        return min(0.5 * min(self._on_s, self._period_s - self._on_s), self._response_s)

    def _correct_timing(self, t_s: float, grid_w: float) -> None:
        """Sum the grid around each edge; its energy says how late or early we were."""
        window_s = self._window_s()
        if self._edge is None:
            edge = self._next_edge_after(t_s - window_s)
            if edge[0] - t_s > window_s:
                return
            self._edge = edge
            self._residual = []
        edge_t, new_state = self._edge
        if t_s <= edge_t + window_s + 1e-9:
            self._residual.append((t_s, grid_w))
            return
        self._edge = None
        samples = self._residual
        if len(samples) < 2 or t_s < self._suppress_until_s:
            return
        step_s = (samples[-1][0] - samples[0][0]) / (len(samples) - 1)
        grid_ws = sum(g for _, g in samples) * step_s
        direction = self._rise if new_state == 1 else -self._rise
        error_s = -direction * grid_ws / self._size_w
        if abs(error_s) > MISS_SHARE * window_s:
            self._miss(edge_t)  # the edge did not come (or far off the rhythm)
            return
        self._misses = 0
        if new_state == 1:
            self._t_on += PLL_GAIN * error_s
            self._period_s += PLL_PERIOD_GAIN * error_s
        else:
            self._on_s += PLL_GAIN * error_s
        self._on_s = min(max(self._on_s, 0.1 * self._period_s), 0.9 * self._period_s)

    # ---------------------------------------------------------------- prediction
    def _state_at(self, t_s: float) -> int:
        phase = (t_s - self._t_on) % self._period_s
        return 1 if phase < self._on_s else 0

    def _next_edge_after(self, t_s: float) -> tuple[float, int]:
        """The rhythm's first edge after ``t_s``: (time, state after it)."""
        start = self._t_on + ((t_s - self._t_on) // self._period_s) * self._period_s
        if start + self._on_s > t_s:
            return start + self._on_s, 0
        return start + self._period_s, 1

    def _last_edge_until(self, t_s: float) -> tuple[float, int]:
        """The rhythm's last edge at or before ``t_s``: (time, state after it)."""
        start = self._t_on + ((t_s - self._t_on) // self._period_s) * self._period_s
        if start + self._on_s <= t_s:
            return start + self._on_s, 0
        return start, 1

    def target_w(self, now_s: float, lead_s: float) -> float | None:
        """The demand to steer to now, ``lead_s`` ahead; None when not anticipating."""
        if not self.active or now_s < self._suppress_until_s:
            return None
        return self._base_w + self._rise * self._size_w * self._state_at(now_s + lead_s)

    def levels_w(self) -> tuple[float, float]:
        """The demand while "off" and while "on"."""
        return self._base_w, self._base_w + self._rise * self._size_w

    def _miss(self, t_s: float) -> None:
        self._misses += 1
        if self._misses >= 2:
            self.forget()
            return
        # Stop anticipating until the rhythm's next edge after this one.
        self._suppress_until_s = self._next_edge_after(t_s)[0] - 0.1 * self._period_s

    def forget(self) -> None:
        self.active = False
        self._edge = None
        self._residual = []
        self._misses = 0
        self._edges.clear()
        self._level_w = None


MISS_SHARE = 0.8  # an edge "late" by more than this share of its window did not come
LEARN_EDGES = 7  # three full periods of steady rhythm before anticipating
MAX_PERIOD_S = 1800.0  # slower rhythms are not anticipated
PLL_GAIN = 0.3  # share of an edge's measured timing error corrected at once
PLL_PERIOD_GAIN = 0.05  # share of an "on" edge's timing error that corrects the period


class FastLoadHold:
    """A load component the loop cannot follow is held at its cheapest level, not chased.

    From a load's edge to the batteries matching it takes the loop ``d`` (the meter's
    sampling and latency, the poll, the batteries' dead time and half their ramp: measured,
    ``DemandEstimator.loop_delay_s``). A load that switches a component of size ``E`` on for
    ``t_on`` and off for ``t_off`` costs, per cycle and watt of ``E``, when chased: ``d`` of
    import at each rise and ``d`` of export at each fall; when held on: its off times as
    export; when held off: its on times as import. Export counts ``w`` times import (the
    worse error). The cheapest of ``(1 + w) d``, ``w t_off`` and ``t_on`` wins, from the
    load's own recent pulses and the measured ``d``: a slow load is chased, a fast one held.

    While held, the demand reads as a slow part plus the two-level fast component: edges of
    the pulses' own size (within ``PATTERN_SPREAD``) switch the component, any other change
    is the slow part and is followed at once (a kettle amid a hob's cycling). The target is
    the slow part plus the component at its held level. A phase longer than the pulses' own
    (by ``PATTERN_SPREAD``) is no pulse: the component is followed again.
    """

    def __init__(self, *, threshold_w: float, export_weight: float) -> None:
        self.threshold_w = threshold_w
        self.export_weight = export_weight
        self._level_w: float | None = None  # the demand's current level (edges move it)
        self._edge: tuple[float, int] | None = None  # the last edge: time, sign
        # Recent phases: (ended at, lasted s, +1 on / -1 off, size W of their closing edge).
        self._phases: deque[tuple[float, float, int, float]] = deque()
        self._on = False  # the fast component is on now (by its own edges)
        self._held_on = False
        self.active = False

    def observe(self, t_s: float, demand_w: float, loop_delay_s: float) -> None:
        """A new estimate of the demand at ``t_s``."""
        if self._level_w is None:
            self._level_w = demand_w
        step_w = demand_w - self._level_w
        if abs(step_w) < self.threshold_w:
            self._level_w += 0.3 * step_w  # the level drifts (base load, noise)
        else:
            self._on_edge(t_s, step_w)
            self._level_w = demand_w
        phases = self._phases
        longest_s = max([p[1] for p in phases], default=0.0)
        memory_s = 4.0 * max(2.0 * loop_delay_s, longest_s)
        while phases and t_s - phases[0][0] > memory_s:
            phases.popleft()
        self._decide(t_s, loop_delay_s)

    def _on_edge(self, t_s: float, step_w: float) -> None:
        sign = 1 if step_w > 0 else -1
        size_w = abs(step_w)
        in_pattern = self._in_pattern(size_w)
        if self._edge is not None and self._edge[1] != sign:
            # A phase ended: on (rise ... fall) or off (fall ... rise).
            self._phases.append((t_s, t_s - self._edge[0], self._edge[1], size_w))
        self._edge = (t_s, sign)
        if in_pattern or not self.active:
            self._on = sign > 0

    def _decide(self, t_s: float, loop_delay_s: float) -> None:
        on = [p[1] for p in self._phases if p[2] > 0]
        off = [p[1] for p in self._phases if p[2] < 0]
        if len(on) < 2 or len(off) < 2:
            self.active = False
            return
        w = self.export_weight
        on_s, off_s = sum(on) / len(on), sum(off) / len(off)
        chase, hold_on, hold_off = (1.0 + w) * loop_delay_s, w * off_s, on_s
        self.active = min(hold_on, hold_off) < chase
        self._held_on = hold_on < hold_off
        # A phase longer than the pulses' own is no pulse: the component is followed again.
        if self._edge is not None and self.active:
            current_s = t_s - self._edge[0]
            usual_s = max(on) if self._on else max(off)
            if current_s > PATTERN_SPREAD * usual_s:
                self.active = False

    def _in_pattern(self, size_w: float) -> bool:
        size = self.amplitude_w()
        return size > 0 and size / PATTERN_SPREAD <= size_w <= size * PATTERN_SPREAD

    def amplitude_w(self) -> float:
        """The fast component's size: the median size of its recent edges."""
        sizes = sorted(p[3] for p in self._phases)
        return sizes[len(sizes) // 2] if sizes else 0.0

    def target_w(self, demand_w: float) -> float:
        """The demand with its fast component at the held level."""
        if not self.active:
            return demand_w
        size_w = self.amplitude_w()
        on_now = size_w if self._on else 0.0
        return demand_w - on_now + (size_w if self._held_on else 0.0)

    def forget(self) -> None:
        self._level_w = None
        self._edge = None
        self._phases.clear()
        self._on = False
        self._held_on = False
        self.active = False


PATTERN_SPREAD = 1.6  # edges within this factor of the pulses' size, phases within this
# factor of their longest, belong to the pattern
