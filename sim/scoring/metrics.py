"""Control-quality metrics of one run against the reference: the frozen ``Metrics``, ``score``.

Every metric is defined once here (docs/scoring.md), over the whole ``RunRecord`` handed in: the
record *is* the scored window (a replay that wants a warm-up leaves it out of the record and
starts the oracle at the same step). Sample i covers ``[t_s[i], t_s[i] + dt_s[i])`` with its
powers held, so energies are ``sum(power * dt)``. Every value is finite (counts are whole
numbers). Choices the reference leaves open:

- ``import_wh`` / ``export_wh`` are both >= 0 (export is the magnitude of negative grid).
- ``tracking_score`` is 1.0 when the reference avoids (almost) nothing, i.e.
  ``none exchange - oracle exchange < 1e-6 Wh``: there was nothing to track; ``excess_wh``
  still shows any harm the controller did.
- ``steady_rms_w`` is over the samples where ``|oracle grid_w| < 0.5 W`` (time-weighted);
  0.0 when there are none.
- ``band_crossings_per_h``: the side (+ above +20 W, - below -20 W) of the last sample outside
  the band is remembered; each change of that side is one crossing, with or without samples
  inside the band between.
- ``settle_mean_s``: for each step event, the time from the event until ``|grid_w| < 25 W``
  starts to hold for 10 s (the settling point, not the end of the hold). The search window
  ends at the next event or at the end of the run; an event whose 10 s hold is not complete
  within its window counts as the whole window length (a lower bound of its true settling
  time, so unsettled events are penalised, never skipped).
- ``overshoot_mean_w``: for each step event, the largest grid excursion opposite in sign to
  the step's first error (a load step up, ``power_w > 0``, first imports, so the overshoot is
  the largest export) from the event until the settling point plus its hold (or the window end
  when unsettled), as a magnitude >= 0. Steps of 0 W have no direction and count 0.
- With no step events both are 0.0; with an empty record every metric is 0.0 except
  ``tracking_score`` (1.0).
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import le
from typing import TYPE_CHECKING, Any

from sim.scoring.oracle import ScoringInputError

if TYPE_CHECKING:
    from sim.plant.params import Tariff
    from sim.plant.record import RunRecord
    from sim.scoring.oracle import OracleResult

__all__ = [
    "BAND_W",
    "METRIC_KEYS",
    "OPTIONAL_KEYS",
    "SETTLE_BAND_W",
    "SETTLE_HOLD_S",
    "STEADY_ORACLE_W",
    "MetricInfo",
    "Metrics",
    "ScoringInputError",
    "StepResponse",
    "metric_info",
    "score",
    "step_responses",
    "totals",
]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """How a table shows one metric: its column header and the format of its values."""

    key: str
    header: str  # what it is, a line break, its unit: "excess\nWh"
    fmt: str  # a format spec, e.g. ".1f"


def _metric(header: str, fmt: str = ".1f") -> Any:
    """A metric field's table header and format, kept in the dataclass field's metadata."""
    return field(metadata={"header": header, "fmt": fmt})


def _optional(header: str, fmt: str = ".1f") -> Any:
    return field(default=None, metadata={"header": header, "fmt": fmt})


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """Every metric of one run (docs/scoring.md), in the order the JSON lists them.

    The optional ones exist only for some runs: ``cycles`` and the cycle latencies for a
    ``--wire`` run, ``fault_cost_wh`` for a fault scenario in ``mmbc-sim bench``. Counts are
    integers here and floats in the JSON (every JSON metric is a float).
    """

    import_wh: float = _metric("import\nWh")
    export_wh: float = _metric("export\nWh")
    none_import_wh: float = _metric("none import\nWh")
    none_export_wh: float = _metric("none export\nWh")
    oracle_import_wh: float = _metric("ref. import\nWh")
    oracle_export_wh: float = _metric("ref. export\nWh")
    excess_wh: float = _metric("excess\nWh")
    tracking_score: float = _metric("tracking\nscore", ".3f")
    mean_abs_grid_w: float = _metric("mean |grid|\nW")
    steady_rms_w: float = _metric("steady rms\nW")
    band_crossings_per_h: float = _metric("crossings\nper h", ".2f")
    settle_mean_s: float = _metric("settle\ns")
    overshoot_mean_w: float = _metric("overshoot\nW")
    direction_changes: int = _metric("direction\nchanges", ".0f")
    battery_throughput_wh: float = _metric("throughput\nWh")
    conversion_loss_wh: float = _metric("loss\nWh")
    cost_eur: float = _metric("cost\n€", ".3f")
    oracle_cost_eur: float = _metric("ref. cost\n€", ".3f")
    cost_regret_eur: float = _metric("regret\n€", ".3f")
    modbus_writes: int = _metric("Modbus\nwrites", ".0f")
    modbus_reads: int = _metric("Modbus\nreads", ".0f")
    sim_seconds: float = _metric("simulated\ns")
    wall_seconds: float = _metric("wall\ns")
    # --wire only: control cycles run, and the cycle latency (P1 response to the last Modbus
    # write, wall clock)
    cycles: int | None = _optional("control\ncycles", ".0f")
    cycle_latency_median_ms: float | None = _optional("latency median\nms", ".2f")
    cycle_latency_p99_ms: float | None = _optional("latency p99\nms", ".2f")
    # bench only: the extra grid exchange a fault scenario's faults cost (against the same
    # scenario and policy without them)
    fault_cost_wh: float | None = _optional("fault\nWh", "+.0f")
    # swept over tick phases (sim.replay.timing): the metrics are the phases' mean, and this
    # the excess of the worst phase
    worst_excess_wh: float | None = _optional("worst phase\nexcess Wh", ".0f")

    def get(self, key: str) -> float | None:
        """The value of metric ``key`` (None for an optional metric this run has not);
        raises ``ScoringInputError`` on an unknown key."""
        metric_info(key)
        value: float | None = getattr(self, key)
        return value

    def items(self) -> Iterator[tuple[str, float]]:
        """(key, value) of every metric this run has, in JSON order (counts as floats)."""
        for key in _ALL_KEYS:
            value = getattr(self, key)
            if value is not None:
                yield key, float(value)

    def as_json(self) -> dict[str, float]:
        """The JSON object of ``mmbc-sim run/bench --json``: every metric this run has."""
        return dict(self.items())

    @classmethod
    def from_json(cls, values: Mapping[str, float]) -> Metrics:
        """The metrics ``as_json`` wrote; ``ScoringInputError`` names an unknown or missing
        key."""
        unknown = sorted(set(values) - set(_ALL_KEYS))
        missing = [k for k in METRIC_KEYS if k not in values]
        if unknown or missing:
            raise ScoringInputError(
                f"metrics: unknown keys {unknown or '-'}, missing keys {missing or '-'}"
            )
        typed: dict[str, Any] = {
            k: int(v) if k in _COUNT_KEYS else float(v) for k, v in values.items()
        }
        return cls(**typed)

    def replace(self, **changes: float | None) -> Metrics:
        """A copy with ``changes`` applied (the type is frozen)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_INFO: dict[str, MetricInfo] = {
    f.name: MetricInfo(f.name, f.metadata["header"], f.metadata["fmt"])
    for f in dataclasses.fields(Metrics)
}
_ALL_KEYS: tuple[str, ...] = tuple(_INFO)
OPTIONAL_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Metrics) if f.default is None
)
# The metrics every run has, in JSON order.
METRIC_KEYS: tuple[str, ...] = tuple(k for k in _ALL_KEYS if k not in OPTIONAL_KEYS)
_COUNT_KEYS = frozenset(
    f.name for f in dataclasses.fields(Metrics) if str(f.type).startswith("int")
)
_NOT_SUMMED = frozenset({"cycle_latency_median_ms", "cycle_latency_p99_ms"})


