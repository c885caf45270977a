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
from itertools import islice, pairwise
from statistics import median
from typing import NamedTuple


class PowerHistory:
    """Recent per-battery power samples (one per control cycle), for past instants."""

    def __init__(self, horizon_s: float = 30.0) -> None:
        self.horizon_s = horizon_s
        self._times: deque[float] = deque()
        self._parts: deque[dict[str, float]] = deque()

    def add(self, t_s: float, parts: dict[str, float]) -> None:
        """The batteries' measured power (+ discharging) at ``t_s``, by name.

        The history keeps ``parts`` itself: the caller hands it over (the policy builds a
        new one every cycle) and must not change it afterwards.
        """
        self._times.append(t_s)
        self._parts.append(parts)
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
        window = list(islice(self._parts, first, last + 1))
        # Each battery's least and most power in one pass over the window (mostly its last
        # two samples). Kept as min() and max() would: the first of equal values. fsum is
        # exact, so the order of the batteries does not matter.
        lows = dict(window[0])
        highs = lows.copy()
        for parts in islice(window, 1, None):
            if parts.keys() != lows.keys():
                return _bounds_by_name(window)  # a battery came or went within the window
            for name, power_w in parts.items():
                if power_w < lows[name]:
                    lows[name] = power_w
                elif power_w > highs[name]:
                    highs[name] = power_w
        return math.fsum(lows.values()), math.fsum(highs.values())


def _bounds_by_name(window: list[dict[str, float]]) -> tuple[float, float]:
    """``PowerHistory.bounds`` over samples that differ in their batteries: a battery
    missing from a sample counts as 0 W then."""
    names: set[str] = set()
    for parts in window:
        names.update(parts)
    lows: list[float] = []
    highs: list[float] = []
    for name in names:
        values = [parts.get(name, 0.0) for parts in window]
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
        # The median of _intervals, taken when they change (it is asked for several times a
        # cycle, they change at most once per reading).
        self._typical_s = 1.0

    def observe(self, updated_s: float | None) -> bool:
        """Record the meter's last-change time; True when it is a new reading."""
        if updated_s is None or updated_s == self.last_update_s:
            return False
        if self.last_update_s is not None and updated_s > self.last_update_s:
            interval_s = updated_s - self.last_update_s
            intervals = self._intervals
            # Once full, the oldest interval leaves as this one comes in: when the two are
            # equal (most readings of a steady meter) the intervals, and their median, stay.
            same = len(intervals) == intervals.maxlen and intervals[0] == interval_s
            intervals.append(interval_s)
            if len(intervals) >= 3 and not same:
                self._typical_s = median(intervals)
        self.last_update_s = updated_s
        return True

    def typical_interval_s(self) -> float:
        return self._typical_s

    def stale_limit_s(self, configured_s: float) -> float:
        """Configured limit, stretched for slow meters (never beyond 30 s)."""
        return max(configured_s, min(30.0, 2.5 * self.typical_interval_s()))


