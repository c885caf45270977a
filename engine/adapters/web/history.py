"""What the dashboard charts: the last hour point by point, and everything since start, coarser.

Pure and bounded: the recent window keeps one point per cycle for ``window_s`` (an hour at
1 s is 3600 points); the long history averages the points into buckets and, whenever it holds
more than ``max_buckets``, merges neighbours pairwise and doubles the bucket width, so a year
of running still costs a few hundred points. Times are the engine's clock (seconds); the
browser maps them to its own wall clock.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from engine.core.status import FleetStatus

# One point: (t_s, grid_w, power_w per battery..., soc_pct per battery...); None = unknown.
Point = tuple[float | None, ...]
Columns = list[list[float | None]]


def point_of(status: FleetStatus) -> Point:
    """The chart point of one cycle: time, grid power, each battery's power, each SoC."""
    return (
        status.now_s,
        status.grid_w if status.meter_fresh else None,
        *(b.power_w for b in status.batteries),
        *(b.soc_pct for b in status.batteries),
    )


def _rounded(value: float | None) -> float | None:
    # One decimal is finer than any meter or battery reports; it keeps the JSON short.
    return None if value is None or not math.isfinite(value) else round(value, 1)


@dataclass(slots=True)
class _Bucket:
    start_s: float
    sums: list[float]
    counts: list[int]

    @classmethod
    def empty(cls, start_s: float, width: int) -> _Bucket:
        return cls(start_s, [0.0] * width, [0] * width)

    def add(self, values: Sequence[float | None]) -> None:
        for i, value in enumerate(values):
            if value is not None and math.isfinite(value):
                self.sums[i] += value
                self.counts[i] += 1

    def merge(self, other: _Bucket) -> None:
        for i in range(len(self.sums)):
            self.sums[i] += other.sums[i]
            self.counts[i] += other.counts[i]

    def point(self) -> Point:
        means = (s / c if c else None for s, c in zip(self.sums, self.counts, strict=True))
        return (self.start_s, *means)


_TRIM_EVERY: Final = 512  # points past the window before the arrays are cut (amortised)


@dataclass(slots=True)
class History:
    """The recent window and the long history of chart points (see the module docstring).

    The window is kept as one array per series (times as doubles, values as 32-bit floats,
    NaN for unknown): an hour at 1 s is a few hundred kB instead of 3600 tuples of objects.
    """

    window_s: float = 3600.0
    bucket_s: float = 60.0  # the long history's first bucket width; doubles as it fills
    max_buckets: int = 720
    _times: array[float] = field(default_factory=lambda: array("d"))
    _values: list[array[float]] = field(default_factory=list)
    _buckets: list[_Bucket] = field(default_factory=list)

    def add(self, point: Point) -> None:
        t_s = point[0]
        if t_s is None:
            return
        if self._times and t_s < self._times[-1]:
            return  # time never runs backwards on one clock; ignore rather than corrupt
        if not self._values:
            self._values = [array("f") for _ in point[1:]]
        self._times.append(t_s)
        for column, value in zip(self._values, point[1:], strict=True):
            column.append(math.nan if value is None or not math.isfinite(value) else value)
        first = self._first()
        if first >= _TRIM_EVERY:
            del self._times[:first]
            for column in self._values:
                del column[:first]
        self._add_long(t_s, point[1:])

    def _first(self) -> int:
        """Index of the first point inside the window."""
        return bisect.bisect_left(self._times, self._times[-1] - self.window_s)

    def _add_long(self, t_s: float, values: Sequence[float | None]) -> None:
        if not self._buckets or t_s >= self._buckets[-1].start_s + self.bucket_s:
            start_s = t_s - math.fmod(t_s, self.bucket_s) if self.bucket_s > 0 else t_s
            self._buckets.append(_Bucket.empty(start_s, len(values)))
            if len(self._buckets) > self.max_buckets:
                self._coarsen()
        self._buckets[-1].add(values)

    def _coarsen(self) -> None:
        self.bucket_s *= 2
        merged: list[_Bucket] = []
        for bucket in self._buckets:
            if merged and bucket.start_s < merged[-1].start_s + self.bucket_s:
                merged[-1].merge(bucket)
            else:
                bucket.start_s -= math.fmod(bucket.start_s, self.bucket_s)
                merged.append(bucket)
        self._buckets = merged

    def __len__(self) -> int:
        return len(self._times) - self._first() if self._times else 0

    @property
    def long_length(self) -> int:
        return len(self._buckets)

    def recent_columns(self) -> Columns:
        """The recent window as columns (uPlot's data layout): times first, then each series."""
        if not self._times:
            return []
        first = self._first()
        return [
            [_rounded(t) for t in self._times[first:]],
            *([_rounded(v) for v in column[first:]] for column in self._values),
        ]

    def long_columns(self) -> Columns:
        """The long history as columns: bucket start times and the mean of each series."""
        return _columns([bucket.point() for bucket in self._buckets])


def _columns(points: list[Point]) -> Columns:
    if not points:
        return []
    return [[_rounded(value) for value in column] for column in zip(*points, strict=True)]