def metric_info(key: str) -> MetricInfo:
    """Label and format of metric ``key``; ``ScoringInputError`` names an unknown key."""
    try:
        return _INFO[key]
    except KeyError:
        raise ScoringInputError(f"unknown metric key: {key}") from None


BAND_W = 20.0  # hunting band for band_crossings_per_h
SETTLE_BAND_W = 25.0  # |grid| below this counts as settled
SETTLE_HOLD_S = 10.0  # ... once it holds this long
STEADY_ORACLE_W = 0.5  # the reference's grid counts as 0 below this (it had headroom)
_TRACKING_MIN_WH = 1e-6  # below this the reference avoided nothing; tracking_score is 1.0

_SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class StepResponse:
    """How the grid answered one scripted step event."""

    at_s: float
    power_w: float
    settle_s: float  # from the event to the settling point, or the window length if unsettled
    overshoot_w: float  # >= 0, opposite to the step's first error
    settled: bool
    window_s: float  # from the event to the next event or the end of the run


def _check_record(record: RunRecord, oracle: OracleResult) -> int:
    n_steps = len(record.t_s)
    series: list[tuple[str, Sequence[float]]] = [
        ("dt_s", record.dt_s),
        ("net_w", record.net_w),
        ("grid_w", record.grid_w),
        ("oracle grid_w", oracle.grid_w),
    ]
    series += [(f"battery_w[{i}]", p) for i, p in enumerate(record.battery_w)]
    for name, values in [("t_s", record.t_s), *series]:
        if len(values) != n_steps:
            raise ScoringInputError(f"{name}: {len(values)} samples, expected {n_steps}")
        # The sum of finite values is finite; one NaN or inf anywhere is not. C speed.
        if not math.isfinite(sum(values)):
            raise ScoringInputError(f"{name}: contains a non-finite value")
    if n_steps and min(record.dt_s) <= 0.0:
        raise ScoringInputError("dt_s: every step must be > 0 s")
    if not all(map(le, record.t_s, record.t_s[1:])):
        raise ScoringInputError("t_s: sample times must not decrease")
    for name, value in (
        ("conversion_loss_wh", record.conversion_loss_wh),
        ("wall_seconds", record.wall_seconds),
    ):
        if not math.isfinite(value):
            raise ScoringInputError(f"{name}: {value} is not finite")
    for at_s, power_w in record.step_events:
        if not (math.isfinite(at_s) and math.isfinite(power_w)):
            raise ScoringInputError(f"step event ({at_s}, {power_w}) is not finite")
    return n_steps


