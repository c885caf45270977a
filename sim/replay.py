"""Closed-loop replay in virtual time, in-process: the engine's own code against the plant.

The policy (engine.core) decides from what the meter and the batteries report; the battery
driver's logic (engine.adapters.marstek.VenusCommander) and the P1 parser and tracker
(engine.adapters.homewizard) run exactly as in the daemon, only the transport is a direct
call into the simulated firmware instead of a socket. ``--wire`` (sim.wire) swaps in the
real sockets.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.adapters.homewizard import MeterTracker, parse_data
from engine.adapters.marstek import VenusCommander
from engine.core.model import BatteryTelemetry, Mode, Snapshot
from engine.core.policies import Policy, make_policy
from engine.core.settings import BatterySpec, ControlSettings
from engine.errors import DeviceError
from sim.invariants import InvariantChecker, InvariantReport
from sim.oracle import simulate_oracle
from sim.record import RunRecord
from sim.scenario import Scenario
from sim.scoring import score
from sim.venus_firmware import VenusFirmware
from sim.world import PLANT_STEP_S, World

HTTP_OK = 200
ProgressFn = Callable[[float, float], None]


@dataclass
class RunResult:
    scenario: str
    policy: str
    metrics: dict[str, float]
    invariants: dict[str, bool]
    report: InvariantReport
    record: RunRecord
    notes: list[str] = field(default_factory=list)


def settings_for(scenario: Scenario, policy: str) -> ControlSettings:
    """The engine settings a scenario runs with: its batteries, its ``[control]`` overrides."""
    specs = tuple(
        BatterySpec(
            name=f"battery_{i}",
            max_charge_w=round(b.params.max_charge_w),
            max_discharge_w=round(b.params.max_discharge_w),
            capacity_wh=b.params.capacity_wh,
        )
        for i, b in enumerate(scenario.batteries, start=1)
    )
    base = ControlSettings(batteries=specs).with_overrides(dict(scenario.control))
    return base.with_overrides({"policy": policy})


class InProcessBattery:
    """The driver's logic over a direct call into the simulated firmware (no socket)."""

    def __init__(self, world: World, index: int, settings: ControlSettings) -> None:
        self.world = world
        self.index = index
        self.firmware: VenusFirmware = world.firmwares[index - 1]
        self.commander = VenusCommander(
            f"battery_{index}", control_recheck_s=settings.control_recheck_s
        )
        self.reads = 0
        self.writes = 0

    def read(self, now: float) -> BatteryTelemetry:
        if self.world.transport_fault(self.index) is not None:
            self.commander.on_read_failed(now)
            return self.commander.telemetry(now)
        for address, count in self.commander.reads_due(now):
            self.reads += 1
            values = self.firmware.read(address, count, now)
            if not isinstance(values, list):
                self.commander.on_read_failed(now)
                break
            self.commander.on_read(address, values, now)
        return self.commander.telemetry(now)

    def write(self, power_w: int, now: float) -> None:
        self._send(self.commander.writes_for(power_w, now), now)

    def release(self, now: float) -> None:
        self._send(self.commander.release_writes(), now)

    def _send(self, writes: list[tuple[int, int]], now: float) -> None:
        if not writes:
            return
        if self.world.transport_fault(self.index) is not None:
            self.commander.on_write_failed(now)
            return
        for address, value in writes:
            self.writes += 1
            if self.firmware.write(address, [value], now) is not None:
                self.commander.on_write_failed(now)
                return
        self.commander.on_written(writes, now)


def _read_meter(world: World, tracker: MeterTracker, now: float) -> None:
    """What the P1 client would get: the served body, through the real parser."""
    meter = world.meter
    body: object
    if meter.fault is None:
        body = meter.data_json(now)  # fast path: the same dict the server would serialise
    else:
        response = meter.respond_data(now)
        if response is None or response.status != HTTP_OK:
            tracker.failed(now)
            return
        try:
            body = json.loads(response.body)
        except ValueError:
            tracker.failed(now)
            return
    try:
        reading = parse_data(body)
    except DeviceError:
        tracker.failed(now)
        return
    tracker.update(reading, now)


