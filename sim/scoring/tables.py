"""The score tables of ``mmbc-sim run`` and ``mmbc-sim bench``, drawn by ``rich``.

Each table is a ``rich.table.Table``; ``render`` turns tables into plain text (tests, files)
and ``print_tables`` prints them, in colour on a terminal and as plain text, at their natural
width, when the output is piped.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from typing import TextIO

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from sim.scoring.metrics import Metrics, metric_info, totals

__all__ = [
    "DEFAULT_TABLE_KEYS",
    "REFERENCE_LABEL",
    "Row",
    "bench_tables",
    "format_side_by_side",
    "format_table",
    "make_console",
    "print_tables",
    "render",
    "run_table",
]

Row = tuple[str, str, Metrics]  # (scenario, policy, metrics)

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
MISSING = "-"
# Piped output is drawn this wide at most; tables narrower than that keep their own width.
PIPE_WIDTH = 400

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


# ---------------------------------------------------------------------------- output
def make_console(*, file: TextIO | None = None) -> Console:
    """A console on ``file`` (default stdout): colour on a terminal; plain text, never wrapped
    to 80 columns, when piped or written to a file."""
    target = sys.stdout if file is None else file
    if target.isatty():
        return Console(file=target)
    return Console(file=target, width=PIPE_WIDTH, color_system=None, emoji=False)


def render(*tables: RenderableType) -> str:
    """Tables as plain text, one blank line between them, no trailing spaces."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=PIPE_WIDTH, color_system=None, emoji=False)
    for index, table in enumerate(tables):
        if index:
            console.print()
        console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def print_tables(*tables: RenderableType, console: Console | None = None) -> None:
    """Print ``tables`` on ``console`` (default ``make_console()``): on a terminal in colour,
    a table wider than the terminal whole at its own width (the terminal wraps its lines),
    never with columns cut off; otherwise as ``render``'s plain text."""
    out = console or make_console()
    if not out.is_terminal:
        out.file.write(render(*tables) + "\n")
        return
    for index, table in enumerate(tables):
        if index:
            out.print()
        width = out.width
        try:
            out.width = max(width, _natural_width(table))
            out.print(table)
        finally:
            out.width = width


def _natural_width(table: RenderableType) -> int:
    return max((len(line) for line in render(table).splitlines()), default=0)


def _text(value: str, style: str = "") -> Text:
    """Cell text taken literally (a scenario named ``[x]`` is not rich markup)."""
    return Text(value, style=style)


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return format(value, metric_info(key).fmt)


# ---------------------------------------------------------------------------- run table
def _reference_cell(key: str, metrics: Metrics) -> str:
    source = _REFERENCE_VALUES.get(key)
    if source is None:
        return MISSING
    if isinstance(source, str):
        return _cell(key, metrics.get(source))
    return _cell(key, source)


def run_table(
    rows: Sequence[Row], keys: Sequence[str] | None = None, *, reference: bool = True
) -> Table:
    """One line per (scenario, policy, metrics) row, in row order; ``keys`` picks the metric
    columns (default ``DEFAULT_TABLE_KEYS``), each headed by its label.

    With ``reference`` a row labelled ``reference`` follows each scenario's rows, showing the
    oracle's import, export and cost (taken from that scenario's first row; other columns
    ``-``). A metric the run has not shows ``-``. Raises ``ScoringInputError`` on an unknown
    key.
    """
    columns = list(DEFAULT_TABLE_KEYS if keys is None else keys)
    infos = [metric_info(k) for k in columns]
    table = Table(
        box=box.SIMPLE, show_edge=False, header_style="bold", pad_edge=False, collapse_padding=True
    )
    table.add_column("\nscenario", no_wrap=True)
    table.add_column("\npolicy", no_wrap=True)
    for info in infos:
        table.add_column(_text(info.header), justify="right", no_wrap=True)
    for index, (scenario, policy, metrics) in enumerate(rows):
        table.add_row(_text(scenario), _text(policy), *(_cell(k, metrics.get(k)) for k in columns))
        last_of_scenario = index + 1 == len(rows) or rows[index + 1][0] != scenario
        if reference and last_of_scenario:
            first = next(m for s, _, m in rows if s == scenario)
            table.add_row(
                _text(scenario),
                _text(REFERENCE_LABEL, "dim"),
                *(_text(_reference_cell(k, first), "dim") for k in columns),
                end_section=index + 1 < len(rows),
            )
    return table


def format_table(
    rows: Sequence[Row], keys: Sequence[str] | None = None, *, reference: bool = True
) -> str:
    """``run_table`` as plain text."""
    return render(run_table(rows, keys, reference=reference))