def _exchange_wh(power_w: Sequence[float], dt_s: Sequence[float]) -> tuple[float, float]:
    """(import Wh, export Wh), both >= 0, of a grid power series."""
    import_ws = 0.0
    export_ws = 0.0
    for p_w, step_s in zip(power_w, dt_s, strict=True):
        if p_w > 0.0:
            import_ws += p_w * step_s
        else:
            export_ws -= p_w * step_s
    return import_ws / _SECONDS_PER_HOUR, export_ws / _SECONDS_PER_HOUR


def step_responses(record: RunRecord) -> list[StepResponse]:
    """Settling time and overshoot after each of ``record.step_events`` (sorted by time).

    Events at or after the end of the run are dropped; see the module docstring for the rules.
    """
    t_s = record.t_s
    dt_s = record.dt_s
    grid_w = record.grid_w
    if not t_s:
        return []
    end_s = t_s[-1] + dt_s[-1]
    events = sorted(e for e in record.step_events if e[0] < end_s)
    responses: list[StepResponse] = []
    for index, (at_s, power_w) in enumerate(events):
        window_end_s = events[index + 1][0] if index + 1 < len(events) else end_s
        window_s = window_end_s - at_s
        # The sample that contains the event, then on while samples start inside the window.
        i = max(0, bisect_right(t_s, at_s) - 1)
        hold_from_s: float | None = None  # start of the current run of in-band samples
        settled_at_s: float | None = None
        direction = 1.0 if power_w > 0.0 else -1.0 if power_w < 0.0 else 0.0
        overshoot_w = 0.0
        n_steps = len(t_s)
        while i < n_steps and t_s[i] < window_end_s:
            start_s = max(t_s[i], at_s)
            stop_s = min(t_s[i] + dt_s[i], window_end_s)
            g_w = grid_w[i]
            # Opposite to the first error: a step up (+) first imports, so look at -g.
            excursion_w = -direction * g_w
            overshoot_w = max(overshoot_w, excursion_w)
            if abs(g_w) < SETTLE_BAND_W:
                if hold_from_s is None:
                    hold_from_s = start_s
                if stop_s - hold_from_s >= SETTLE_HOLD_S:
                    settled_at_s = hold_from_s
                    break
            else:
                hold_from_s = None
            i += 1
        settled = settled_at_s is not None
        responses.append(
            StepResponse(
                at_s=at_s,
                power_w=power_w,
                settle_s=(settled_at_s - at_s) if settled_at_s is not None else window_s,
                overshoot_w=overshoot_w,
                settled=settled,
                window_s=window_s,
            )
        )
    return responses


