"""``--plot``: the worst minute it zooms on, and the picture itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.cli import main
from sim.plant.record import RunRecord
from sim.scenario import SCENARIO_DIR
from sim.scoring.plot import worst_window


def record(grid_w: list[float], dt_s: float = 1.0) -> RunRecord:
    """No battery: the grid is the house's net demand."""
    rec = RunRecord(n_batteries=1)
    for i, g in enumerate(grid_w):
        rec.append(i * dt_s, dt_s, g, [0.0], [50.0], discharge_blocked=False)
    return rec


def test_worst_minute_is_the_60_s_with_the_most_grid_energy() -> None:
    grid = [10.0] * 600
    grid[300:330] = [2000.0] * 30  # 30 s of a large import
    window = worst_window(record(grid))
    assert window is not None
    assert window.start <= 300
    assert window.stop >= 330
    assert window.stop - window.start == 60
    assert not window.by_excess
    assert window.score_wh == pytest.approx((30 * 2000.0 + 30 * 10.0) / 3600.0)


def test_worst_minute_is_picked_by_the_excess_once_the_run_is_scored() -> None:
    grid = [0.0] * 600
    grid[100:160] = [3000.0] * 60  # large, but the reference could not avoid it either
    grid[400:420] = [-500.0] * 20  # smaller, and all of it avoidable
    rec = record(grid)
    oracle = [0.0] * 600
    oracle[100:160] = [3000.0] * 60
    rec.oracle_grid_w = oracle
    window = worst_window(rec)
    assert window is not None
    assert window.by_excess
    assert window.start <= 400
    assert window.stop >= 420
    assert window.score_wh == pytest.approx(20 * 500.0 / 3600.0)


def test_a_run_shorter_than_a_minute_is_its_own_worst_minute() -> None:
    window = worst_window(record([100.0] * 20, dt_s=0.5))
    assert window is not None
    assert (window.start, window.stop) == (0, 20)
    assert worst_window(RunRecord(n_batteries=1)) is None


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the 'plot' extra (matplotlib)")
    out = tmp_path / "kettle.png"
    assert main(["run", str(SCENARIO_DIR / "kettle.toml"), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
