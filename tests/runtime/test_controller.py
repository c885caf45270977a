"""The control loop with the real adapters against the simulator's servers, in virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.adapters import marstek_registers as reg
from engine.adapters.homewizard import HomeWizardClient
from engine.adapters.marstek import MarstekBattery
from engine.core.events import MeterLost, MeterReturned
from engine.core.model import Mode, Plan, Snapshot
from engine.core.policies import Policy, make_policy
from engine.core.states import FleetState
from engine.core.status import FleetStatus
from engine.ports import LoopClock
from engine.runtime.controller import Controller
from sim.plant.firmware import VenusFirmware
from sim.plant.world import RECORD_STEP_S, World
from sim.replay.inprocess import settings_for
from sim.scenario import load_scenario
from sim.servers.plant import WorldServers, start_world_servers

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
# One battery at 60 % under a 300-500 W night load: the policy discharges it at once.
KETTLE = SCENARIOS / "kettle.toml"

pytestmark = pytest.mark.looptime


def in_control(fw: VenusFirmware) -> bool:
    """Read afresh each time: a plain attribute would be narrowed by mypy across awaits."""
    return bool(fw.control_enabled)


@dataclass
class Plant:
    world: World
    servers: WorldServers
    task: asyncio.Task[None]


async def _advance(world: World, servers: WorldServers) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    step = 0
    while True:
        step += 1
        await asyncio.sleep(start + step * RECORD_STEP_S - loop.time())
        world.advance_to(world.now_s + RECORD_STEP_S)
        await servers.apply_faults()


@contextlib.asynccontextmanager
async def running_plant() -> AsyncIterator[Plant]:
    """The kettle scenario's plant behind its servers, advancing on the loop clock.

    Started inside the test, not in a fixture: looptime's virtual clock only runs in the
    test's body, and the plant's schedule is taken from that clock.
    """
    world = World(load_scenario(KETTLE))
    servers = await start_world_servers(world)
    task = asyncio.create_task(_advance(world, servers))
    try:
        await asyncio.sleep(RECORD_STEP_S * 4)  # the meter's first reading is visible
        yield Plant(world, servers, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await servers.stop()


class Recorder:
    """A status sink and cycle observer that keeps what it is given."""

    def __init__(self) -> None:
        self.statuses: list[FleetStatus] = []
        self.snapshots: list[Snapshot] = []
        self.plans: list[Plan] = []
        self.failures: list[str] = []

    def publish(self, status: FleetStatus) -> None:
        self.statuses.append(status)

    def cycle_done(self, snap: Snapshot, plan: Plan) -> None:
        self.snapshots.append(snap)
        self.plans.append(plan)

    def cycle_failed(self, now_s: float, detail: str) -> None:
        self.failures.append(detail)


@dataclass
class Rig:
    plant: Plant
    controller: Controller
    recorder: Recorder

    @property
    def firmware(self) -> VenusFirmware:
        return self.plant.world.firmwares[0]


@contextlib.asynccontextmanager
async def rig(*, policy: Policy | None = None, dry_run: bool = False) -> AsyncIterator[Rig]:
    """The controller with the real adapters against the running plant; closes everything."""
    async with running_plant() as plant:
        settings = settings_for(plant.world.scenario, "mmbc")
        clock = LoopClock()
        meter = HomeWizardClient(plant.servers.p1_url, timeout_s=2.0)
        batteries = [
            MarstekBattery(
                name, server.host, server.port, server.unit_id, clock=clock, message_gap_s=0.05
            )
            for name, server in zip(plant.world.names, plant.servers.batteries, strict=True)
        ]
        recorder = Recorder()
        controller = Controller(
            clock=clock,
            policy=policy or make_policy(settings),
            meter=meter,
            batteries=batteries,
            dry_run=dry_run,
            sinks=[recorder],
            observer=recorder,
        )
        try:
            yield Rig(plant, controller, recorder)
        finally:
            await meter.close()
            for battery in batteries:
                await battery.close()


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[asyncio.Event]:
    """``controller.run`` as a task; leaving the block sets ``stop`` and awaits the shutdown."""
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await task


async def test_controls_the_battery_and_releases_it_on_stop() -> None:
    async with rig() as r:
        fw = r.firmware
        async with running(r.controller):
            await asyncio.sleep(20.0)
            # Under control: RS485 mode on and a discharge covering the house's load.
            assert in_control(fw)
            assert fw.force_mode == reg.FORCE_DISCHARGE
            assert fw.discharge_setpoint_w > 100
            assert r.controller.stats.cycles >= 15
            assert r.recorder.statuses[-1].grid_w is not None
        # Stopped: every battery at 0 W, then released (42000 = 0x55BB).
        assert not in_control(fw)
        assert fw.force_mode == reg.FORCE_STOP
        assert fw.discharge_setpoint_w == 0
        assert fw.target_w == 0


async def test_dry_run_reads_and_decides_but_never_writes() -> None:
    async with rig(dry_run=True) as r:
        fw = r.firmware
        reads_before = fw.reads
        async with running(r.controller):
            await asyncio.sleep(15.0)
        assert fw.writes == 0  # not even the shutdown's release
        assert fw.reads > reads_before
        assert not in_control(fw)
        # It decided as it would have: a discharge for the house's load.
        assert any(p.setpoints.get("battery_1", 0) > 100 for p in r.recorder.plans)


class FlakyPolicy:
    """The real policy, but ``decide`` raises while ``failing`` is set."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.period_s = inner.period_s
        self.learns_meter_phase = inner.learns_meter_phase
        self.failing = False
        self.calls = 0

    def decide(self, snap: Snapshot) -> Plan:
        self.calls += 1
        if self.failing:
            raise ZeroDivisionError("policy bug")
        return self.inner.decide(snap)


