"""Control-quality metrics of one run against the reference, and the tables that show them.

Every metric is defined once here (docs/scoring.md), over the whole ``RunRecord`` handed in: the
record *is* the scored window (a replay that wants a warm-up leaves it out of the record and
starts the oracle at the same step). Sample i covers ``[t_s[i], t_s[i] + dt_s[i])`` with its
powers held, so energies are ``sum(power * dt)``. Every value is a finite float. Choices the
reference leaves open:

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

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from operator import le
from typing import TYPE_CHECKING

from sim.scoring.oracle import ScoringInputError

if TYPE_CHECKING:
    from sim.plant.params import Tariff
    from sim.plant.record import RunRecord
    from sim.scoring.oracle import OracleResult

__all__ = [
    "BAND_W",
    "DEFAULT_TABLE_KEYS",
    "METRIC_KEYS",
    "SETTLE_BAND_W",
    "SETTLE_HOLD_S",
    "STEADY_ORACLE_W",
    "ScoringInputError",
    "StepResponse",
    "format_side_by_side",
    "format_table",
    "score",
    "step_responses",
]

METRIC_KEYS: tuple[str, ...] = (
    "import_wh",
    "export_wh",
    "none_import_wh",
    "none_export_wh",
    "oracle_import_wh",
    "oracle_export_wh",
    "excess_wh",
    "tracking_score",
    "mean_abs_grid_w",
    "steady_rms_w",
    "band_crossings_per_h",
    "settle_mean_s",
    "overshoot_mean_w",
    "direction_changes",
    "battery_throughput_wh",
    "conversion_loss_wh",
    "cost_eur",
    "oracle_cost_eur",
    "cost_regret_eur",
    "modbus_writes",
    "modbus_reads",
    "sim_seconds",
    "wall_seconds",
)

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


def score(record: RunRecord, oracle: OracleResult, tariff: Tariff) -> dict[str, float]:
    """Every metric of ``METRIC_KEYS`` (in that order) for one run against its reference.

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

    metrics: dict[str, float] = {
        "import_wh": import_wh,
        "export_wh": export_wh,
        "none_import_wh": none_import_wh,
        "none_export_wh": none_export_wh,
        "oracle_import_wh": oracle_import_wh,
        "oracle_export_wh": oracle_export_wh,
        "excess_wh": exchange_wh - oracle_exchange_wh,
        "tracking_score": tracking,
        "mean_abs_grid_w": abs_ws / sim_s if sim_s > 0.0 else 0.0,
        "steady_rms_w": math.sqrt(steady_sq_ws / steady_s) if steady_s > 0.0 else 0.0,
        "band_crossings_per_h": crossings * _SECONDS_PER_HOUR / sim_s if sim_s > 0.0 else 0.0,
        "settle_mean_s": settle_mean_s,
        "overshoot_mean_w": overshoot_mean_w,
        "direction_changes": float(record.direction_changes),
        "battery_throughput_wh": throughput_ws / _SECONDS_PER_HOUR,
        "conversion_loss_wh": float(record.conversion_loss_wh),
        "cost_eur": cost_eur,
        "oracle_cost_eur": oracle_cost_eur,
        "cost_regret_eur": cost_eur - oracle_cost_eur,
        "modbus_writes": float(record.modbus_writes),
        "modbus_reads": float(record.modbus_reads),
        "sim_seconds": sim_s,
        "wall_seconds": float(record.wall_seconds),
    }
    return {key: metrics[key] for key in METRIC_KEYS}


def _cost_eur(import_wh: float, export_wh: float, tariff: Tariff) -> float:
    return (
        import_wh / 1000.0 * tariff.import_eur_per_kwh
        - export_wh / 1000.0 * tariff.export_eur_per_kwh
    )


# ---------------------------------------------------------------------------------------------
# Tables

DEFAULT_TABLE_KEYS: tuple[str, ...] = (
    "import_wh",
    "export_wh",
    "excess_wh",
    "tracking_score",
    "mean_abs_grid_w",
    "steady_rms_w",
    "band_crossings_per_h",
    "settle_mean_s",
    "overshoot_mean_w",
    "direction_changes",
    "conversion_loss_wh",
    "cost_eur",
    "cost_regret_eur",
)

REFERENCE_LABEL = "reference"

# What a reference row shows for each key: the oracle's own value, or the value that is by
# definition the reference's (excess 0, tracking 1). Other keys are blank on that row.
_REFERENCE_VALUES: dict[str, str | float] = {
    "import_wh": "oracle_import_wh",
    "export_wh": "oracle_export_wh",
    "none_import_wh": "none_import_wh",
    "none_export_wh": "none_export_wh",
    "oracle_import_wh": "oracle_import_wh",
    "oracle_export_wh": "oracle_export_wh",
    "excess_wh": 0.0,
    "tracking_score": 1.0,
    "cost_eur": "oracle_cost_eur",
    "oracle_cost_eur": "oracle_cost_eur",
    "cost_regret_eur": 0.0,
    "sim_seconds": "sim_seconds",
}


