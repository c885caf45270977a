"""Recorded power traces and scripted appliance events, replayed as zero-order holds.

Scenario time ``t_s`` starts at 0 at the window's first instant (``Trace.start_s`` in the
file's own time base, seconds since its local midnight or window start). Every sample marks
the *start* of its averaging interval and its value holds until the next sample, so a 15-min
or 1-min trace driven at 1 s shows flat steps, never invented detail.

Both ``Trace`` and ``EventTimeline`` keep a cursor: the replay asks for increasing times
(~170 000 times per simulated day), which then costs O(1); going back in time still works
(binary search / rescan), only slower.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from sim.plant.params import EVENT_KINDS, Event

# A step longer than this many resolutions is a hole in the data; holding across it would
# replay a value nobody measured.
_MAX_GAP_RESOLUTIONS = 3.0
# Window bounds are compared with this tolerance so that float arithmetic on whole seconds
# (start_s + duration_s) does not reject a window that ends exactly at the trace's end.
_EPS_S = 1e-6


class TraceError(ValueError):
    """A trace file is missing, malformed, or does not cover the requested window."""

    def __init__(self, path: Path | str, problem: str, *, key: str = "file") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem
        # Which trace option the problem belongs to (file, pv_file, start_s, duration_s,
        # load_scale, pv_scale) so that scenario errors can name the TOML key.
        self.key = key


@dataclass(frozen=True, slots=True)
class _Columns:
    """One CSV file parsed into columns (absolute times, values as recorded)."""

    path: Path
    times_s: list[float]
    columns: dict[str, list[float]]
    resolution_s: float

    @property
    def end_s(self) -> float:
        """The end of the last sample's averaging interval."""
        return self.times_s[-1] + self.resolution_s


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(path, f"line {line}: {column}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise TraceError(path, f"line {line}: {column}: not a finite number: {text!r}")
    return value


def _read_csv(path: Path, wanted: Sequence[str], *, key: str) -> _Columns:
    """Read ``timestamp_s`` and those of ``wanted`` the header has (extra columns ignored)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise TraceError(path, "empty file", key=key)
            names = [name.strip() for name in header]
            if "timestamp_s" not in names:
                raise TraceError(path, "no timestamp_s column", key=key)
            if len(set(names)) != len(names):
                raise TraceError(path, "duplicate column names", key=key)
            index = {name: names.index(name) for name in ("timestamp_s", *wanted) if name in names}
            times: list[float] = []
            columns: dict[str, list[float]] = {name: [] for name in index if name != "timestamp_s"}
            for line, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(names):
                    msg = f"line {line}: {len(row)} fields, the header has {len(names)}"
                    raise TraceError(path, msg, key=key)
                t_s = _parse_float(row[index["timestamp_s"]], path, line, "timestamp_s")
                if times and t_s <= times[-1]:
                    raise TraceError(path, f"line {line}: timestamp_s not increasing", key=key)
                times.append(t_s)
                for name, values in columns.items():
                    values.append(_parse_float(row[index[name]], path, line, name))
    except TraceError:
        raise
    except FileNotFoundError:
        raise TraceError(path, "file not found", key=key) from None
    # ValueError: a path the OS cannot name (embedded NUL); UnicodeDecodeError is one too.
    except (OSError, csv.Error, ValueError) as exc:
        raise TraceError(path, f"cannot read: {exc}", key=key) from None
    if len(times) < 2:
        raise TraceError(path, "need at least two samples to know the resolution", key=key)
    steps = sorted(b - a for a, b in pairwise(times))
    resolution_s = steps[len(steps) // 2]
    if steps[-1] > _MAX_GAP_RESOLUTIONS * resolution_s:
        gap_at = next(a for a, b in pairwise(times) if b - a == steps[-1])
        msg = f"gap of {steps[-1]:g} s after timestamp_s {gap_at:g} (resolution {resolution_s:g} s)"
        raise TraceError(path, msg, key=key)
    return _Columns(path, times, columns, resolution_s)


def _hold(times_s: Sequence[float], values: Sequence[float], t_s: float) -> float:
    """Zero-order hold of (times, values) at ``t_s``; the first value holds before the start."""
    return values[max(bisect_right(times_s, t_s) - 1, 0)]


class Trace:
    """House demand ``net_w = load - pv`` (W, + = import) over one window, held between samples.

    ``t_s`` is scenario time: 0 is ``start_s`` in the file's time base. Values hold past the
    window's end (the replay may step a fraction beyond it); negative or NaN ``t_s`` raises.
    """

    __slots__ = (
        "_cursor",
        "_last",
        "_net_w",
        "_pv_w",
        "_times_s",
        "duration_s",
        "resolution_s",
        "source",
        "start_s",
    )

    def __init__(
        self,
        *,
        times_s: Sequence[float],
        net_w: Sequence[float],
        pv_w: Sequence[float] | None,
        start_s: float,
        duration_s: float,
        resolution_s: float,
        source: str = "",
    ) -> None:
        if not times_s or times_s[0] != 0.0:
            raise ValueError("times_s must start at 0")
        if len(net_w) != len(times_s) or (pv_w is not None and len(pv_w) != len(times_s)):
            raise ValueError("times_s, net_w and pv_w must have the same length")
        if any(b <= a for a, b in pairwise(times_s)):
            raise ValueError("times_s must be strictly increasing")
        if not duration_s > 0.0:
            raise ValueError("duration_s must be positive")
        self._times_s = tuple(float(t) for t in times_s)
        self._net_w = tuple(float(v) for v in net_w)
        self._pv_w = None if pv_w is None else tuple(float(v) for v in pv_w)
        self._cursor = 0
        self._last = len(self._times_s) - 1
        self.start_s = float(start_s)
        self.duration_s = float(duration_s)
        self.resolution_s = float(resolution_s)
        self.source = source

    @property
    def end_s(self) -> float:
        """The window's end in the file's time base (``start_s + duration_s``)."""
        return self.start_s + self.duration_s

    @property
    def has_pv(self) -> bool:
        """Whether PV production is known (a ``pv_w`` column or a ``pv_file``)."""
        return self._pv_w is not None

    @property
    def times_s(self) -> tuple[float, ...]:
        """Scenario times at which the held value changes (sample starts), first is 0."""
        return self._times_s

    def _index(self, t_s: float) -> int:
        if not t_s >= 0.0:  # also catches NaN
            raise ValueError(f"trace time must be >= 0, got {t_s!r}")
        i = self._cursor
        times = self._times_s
        if t_s < times[i]:
            i = bisect_right(times, t_s) - 1
        else:
            last = self._last
            while i < last and t_s >= times[i + 1]:
                i += 1
        self._cursor = i
        return i

    def net_at(self, t_s: float) -> float:
        """House demand (W, + = import) at scenario time ``t_s``."""
        return self._net_w[self._index(t_s)]

    def pv_at(self, t_s: float) -> float:
        """PV production (W, >= 0 as recorded, scaled) at ``t_s``; raises if PV is unknown."""
        if self._pv_w is None:
            raise ValueError(f"{self.source}: the trace has no PV column and no pv_file")
        return self._pv_w[self._index(t_s)]


def load_trace(
    path: Path | str,
    *,
    pv_path: Path | str | None = None,
    load_scale: float = 1.0,
    pv_scale: float = 1.0,
    start_s: float | None = None,
    duration_s: float | None = None,
) -> Trace:
    """Load a CSV trace (``timestamp_s`` plus ``grid_w``, or ``load_w`` and optional ``pv_w``).

    ``grid_w`` is replayed as recorded when present and neither scale is set (OPSD counters
    were interpolated separately, so a rebuilt ``load_w`` can dip below 0). Otherwise
    ``net = load_scale * max(load, 0) - pv_scale * pv`` with ``load = load_w`` (or
    ``grid_w + pv_w``). ``pv_path`` names a PV-only CSV (``pv_w``, same time base) whose
    production, times ``pv_scale``, is added to the house's PV. The window starts at
    ``start_s`` (default: the first sample) and lasts ``duration_s`` (default: to the end).
    Raises ``TraceError`` naming the file and problem.
    """
    path = Path(path)
    for name, scale in (("load_scale", load_scale), ("pv_scale", pv_scale)):
        if not (math.isfinite(scale) and scale >= 0.0):
            raise TraceError(path, f"{name} must be a finite number >= 0, got {scale!r}", key=name)
    main = _read_csv(path, ("grid_w", "load_w", "pv_w"), key="file")
    cols = main.columns
    if "grid_w" not in cols and "load_w" not in cols:
        raise TraceError(path, "needs a grid_w or a load_w column")
    has_split = "load_w" in cols or "pv_w" in cols
    if load_scale != 1.0 and "load_w" not in cols and "pv_w" not in cols:
        msg = "load_scale needs a load_w column (grid_w alone cannot be split)"
        raise TraceError(path, msg, key="load_scale")
    if pv_scale != 1.0 and "pv_w" not in cols and pv_path is None:
        raise TraceError(path, "pv_scale needs a pv_w column or a pv_file", key="pv_scale")

    pv_extra: _Columns | None = None
    if pv_path is not None:
        pv_extra = _read_csv(Path(pv_path), ("pv_w",), key="pv_file")
        if "pv_w" not in pv_extra.columns:
            raise TraceError(pv_extra.path, "no pv_w column", key="pv_file")

    first_s = main.times_s[0]
    window_start_s = first_s if start_s is None else float(start_s)
    if not math.isfinite(window_start_s):
        raise TraceError(path, f"start_s must be finite, got {start_s!r}", key="start_s")
    if window_start_s < first_s - _EPS_S or window_start_s >= main.end_s:
        msg = f"start_s {window_start_s:g} is outside the trace ({first_s:g}..{main.end_s:g} s)"
        raise TraceError(path, msg, key="start_s")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0.0):
        raise TraceError(path, f"duration_s must be positive, got {duration_s!r}", key="duration_s")
    window_end_s = main.end_s if duration_s is None else window_start_s + float(duration_s)
    if not window_end_s > window_start_s:
        msg = f"duration_s {duration_s!r} is too short to form a window"
        raise TraceError(path, msg, key="duration_s")
    if window_end_s > main.end_s + _EPS_S:
        msg = f"the window ends at {window_end_s:g} s but the trace ends at {main.end_s:g} s"
        raise TraceError(path, msg, key="duration_s")
    if pv_extra is not None and (
        window_start_s < pv_extra.times_s[0] - _EPS_S or window_end_s > pv_extra.end_s + _EPS_S
    ):
        msg = (
            f"covers {pv_extra.times_s[0]:g}..{pv_extra.end_s:g} s, "
            f"not the window {window_start_s:g}..{window_end_s:g} s"
        )
        raise TraceError(pv_extra.path, msg, key="pv_file")

    # Every instant where either held input changes, inside the window.
    change_s = {window_start_s}
    change_s.update(t for t in main.times_s if window_start_s < t < window_end_s)
    if pv_extra is not None:
        change_s.update(t for t in pv_extra.times_s if window_start_s < t < window_end_s)
    abs_times = sorted(change_s)

    exact_grid = "grid_w" in cols and load_scale == 1.0 and pv_scale == 1.0
    net: list[float] = []
    pv_out: list[float] | None = [] if ("pv_w" in cols or pv_extra is not None) else None
    for t in abs_times:
        pv_w = _hold(main.times_s, cols["pv_w"], t) if "pv_w" in cols else 0.0
        extra_pv_w = 0.0
        if pv_extra is not None:
            extra_pv_w = _hold(pv_extra.times_s, pv_extra.columns["pv_w"], t)
        if exact_grid:
            house_w = _hold(main.times_s, cols["grid_w"], t)
        elif has_split:
            if "load_w" in cols:
                load_w = _hold(main.times_s, cols["load_w"], t)
            else:
                load_w = _hold(main.times_s, cols["grid_w"], t) + pv_w
            # A rebuilt load below 0 is an interpolation artefact of separately logged counters.
            house_w = load_scale * max(load_w, 0.0) - pv_scale * pv_w
        else:
            house_w = _hold(main.times_s, cols["grid_w"], t)
        net.append(house_w - pv_scale * extra_pv_w)
        if pv_out is not None:
            pv_out.append(pv_scale * (pv_w + extra_pv_w))

    source = str(path) if pv_extra is None else f"{path} + {pv_extra.path}"
    return Trace(
        times_s=[t - window_start_s for t in abs_times],
        net_w=net,
        pv_w=pv_out,
        start_s=window_start_s,
        duration_s=window_end_s - window_start_s,
        resolution_s=main.resolution_s,
        source=source,
    )


def event_power_w(event: Event, t_s: float) -> float:
    """The extra load (W) ``event`` adds at scenario time ``t_s`` (0 outside its span)."""
    u = t_s - event.at_s
    if u < 0.0 or u >= event.duration_s:
        return 0.0
    if event.kind == "load_step":
        return event.power_w
    if event.kind == "pulse":
        period_s = event.on_s + event.off_s
        return event.power_w if period_s <= 0.0 or (u % period_s) < event.on_s else 0.0
    if event.kind == "ramp":
        ramp_s = event.ramp_s
        if ramp_s <= 0.0:
            return event.power_w
        if u < ramp_s:
            return event.power_w * u / ramp_s
        remaining_s = event.duration_s - u
        if remaining_s < ramp_s:
            return event.power_w * remaining_s / ramp_s
        return event.power_w
    raise ValueError(f"unknown event kind {event.kind!r}")


class EventTimeline:
    """The summed extra load of scripted events over time.

    Shapes (each spans ``[at_s, at_s + duration_s)``): ``load_step`` a constant ``power_w``;
    ``pulse`` ``power_w`` for ``on_s`` then 0 for ``off_s``, repeated, starting on;
    ``ramp`` linear 0 -> ``power_w`` over the first ``ramp_s``, held, and back to 0 over the
    last ``ramp_s``.
    """

    __slots__ = ("_active", "_events", "_last_t_s", "_next")

    def __init__(self, events: Iterable[Event]) -> None:
        ordered = sorted(events, key=lambda e: e.at_s)
        for event in ordered:
            if event.kind not in EVENT_KINDS:
                raise ValueError(f"unknown event kind {event.kind!r}")
        self._events: tuple[Event, ...] = tuple(ordered)
        self._next = 0
        self._active: list[Event] = []
        self._last_t_s = -math.inf

    @property
    def events(self) -> tuple[Event, ...]:
        """The events, ordered by start time."""
        return self._events

    def extra_w_at(self, t_s: float) -> float:
        """Summed extra load (W, negative = extra PV) at scenario time ``t_s``."""
        if t_s < self._last_t_s:
            self._next = 0
            self._active = []
        self._last_t_s = t_s
        events = self._events
        n = len(events)
        while self._next < n and events[self._next].at_s <= t_s:
            self._active.append(events[self._next])
            self._next += 1
        if not self._active:
            return 0.0
        total_w = 0.0
        still: list[Event] = []
        for event in self._active:
            if t_s < event.at_s + event.duration_s:
                still.append(event)
                total_w += event_power_w(event, t_s)
        self._active = still
        return total_w

    def step_times(self) -> list[tuple[float, float]]:
        """(at_s, change_w) of each ``load_step`` edge: +power at the start, -power at the end."""
        edges: list[tuple[float, float]] = []
        for event in self._events:
            if event.kind == "load_step":
                edges.append((event.at_s, event.power_w))
                edges.append((event.at_s + event.duration_s, -event.power_w))
        edges.sort(key=lambda edge: edge[0])
        return edges
