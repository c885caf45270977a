"""``--series``: one run's per-step time series as CSV, to score it with other tools.

One row per record cell (0.5 s); the columns are described in docs/scoring.md ("The time
series"). Powers in W (grid + import, battery + discharging, as inside the engine), means
over the cell; SoC in % at its end. What the controller saw and sent is that of its last
control cycle done (commands sent) by the cell's end; an empty cell means there was none (no
cycle yet, no valid meter reading, a battery released to its own logic).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.plant.record import RunRecord

__all__ = ["series_columns", "series_paths", "write_series"]


def series_columns(names: Sequence[str]) -> list[str]:
    """The CSV header for batteries ``names``."""
    per_battery = [
        f"{name}_{column}" for name in names for column in ("command_w", "power_w", "soc_pct")
    ]
    return ["t_s", "dt_s", "net_w", "grid_w", "meter_w", *per_battery]


def series_paths(path: Path, policies: Sequence[str]) -> list[Path]:
    """Where each run's series goes: ``path`` itself for one run; for several, the policy's
    name before the suffix (``out.csv`` -> ``out.mmbc.csv``, ``out.classic.csv``)."""
    if len(policies) == 1:
        return [path]
    return [path.with_name(f"{path.stem}.{policy}{path.suffix or '.csv'}") for policy in policies]


def _cell(value: float, fmt: str) -> str:
    return "" if math.isnan(value) else format(value, fmt)


def write_series(record: RunRecord, path: Path) -> None:
    """Write ``record`` as CSV to ``path``: one header line, then one line per record cell."""
    n_batteries = len(record.battery_w)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(series_columns(record.names))
        for i, t_s in enumerate(record.t_s):
            row = [
                format(t_s, ".3f"),
                format(record.dt_s[i], ".3f"),
                format(record.net_w[i], ".1f"),
                format(record.grid_w[i], ".1f"),
                _cell(record.meter_w[i], ".1f"),
            ]
            for b in range(n_batteries):
                row += [
                    _cell(record.command_w[b][i], ".0f"),
                    format(record.battery_w[b][i], ".1f"),
                    format(record.soc_pct[b][i], ".2f"),
                ]
            writer.writerow(row)