def run_scenario(
    scenario: Scenario,
    policy_name: str,
    *,
    progress: ProgressFn | None = None,
    policy: Policy | None = None,
) -> RunResult:
    """Replay ``scenario`` with ``policy_name`` in virtual time; score it and its invariants."""
    wall_start = time.perf_counter()  # wall time of the run is a reported metric, not control
    settings = settings_for(scenario, policy_name)
    policy = policy or make_policy(settings)
    world = World(scenario)
    links = [InProcessBattery(world, i, settings) for i in range(1, len(world.firmwares) + 1)]
    tracker = MeterTracker()
    checker = InvariantChecker(settings, world.names)
    notes: list[str] = []
    period = policy.period_s
    # The first reading becomes visible after the meter's latency: start polling then.
    next_tick = math.ceil(scenario.meter.latency_s / PLANT_STEP_S) * PLANT_STEP_S
    dt = PLANT_STEP_S
    steps = round(scenario.duration_s / dt)
    report_every = max(1, steps // 100)
    for step in range(steps):
        now = step * dt
        world.now_s = now
        if now + 1e-9 >= next_tick:
            next_tick += period
            _cycle(world, links, tracker, policy, checker, now, period, notes)
        world.advance(dt)
        if progress is not None and step % report_every == 0:
            progress(now, scenario.duration_s)
    end = steps * dt
    for link in links:
        link.write(0, end)
        link.release(end)
    idle = all(fw.battery.target_w == 0 for fw in world.firmwares)
    released = all(not fw.control_enabled for fw in world.firmwares)
    checker.shutdown(end, all_idle=idle, released=released)

    record = world.finish()
    record.modbus_reads = sum(link.reads for link in links)
    record.modbus_writes = sum(link.writes for link in links)
    record.wall_seconds = time.perf_counter() - wall_start
    oracle = simulate_oracle(
        record.t_s,
        record.dt_s,
        record.net_w,
        record.discharge_blocked,
        [(b.params, b.soc_pct) for b in scenario.batteries],
    )
    metrics = score(record, oracle, scenario.tariff)
    record.wall_seconds = time.perf_counter() - wall_start
    metrics["wall_seconds"] = record.wall_seconds
    return RunResult(
        scenario=scenario.name,
        policy=policy_name,
        metrics=metrics,
        invariants=checker.report.passed(),
        report=checker.report,
        record=record,
        notes=notes,
    )


def _cycle(
    world: World,
    links: list[InProcessBattery],
    tracker: MeterTracker,
    policy: Policy,
    checker: InvariantChecker,
    now: float,
    period: float,
    notes: list[str],
) -> None:
    _read_meter(world, tracker, now)
    telemetry = tuple(link.read(now) for link in links)
    blocked = world.discharge_blocked_at(now)
    snap = Snapshot(
        now_s=now,
        grid_w=tracker.grid_w if tracker.online else None,
        meter_updated_s=tracker.updated_s,
        batteries=telemetry,
        mode=Mode.NORMAL,
        discharge_blocked=blocked,
    )
    try:
        plan = policy.decide(snap)
    except Exception:  # the harness records a crash and fails safe, as the daemon does
        checker.crashed(now, traceback.format_exc(limit=3))
        for link in links:
            link.write(0, now)
        return
    for reason in plan.reasons:
        notes.append(f"{now:8.1f} s {reason}")
    for link in links:
        name = link.commander.name
        if name in plan.setpoints:
            link.write(plan.setpoints[name], now)
        if name in plan.release:
            link.release(now)
    unavailable = {
        link.commander.name for link in links if not _healthy(telemetry[link.index - 1])
    }
    control_lost = {
        link.commander.name
        for link in links
        if not link.firmware.control_enabled and link.firmware.offline_until_s <= now
    }
    not_following = {
        f"battery_{i}"
        for i in range(1, len(world.firmwares) + 1)
        if world.fault_active("battery_not_following", i)
    }
    checker.cycle(
        snap,
        plan,
        meter_fault=world.meter_fault(),
        unavailable=unavailable,
        control_lost=control_lost,
        not_following=not_following,
        period_s=period,
    )


def _healthy(t: BatteryTelemetry) -> bool:
    return t.online and t.soc_pct is not None and t.power_w is not None