def score(record: RunRecord, oracle: OracleResult, tariff: Tariff) -> Metrics:
    """Every metric of ``METRIC_KEYS`` for one run against its reference (no optional one).

    Raises ``ScoringInputError`` when the record and the oracle do not describe the same steps,
    or hold non-finite values.
    """
    _check_record(record, oracle)
    dt_s = record.dt_s
    sim_s = math.fsum(dt_s)

    import_wh, export_wh = _exchange_wh(record.grid_w, dt_s)
    none_import_wh, none_export_wh = _exchange_wh(record.net_w, dt_s)
    oracle_import_wh, oracle_export_wh = _exchange_wh(oracle.grid_w, dt_s)

    # One pass for the grid-shape metrics.
    abs_ws = 0.0
    steady_sq_ws = 0.0
    steady_s = 0.0
    crossings = 0
    side = 0  # +1 above +BAND_W, -1 below -BAND_W, 0 not yet outside
    for g_w, step_s, ref_w in zip(record.grid_w, dt_s, oracle.grid_w, strict=True):
        abs_ws += abs(g_w) * step_s
        if -STEADY_ORACLE_W < ref_w < STEADY_ORACLE_W:
            steady_sq_ws += g_w * g_w * step_s
            steady_s += step_s
        if g_w > BAND_W:
            if side < 0:
                crossings += 1
            side = 1
        elif g_w < -BAND_W:
            if side > 0:
                crossings += 1
            side = -1

    throughput_ws = 0.0
    for battery_w in record.battery_w:
        for p_w, step_s in zip(battery_w, dt_s, strict=True):
            throughput_ws += abs(p_w) * step_s

    responses = step_responses(record)
    settle_mean_s = math.fsum(r.settle_s for r in responses) / len(responses) if responses else 0.0
    overshoot_mean_w = (
        math.fsum(r.overshoot_w for r in responses) / len(responses) if responses else 0.0
    )

    exchange_wh = import_wh + export_wh
    none_exchange_wh = none_import_wh + none_export_wh
    oracle_exchange_wh = oracle_import_wh + oracle_export_wh
    avoidable_wh = none_exchange_wh - oracle_exchange_wh
    tracking = (
        (none_exchange_wh - exchange_wh) / avoidable_wh if avoidable_wh >= _TRACKING_MIN_WH else 1.0
    )
    cost_eur = _cost_eur(import_wh, export_wh, tariff)
    oracle_cost_eur = _cost_eur(oracle_import_wh, oracle_export_wh, tariff)

    return Metrics(
        import_wh=import_wh,
        export_wh=export_wh,
        none_import_wh=none_import_wh,
        none_export_wh=none_export_wh,
        oracle_import_wh=oracle_import_wh,
        oracle_export_wh=oracle_export_wh,
        excess_wh=exchange_wh - oracle_exchange_wh,
        tracking_score=tracking,
        mean_abs_grid_w=abs_ws / sim_s if sim_s > 0.0 else 0.0,
        steady_rms_w=math.sqrt(steady_sq_ws / steady_s) if steady_s > 0.0 else 0.0,
        band_crossings_per_h=crossings * _SECONDS_PER_HOUR / sim_s if sim_s > 0.0 else 0.0,
        settle_mean_s=settle_mean_s,
        overshoot_mean_w=overshoot_mean_w,
        direction_changes=record.direction_changes,
        battery_throughput_wh=throughput_ws / _SECONDS_PER_HOUR,
        conversion_loss_wh=float(record.conversion_loss_wh),
        cost_eur=cost_eur,
        oracle_cost_eur=oracle_cost_eur,
        cost_regret_eur=cost_eur - oracle_cost_eur,
        modbus_writes=record.modbus_writes,
        modbus_reads=record.modbus_reads,
        sim_seconds=sim_s,
        wall_seconds=float(record.wall_seconds),
    )


