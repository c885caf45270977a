"""``--series``: the per-step CSV holds what the plant did and what the policy saw and sent."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest

from engine.core.model import Plan, Snapshot
from sim.cli import main
from sim.plant.world import World
from sim.replay.inprocess import run_scenario
from sim.scenario import SCENARIO_DIR, Scenario, load_scenario
from sim.scoring.series import series_columns, series_paths, write_series

KETTLE = SCENARIO_DIR / "kettle.toml"
ENGINE_ERROR = SCENARIO_DIR / "faults" / "engine_error.toml"


def trimmed(path: Path, duration_s: float) -> Scenario:
    scenario = load_scenario(path)
    return dataclasses.replace(scenario, duration_s=min(duration_s, scenario.duration_s))


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def number(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


def test_series_holds_each_cycles_reading_and_commands_until_the_next(tmp_path: Path) -> None:
    # Two batteries, the hob pulsing from 6 min: readings and commands change every cycle.
    scenario = trimmed(SCENARIO_DIR / "induction_hob.toml", 480.0)
    # Per cycle: the first row written after its commands were sent, what it saw and sent.
    cycles: list[tuple[int, float | None, dict[str, int]]] = []

    def on_cycle(world: World, snap: Snapshot, plan: Plan | None) -> None:
        assert plan is not None
        cycles.append((len(world.record.t_s), snap.grid_w, dict(plan.setpoints)))

    result = run_scenario(scenario, "mmbc", on_cycle=on_cycle)
    out = tmp_path / "hob.csv"
    write_series(result.record, out)
    header, rows = read_rows(out)

    assert header == series_columns(["battery_1", "battery_2"])
    assert len(rows) == len(result.record.t_s) == 960
    assert len(cycles) >= 470  # one a second
    # Until the first cycle the policy had seen nothing and sent nothing.
    before = rows[: cycles[0][0]]
    assert before
    assert all(r["meter_w"] == r["battery_1_command_w"] == "" for r in before)
    # Each row shows the reading and the commands of the last cycle done by its end.
    sent = {"battery_1": math.nan, "battery_2": math.nan}
    k = 0
    for index, row in enumerate(rows):
        while k < len(cycles) and cycles[k][0] <= index:
            sent.update(cycles[k][2])
            k += 1
        if k == 0:
            continue
        reading = cycles[k - 1][1]
        assert number(row["meter_w"]) == pytest.approx(
            math.nan if reading is None else reading, nan_ok=True
        )
        for name, power_w in sent.items():
            assert number(row[f"{name}_command_w"]) == pytest.approx(power_w, nan_ok=True)
    assert k == len(cycles)
    # The policy's view lags the truth: the hob's pulses show in grid_w before meter_w.
    assert any(number(r["meter_w"]) != pytest.approx(float(r["grid_w"]), abs=50) for r in rows)


def test_series_scores_like_the_replay(tmp_path: Path) -> None:
    """Someone scoring the CSV with their own tools gets the replay's energies."""
    result = run_scenario(trimmed(KETTLE, 1200.0), "mmbc")
    out = tmp_path / "kettle.csv"
    write_series(result.record, out)
    _, rows = read_rows(out)
    import_wh = export_wh = loss_free_wh = 0.0
    for r in rows:
        dt_h = float(r["dt_s"]) / 3600.0
        grid_w = float(r["grid_w"])
        # grid = net - battery, from the rounded columns
        assert grid_w == pytest.approx(float(r["net_w"]) - float(r["battery_1_power_w"]), abs=0.11)
        import_wh += max(grid_w, 0.0) * dt_h
        export_wh += max(-grid_w, 0.0) * dt_h
        loss_free_wh += abs(float(r["battery_1_power_w"])) * dt_h
        assert 0.0 <= float(r["battery_1_soc_pct"]) <= 100.0
    m = result.metrics
    assert import_wh == pytest.approx(m.import_wh, abs=0.05)
    assert export_wh == pytest.approx(m.export_wh, abs=0.05)
    assert loss_free_wh == pytest.approx(m.battery_throughput_wh, abs=0.05)


def test_a_failed_cycle_shows_every_battery_at_0_w_and_no_reading(tmp_path: Path) -> None:
    # engine_error: every cycle raises from 600 s for 30 s; the replay puts the batteries at 0 W.
    result = run_scenario(trimmed(ENGINE_ERROR, 700.0), "mmbc")
    out = tmp_path / "error.csv"
    write_series(result.record, out)
    _, rows = read_rows(out)
    by_t = {float(r["t_s"]): r for r in rows}
    before, during = by_t[590.0], by_t[615.0]
    assert number(before["battery_1_command_w"]) > 0
    assert before["meter_w"] != ""
    assert during["meter_w"] == ""
    assert all(during[f"battery_{i}_command_w"] == "0" for i in (1, 2))


def test_series_paths_name_one_file_per_policy(tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    assert series_paths(out, ["mmbc"]) == [out]
    assert series_paths(out, ["mmbc", "classic"]) == [
        tmp_path / "run.mmbc.csv",
        tmp_path / "run.classic.csv",
    ]


def test_run_writes_a_series_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kettle.csv"
    assert main(["run", str(KETTLE), "--series", str(out)]) == 0
    printed = capsys.readouterr().out
    for policy in ("mmbc", "classic"):
        path = tmp_path / f"kettle.{policy}.csv"
        assert str(path) in printed
        header, rows = read_rows(path)
        assert header == series_columns(["battery_1"])
        assert len(rows) == 7200  # one hour of 0.5 s steps
    assert not out.exists()
