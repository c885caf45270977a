"""When the next control cycle runs: once a period, placed just after the meter's refresh.

A cycle acts on the newest reading the meter shows; a reading that appeared just before the
poll is the freshest there is, one that appeared just after waits a whole period. The meter
does not say when it refreshes, so the schedule learns it from the only thing a poll reveals:
whether the reading is new. It keeps its polls ``margin`` after the refresh it expects and
moves them earlier each time one finds a new reading: by a tenth of the meter's interval
while it is still seeking the refresh (so a random starting phase is found within about ten
readings), by ``creep`` once a refresh has been caught; a poll that finds none came too
early, so the refresh is about to happen: the next poll follows ``retry`` later and the
expectation moves there. So the polls stay just after the refresh, following a meter's clock
that drifts against ours, at the cost of an occasional extra poll. Without learning (the
classic policy, or the feature switched off) cycles run on a fixed grid of periods.

A meter that pushes its readings (HomeWizard API v2) says when it refreshes: each push is a
refresh at its arrival, known rather than guessed (``pushed``). The cycles then run on the
pushes; the schedule only times the cycles in between (``next_unpolled_s``: a period on, just
after the next expected push, so a push that comes on time comes first) and says how long a
push still vouches for the stream (``push_fresh``).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

MARGIN_S: Final = 0.05  # poll this long after the expected refresh (the meter's own jitter)
CREEP_S: Final = 0.002  # per found reading: how much earlier the next refresh is expected
SEEK_FRACTION: Final = 0.1  # the same, of the interval, until a refresh has been caught
RETRY_S: Final = 0.1  # after a poll that found no new reading: poll again this much later
INTERVAL_READINGS: Final = 9  # the meter's interval is the median spacing of this many
MIN_INTERVAL_READINGS: Final = 4
INTERVAL_RESOLUTION_S: Final = 0.01
PUSH_FRESH_INTERVALS: Final = 2.0  # a push older than this many meter intervals: poll again
# A pushed reading reaches the loop the moment the meter has it: it waited for no poll.
PUSHED_READING_AGE_S: Final = 0.0


class CycleSchedule:
    """The times of the control cycles; ``next_s`` is called after each cycle."""

    def __init__(self, period_s: float, *, learn_phase: bool) -> None:
        if not period_s > 0:
            msg = f"period_s must be positive, got {period_s}"
            raise ValueError(msg)
        self.period_s = period_s
        self.learn_phase = learn_phase
        self._first_s: float | None = None
        self._count = 0
        self._refresh_s: float | None = None  # an expected refresh instant (absolute)
        self._missing_since_s: float | None = None  # polls find nothing new since then
        self._previous_s: float | None = None
        self._lost = False  # no reading for a whole interval: no retries until one comes
        # When recent polls first saw a new reading: over many readings their spacing is the
        # meter's interval (a single spacing is off by the polls' own creep and retries).
        self._seen: deque[tuple[float, int]] = deque(maxlen=INTERVAL_READINGS)
        self._readings = 0  # new readings found so far (the count between two refreshes)
        self.retries = 0  # polls that found no new reading and were followed up at once
        self._anchored = False  # a refresh was caught between a miss and its follow-up
        self._interval_s = period_s  # interval_s(), updated with each new reading

    def next_s(
        self, cycle_s: float, *, meter_updated_s: float | None, busy_until_s: float
    ) -> float:
        """When to run the cycle after the one at ``cycle_s``, whose poll saw the meter's
        reading change at ``meter_updated_s``; the cycle's work lasted until
        ``busy_until_s`` (the next never starts before)."""
        new_reading = meter_updated_s is not None and meter_updated_s >= cycle_s
        if new_reading:
            self._readings += 1
        if new_reading and not self.learn_phase:
            self._note_refresh(cycle_s)  # a fixed grid: the spacing is the meter's own
        interval_s = self._interval_s
        if self._first_s is None:
            self._first_s = cycle_s
        if not self.learn_phase:
            # A fixed grid; a cycle that ran late restarts it (no burst to catch up).
            self._count += 1
            tick_s = self._first_s + self._count * self.period_s
            if tick_s < busy_until_s:
                self._first_s, self._count, tick_s = busy_until_s, 0, busy_until_s
            return tick_s
        previous_s, self._previous_s = self._previous_s, cycle_s
        expected = self._refresh_between(previous_s, cycle_s, interval_s)
        if new_reading:
            pinned = self._missing_since_s is not None
            if pinned:
                # It came between the last poll and this one: the refresh is known closely.
                self._refresh_s = cycle_s - 0.5 * RETRY_S
                self._anchored = True
            elif self._refresh_s is None:
                self._refresh_s = cycle_s - MARGIN_S
            elif expected:
                # Perhaps earlier still: probe for it, in big steps until one is caught.
                self._refresh_s -= CREEP_S if self._anchored else SEEK_FRACTION * interval_s
            else:
                # Earlier than expected (a slow meter between two polls): in between.
                self._refresh_s = 0.5 * (cycle_s + (previous_s or cycle_s))
            self._missing_since_s = None
            self._lost = False
            if pinned or len(self._seen) < MIN_INTERVAL_READINGS:
                # The meter's interval is measured between refreshes that were caught (and
                # from the first few polls, for a first idea). A poll that merely found a
                # new reading says only where the schedule put it, which would let a wrong
                # interval confirm itself.
                self._note_refresh(self._refresh_s if pinned else cycle_s)
        elif not self._lost and (expected or self._missing_since_s is not None):
            if self._missing_since_s is None:
                self._missing_since_s = cycle_s
            if cycle_s - self._missing_since_s < interval_s:
                # Too early: the refresh is still to come. Look again shortly.
                self.retries += 1
                self._refresh_s = cycle_s
                return max(cycle_s + RETRY_S, busy_until_s)
            # Nothing for a whole interval: the meter is late or gone. Keep the period
            # until readings return (no retries meanwhile), then seek its refresh again.
            self._missing_since_s = None
            self._lost = True
            self._anchored = False
        return self._after(cycle_s, interval_s, busy_until_s)

    def pushed(self, received_s: float) -> None:
        """The meter pushed a new reading that arrived at ``received_s``: a refresh, known."""
        if not self._seen or received_s > self._seen[-1][0]:
            self._readings += 1
            self._note_refresh(received_s)
        self._refresh_s = received_s
        self._previous_s = received_s
        self._missing_since_s = None
        self._lost = False
        self._anchored = True

    def next_unpolled_s(self, cycle_s: float, *, busy_until_s: float) -> float:
        """When to run the cycle after the one at ``cycle_s`` that did not poll the meter
        (its readings are pushed): about a period on, just after an expected refresh.
        Nothing is learnt from such a cycle."""
        return self._after(cycle_s, self.interval_s(), busy_until_s)

    def push_fresh(self, now_s: float, last_received_s: float | None) -> bool:
        """Whether the last push (arrived at ``last_received_s``) is recent enough that the
        stream can be trusted to bring the next reading: within two meter intervals."""
        if last_received_s is None:
            return False
        return now_s - last_received_s <= PUSH_FRESH_INTERVALS * self.interval_s() + 1e-9

    def reading_age_bound_s(self) -> float | None:
        """How long a new reading can at most have been visible when a poll found it: a
        retry's span and the margin once the refresh has been caught, else unknown."""
        if self.learn_phase and self._anchored and not self._lost:
            return RETRY_S + MARGIN_S + CREEP_S * INTERVAL_READINGS
        return None

    def interval_s(self) -> float:
        """The meter's interval between refreshes, as the polls have seen it."""
        return self._interval_s

    def _note_refresh(self, refresh_s: float) -> None:
        if self._seen and self._seen[-1][1] == self._readings:
            self._seen.pop()  # the same reading again: the later, closer estimate counts
        self._seen.append((refresh_s, self._readings))
        self._interval_s = self._median_interval_s()

    def _median_interval_s(self) -> float:
        """The meter's interval between refreshes, as the polls have seen it.

        The median spacing of the noted refreshes, each divided by the readings between
        them, to the nearest ``INTERVAL_RESOLUTION_S``: the polls' own creep shifts each
        spacing by a few milliseconds, which must not feed back into where the next poll goes.
        """
        seen = self._seen
        if len(seen) < MIN_INTERVAL_READINGS:
            return self.period_s
        gaps = sorted(
            (b_s - a_s) / (b_n - a_n)
            for (a_s, a_n), (b_s, b_n) in zip(seen, list(seen)[1:], strict=False)
            if b_n > a_n
        )
        if not gaps:
            return self._interval_s
        # The lower median: an interval taken too short only brings a poll that finds
        # nothing and is followed up (and caught again); one taken too long lets every poll
        # fall later than the last, with nothing to notice it by until a whole period is lost.
        typical = gaps[(len(gaps) - 1) // 2]
        return max(
            INTERVAL_RESOLUTION_S, round(typical / INTERVAL_RESOLUTION_S) * INTERVAL_RESOLUTION_S
        )

    def _refresh_between(self, from_s: float | None, to_s: float, interval_s: float) -> bool:
        """Whether a refresh was expected after the poll at ``from_s``, by ``to_s``."""
        if self._refresh_s is None or from_s is None:
            return False
        k = math.floor((to_s - self._refresh_s) / interval_s + 1e-9)
        return self._refresh_s + k * interval_s > from_s

    def _after(self, cycle_s: float, interval_s: float, busy_until_s: float) -> float:
        """The next poll about a period on, moved to land just after an expected refresh."""
        earliest_s = max(cycle_s + 0.5 * self.period_s, busy_until_s)
        if self._refresh_s is None:
            return max(cycle_s + self.period_s, busy_until_s)
        # The first refresh (plus margin) at least half a period on; a slow meter refreshes
        # once in several periods: the polls in between keep the period, aligned to it.
        k = math.ceil((earliest_s - MARGIN_S - self._refresh_s) / interval_s - 1e-9)
        poll_s = self._refresh_s + k * interval_s + MARGIN_S
        while poll_s - self.period_s >= earliest_s:
            poll_s -= self.period_s
        return poll_s
