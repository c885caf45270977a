"""``mmbc-sim run --wire``: the real engine over loopback sockets, in virtual time.

The daemon's own ``Controller`` drives the real ``HomeWizardClient`` and ``MarstekBattery``
adapters against the simulator's P1 (+ PV) HTTP server and one Modbus TCP server per
battery on 127.0.0.1. Everything runs on one ``looptime`` event loop: the loop clock only
moves when the loop has nothing else to do, so socket round trips take no simulated time
and a day replays in minutes. Every request brings the plant to its own instant (the loop's
clock), and an asyncio task moves the plant along and mirrors its transport faults onto the
servers every ``RECORD_STEP_S``. The cycles fall at the run's phase against the meter's
refresh and the driver paces its Modbus requests with the daemon's message gap
(``sim.replay.timing``), as the in-process replay does: both give the same figures.
Scoring and invariants are the replay's.

A scenario whose meter speaks API v2 (``[meter] api = "v2"``) is served over HTTPS with a test
CA, and the engine reads it as the daemon does with ``P1_PUSH``: the real ``HomeWizardV2Client``
and its ``MeasurementStream`` (the websocket), the controller running a cycle on each pushed
reading. The device pushes each new sample the instant it becomes visible.

The cycle latency (P1 response to the last Modbus write) is measured in wall-clock time, since
in virtual time it is the message gaps only; the servers run in the same process and thread,
so the figure includes the servers' own work: it is an upper bound of the engine's.

With ``dashboard`` the engine's HTTP server runs on the same loop as in the daemon, with a
dashboard open (its live stream read, its long history fetched every minute) and ``/metrics``
scraped every 15 s of loop time, so the latency can be compared with and without it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import looptime

from engine.adapters.homewizard import HomeWizardClient
from engine.adapters.homewizard_v2 import HomeWizardV2Client, MeasurementStream
from engine.adapters.marstek import MarstekBattery
from engine.adapters.web import DashboardServer
from engine.core.model import Plan, Snapshot
from engine.core.policies import make_policy
from engine.ports import LoopClock, MeterSource
from engine.runtime.controller import Controller
from engine.runtime.event_log import describe, severity
from sim.plant.params import MeterApi
from sim.plant.world import RECORD_STEP_S, ErrorInjectingPolicy, World
from sim.replay.inprocess import (
    ProgressFn,
    check_cycle,
    check_shutdown,
    score_run,
    settings_for,
)
from sim.replay.invariants import SHUTDOWN_BUDGET_S, InvariantChecker, observe_world
from sim.replay.result import RunResult
from sim.replay.timing import timing_for
from sim.scenario import Scenario
from sim.servers.plant import WorldServers, start_world_servers

_LOGGER = logging.getLogger(__name__)

POLICY = "mmbc"
# As the daemon's defaults: a stalled battery costs in virtual time what it costs for real.
WIRE_BATTERY_TIMEOUT_S = 1.0
WIRE_METER_TIMEOUT_S = 2.0
# looptime lets the loop spin this many idle iterations before it moves the clock. Loopback
# data is readable as soon as it is sent, so a few are enough; more only cost wall time.
NOOP_CYCLES = 2
SCRAPE_EVERY_S = 15.0
SNAPSHOT_EVERY_S = 60.0
WIRE_P1_USER = "local/mmbc"


class _Observer:
    """The controller's cycle hook: the replay's invariant checks, plus the plan's events."""

    def __init__(self, world: World, checker: InvariantChecker, period_s: float) -> None:
        self.world = world
        self.checker = checker
        self.period_s = period_s
        self.notes: list[str] = []

    def cycle_done(self, snap: Snapshot, plan: Plan) -> None:
        for event in plan.events:
            self.notes.append(f"{snap.now_s:8.1f} s {describe(event)}")
        self.world.record.note_cycle(snap.now_s, snap.grid_w, plan.setpoints, plan.release)
        check_cycle(self.world, self.checker, snap, plan, self.period_s)

    def cycle_failed(self, now_s: float, detail: str) -> None:
        # Called after the controller's safe-hold writes: the truth shows their effect.
        self.world.record.note_cycle(now_s, None, dict.fromkeys(self.world.names, 0))
        self.checker.crashed(now_s, detail, observe_world(self.world))


