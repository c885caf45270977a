"""``--plot``: each policy's whole run (grid, battery power, SoC) beside a zoom of its worst
minute (grid, what the meter showed the policy, each battery's command and AC power)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.plant.record import RunRecord
    from sim.replay.result import RunResult

# matplotlib's axes are passed as Any: matplotlib is optional, so its types are there only
# when it is installed.
MAX_POINTS = 4000  # decimate long runs: a day at 0.5 s has 172 800 samples
WORST_WINDOW_S = 60.0
_SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Window:
    """Steps ``[start, stop)`` of a record and what they cost."""

    start: int
    stop: int
    score_wh: float  # what picked it: excess over the reference, or |grid| energy
    by_excess: bool  # True when the reference's grid was known


def worst_window(record: RunRecord, window_s: float = WORST_WINDOW_S) -> Window | None:
    """The ``window_s`` span (in whole steps, starting at any step) where the run did worst:
    the largest excess over the reference (sum of ``(|grid| - |reference grid|) dt``) when the
    record was scored, else the largest ``|grid|`` energy. None for an empty record."""
    n = len(record.t_s)
    if n == 0:
        return None
    oracle = record.oracle_grid_w
    by_excess = oracle is not None and len(oracle) == n
    cost = [
        (abs(g) - (abs(oracle[i]) if by_excess and oracle is not None else 0.0)) * record.dt_s[i]
        for i, g in enumerate(record.grid_w)
    ]
    # Sliding sum over the steps that start within window_s of the window's first step.
    best_start, best_stop, best_sum = 0, 1, float("-inf")
    stop = 0
    running = 0.0
    for start in range(n):
        while stop < n and record.t_s[stop] < record.t_s[start] + window_s:
            running += cost[stop]
            stop += 1
        if running > best_sum:
            best_start, best_sum, best_stop = start, running, stop
        running -= cost[start]
    return Window(best_start, best_stop, best_sum / _SECONDS_PER_HOUR, by_excess)


def plot_runs(results: Sequence[RunResult], path: Path) -> None:
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        msg = "--plot needs matplotlib: pip install 'mmbc[plot]'"
        raise SystemExit(msg) from exc

    n = len(results)
    fig, axes = plt.subplots(
        3,
        2 * n,
        figsize=(12 * n, 9),
        squeeze=False,
        gridspec_kw={"width_ratios": [7, 5] * n},
    )
    for col, result in enumerate(results):
        _whole_run(result, axes[0][2 * col], axes[1][2 * col], axes[2][2 * col])
        _zoom(result, axes[0][2 * col + 1], axes[1][2 * col + 1], axes[2][2 * col + 1])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _whole_run(result: RunResult, ax_grid: Any, ax_bat: Any, ax_soc: Any) -> None:
    rec = result.record
    step = max(1, len(rec.t_s) // MAX_POINTS)
    hours = [t / _SECONDS_PER_HOUR for t in rec.t_s[::step]]
    ax_grid.plot(hours, rec.net_w[::step], color="0.7", lw=0.8, label="house net demand")
    ax_grid.plot(hours, rec.grid_w[::step], color="tab:red", lw=0.8, label="grid (+ import)")
    ax_grid.axhline(0, color="black", lw=0.5)
    ax_grid.set_title(
        f"{result.scenario} — {result.policy}: excess {result.metrics.excess_wh:.0f} Wh, "
        f"tracking {result.metrics.tracking_score:.3f}"
    )
    ax_grid.set_ylabel("W")
    ax_grid.legend(loc="upper right", fontsize="small")
    window = worst_window(rec)
    if window is not None:
        for ax in (ax_grid, ax_bat):
            ax.axvspan(
                rec.t_s[window.start] / _SECONDS_PER_HOUR,
                rec.t_s[window.stop - 1] / _SECONDS_PER_HOUR,
                color="tab:orange",
                alpha=0.3,
                label="worst minute" if ax is ax_grid else None,
            )
    for i, series in enumerate(rec.battery_w):
        ax_bat.plot(hours, series[::step], lw=0.8, label=f"{rec.names[i]} (+ discharge)")
    ax_bat.set_ylabel("W")
    ax_bat.legend(loc="upper right", fontsize="small")
    for i, series in enumerate(rec.soc_pct):
        ax_soc.plot(hours, series[::step], lw=0.8, label=rec.names[i])
    ax_soc.set_ylabel("SoC %")
    ax_soc.set_xlabel("hours")
    ax_soc.set_ylim(0, 100)
    ax_soc.legend(loc="upper right", fontsize="small")


def _zoom(result: RunResult, ax_grid: Any, ax_bat: Any, ax_text: Any) -> None:
    rec = result.record
    window = worst_window(rec)
    ax_text.axis("off")
    if window is None:
        return
    span = slice(window.start, window.stop)
    t0_s = rec.t_s[window.start]
    seconds = [t - t0_s for t in rec.t_s[span]]
    where = "post"  # every sample holds its value over its step
    ax_grid.step(
        seconds, rec.net_w[span], where=where, color="0.7", lw=1.0, label="house net demand"
    )
    ax_grid.step(seconds, rec.grid_w[span], where=where, color="tab:red", lw=1.2, label="grid")
    ax_grid.step(
        seconds,
        rec.meter_w[span],
        where=where,
        color="black",
        lw=0.9,
        ls="--",
        label="meter reading the policy saw",
    )
    ax_grid.axhline(0, color="black", lw=0.5)
    ax_grid.set_title(f"worst minute, from {_clock(t0_s)} ({result.policy})")
    ax_grid.set_ylabel("W")
    ax_grid.legend(loc="upper right", fontsize="small")
    for i, name in enumerate(rec.names):
        (line,) = ax_bat.step(
            seconds, rec.battery_w[i][span], where=where, lw=1.2, label=f"{name} AC power"
        )
        ax_bat.step(
            seconds,
            rec.command_w[i][span],
            where=where,
            lw=0.9,
            ls="--",
            color=line.get_color(),
            label=f"{name} command",
        )
    ax_bat.axhline(0, color="black", lw=0.5)
    ax_bat.set_ylabel("W (+ discharge)")
    ax_bat.set_xlabel("seconds into the minute")
    ax_bat.legend(loc="upper right", fontsize="small")
    dt = rec.dt_s[span]
    grid = rec.grid_w[span]
    import_wh = sum(g * d for g, d in zip(grid, dt, strict=True) if g > 0) / _SECONDS_PER_HOUR
    export_wh = -sum(g * d for g, d in zip(grid, dt, strict=True) if g < 0) / _SECONDS_PER_HOUR
    picked = "excess over the reference" if window.by_excess else "|grid| energy"
    ax_text.text(
        0.0,
        1.0,
        f"picked by the largest {picked}: {window.score_wh:.1f} Wh\n"
        f"imported {import_wh:.1f} Wh, exported {export_wh:.1f} Wh\n"
        f"grid from {min(grid):.0f} to {max(grid):.0f} W",
        va="top",
        family="monospace",
    )


def _clock(t_s: float) -> str:
    """Seconds into the run as h:mm:ss."""
    whole = round(t_s)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