def _cost_eur(import_wh: float, export_wh: float, tariff: Tariff) -> float:
    return (
        import_wh / 1000.0 * tariff.import_eur_per_kwh
        - export_wh / 1000.0 * tariff.export_eur_per_kwh
    )


def totals(rows: Sequence[Metrics]) -> Metrics:
    """Suite totals of several runs (the bench's TOTAL line): energies, counts, costs and
    times summed; tracking as the ratio of the summed avoided to the summed avoidable
    exchange; band crossings per total simulated hour. An optional metric is summed over the
    runs that have it (None when none has); latencies do not add up and are None."""
    sums: dict[str, Any] = {}
    for key in _ALL_KEYS:
        present = [v for m in rows if (v := getattr(m, key)) is not None]
        if key in _NOT_SUMMED or (key in OPTIONAL_KEYS and not present):
            sums[key] = None
        elif key in _COUNT_KEYS:
            sums[key] = sum(present)
        else:
            sums[key] = math.fsum(present)
    avoidable_wh = (sums["none_import_wh"] + sums["none_export_wh"]) - (
        sums["oracle_import_wh"] + sums["oracle_export_wh"]
    )
    avoided_wh = (sums["none_import_wh"] + sums["none_export_wh"]) - (
        sums["import_wh"] + sums["export_wh"]
    )
    crossings = math.fsum(m.band_crossings_per_h * m.sim_seconds for m in rows)
    sums["tracking_score"] = avoided_wh / avoidable_wh if avoidable_wh >= _TRACKING_MIN_WH else 1.0
    sums["band_crossings_per_h"] = (
        crossings / sums["sim_seconds"] if sums["sim_seconds"] > 0.0 else 0.0
    )
    return Metrics(**sums)


def phase_mean(runs: Sequence[Metrics]) -> Metrics:
    """The mean of one scenario's runs at several tick phases, with ``worst_excess_wh``: the
    excess of the worst phase. Counts are rounded to whole numbers; an optional metric is
    averaged over the runs that have it."""
    if not runs:
        msg = "phase_mean needs at least one run"
        raise ScoringInputError(msg)
    means: dict[str, Any] = {}
    for key in _ALL_KEYS:
        present = [v for m in runs if (v := getattr(m, key)) is not None]
        if not present:
            means[key] = None
            continue
        mean = math.fsum(present) / len(present)
        means[key] = round(mean) if key in _COUNT_KEYS else mean
    means["worst_excess_wh"] = max(m.excess_wh for m in runs)
    return Metrics(**means)