def run_wire(
    scenario: Scenario,
    *,
    progress: ProgressFn | None = None,
    phase: float | None = None,
    dashboard: bool = False,
) -> RunResult:
    """Replay ``scenario`` with policy ``mmbc`` through the real engine over loopback sockets.

    Same ``RunResult`` as ``sim.replay.inprocess.run_scenario``; its ``metrics`` also have
    ``cycle_latency_median_ms`` and ``cycle_latency_p99_ms`` (wall clock, see the module
    docstring) and ``cycles``. ``phase`` as for ``run_scenario``.
    """
    wall_start = time.perf_counter()  # wall time of the run is a reported metric, not control
    loop = looptime.new_event_loop(start=0.0, noop_cycles=NOOP_CYCLES)
    try:
        with tempfile.TemporaryDirectory(prefix="mmbc-wire-") as scratch:
            return loop.run_until_complete(
                _run(scenario, progress, wall_start, phase, Path(scratch), dashboard)
            )
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _dashboard_client(base: str, counts: dict[str, int]) -> None:
    """What an open dashboard page and a Prometheus server ask of the engine."""

    async def stream(session: aiohttp.ClientSession) -> None:
        while True:  # as a browser's EventSource: reconnect when the server drops the stream
            try:
                async with session.get(f"{base}/api/stream") as response:
                    async for line in response.content:
                        if line.startswith(b"event: "):
                            counts["events"] += 1
            except (aiohttp.ClientError, TimeoutError):
                pass
            counts["reconnects"] += 1
            await asyncio.sleep(2.0)

    async def poll(session: aiohttp.ClientSession, path: str, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            async with session.get(f"{base}{path}") as response:
                await response.read()
                counts[path] += 1

    # No total timeout: a stream stays open as long as the page does.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(
            stream(session),
            poll(session, "/metrics", SCRAPE_EVERY_S),
            poll(session, "/api/long", SNAPSHOT_EVERY_S),
        )


