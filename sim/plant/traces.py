"""Recorded power traces, replayed as zero-order holds.

Scenario time ``t_s`` starts at 0 at the window's first instant (``Trace.start_s`` in the
file's own time base, seconds since its local midnight or window start). Every row marks the
*start* of its averaging interval and its value holds until the next row, so a 15-min or 1-min
trace driven at 1 s shows flat steps, never invented detail. Rows may be irregular (a 4-8 s
recorder's own sample instants, fractional seconds): only a gap longer than allowed is refused.

``Trace`` keeps a cursor: the replay asks for increasing times (~170 000 times per simulated
day), which then costs O(1); going back in time still works (binary search), only slower.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

# Unless a scenario allows more (``[trace] max_gap_s``), a row further than this many median
# spacings from the previous one is a hole in the data: holding across it would replay a value
# nobody measured.
DEFAULT_MAX_GAP_SPACINGS = 3.0
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
    lines: list[int]  # the file's line number of each row, for messages
    columns: dict[str, list[float]]
    resolution_s: float  # the median spacing of the rows

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
            lines: list[int] = []
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
                lines.append(line)
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
    return _Columns(path, times, lines, columns, resolution_s=steps[len(steps) // 2])


def _check_gaps(
    data: _Columns, start_s: float, end_s: float, max_gap_s: float | None, *, key: str
) -> None:
    """Refuse a gap between rows longer than allowed, where it would be held in the window."""
    if max_gap_s is None:
        limit_s = DEFAULT_MAX_GAP_SPACINGS * data.resolution_s
        allowed = (
            f"{DEFAULT_MAX_GAP_SPACINGS:g} x the median spacing of {data.resolution_s:g} s; "
            "[trace] max_gap_s allows more"
        )
    else:
        limit_s = max_gap_s
        allowed = "[trace] max_gap_s"
    times = data.times_s
    first = max(bisect_right(times, start_s) - 1, 0)
    for i in range(first + 1, len(times)):
        if times[i - 1] >= end_s:
            break
        gap_s = times[i] - times[i - 1]
        if gap_s > limit_s:
            msg = (
                f"line {data.lines[i]}: {gap_s:g} s since the previous row "
                f"(timestamp_s {times[i - 1]:g} -> {times[i]:g}); the largest gap allowed is "
                f"{limit_s:g} s ({allowed})"
            )
            raise TraceError(data.path, msg, key=key)


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
    max_gap_s: float | None = None,
) -> Trace:
    """Load a CSV trace (``timestamp_s`` plus ``grid_w``, or ``load_w`` and optional ``pv_w``).

    ``grid_w`` is replayed as recorded when present and neither scale is set (OPSD counters
    were interpolated separately, so a rebuilt ``load_w`` can dip below 0). Otherwise
    ``net = load_scale * max(load, 0) - pv_scale * pv`` with ``load = load_w`` (or
    ``grid_w + pv_w``). ``pv_path`` names a PV-only CSV (``pv_w``, same time base) whose
    production, times ``pv_scale``, is added to the house's PV. The window starts at
    ``start_s`` (default: the first sample) and lasts ``duration_s`` (default: to the end).
    Inside the window no two rows may lie more than ``max_gap_s`` apart (default: 3 median
    spacings). Raises ``TraceError`` naming the file and problem (and the line of a bad row).
    """
    path = Path(path)
    if max_gap_s is not None and not (math.isfinite(max_gap_s) and max_gap_s > 0.0):
        raise TraceError(path, f"max_gap_s must be positive, got {max_gap_s!r}", key="max_gap_s")
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
    _check_gaps(main, window_start_s, window_end_s, max_gap_s, key="file")
    if pv_extra is not None:
        _check_gaps(pv_extra, window_start_s, window_end_s, max_gap_s, key="pv_file")

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