async def test_a_failing_cycle_idles_every_battery_logs_once_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyPolicy(make_policy(settings_for(load_scenario(KETTLE), "mmbc")))
    async with rig(policy=flaky) as r:
        fw = r.firmware
        async with running(r.controller):
            await asyncio.sleep(10.0)
            assert fw.force_mode == reg.FORCE_DISCHARGE
            assert fw.discharge_setpoint_w > 100

            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="engine.runtime.controller"):
                flaky.failing = True
                calls = flaky.calls
                await asyncio.sleep(5.0)
            # Every failing cycle ran (the loop went on) and put the battery at 0 W ...
            assert flaky.calls >= calls + 4
            assert r.controller.stats.errors >= 4
            assert len(r.recorder.failures) == r.controller.stats.errors
            assert "ZeroDivisionError" in r.recorder.failures[-1]
            assert r.controller.last_plan is not None
            assert r.controller.last_plan.fleet_state is FleetState.SAFE_HOLD
            assert fw.target_w == 0
            # ... and the traceback was logged once, not once per cycle.
            failed = [rec for rec in caplog.records if "control cycle failed" in rec.getMessage()]
            assert len(failed) == 1
            assert failed[0].exc_info is not None

            flaky.failing = False
            await asyncio.sleep(10.0)
            assert fw.force_mode == reg.FORCE_DISCHARGE  # control resumed
            assert fw.discharge_setpoint_w > 100
        assert not in_control(fw)


async def test_user_inputs_reach_the_snapshot_and_selfcontrol_releases_once() -> None:
    async with rig() as r:
        fw = r.firmware
        async with running(r.controller):
            await asyncio.sleep(10.0)
            assert fw.force_mode == reg.FORCE_DISCHARGE

            r.controller.set_block_discharge(True)
            await asyncio.sleep(5.0)
            assert r.recorder.snapshots[-1].discharge_blocked
            assert r.recorder.statuses[-1].discharge_blocked
            assert fw.target_w <= 0  # no discharge while blocked

            r.controller.set_block_discharge(False)
            r.controller.set_mode(Mode.SELFCONTROL)
            await asyncio.sleep(5.0)
            assert r.recorder.snapshots[-1].mode is Mode.SELFCONTROL
            assert not in_control(fw)  # handed back to the battery's own logic
            writes = fw.writes
            await asyncio.sleep(5.0)
            assert fw.writes == writes  # released once, not again every cycle

            r.controller.set_mode(Mode.NORMAL)
            await asyncio.sleep(10.0)
            assert in_control(fw)  # taken back
            assert fw.force_mode == reg.FORCE_DISCHARGE


async def test_stop_during_a_slow_cycle_still_releases() -> None:
    async with rig() as r:
        fw = r.firmware
        server = r.plant.servers.batteries[0]
        async with running(r.controller):
            await asyncio.sleep(10.0)
            assert in_control(fw)
            server.stall_s = 0.8  # every answer late, within the driver's 1 s timeout
            await asyncio.sleep(3.3)  # stop arrives in the middle of a cycle
            server.stall_s = 0.0
        assert not in_control(fw)
        assert fw.target_w == 0


async def test_meter_loss_and_return_reach_the_status_as_events_with_the_setpoints() -> None:
    async with rig() as r:
        fw = r.firmware
        live_meter = r.controller.meter
        with socket.socket() as probe:  # a port nobody listens on: connection refused
            probe.bind(("127.0.0.1", 0))
            dead_port = probe.getsockname()[1]
        dead_meter = HomeWizardClient(f"http://127.0.0.1:{dead_port}/api/v1/data", timeout_s=0.5)
        try:
            async with running(r.controller):
                await asyncio.sleep(10.0)
                last = r.recorder.statuses[-1]
                assert last.batteries[0].setpoint_w == fw.discharge_setpoint_w > 100
                assert last.cycle_duration_s is not None
                assert last.cycle_latency_s is not None
                assert 0.0 <= last.cycle_latency_s <= last.cycle_duration_s
                r.controller.meter = dead_meter
                await asyncio.sleep(3.0)
                r.controller.meter = live_meter
                await asyncio.sleep(3.0)
        finally:
            await dead_meter.close()
        events = [e for s in r.recorder.statuses for e in s.events]
        meter_events = [e for e in events if isinstance(e, MeterLost | MeterReturned)]
        assert [type(e) for e in meter_events] == [MeterLost, MeterReturned]
        assert isinstance(meter_events[0], MeterLost)
        assert str(dead_port) in meter_events[0].reason
        assert r.controller.stats.meter_failures >= 2