async def _run(
    scenario: Scenario,
    progress: ProgressFn | None,
    wall_start: float,
    phase: float | None,
    scratch: Path,
    dashboard: bool,
) -> RunResult:
    settings = settings_for(scenario, POLICY)
    world = World(scenario)
    policy = ErrorInjectingPolicy(make_policy(settings), world)
    timing = timing_for(scenario, policy.period_s, phase)
    checker = InvariantChecker.for_world(settings, world, policy.period_s)
    observer = _Observer(world, checker, policy.period_s)
    v2 = scenario.meter.api is MeterApi.V2
    if v2:
        from sim.servers.tls import SimulatorCA  # needs cryptography: only for v2

        ca = SimulatorCA()
        ca_file = ca.write_ca(scratch / "p1-ca.pem")
        servers = await start_world_servers(
            world,
            time_source=asyncio.get_running_loop().time,
            p1_api="v2",
            ca=ca,
            ca_file=ca_file,
        )
    else:
        servers = await start_world_servers(world, time_source=asyncio.get_running_loop().time)
    clock = LoopClock()
    meter: MeterSource
    stream: MeasurementStream | None = None
    if servers.p1_v2 is not None:
        v2_client = HomeWizardV2Client(
            f"127.0.0.1:{servers.p1_v2.port}",
            identifier=servers.p1_v2.identifier,
            token=servers.p1_v2.add_user(WIRE_P1_USER),  # paired
            ca_file=servers.ca_file,
            timeout_s=WIRE_METER_TIMEOUT_S,
        )
        meter, stream = v2_client, MeasurementStream(v2_client)
    else:
        meter = HomeWizardClient(servers.p1_url, timeout_s=WIRE_METER_TIMEOUT_S)
    pv = (
        HomeWizardClient(servers.pv_url, timeout_s=WIRE_METER_TIMEOUT_S, name="pv")
        if servers.pv_url is not None
        else None
    )
    batteries = [
        MarstekBattery(
            name,
            server.host,
            server.port,
            server.unit_id,
            clock=clock,
            message_gap_s=timing.message_gap_s,
            timeout_s=WIRE_BATTERY_TIMEOUT_S,
            control_recheck_s=settings.control_recheck_s,
        )
        for name, server in zip(world.names, servers.batteries, strict=True)
    ]
    controller = Controller(
        clock=clock,
        policy=policy,
        meter=meter,
        batteries=batteries,
        pv_meter=pv,
        capacities={b.name: b.capacity_wh for b in settings.batteries},
        observer=observer,
        latency_clock=time.perf_counter,
        push=stream,
    )
    web: DashboardServer | None = None
    client: asyncio.Task[None] | None = None
    counts = {"events": 0, "/metrics": 0, "/api/long": 0, "reconnects": 0}
    if dashboard:
        web = DashboardServer(
            clock=clock,
            battery_names=world.names,
            on_mode=controller.set_mode,
            on_block_discharge=controller.set_block_discharge,
            describe=describe,
            severity=severity,
            host="127.0.0.1",
            port=0,
            period_s=settings.loop_period_s,
        )
        if not await web.start():
            raise RuntimeError("the dashboard server did not start")
        controller.sinks.append(web)
        client = asyncio.create_task(_dashboard_client(f"http://127.0.0.1:{web.port}", counts))
    pusher = asyncio.create_task(servers.push_samples()) if servers.p1_v2 is not None else None
    try:
        shutdown_s = await _drive(world, servers, controller, timing.first_tick_s, progress)
        check_shutdown(world, checker, world.now_s)
        if shutdown_s > SHUTDOWN_BUDGET_S:
            checker.shutdown(
                world.now_s,
                all_idle=True,
                released=False,
                detail=f"the shutdown took {shutdown_s:.1f} s of loop time",
            )
        checker.finish(world.now_s)
    finally:
        if pusher is not None:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
        if client is not None:
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
        if web is not None:
            await web.stop()
        await meter.close()
        if pv is not None:
            await pv.close()
        for battery in batteries:
            await battery.close()
        await servers.stop()

    record = world.finish()
    record.modbus_reads = sum(b.reads for b in batteries)
    record.modbus_writes = sum(b.writes for b in batteries)
    latencies_ms = [s * 1000.0 for s in controller.stats.latencies_s]
    metrics = score_run(scenario, record, wall_start).replace(
        cycles=controller.stats.cycles,
        cycle_latency_median_ms=_median(latencies_ms),
        cycle_latency_p99_ms=_percentile(latencies_ms, 99.0),
    )
    stats = controller.stats
    notes = [
        f"wire: {controller.stats.cycles} cycles ({stats.pushed_cycles} on pushed readings,"
        f" {stats.polls} polls), cycle latency (P1 response to last Modbus"
        f" write, wall clock) median {metrics.cycle_latency_median_ms:.2f} ms,"
        f" p99 {metrics.cycle_latency_p99_ms:.2f} ms; {record.modbus_reads} Modbus reads,"
        f" {record.modbus_writes} writes; {metrics.wall_seconds:.1f} s wall",
        *(
            [
                f"dashboard: {counts['events']} stream events, {counts['/metrics']} scrapes,"
                f" {counts['/api/long']} history refreshes,"
                f" {counts['reconnects']} stream reconnects"
            ]
            if dashboard
            else []
        ),
        *observer.notes,
    ]
    return RunResult(
        scenario=scenario.name,
        policy=POLICY,
        metrics=metrics,
        invariants=checker.report.passed(),
        report=checker.report,
        record=record,
        notes=notes,
        phase=timing.phase,
    )


async def _drive(
    world: World,
    servers: WorldServers,
    controller: Controller,
    first_tick_s: float,
    progress: ProgressFn | None,
) -> float:
    """Run the plant to the scenario's end with the controller beside it, then stop it.

    Returns how long the controller's shutdown took, in loop (virtual) time.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    end_s = world.duration_s
    steps = math.ceil(end_s / RECORD_STEP_S - 1e-9)

    async def control() -> None:
        await asyncio.sleep(first_tick_s - loop.time())
        await controller.run(stop)

    controller.set_block_discharge(world.discharge_blocked_at(world.now_s))
    await servers.apply_faults()
    control_task = asyncio.create_task(control())
    try:
        report_every = max(1, steps // 100)
        for step in range(1, steps + 1):
            await asyncio.sleep(min(step * RECORD_STEP_S, end_s) - loop.time())
            world.advance_to(loop.time())
            controller.set_block_discharge(world.discharge_blocked_at(world.now_s))
            await servers.apply_faults()
            if control_task.done():  # the controller never stops by itself: surface why
                control_task.result()
                raise RuntimeError("the controller stopped before the end of the scenario")
            if progress is not None and step % report_every == 0:
                progress(world.now_s, end_s)
    finally:
        stop.set()
        stop_s = loop.time()
        await control_task  # the controller's shutdown: every battery 0 W, then released
    return loop.time() - stop_s


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(pct / 100.0 * len(ordered)) - 1))
    return ordered[k]
