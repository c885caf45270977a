"""``mmbc-sim serve``'s outside view of an engine: limits and shutdown from the registers.

The served process itself (signals, JSON, endpoints) is exercised end to end in
tests/test_e2e.py against a real ``mmbc-engine``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.adapters import marstek_registers as reg
from sim.plant.params import BatteryParams, ScenarioBattery
from sim.plant.world import RECORD_STEP_S, World
from sim.replay.inprocess import settings_for
from sim.replay.serve import LIMIT_GRACE_S, RegisterWatch
from sim.scenario import Scenario, load_scenario

KETTLE = Path(__file__).resolve().parents[2] / "scenarios" / "kettle.toml"


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