class NetDemandFilter:
    """Rejects meter noise without delaying real steps.

    Each reading bounds the net demand to an interval (a point while the batteries are
    steady). The estimate moves towards the nearest point of that interval: a small move is
    smoothed (exponential, ``alpha``: meter noise), a move of at least ``step_threshold_w``
    is taken at once (a real load step: one-shot feed-forward, no smoothing lag), and so is
    the part of a smaller move the meter's learnt noise cannot explain. While the
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

    def update(
        self,
        t_s: float,
        lo_w: float,
        hi_w: float | None = None,
        significant_w: float | None = None,
    ) -> float:
        """A new reading: the net demand lies in [lo_w, hi_w] (the point lo_w without hi_w).

        ``significant_w``: a smaller move than ``step_threshold_w`` but beyond this (what the
        meter's learnt noise cannot explain) is a real change too, taken at once."""
        hi_w = lo_w if hi_w is None else max(lo_w, hi_w)
        if self.value_w is None:
            self.value_w = 0.5 * (lo_w + hi_w)
            return self.value_w
        # Move no further than into what the reading proves.
        nearest_w = min(max(self.value_w, lo_w), hi_w)
        deviation = nearest_w - self.value_w
        if abs(deviation) >= self.step_threshold_w:
            self._note_jump(t_s, 1 if deviation > 0 else -1)
            if self.damping > 0.5 and deviation > 0:
                # An oscillating load (induction hob, oven thermostat): its rises are followed
                # partly, its falls at once (a fall not followed is exported).
                self.value_w += deviation * (1.0 - self.damping)
            elif self.feedforward:
                self.value_w = nearest_w
            else:
                self.value_w += deviation * self.alpha
        elif self.feedforward and significant_w is not None and abs(deviation) > significant_w:
            # What the noise can explain is smoothed, the rest is a real change: taken at once.
            explained = significant_w if deviation > 0 else -significant_w
            self.value_w += explained * self.alpha + (deviation - explained)
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


def proves_a_point(width_w: float, threshold_w: float) -> bool:
    """A reading whose interval (the batteries' movement while it was taken) is narrow
    enough to stand for one value of the demand: what rhythms and flickers are learnt from."""
    return width_w <= 0.5 * threshold_w


class MeterNoise:
    """The meter's own noise (sigma, W), learnt from the readings themselves.

    A meter's noise shows in the change between every two successive readings; a load's
    switching (a step, or a flicker that switches every reading or two) does not. So each
    three successive changes count with the smallest of them (``MIN_OF_THREE_MEDIAN``
    calibrates its median for white noise), and a minute's noise is the median of those:
    robust to loads that switch at up to two of three readings, all evening long. Over the
    last hour, the minute at a quarter from the quietest (a minute that happens to be
    quieter is no noise estimate: it is the low tail; on pure noise this learns about 0.85
    sigma, so the flicker floor opens a little early rather than late). Only readings that
    each stand for one value of the demand count. A real P1 reading is exact: its noise is
    learnt as (nearly) zero.
    """

    def __init__(self, *, threshold_w: float) -> None:
        self.threshold_w = threshold_w
        self._last_w: float | None = None
        self._last_change_w: float | None = None  # |the previous change|, W
        self._earlier_change_w: float | None = None  # |the one before|, W
        self._block: list[float] = []  # this minute's smallest-of-three changes, W
        self._block_start_s: float | None = None
        self._minutes: deque[float] = deque(maxlen=NOISE_MINUTES)  # each one's noise
        self.sigma_w: float | None = None  # once learnt

    def observe(self, t_s: float, point_w: float, width_w: float) -> None:
        """A reading that proves the demand to be ``point_w`` to within ``width_w``."""
        if not proves_a_point(width_w, self.threshold_w):
            self.forget_last()  # the change across it says nothing of the meter
            return
        last, self._last_w = self._last_w, point_w
        if last is None:
            return
        change = abs(point_w - last)
        if change >= self.threshold_w:
            self._last_change_w = self._earlier_change_w = None  # a real step
            return
        previous, self._last_change_w = self._last_change_w, change
        earlier, self._earlier_change_w = self._earlier_change_w, previous
        if previous is None or earlier is None:
            return
        if self._block_start_s is None:
            self._block_start_s = t_s
        self._block.append(min(earlier, previous, change))
        if t_s - self._block_start_s < 60.0:
            return
        block = sorted(self._block)
        self._minutes.append(block[len(block) // 2] / MIN_OF_THREE_MEDIAN)
        minutes = sorted(self._minutes)
        self.sigma_w = minutes[len(minutes) // 4]
        self._block = []
        self._block_start_s = t_s

    def significant_change_w(self, width_w: float = 0.0) -> float | None:
        """A change between two readings larger than this is no noise (None: not learnt)."""
        if self.sigma_w is None:
            return None
        return max(FLICKER_SIGNIFICANCE * SQRT2 * self.sigma_w, width_w + READING_RESOLUTION_W)

    def forget_last(self) -> None:
        """The next reading starts a new run of changes (a gap, a hold at 0 W)."""
        self._last_w = None
        self._last_change_w = self._earlier_change_w = None


class FlickerFloor:
    """Holds a small fluctuation faster than the loop at its low side, not at its middle.

    A load that flickers by less than the step threshold (a TV's picture-dependent draw, a PC
    under load, a pump's speed control) faster than the loop can follow costs the same
    exchange at any constant level between its low and its high: the grid only swaps import
    for export. Export costs more (``export_weight``), so the level that costs least over a
    window the loop cannot follow within (two loop delays) is the readings' ``1 / (1 +
    weight)`` quantile: the grid then stays on the import side instead of crossing zero at
    every flicker.

    The meter's own noise is no flicker (biasing for it would only import): the floor acts
    only while the window holds a rise and a fall each larger than ``FLICKER_SIGNIFICANCE``
    standard deviations of the difference of two noisy readings; a single step, a drift or
    noise alone does not open it. The noise is learnt from the readings themselves
    (``MeterNoise``). A real step (at least ``threshold_w``) starts the window afresh, and
    the level is never above the estimate, so a fall is followed at once.
    """

    def __init__(self, *, threshold_w: float, export_weight: float, noise: MeterNoise) -> None:
        self.threshold_w = threshold_w
        self.quantile = 1.0 / (1.0 + export_weight)
        self.noise = noise  # the meter's noise, learnt by the estimator from every reading
        self._window: deque[tuple[float, float, float]] = deque()  # t, point, width

    def update(
        self, t_s: float, point_w: float, estimate_w: float, window_s: float, width_w: float
    ) -> float:
        """The level to steer to: ``estimate_w``, or lower while the demand flickers.

        ``point_w`` is what the reading proves of the demand, to within ``width_w`` (the
        batteries' movement while it was taken). A change between readings counts as a
        flicker's only beyond that uncertainty too (on an exact meter it is all there is),
        and a reading taken while the batteries moved far is left out."""
        window = self._window
        while window and window[0][0] < t_s - window_s:
            window.popleft()
        if not proves_a_point(width_w, self.threshold_w):
            return estimate_w  # the batteries moved too much while the reading was taken
        if window and abs(point_w - window[-1][1]) >= self.threshold_w:
            window.clear()
        window.append((t_s, point_w, width_w))
        if len(window) < 3:
            return estimate_w
        # A flicker: within the window the demand went both up and down by clearly more than
        # the meter's noise and the readings' own uncertainty. A single step, a drift or
        # noise alone does not count.
        large_w = self.noise.significant_change_w(max(w for _, _, w in window))
        if large_w is None:
            return estimate_w
        values = [v for _, v, _ in window]
        changes = [b - a for a, b in pairwise(values)]
        if not (max(changes) > large_w and min(changes) < -large_w):
            return estimate_w
        # The level of least cost over the window's readings (import 1, export ``weight``):
        # the lowest reading with at least ``quantile`` of them at or below it; where the
        # cost is flat between two readings, the lower one (the import side).
        values.sort()
        k = max(0, math.ceil(self.quantile * len(values) - 1e-9) - 1)
        return min(estimate_w, values[k])

    def seen(self, value_w: float) -> bool:
        """Whether the demand went as far as ``value_w`` within the window already (a
        flicker returning, not a new level)."""
        window = self._window
        return bool(window) and min(v for _, v, _ in window) <= value_w <= max(
            v for _, v, _ in window
        )

    def reset(self) -> None:
        """Start the window afresh (what was learnt of the meter's noise stays)."""
        self._window.clear()


FLICKER_SIGNIFICANCE = 3.0  # 3 sigma: noise alone gives a rise and a fall that large ~never
READING_RESOLUTION_W = 1.0  # readings are whole watts: an exact meter's noise is below this
SQRT2 = math.sqrt(2.0)
# For white noise of sigma, the median of the smallest of three successive reading-to-reading
# changes is 0.379 sigma (numerically, over a million draws; 0.674 * sqrt(2) for one change).
MIN_OF_THREE_MEDIAN = 0.379
NOISE_MINUTES = 60  # the meter's noise is learnt over the last hour's minutes


class ResponseTimer:
    """Learns how the batteries answer a new setpoint: dead time, ramp rate, half-way time.

    Started on a large setpoint change, it watches the fleet's measured power and records
    when it passed 10 %, half and 90 % of the way (interpolated between cycles). The half-way
    time is the lead a centred prediction needs (dead time plus half the ramp); the 10 % and
    90 % marks give the ramp rate (W/s of the whole fleet) and, from it, the dead time.
    """

    def __init__(self, initial_s: float = 2.0, timeout_s: float = 15.0) -> None:
        self.lead_s = initial_s
        self.dead_s = 0.5 * initial_s
        self.ramp_w_per_s = 1000.0  # until measured: a Venus E's nominal ramp
        self.samples = 0
        self.ramp_samples = 0
        self.timeout_s = timeout_s
        self._start: tuple[float, float, float] | None = None  # t, from W, to W
        self._marks: dict[float, float] = {}  # fraction of the way -> when passed
        self._last: tuple[float, float] | None = None
        self._steepest_w_per_s = 0.0  # the fastest move between two samples of this response

    @property
    def timing(self) -> bool:
        """A response is being timed: ``observe`` wants the fleet's power."""
        return self._start is not None and self._last is not None

    def start(self, t_s: float, from_w: float, to_w: float) -> None:
        self._start = (t_s, from_w, to_w)
        self._marks = {}
        self._last = (t_s, from_w)
        self._steepest_w_per_s = 0.0

    def observe(self, t_s: float, power_w: float) -> None:
        if self._start is None or self._last is None:
            return
        t0, from_w, to_w = self._start
        last_t, last_w = self._last
        self._last = (t_s, power_w)
        if t_s > last_t:
            slope = abs(power_w - last_w) / (t_s - last_t)
            self._steepest_w_per_s = max(self._steepest_w_per_s, slope)
        if t_s - t0 > self.timeout_s:
            self._start = None  # it never got there (saturated, blocked): no sample
            return
        span_w = to_w - from_w
        for fraction in (0.1, 0.5, 0.9):
            if fraction in self._marks:
                continue
            mark_w = from_w + fraction * span_w
            crossed = power_w >= mark_w if span_w > 0 else power_w <= mark_w
            if not crossed:
                break
            step = power_w - last_w
            frac = (mark_w - last_w) / step if step else 1.0
            self._marks[fraction] = last_t + min(max(frac, 0.0), 1.0) * (t_s - last_t) - t0
            if fraction == 0.5:
                self.samples += 1
                weight = 1.0 / min(self.samples, 5)
                self.lead_s += weight * (self._marks[0.5] - self.lead_s)
        if 0.9 not in self._marks:
            return
        ramp_s = self._marks[0.9] - self._marks[0.1]
        if ramp_s > 1e-6:
            # Interpolating the 10 % and 90 % marks between samples a cycle apart makes a
            # ramp of about a cycle look slower than it is; a pair of samples that both fall
            # on the ramp shows its rate itself (the steepest pair: never faster than it).
            rate = max(0.8 * abs(span_w) / ramp_s, self._steepest_w_per_s)
            dead = self._marks[0.1] - 0.1 * abs(span_w) / rate
            self.ramp_samples += 1
            weight = 1.0 / min(self.ramp_samples, 5)
            self.ramp_w_per_s += weight * (rate - self.ramp_w_per_s)
            self.dead_s += weight * (max(0.0, dead) - self.dead_s)
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
    the timing is corrected at every edge from the grid itself: the batteries' part of it is
    known from the command sent, so the meter's samples show where the load stepped. A steady
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
        self._trusted = True  # its rises may be anticipated (no miss since one was seen)
        # What the fleet was actually steered to: the anticipated state, and when it last
        # changed (the command that moved the batteries towards the next edge), with the
        # dead time and ramp it was timed with. An edge is judged only against a command.
        self._applied_state: int | None = None
        self._switches: deque[tuple[float, int]] = deque(maxlen=3)  # (when, state switched to)
        self._timing = (1.0, 1000.0)  # dead s, ramp W/s of the last prediction

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
        tolerance_s = 0.5 * interval_s
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
        self._trusted = True
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
        expected = self._state_at(t_s)
        expected_w = high_w if expected == 1 else self._base_w
        if abs(value_w - expected_w) >= self.threshold_w and (
            abs(value_w - high_w) >= self.threshold_w
            and abs(value_w - self._base_w) >= self.threshold_w
        ):
            # Far from both levels: the slow part under the rhythm moved (a kettle, a heater
            # on top of a hob's pulsing). The rhythm goes on from the new level.
            self._base_w += value_w - expected_w
            return
        if seen != expected:
            self._miss(t_s)
            return
        if seen == 1:
            self._trusted = True
            self._size_w += 0.3 * (self._rise * (value_w - self._base_w) - self._size_w)
        else:
            self._base_w += 0.3 * (value_w - self._base_w)
        if self._size_w < self.threshold_w:
            self.forget()

    def _window_s(self) -> float:
        """How long around an edge the batteries' response shows on the grid."""
        return min(0.5 * min(self._on_s, self._period_s - self._on_s), self._response_s)

    def _correct_timing(self, t_s: float, grid_w: float) -> None:
        """Collect the grid's samples around each edge; they say how late or early it came."""
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
        phase_before_s = self._on_s if new_state == 0 else self._period_s - self._on_s
        switch = next(
            (
                sw
                for sw in self._switches
                if sw[1] == new_state and edge_t - phase_before_s < sw[0] <= edge_t + window_s
            ),
            None,
        )
        if switch is None:
            return  # the fleet was not steered to this edge (held, saturated): nothing to judge
        direction = self._rise if new_state == 1 else -self._rise
        dead_s, ramp_w_per_s = self._timing
        reach_w = self._edge_ramp(direction > 0, ramp_w_per_s)[0]
        error_s = self._edge_error_s(
            samples, edge_t, direction > 0, switch[0] + dead_s, reach_w, ramp_w_per_s
        )
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

    def _edge_error_s(
        self,
        samples: list[tuple[float, float]],
        edge_t: float,
        rises: bool,
        start_s: float,
        reach_w: float,
        ramp_w_per_s: float,
    ) -> float:
        """How much later than ``edge_t`` the load's edge came, from the grid's samples.

        The batteries' part of the grid is known: they started ``start_s`` (the command plus
        their dead time) towards the other level at their ramp, ``reach_w`` far. What is
        left is the load's step, of the rhythm's size, at an unknown instant: it is the
        instant that explains the samples best. A meter samples the grid once an interval,
        so the samples only say between which two of them the load stepped: the middle of
        those two is the estimate (an energy summed from so few samples would be biased by
        where they fall on the batteries' ramp, and that bias does not average out when the
        rhythm is a whole number of meter intervals).
        """
        ramp = max(ramp_w_per_s, 1.0)
        size = self._size_w

        def battery_w(t: float) -> float:
            moved = min(reach_w, max(0.0, ramp * (t - start_s)))
            return moved if rises else reach_w - moved

        def load_w(t: float, at_s: float) -> float:
            return size if (t >= at_s) == rises else 0.0

        times = [t for t, _ in samples]
        # Candidate instants: just before each sample (the step lies between it and the
        # previous one), and after the last (it did not come within the window).
        best_s, best_cost = float("inf"), float("inf")
        for k, at_s in enumerate([*times, float("inf")]):
            cost = sum((g - load_w(t, at_s) + battery_w(t)) ** 2 for t, g in samples)
            if cost < best_cost:
                previous_s = times[k - 1] if k > 0 else times[0] - (times[1] - times[0])
                best_cost = cost
                best_s = 0.5 * (previous_s + at_s) if k < len(times) else float("inf")
        return best_s - edge_t

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

    def target_w(
        self,
        now_s: float,
        dead_s: float,
        ramp_w_per_s: float,
        *,
        cycle_s: float = 0.0,
        export_weight: float = 1.0,
    ) -> float | None:
        """The demand to steer to now; None when not anticipating.

        Each edge is timed from the import side: the batteries' ramp starts as the load
        rises (a dead time ahead) and ends as it falls (a dead time and the whole ramp
        ahead; a high phase shorter than two ramps is left half-way, so the batteries turn
        at its middle and are back as it ends). Measured: ``dead_s`` and the fleet's ramp.
        Commands go out once a cycle (``cycle_s``): an edge's command goes out this cycle
        when that costs less than the next cycle would (``_edge_cost``: the grid error, an
        exported W s counting ``export_weight``), which also moves it a little towards the
        export side, where a share of the ramp's import is saved for less export.
        """
        if not self.active or not self._trusted or now_s < self._suppress_until_s:
            return None
        self._timing = (dead_s, ramp_w_per_s)
        edge_s, new_state = self._next_edge_after(now_s)
        load_rises = (new_state == 1) == (self._rise > 0)
        size_w, ramp_s = self._edge_ramp(load_rises, ramp_w_per_s)
        # The ideal command instant: the batteries' ramp starts at a rise, ends at a fall.
        early_s = edge_s - dead_s - (0.0 if load_rises else ramp_s) - now_s
        if early_s <= 0.0 or (
            cycle_s > 0.0
            and _edge_cost(-early_s, size_w, ramp_s, export_weight, load_rises)
            <= _edge_cost(cycle_s - early_s, size_w, ramp_s, export_weight, load_rises)
        ):
            state = new_state
        else:
            state = self._state_at(now_s)
        return self._base_w + self._rise * self._size_w * state

    def applied(self, now_s: float, target_w: float) -> None:
        """This cycle the fleet was steered to ``target_w``, a level of the rhythm: note
        when it switched level (the command an edge is judged against)."""
        state = 1 if abs(target_w - self._base_w) > 0.5 * self._size_w else 0
        if state != self._applied_state:
            self._switches.append((now_s, state))
        self._applied_state = state

    def not_applied(self) -> None:
        """The fleet was not steered by the rhythm this cycle."""
        self._applied_state = None

    def _edge_ramp(self, load_rises: bool, ramp_w_per_s: float) -> tuple[float, float]:
        """How far the batteries move at an edge and how long that takes: the whole size
        in ``size / ramp``, except when the high phase is shorter than two such ramps: then
        they turn half-way through it (and fall from what they reached)."""
        ramp = max(ramp_w_per_s, 1.0)
        ramp_s = self._size_w / ramp
        if load_rises:
            return self._size_w, ramp_s
        high_s = self._on_s if self._rise > 0 else self._period_s - self._on_s
        turn_s = min(ramp_s, 0.5 * high_s)
        return ramp * turn_s, turn_s

    def levels_w(self) -> tuple[float, float]:
        """The demand while "off" and while "on"."""
        return self._base_w, self._base_w + self._rise * self._size_w

    def _miss(self, t_s: float) -> None:
        # A rise anticipated that does not come is export: after a miss, rises are trusted
        # again only once the load is seen on in the rhythm.
        self._trusted = False
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
        self._applied_state = None
        self._switches.clear()
        self._edges.clear()
        self._level_w = None


def _edge_cost(
    late_s: float, size_w: float, ramp_s: float, export_weight: float, rise: bool
) -> float:
    """The grid error of one edge (W s, an exported one counting ``export_weight``) when the
    batteries' ramp starts ``late_s`` after the import-side ideal (negative: early).

    On a rise the ideal start is the edge: late imports the step for longer, early exports
    the ramp's first part. A fall is the same mirrored in time (early imports, late exports).
    """
    offset_s = late_s if rise else -late_s  # as a rise: > 0 imports, < 0 exports
    if offset_s >= 0.0:
        return size_w * offset_s + 0.5 * size_w * ramp_s
    early_s = -offset_s
    if early_s >= ramp_s:
        return export_weight * size_w * (early_s - 0.5 * ramp_s)
    ramp = size_w / ramp_s if ramp_s > 0 else 0.0
    return 0.5 * ramp * (ramp_s - early_s) ** 2 + export_weight * 0.5 * ramp * early_s**2


MISS_SHARE = 0.8  # an edge "late" by more than this share of its window did not come
LEARN_EDGES = 7  # three full periods of steady rhythm before anticipating
MAX_PERIOD_S = 1800.0  # slower rhythms are not anticipated
PLL_GAIN = 0.3  # share of an edge's measured timing error corrected at once
PLL_PERIOD_GAIN = 0.05  # share of an "on" edge's timing error that corrects the period


class FastLoadHold:
    """A load excursion the loop cannot follow profitably is held through, not chased.

    From a load's edge to the batteries matching it takes the loop ``d`` (the meter's
    sampling and latency, the poll, the batteries' dead time and half their ramp: measured,
    ``DemandEstimator.loop_delay_s``). An excursion of the load (up and back down, or down and
    back up) that lasts ``t`` costs, chased, ``d`` at each of its two edges, one of them as
    export; held through (the batteries stay at the level before it), ``t`` as import for an
    excursion up and ``t`` as export for one down. Export counts ``w`` times import (the worse
    error). So over the load's own recent excursions: excursions up are held while their mean
    ``t`` is below ``(1 + w) d``, excursions down while their mean ``w t`` is; the one of the
    two that saves more wins, the other is chased.

    Holding means: an edge into the held direction is not followed, the edge back is; any
    change below the step threshold (the slow part) is followed at once. An excursion that
    outlasts the recent ones (by ``PATTERN_SPREAD``), or is larger than any of them, is no
    excursion of this pattern: it is followed (a kettle amid a washing machine's drum).
    """

    def __init__(self, *, threshold_w: float, export_weight: float) -> None:
        self.threshold_w = threshold_w
        self.export_weight = export_weight
        self._level_w: float | None = None  # the demand's current level (edges move it)
        self._edges: deque[tuple[float, float]] = deque(maxlen=2)  # (t, signed size) recent
        # Recent excursions: (ended at, lasted s, +1 up / -1 down, size W).
        self._excursions: deque[tuple[float, float, int, float]] = deque()
        self._pattern: dict[int, _Pattern] = {}  # per direction, from _excursions (cached)
        self._longest_s = 0.0  # the longest excursion in _pattern (cached with it)
        self.held_direction = 0  # +1: excursions up are held, -1: down, 0: none
        self._held_w = 0.0  # how much of the demand is held back now (+: an excursion up)
        self._held_since_s: float | None = None
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
        memory_s = 4.0 * max(2.0 * loop_delay_s, self._longest_s)
        if self._excursions and t_s - self._excursions[0][0] > memory_s:
            while self._excursions and t_s - self._excursions[0][0] > memory_s:
                self._excursions.popleft()
            self._summarise()
        self._decide(loop_delay_s)
        self._check_outlasting(t_s, loop_delay_s)

    def _on_edge(self, t_s: float, step_w: float) -> None:
        sign = 1 if step_w > 0 else -1
        size_w = abs(step_w)
        if self._edges and (self._edges[-1][1] > 0) != (sign > 0):
            start_s, start_w = self._edges[-1]
            self._excursions.append(
                (t_s, t_s - start_s, 1 if start_w > 0 else -1, min(abs(start_w), size_w))
            )
            self._summarise()
        self._edges.append((t_s, step_w))
        held = self.held_direction
        if not self.active or held == 0:
            return
        if sign == held:
            if size_w <= PATTERN_SPREAD * self._pattern[held].largest_w:
                if self._held_w == 0.0:
                    self._held_since_s = t_s
                self._held_w += held * size_w  # into the held direction: not followed
            return
        # The edge back: followed (what was held back is released by as much).
        if held > 0:
            self._held_w = max(0.0, self._held_w - size_w)
        else:
            self._held_w = min(0.0, self._held_w + size_w)
        if self._held_w == 0.0:
            self._held_since_s = None

    def _decide(self, loop_delay_s: float) -> None:
        w = self.export_weight
        chase = (1.0 + w) * loop_delay_s
        # The direction that saves most (on a tie the first, up), of those with a pattern.
        best, best_saving = 0, 0.0
        for direction, weight in ((1, 1.0), (-1, w)):
            pattern = self._pattern.get(direction)
            if pattern is not None and pattern.excursions >= MIN_EXCURSIONS:
                saving = chase - weight * pattern.mean_s
                if best == 0 or saving > best_saving:
                    best, best_saving = direction, saving
        self.active = best != 0 and best_saving > 0
        if not self.active or best != self.held_direction:
            self._held_w = 0.0
            self._held_since_s = None
        self.held_direction = best if self.active else 0

    def _check_outlasting(self, t_s: float, loop_delay_s: float) -> None:
        if self._held_since_s is None:
            return
        pattern = self._pattern.get(self.held_direction)
        usual_s = 2.0 * loop_delay_s if pattern is None else pattern.longest_s
        if t_s - self._held_since_s > max(2.0 * loop_delay_s, PATTERN_SPREAD * usual_s):
            self._held_w = 0.0  # longer than any of them: a new level, followed
            self._held_since_s = None

    def _summarise(self) -> None:
        lasted: dict[int, list[float]] = {}
        sizes: dict[int, list[float]] = {}
        for _end_s, lasted_s, direction, size_w in self._excursions:
            lasted.setdefault(direction, []).append(lasted_s)
            sizes.setdefault(direction, []).append(size_w)
        self._pattern = {
            d: _Pattern(len(ls), sum(ls) / len(ls), max(ls), max(sizes[d]))
            for d, ls in lasted.items()
        }
        self._longest_s = max([p.longest_s for p in self._pattern.values()], default=0.0)

    def target_w(self, demand_w: float) -> float:
        """The demand less what is held back."""
        return demand_w - self._held_w if self.active else demand_w

    def forget(self) -> None:
        self._level_w = None
        self._edges.clear()
        self._excursions.clear()
        self._pattern = {}
        self._longest_s = 0.0
        self.held_direction = 0
        self._held_w = 0.0
        self._held_since_s = None
        self.active = False


class _Pattern(NamedTuple):
    """A direction's recent excursions: how many, their mean and longest duration, the
    largest size."""

    excursions: int
    mean_s: float
    longest_s: float
    largest_w: float


MIN_EXCURSIONS = 2  # a pattern needs at least this many excursions of one direction
PATTERN_SPREAD = 1.6  # excursions up to this many times the largest (in size and in length)
# seen belong to the pattern
