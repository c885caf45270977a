"""``mmbc-sim serve``'s outside view of an engine: limits and shutdown from the registers.

The served process itself (signals, JSON, endpoints) is exercised end to end in
tests/test_e2e.py against a real ``mmbc-engine``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.adapters import marstek_registers as reg
from sim.plant.params import BatteryParams, ScenarioBattery
from sim.plant.world import RECORD_STEP_S, World
from sim.replay.inprocess import settings_for
from sim.replay.serve import LIMIT_GRACE_S, RegisterWatch
from sim.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
KETTLE = ROOT / "scenarios" / "kettle.toml"


def world_at(soc_pct: float) -> World:
    scenario: Scenario = load_scenario(KETTLE)
    scenario = dataclasses.replace(scenario, batteries=(ScenarioBattery(soc_pct=soc_pct),))
    return World(scenario)


def command_discharge(world: World, power_w: int) -> None:
    fw = world.firmwares[0]
    for address, value in (
        (reg.REG_RS485_CONTROL, reg.RS485_ENABLE),
        (reg.REG_DISCHARGE_SETPOINT, power_w),
        (reg.REG_FORCE_MODE, reg.FORCE_DISCHARGE),
    ):
        assert fw.write(address, [value], world.now_s) is None


def release(world: World) -> None:
    fw = world.firmwares[0]
    for address, value in (
        (reg.REG_FORCE_MODE, reg.FORCE_STOP),
        (reg.REG_DISCHARGE_SETPOINT, 0),
        (reg.REG_RS485_CONTROL, reg.RS485_DISABLE),
    ):
        assert fw.write(address, [value], world.now_s) is None


def run(world: World, watch: RegisterWatch, seconds: float) -> None:
    for _ in range(round(seconds / RECORD_STEP_S)):
        world.advance_to(world.now_s + RECORD_STEP_S)
        watch.step()


def test_a_discharge_within_limits_and_a_clean_release_pass() -> None:
    world = world_at(60.0)
    watch = RegisterWatch(world, settings_for(world.scenario, "mmbc"))
    command_discharge(world, 400)
    run(world, watch, 30.0)
    release(world)
    run(world, watch, 2.0)
    watch.shutdown()
    assert watch.report.passed() == {"limits_respected": True, "shutdown_safe": True}


def test_discharging_at_the_floor_beyond_the_grace_fails_limits() -> None:
    world = world_at(10.0)  # below the 11 % floor
    watch = RegisterWatch(world, settings_for(world.scenario, "mmbc"))
    command_discharge(world, 400)
    run(world, watch, LIMIT_GRACE_S - 2.0)
    assert watch.report.passed()["limits_respected"]  # an engine gets a few cycles to see it
    run(world, watch, 4.0)
    assert not watch.report.passed()["limits_respected"]
    assert "discharging" in watch.report.details["limits_respected"]


def test_a_setpoint_above_the_battery_limit_fails_at_once() -> None:
    scenario = load_scenario(KETTLE)
    small = ScenarioBattery(soc_pct=60.0, params=BatteryParams(max_discharge_w=800.0))
    world = World(dataclasses.replace(scenario, batteries=(small,)))
    watch = RegisterWatch(world, settings_for(world.scenario, "mmbc"))
    command_discharge(world, 1000)
    run(world, watch, RECORD_STEP_S)
    assert not watch.report.passed()["limits_respected"]
    assert "1000 W" in watch.report.details["limits_respected"]


def test_still_in_control_when_serving_stops_fails_shutdown() -> None:
    world = world_at(60.0)
    watch = RegisterWatch(world, settings_for(world.scenario, "mmbc"))
    command_discharge(world, 400)
    run(world, watch, 5.0)
    watch.shutdown()
    assert not watch.report.passed()["shutdown_safe"]


def _serve_on_taken_port(tmp_path: Path, which: str) -> subprocess.CompletedProcess[str]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        other = free_port()
        p1_port, modbus_port = (port, other) if which == "p1" else (other, port)
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "sim",
                "serve",
                str(KETTLE),
                "--p1-port",
                str(p1_port),
                "--modbus-port",
                str(modbus_port),
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.mark.parametrize(("which", "names"), [("p1", "P1 meter"), ("modbus", "battery_1 Modbus")])
def test_a_port_in_use_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, which: str, names: str
) -> None:
    result = _serve_on_taken_port(tmp_path, which)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no pymodbus traceback, no warning line
    assert names in lines[0]
    assert "already in use" in lines[0]
    assert result.stdout == ""  # nothing was served, so no endpoints are printed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
