"""The control loop on a meter that pushes its readings (API v2), with the real v2 client and
push stream against the simulator's HTTPS + websocket server, in virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.adapters import marstek_registers as reg
from engine.adapters.homewizard_v2 import HomeWizardV2Client, MeasurementStream
from engine.adapters.marstek import MarstekBattery
from engine.core.policies import make_policy
from engine.core.schedule import PUSHED_READING_AGE_S
from engine.core.states import FleetState
from engine.ports import LoopClock
from engine.runtime.controller import Controller
from sim.plant.world import RECORD_STEP_S, World
from sim.replay.inprocess import settings_for
from sim.scenario import load_scenario
from sim.servers.plant import WorldServers, start_world_servers
from sim.servers.tls import SimulatorCA
from tests.runtime.test_controller import Recorder, in_control, running

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
KETTLE = SCENARIOS / "kettle.toml"  # meter: a reading every 1 s, visible 0.5 s later
SLOW_METER = SCENARIOS / "variants" / "kettle_slow_meter.toml"  # every 10 s, 1 s later

pytestmark = pytest.mark.looptime


@dataclass
class PushRig:
    world: World
    servers: WorldServers
    stream: MeasurementStream
    controller: Controller
    recorder: Recorder


@contextlib.asynccontextmanager
async def push_rig(
    scenario: Path, tmp_path: Path, *, initial_backoff_s: float = 1.0
) -> AsyncIterator[PushRig]:
    """The plant behind its v2 P1 and Modbus servers, advancing on the loop clock, each
    sample pushed as it becomes visible; the controller with the real v2 client and stream."""
    world = World(load_scenario(scenario))
    ca = SimulatorCA()
    servers = await start_world_servers(
        world, p1_api="v2", ca=ca, ca_file=ca.write_ca(tmp_path / "ca.pem")
    )
    assert servers.p1_v2 is not None

    async def advance() -> None:
        loop = asyncio.get_running_loop()
        for step in itertools.count(1):
            await asyncio.sleep(step * RECORD_STEP_S - loop.time())
            world.advance_to(loop.time())
            await servers.apply_faults()

    plant = [asyncio.create_task(advance()), asyncio.create_task(servers.push_samples())]
    clock = LoopClock()
    client = HomeWizardV2Client(
        f"127.0.0.1:{servers.p1_v2.port}",
        identifier=servers.p1_v2.identifier,
        token=servers.p1_v2.add_user("local/mmbc"),
        ca_file=servers.ca_file,
    )
    stream = MeasurementStream(client, initial_backoff_s=initial_backoff_s)
    batteries = [
        MarstekBattery(name, server.host, server.port, server.unit_id, clock=clock)
        for name, server in zip(world.names, servers.batteries, strict=True)
    ]
    recorder = Recorder()
    controller = Controller(
        clock=clock,
        policy=make_policy(settings_for(world.scenario, "mmbc")),
        meter=client,
        batteries=batteries,
        sinks=[recorder],
        observer=recorder,
        push=stream,
    )
    try:
        await asyncio.sleep(world.scenario.meter.latency_s + 0.1)  # the first reading shows
        yield PushRig(world, servers, stream, controller, recorder)
    finally:
        for task in plant:
            task.cancel()
        await asyncio.gather(*plant, return_exceptions=True)
        await client.close()
        for battery in batteries:
            await battery.close()
        await servers.stop()


def connected(stream: MeasurementStream) -> bool:
    """Read afresh each time: a plain attribute would be narrowed by mypy across awaits."""
    return bool(stream.connected)


def on_a_visible_instant(t_s: float, interval_s: float, latency_s: float) -> bool:
    k = round((t_s - latency_s) / interval_s)
    return math.isclose(k * interval_s + latency_s, t_s, abs_tol=1e-3)


async def test_pushed_readings_run_the_cycles_and_replace_the_polls(tmp_path: Path) -> None:
    async with push_rig(KETTLE, tmp_path) as r, running(r.controller):
        await asyncio.sleep(30.0)
        stats = r.controller.stats
        fw = r.world.firmwares[0]
        assert in_control(fw)
        assert fw.force_mode == reg.FORCE_DISCHARGE  # the night load, covered
        assert stats.pushed_cycles >= 25
        assert stats.polls <= 2  # the first cycle's, before the stream is up
        assert stats.pushes >= stats.pushed_cycles
    meter = r.world.scenario.meter
    # Cycles on a reading that had just arrived: all but the first (polled) are on pushes.
    fresh = [
        s
        for s in r.recorder.snapshots
        if s.meter_updated_s is not None and s.now_s - s.meter_updated_s < 0.01
    ]
    assert len(fresh) >= 25
    assert fresh[0].reading_age_s is None  # the first cycle polled: its age was unknown
    for snap in fresh[1:]:
        # Decided on at the instant the sample became visible, and known to be fresh.
        assert snap.meter_updated_s is not None
        assert on_a_visible_instant(snap.meter_updated_s, meter.interval_s, meter.latency_s)
        assert snap.reading_age_s == PUSHED_READING_AGE_S
    assert all(s.grid_w is not None for s in r.recorder.snapshots)


async def test_a_lost_stream_falls_back_to_polling_until_pushes_return(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with push_rig(KETTLE, tmp_path, initial_backoff_s=10.0) as r, running(r.controller):
        await asyncio.sleep(10.0)
        stats = r.controller.stats
        polls_before, pushed_before = stats.polls, stats.pushed_cycles
        assert connected(r.stream)
        dropped_s = loop.time()
        assert r.servers.p1_v2 is not None
        await r.servers.p1_v2.drop_push_sockets()  # the stream reconnects 10 s later
        await asyncio.sleep(8.0)
        assert not connected(r.stream)
        polls_meanwhile = stats.polls - polls_before
        assert polls_meanwhile >= 5  # the timer cycles poll while no push comes
        await asyncio.sleep(8.0)
        assert connected(r.stream)
        polls_after, pushed_after = stats.polls, stats.pushed_cycles
        await asyncio.sleep(5.0)
        assert stats.polls == polls_after  # pushes again: no more polls
        assert stats.pushed_cycles >= pushed_after + 4
        assert pushed_after >= pushed_before
    during = [s for s in r.recorder.snapshots if dropped_s <= s.now_s <= dropped_s + 16.0]
    starts = [s.now_s for s in during]
    # Control went on without a gap: a cycle about every second, never a safe hold.
    assert max(b - a for a, b in itertools.pairwise(starts)) <= 1.2
    assert all(p.fleet_state is not FleetState.SAFE_HOLD for p in r.recorder.plans)


async def test_a_slow_meter_gets_cycles_between_its_pushes_without_polls(tmp_path: Path) -> None:
    async with push_rig(SLOW_METER, tmp_path) as r, running(r.controller):
        await asyncio.sleep(60.0)  # the meter's 10 s interval is learnt from the pushes
        stats = r.controller.stats
        polls, cycles, pushed = stats.polls, stats.cycles, stats.pushed_cycles
        await asyncio.sleep(50.0)
        assert stats.polls == polls  # the stream brings every reading
        assert stats.pushed_cycles - pushed == 5  # one per reading
        assert stats.cycles - cycles >= 45  # and about one cycle a second in between