def _format_value(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if key == "tracking_score":
        return f"{value:.3f}"
    if key.endswith("_eur"):
        return f"{value:.3f}"
    if key.endswith("_per_h"):
        return f"{value:.2f}"
    if key in {"direction_changes", "modbus_writes", "modbus_reads"}:
        return f"{value:.0f}"
    return f"{value:.1f}"


def _reference_cell(key: str, metrics: dict[str, float]) -> str:
    source = _REFERENCE_VALUES.get(key)
    if source is None:
        return "-"
    if isinstance(source, str):
        return _format_value(key, metrics[source]) if source in metrics else "-"
    return _format_value(key, source)


def _render(header: list[str], body: list[list[str]], n_left: int) -> str:
    """Aligned columns: the first ``n_left`` left-aligned, the rest right-aligned."""
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(widths[c]) if c < n_left else cell.rjust(widths[c])
            for c, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def format_table(
    rows: Sequence[tuple[str, str, dict[str, float]]],
    keys: Sequence[str] | None = None,
    *,
    reference: bool = True,
) -> str:
    """A readable aligned table: one line per (scenario, policy, metrics) row, in row order.

    ``keys`` picks the metric columns (default ``DEFAULT_TABLE_KEYS``). With ``reference`` a row
    labelled ``reference`` follows each scenario's rows, showing the oracle's import, export and
    cost (taken from that scenario's first row; other columns ``-``). A missing metric shows
    ``-``. Raises ``ScoringInputError`` on an unknown key.
    """
    columns = list(DEFAULT_TABLE_KEYS if keys is None else keys)
    unknown = [k for k in columns if k not in METRIC_KEYS]
    if unknown:
        raise ScoringInputError(f"unknown metric keys: {', '.join(unknown)}")
    header = ["scenario", "policy", *columns]
    body: list[list[str]] = []
    for index, (scenario, policy, metrics) in enumerate(rows):
        body.append(
            [
                scenario,
                policy,
                *(_format_value(k, metrics[k]) if k in metrics else "-" for k in columns),
            ]
        )
        last_of_scenario = index + 1 == len(rows) or rows[index + 1][0] != scenario
        if reference and last_of_scenario:
            first = next(m for s, _, m in rows if s == scenario)
            body.append([scenario, REFERENCE_LABEL, *(_reference_cell(k, first) for k in columns)])
    return _render(header, body, n_left=2)


# Side-by-side bench columns: (metric key, sub-header).
_SIDE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("excess_wh", "excessWh"),
    ("tracking_score", "track"),
    ("band_crossings_per_h", "X/h"),
    ("direction_changes", "dirs"),
    ("conversion_loss_wh", "lossWh"),
)
_SIDE_MAX_WIDTH = 150
_SCENARIO_MAX_CHARS = 28
_POLICY_MAX_CHARS = 36


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "~"