# ---------------------------------------------------------------------------- bench table
# Side-by-side bench columns per policy: (metric key, header, format).
_SIDE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("excess_wh", "excess Wh", ".0f"),
    ("worst_excess_wh", "worst", ".0f"),
    ("tracking_score", "track", ".3f"),
    ("band_crossings_per_h", "X/h", ".1f"),
    ("direction_changes", "dirs", ".0f"),
    ("conversion_loss_wh", "loss Wh", ".0f"),
)
SIDE_MAX_WIDTH = 150
_SCENARIO_MAX_CHARS = 28
_POLICY_MAX_CHARS = 36
_SEPARATOR = "│"


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "~"


def _side_cell(value: float | None, fmt: str = ".0f") -> str:
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return format(value, fmt)


def _exchange_wh(metrics: Metrics | None, which: str) -> float | None:
    """Import + export Wh with no battery (``none``) or for the reference (``oracle``)."""
    if metrics is None:
        return None
    if which == "none":
        return metrics.none_import_wh + metrics.none_export_wh
    return metrics.oracle_import_wh + metrics.oracle_export_wh


def _bench_block(
    scenarios: Sequence[str],
    policies: Sequence[str],
    by_key: dict[tuple[str, str], Metrics],
    first: dict[str, Metrics],
) -> Table:
    lead_total = totals(list(first.values())) if first else None
    # The worst phase's column only for a bench swept over tick phases.
    columns = [
        c
        for c in _SIDE_COLUMNS
        if c[0] != "worst_excess_wh" or any(m.worst_excess_wh is not None for m in by_key.values())
    ]
    table = Table(
        box=box.SIMPLE,
        show_edge=False,
        show_footer=True,
        header_style="bold",
        footer_style="bold",
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("\nscenario", footer="TOTAL", no_wrap=True)
    table.add_column(
        "\nnone Wh",
        footer=_side_cell(_exchange_wh(lead_total, "none")),
        justify="right",
        no_wrap=True,
    )
    table.add_column(
        "\nref Wh",
        footer=_side_cell(_exchange_wh(lead_total, "oracle")),
        justify="right",
        no_wrap=True,
    )
    cells: list[list[str]] = [
        [
            _shorten(s, _SCENARIO_MAX_CHARS),
            _side_cell(_exchange_wh(first[s], "none")),
            _side_cell(_exchange_wh(first[s], "oracle")),
        ]
        for s in scenarios
    ]
    for policy in policies:
        present = [by_key[(s, policy)] for s in scenarios if (s, policy) in by_key]
        total = totals(present) if present else None
        table.add_column(
            _SEPARATOR + "\n" + _SEPARATOR, footer=_SEPARATOR, no_wrap=True, min_width=1
        )
        for column, (key, header, fmt) in enumerate(columns):
            # The policy's name heads its first column; a long name widens that column.
            name = _shorten(policy, _POLICY_MAX_CHARS) if column == 0 else ""
            footer = _side_cell(None if total is None else total.get(key), fmt)
            table.add_column(
                _text(f"{name}\n{header}"), footer=footer, justify="right", no_wrap=True
            )
        for row, scenario in enumerate(scenarios):
            metrics = by_key.get((scenario, policy))
            cells[row].append(_SEPARATOR)
            cells[row] += [
                _side_cell(None if metrics is None else metrics.get(k), fmt)
                for k, _, fmt in columns
            ]
    for row_cells in cells:
        table.add_row(*(_text(c) for c in row_cells))
    return table


def bench_tables(
    rows: Sequence[Row], policies: Sequence[str] | None = None, *, max_width: int = SIDE_MAX_WIDTH
) -> list[Table]:
    """The bench table: one line per scenario, each policy's excess Wh, tracking score, band
    crossings per hour, direction changes and conversion loss Wh side by side, after the
    no-battery and reference exchange (import + export, Wh), then a TOTAL line.

    ``rows`` are (scenario, policy, metrics); ``policies`` fixes the column order (default:
    order of first appearance). A missing (scenario, policy) shows ``-`` and is left out of
    that policy's total. When the policies do not fit in ``max_width`` characters the table
    is split into several, each repeating the scenario columns. Totals as
    ``sim.scoring.metrics.totals``: energies and counts summed, tracking = summed avoided /
    summed avoidable exchange, crossings per total simulated hour.
    """
    order = list(dict.fromkeys(p for _, p, _ in rows)) if policies is None else list(policies)
    scenarios = list(dict.fromkeys(s for s, _, _ in rows))
    by_key = {(s, p): m for s, p, m in rows}
    first = {s: next(m for s2, _, m in rows if s2 == s) for s in scenarios}
    blocks: list[list[str]] = [[]]
    for policy in order:
        candidate = [*blocks[-1], policy]
        if (
            blocks[-1]
            and _natural_width(_bench_block(scenarios, candidate, by_key, first)) > max_width
        ):
            blocks.append([policy])
        else:
            blocks[-1] = candidate
    return [_bench_block(scenarios, block, by_key, first) for block in blocks]


def format_side_by_side(rows: Sequence[Row], policies: Sequence[str] | None = None) -> str:
    """``bench_tables`` as plain text."""
    return render(*bench_tables(rows, policies))
