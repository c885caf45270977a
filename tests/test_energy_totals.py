"""Energy totals as Home Assistant sees them, over a battery's removal and re-add and restarts.

Real parts throughout: the simulator's Modbus servers (each battery's lifetime counters in
registers 33000/33002), the engine's controller, Modbus driver, energy ledger and state file,
the MQTT bridge and a real broker. Between "restarts" the engine is rebuilt from nothing but
the state file, as a new process would be. The test sets the simulated batteries' counters
(the plant is not advanced, so nothing else moves them) and checks every total the broker
carried: never lower than the one before, and rising by exactly what the counters rose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.adapters.homewizard import HomeWizardClient
from engine.adapters.marstek import MarstekBattery
from engine.adapters.mqtt import MqttBridge
from engine.core.policies import make_policy
from engine.ports import LoopClock
from engine.runtime.controller import Controller
from engine.runtime.energy_store import EnergyStateFile
from sim.plant.world import World
from sim.replay.inprocess import settings_for
from sim.scenario import load_scenario
from sim.servers.plant import WorldServers, start_world_servers
from tests.adapters.test_mqtt import Observer, make_settings, observe, retained_configs
from tests.mqtt_broker import TestBroker, start_broker

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "default.toml"  # two batteries
CHARGE_TOTAL = "mmbc/status/charge_total_wh"
DISCHARGE_TOTAL = "mmbc/status/discharge_total_wh"

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def engine(
    servers: WorldServers, broker: TestBroker, state_file: Path, numbers: tuple[int, ...]
) -> AsyncIterator[Controller]:
    """The engine with batteries ``numbers`` configured, from nothing but ``state_file``."""
    world = servers.world
    names = {n: f"battery_{n}" for n in numbers}
    settings = settings_for(world.scenario, "mmbc")
    settings = dataclasses.replace(
        settings,
        loop_period_s=0.2,
        batteries=tuple(b for b in settings.batteries if b.name in names.values()),
    )
    clock = LoopClock()
    meter = HomeWizardClient(servers.p1_url, timeout_s=1.0)
    batteries = [
        MarstekBattery(
            names[n],
            servers.batteries[n - 1].host,
            servers.batteries[n - 1].port,
            clock=clock,
            message_gap_s=0.0,
            timeout_s=0.5,
            counters_interval_s=0.1,  # the counters every cycle or two: a quick test
            backoff_initial_s=0.1,
            backoff_max_s=0.2,
        )
        for n in numbers
    ]
    controller = Controller(
        clock=clock,
        policy=make_policy(settings),
        meter=meter,
        batteries=batteries,
        battery_numbers={names[n]: n for n in numbers},
        energy_store=EnergyStateFile(state_file),
    )
    bridge = MqttBridge(
        make_settings(broker, min_interval_s=0.0),
        clock=clock,
        on_block_discharge=controller.set_block_discharge,
        on_mode=controller.set_mode,
        has_pv=False,
        battery_numbers=list(numbers),
    )
    controller.sinks.append(bridge)
    stop = asyncio.Event()
    bridge_task = asyncio.create_task(bridge.run())
    control_task = asyncio.create_task(controller.run(stop))
    try:
        yield controller
    finally:
        stop.set()
        await control_task  # shuts down: batteries released, the state file written
        await bridge.stop()
        await bridge_task
        await meter.close()
        for battery in batteries:
            await battery.close()


def set_counters(
    servers: WorldServers, number: int, *, charge_wh: float, discharge_wh: float
) -> None:
    battery = servers.world.firmwares[number - 1].battery
    battery.charged_wh = charge_wh
    battery.discharged_wh = discharge_wh


def totals_seen(observer: Observer, topic: str) -> list[int]:
    return [int(m.payload) for m in observer.of(topic)]


async def wait_total(observer: Observer, charge_wh: int, discharge_wh: int) -> None:
    await observer.has({CHARGE_TOTAL: str(charge_wh), DISCHARGE_TOTAL: str(discharge_wh)})


async def test_totals_over_a_removal_a_re_add_and_restarts(tmp_path: Path) -> None:
    state_file = tmp_path / "mmbc-state.json"
    world = World(load_scenario(SCENARIO))
    servers = await start_world_servers(world)
    try:
        async with start_broker() as broker, observe(broker, ("mmbc/#",)) as observer:
            # -- first start, both batteries: the totals start at the sum of their counters
            set_counters(servers, 1, charge_wh=100_000, discharge_wh=80_000)
            set_counters(servers, 2, charge_wh=170, discharge_wh=50)
            async with engine(servers, broker, state_file, (1, 2)):
                await wait_total(observer, 100_170, 80_050)
                await observer.has({"mmbc/battery/2/charge_total_kwh": "0.17"})
                set_counters(servers, 2, charge_wh=180, discharge_wh=50)
                await wait_total(observer, 100_180, 80_050)
                # Battery 2 unreachable: battery 1's energy still counts, at once.
                await servers.batteries[1].set_offline(True)
                await observer.has({"mmbc/battery/2/online": "false"})
                set_counters(servers, 1, charge_wh=100_000, discharge_wh=80_010)
                await wait_total(observer, 100_180, 80_060)
                await servers.batteries[1].set_offline(False)
                await observer.has({"mmbc/battery/2/online": "true"})
            saved = json.loads(state_file.read_text(encoding="utf-8"))
            assert (saved["charge_total_wh"], saved["discharge_total_wh"]) == (100_180, 80_060)

            # -- battery 2 removed from the configuration; it runs on (its counter rises)
            set_counters(servers, 2, charge_wh=220, discharge_wh=50)
            async with engine(servers, broker, state_file, (1,)):
                await wait_total(observer, 100_180, 80_060)  # not a drop to battery 1's sum
                set_counters(servers, 1, charge_wh=100_010, discharge_wh=80_010)
                await wait_total(observer, 100_190, 80_060)
            configs = await retained_configs(broker)
            assert not [t for t in configs if "battery_2_" in t]  # its entities are gone
            async with observe(broker, ("mmbc/battery/#",)) as late:
                await late.sync()
            assert not [m for m in late.messages if m.topic.startswith("mmbc/battery/2/")]

            # -- battery 2 added back: its 40 Wh while away count once, not its 220 Wh again
            async with engine(servers, broker, state_file, (1, 2)):
                await wait_total(observer, 100_230, 80_060)
                await observer.has({"mmbc/battery/2/charge_total_kwh": "0.22"})

            # -- one more restart with nothing moving: the totals stay exactly
            count = len(observer.of(CHARGE_TOTAL))
            async with engine(servers, broker, state_file, (1, 2)):
                await observer.wait_for(lambda: len(observer.of(CHARGE_TOTAL)) > count)
                await wait_total(observer, 100_230, 80_060)

        for topic in (CHARGE_TOTAL, DISCHARGE_TOTAL):
            seen = totals_seen(observer, topic)
            assert seen == sorted(seen), f"{topic} fell: {seen}"  # never a "meter reset"
        assert totals_seen(observer, CHARGE_TOTAL)[-1] == 100_000 + 10 + 220  # the counters
    finally:
        await servers.stop()