def _side_cell(key: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None else str(value)
    if key == "tracking_score":
        return f"{value:.3f}"
    if key == "band_crossings_per_h":
        return f"{value:.1f}"
    return f"{value:.0f}"


def _totals(metric_rows: list[dict[str, float]]) -> dict[str, float]:
    """Bench totals of one policy: energies and counts summed; tracking as the ratio of the
    summed avoided to the summed avoidable exchange; crossings per total simulated hour."""
    sums = {k: math.fsum(m.get(k, 0.0) for m in metric_rows) for k in METRIC_KEYS}
    avoidable_wh = (sums["none_import_wh"] + sums["none_export_wh"]) - (
        sums["oracle_import_wh"] + sums["oracle_export_wh"]
    )
    avoided_wh = (sums["none_import_wh"] + sums["none_export_wh"]) - (
        sums["import_wh"] + sums["export_wh"]
    )
    crossings = math.fsum(
        m.get("band_crossings_per_h", 0.0) * m.get("sim_seconds", 0.0) for m in metric_rows
    )
    sums["tracking_score"] = avoided_wh / avoidable_wh if avoidable_wh >= _TRACKING_MIN_WH else 1.0
    sums["band_crossings_per_h"] = (
        crossings / sums["sim_seconds"] if sums["sim_seconds"] > 0.0 else 0.0
    )
    return sums


def format_side_by_side(
    rows: Sequence[tuple[str, str, dict[str, float]]],
    policies: Sequence[str] | None = None,
) -> str:
    """Bench table: one line per scenario, each policy's excess Wh, tracking score, band
    crossings per hour, direction changes and conversion loss Wh side by side, after the
    no-battery and reference exchange (import + export, Wh), then a totals line.

    ``rows`` are the same (scenario, policy, metrics) rows as ``format_table``; ``policies``
    fixes the column order (default: order of first appearance). A missing (scenario, policy)
    shows ``-`` and is left out of that policy's total. When all policies do not fit in 150
    characters the table is split into several blocks, each repeating the scenario columns.
    Totals: energies and counts summed, tracking = summed avoided / summed avoidable exchange,
    crossings per total simulated hour.
    """
    order = list(dict.fromkeys(p for _, p, _ in rows)) if policies is None else list(policies)
    scenarios = list(dict.fromkeys(s for s, _, _ in rows))
    by_key = {(s, p): m for s, p, m in rows}
    first_metrics = {s: next(m for s2, _, m in rows if s2 == s) for s in scenarios}

    def exchange(metrics: dict[str, float], prefix: str) -> float | None:
        imp, exp = metrics.get(prefix + "import_wh"), metrics.get(prefix + "export_wh")
        return None if imp is None or exp is None else imp + exp

    lead_body = [
        [
            _shorten(s, _SCENARIO_MAX_CHARS),
            _side_cell("", exchange(first_metrics[s], "none_")),
            _side_cell("", exchange(first_metrics[s], "oracle_")),
        ]
        for s in scenarios
    ]
    all_first = list(first_metrics.values())
    lead_total = _totals(all_first) if all_first else None
    lead_body.append(
        [
            "TOTAL",
            _side_cell("", exchange(lead_total, "none_")) if lead_total else "-",
            _side_cell("", exchange(lead_total, "oracle_")) if lead_total else "-",
        ]
    )
    lead_header = ["scenario", "noneWh", "refWh"]

    groups: list[tuple[str, list[str], list[list[str]]]] = []
    for policy in order:
        present = [by_key[(s, policy)] for s in scenarios if (s, policy) in by_key]
        total = _totals(present) if present else None
        cells = [
            [
                _side_cell(k, by_key[(s, policy)].get(k)) if (s, policy) in by_key else "-"
                for k, _ in _SIDE_COLUMNS
            ]
            for s in scenarios
        ]
        cells.append([_side_cell(k, total.get(k)) if total else "-" for k, _ in _SIDE_COLUMNS])
        groups.append((_shorten(policy, _POLICY_MAX_CHARS), [h for _, h in _SIDE_COLUMNS], cells))

    def widths(header: list[str], body: list[list[str]]) -> list[int]:
        return [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]

    lead_widths = widths(lead_header, lead_body)
    lead_width = sum(lead_widths) + 2 * (len(lead_widths) - 1)
    sep = " | "

    def group_widths(group: tuple[str, list[str], list[list[str]]]) -> list[int]:
        name, header, body = group
        cols = widths(header, body)
        extra = len(name) - (sum(cols) + 1 * (len(cols) - 1))
        if extra > 0:  # widen the last column so the policy name fits over its group
            cols[-1] += extra
        return cols

    blocks: list[list[tuple[str, list[str], list[list[str]]]]] = [[]]
    used = lead_width
    for group in groups:
        cols = group_widths(group)
        width = len(sep) + sum(cols) + (len(cols) - 1)
        if blocks[-1] and used + width > _SIDE_MAX_WIDTH:
            blocks.append([])
            used = lead_width
        blocks[-1].append(group)
        used += width

    def lead_line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(lead_widths[c]) if c == 0 else cell.rjust(lead_widths[c])
            for c, cell in enumerate(cells)
        )

    def group_line(cells: list[str], w: list[int]) -> str:
        return " ".join(cell.rjust(w[c]) for c, cell in enumerate(cells))

    out: list[str] = []
    for block in blocks:
        gw = [group_widths(g) for g in block]
        title = " " * lead_width + "".join(
            sep + name.center(sum(w) + len(w) - 1)
            for (name, _, _), w in zip(block, gw, strict=True)
        )
        header = lead_line(lead_header) + "".join(
            sep + group_line(h, w) for (_, h, _), w in zip(block, gw, strict=True)
        )
        rule = "-" * len(header)
        lines = [title.rstrip(), header, rule]
        for r, lead_cells in enumerate(lead_body):
            if r == len(lead_body) - 1:
                lines.append(rule)  # above the totals
            lines.append(
                lead_line(lead_cells)
                + "".join(sep + group_line(b[r], w) for (_, _, b), w in zip(block, gw, strict=True))
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)
