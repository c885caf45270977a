"""``--plot``: grid power, battery power per battery and SoC over time, one column per policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.replay.result import RunResult

MAX_POINTS = 4000  # decimate long runs: a day at 0.5 s has 172 800 samples


def plot_runs(results: Sequence[RunResult], path: Path) -> None:
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        msg = "--plot needs matplotlib: pip install 'mmbc[plot]'"
        raise SystemExit(msg) from exc

    fig, axes = plt.subplots(3, len(results), figsize=(7 * len(results), 9), squeeze=False)
    for col, result in enumerate(results):
        rec = result.record
        step = max(1, len(rec.t_s) // MAX_POINTS)
        hours = [t / 3600.0 for t in rec.t_s[::step]]
        ax_grid, ax_bat, ax_soc = axes[0][col], axes[1][col], axes[2][col]
        ax_grid.plot(hours, rec.net_w[::step], color="0.7", lw=0.8, label="house net demand")
        ax_grid.plot(hours, rec.grid_w[::step], color="tab:red", lw=0.8, label="grid (+ import)")
        ax_grid.axhline(0, color="black", lw=0.5)
        ax_grid.set_title(
            f"{result.scenario} — {result.policy}: excess "
            f"{result.metrics.get('excess_wh', 0):.0f} Wh, "
            f"tracking {result.metrics.get('tracking_score', 0):.3f}"
        )
        ax_grid.set_ylabel("W")
        ax_grid.legend(loc="upper right", fontsize="small")
        for i, series in enumerate(rec.battery_w):
            ax_bat.plot(hours, series[::step], lw=0.8, label=f"battery_{i + 1} (+ discharge)")
        ax_bat.set_ylabel("W")
        ax_bat.legend(loc="upper right", fontsize="small")
        for i, series in enumerate(rec.soc_pct):
            ax_soc.plot(hours, series[::step], lw=0.8, label=f"battery_{i + 1}")
        ax_soc.set_ylabel("SoC %")
        ax_soc.set_xlabel("hours")
        ax_soc.set_ylim(0, 100)
        ax_soc.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
