"""The shared fakes keep the timing the tests built on them rely on."""

from __future__ import annotations

import asyncio

import pytest

from engine.core.settings import BatterySpec, ControlSettings
from tests.fakes import FakeBattery, FakeClock, IdealPlant


async def test_fake_clock_moves_only_when_slept_on_or_set() -> None:
    clock = FakeClock(1000.0)
    await clock.sleep(2.5)
    await clock.sleep(-1.0)  # a negative delay is no delay
    assert clock.now() == 1002.5
    assert clock.sleeps == [2.5, -1.0]
    clock.t_s = 5.0
    assert clock.now() == 5.0


async def test_a_gated_clock_holds_every_sleep_until_the_gate_opens() -> None:
    clock = FakeClock(gated=True)
    sleeper = asyncio.create_task(clock.sleep(1.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not sleeper.done()
    assert clock.sleeps == []
    clock.open_gate()
    await sleeper
    assert clock.now() == 1.0


@pytest.mark.parametrize("dead_cycles", [1, 3])
def test_ideal_batteries_deliver_each_command_dead_cycles_later(dead_cycles: int) -> None:
    settings = ControlSettings(batteries=(BatterySpec("a"),))
    plant = IdealPlant(settings, {"a": FakeBattery(60.0)}, net_w=800.0, dead_cycles=dead_cycles)
    delivered = []
    for _ in range(8):
        plant.step()
        delivered.append(plant.batteries["a"].power_w)
    commanded = [float(p.setpoints.get("a", 0)) for p in plant.plans]
    assert delivered[dead_cycles:] == commanded[: len(commanded) - dead_cycles]
    assert delivered[:dead_cycles] == [0.0] * dead_cycles


def test_the_meter_shows_the_batteries_as_they_were_meter_lag_cycles_earlier() -> None:
    settings = ControlSettings(batteries=(BatterySpec("a"),))
    plant = IdealPlant(settings, {"a": FakeBattery(60.0)}, net_w=800.0, meter_lag_cycles=1)
    powers = []
    for _ in range(6):
        plant.step()
        powers.append(plant.batteries["a"].power_w)
        assert plant.grid_w == 800.0 - (powers[-2] if len(powers) > 1 else 0.0)
    assert plant.true_grid_w() == 800.0 - powers[-1]
    plant.batteries["a"].follows = False
    plant.step()
    assert plant.batteries["a"].power_w == 0.0  # acknowledged, not delivered
    assert plant.command_w["a"] > 0
