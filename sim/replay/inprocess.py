"""Closed-loop replay in virtual time, in-process: the engine's own code against the plant.

The daemon's cycle (``engine.core.cycle.ControlCycle``) decides from what the meter and the
batteries report; the battery driver's logic (``engine.adapters.marstek.VenusCommander``) and
the P1 parser and tracker run exactly as in the daemon, only the transport is a direct call
into the simulated firmware instead of a socket. The timing is the daemon's too: cycles at a
phase against the meter's refresh (``sim.replay.timing``), each battery's Modbus requests
paced by the daemon's message gap, the writes after the slowest battery's reads, every
request at its own instant of the plant (``World.battery_at``). ``--wire``
(``sim.replay.wire``) swaps in the real sockets and gives the same figures.
"""

from __future__ import annotations

import copy
import heapq
import json
import os
import time
from collections.abc import Callable, Generator
from typing import TypeAlias, TypeVar

from engine.adapters.homewizard import parse_data
from engine.adapters.marstek import VenusCommander
from engine.core.cycle import ControlCycle, Release, UserInputs, WriteJob
from engine.core.meter import MeterTracker
from engine.core.model import BatteryTelemetry, Plan, Snapshot
from engine.core.policies import Policy, make_policy
from engine.core.schedule import CycleSchedule
from engine.core.settings import BatterySpec, ControlSettings
from engine.errors import DeviceError, DeviceResponseError, DeviceUnavailable
from engine.runtime.event_log import describe
from sim.plant.firmware import FirmwareFault, VenusFirmware
from sim.plant.record import RunRecord
from sim.plant.world import ErrorInjectingPolicy, World
from sim.replay.invariants import (
    SHUTDOWN_BUDGET_S,
    InvariantChecker,
    observe_world,
)
from sim.replay.result import RunResult
from sim.replay.timing import timing_for
from sim.scenario import Scenario
from sim.scoring.metrics import score
from sim.scoring.oracle import simulate_oracle

HTTP_OK = 200
_T = TypeVar("_T")
ProgressFn = Callable[[float, float], None]
# Sees every cycle after its writes: the world, the snapshot, the plan (None: the cycle failed).
CycleHook = Callable[["World", Snapshot, "Plan | None"], None]


OVERRIDES_ENV = "MMBC_SIM_OVERRIDES"  # JSON object of extra ControlSettings overrides


def settings_for(scenario: Scenario, policy: str) -> ControlSettings:
    """The engine settings a scenario runs with: its batteries, its ``[control]`` overrides.

    ``MMBC_SIM_OVERRIDES`` (a JSON object) applies further overrides on top, e.g. to bench a
    control feature switched off (scripts/ablation.py).
    """
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
    extra = os.environ.get(OVERRIDES_ENV)
    if extra:
        base = base.with_overrides(json.loads(extra))
    return base.with_overrides({"policy": policy})


# One battery's requests in a cycle: yields the instant of each request before making it
# (the replay brings the plant there first), returns what the driver returns.
Requests: TypeAlias = Generator[float, float, _T]


class InProcessBattery:
    """The driver's logic over a direct call into the simulated firmware (no socket).

    Paced like ``MarstekBattery``: at least ``message_gap_s`` between two requests, and the
    first request after a (re)connection waits one gap too.
    """

    def __init__(
        self, world: World, index: int, settings: ControlSettings, message_gap_s: float
    ) -> None:
        self.world = world
        self.index = index
        self.firmware: VenusFirmware = world.firmwares[index - 1]
        self.commander = VenusCommander(
            f"battery_{index}", control_recheck_s=settings.control_recheck_s
        )
        self.message_gap_s = message_gap_s
        self.reads = 0
        self.writes = 0
        self._last_io_s: float | None = None  # None: not connected
        self._now_s = 0.0  # this link's own time within a cycle

    def _reachable(self) -> bool:
        if self.world.transport_fault(self.index) is None:
            if self._last_io_s is None:  # connecting: the driver then waits one gap
                self._last_io_s = self._now_s
                self.commander.forget()
                self.commander.on_connected()
            return True
        self._last_io_s = None  # the connection is gone; the next request reconnects
        return False

    def _next_request_s(self) -> float:
        if self._last_io_s is not None:
            self._now_s = max(self._now_s, self._last_io_s + self.message_gap_s)
        self._last_io_s = self._now_s
        return self._now_s

    def reading(self, now: float) -> Requests[BatteryTelemetry]:
        """One read cycle stamped ``now`` (the cycle's start), each block at its instant: the
        driver's own dialogue (``VenusCommander.read_cycle``) over direct calls."""
        self._now_s = now
        dialogue = self.commander.read_cycle(now)
        block = next(dialogue)
        while True:
            reply: list[int] | DeviceError
            if not self._reachable():
                reply = DeviceUnavailable("connection refused", device=self.commander.name)
            else:
                at_s = yield self._next_request_s()
                self.reads += 1
                values = self.firmware.read(*block, at_s)
                reply = values if isinstance(values, list) else _as_error(values, self)
            try:
                block = dialogue.send(reply)
            except StopIteration as done:
                telemetry: BatteryTelemetry = done.value
                return telemetry

    def writing(self, job: WriteJob, now: float) -> Requests[None]:
        """One job's writes from ``now`` on, in order, as ``MarstekBattery`` sends them."""
        self._now_s = max(self._now_s, now)
        if isinstance(job, Release):
            # As the daemon's release: every write is tried; a failed one stops nothing.
            writes, stop_at_failure = self.commander.release_writes(), False
        else:
            writes, stop_at_failure = self.commander.writes_for(job.power_w, now), True
        if not writes:
            return
        if not self._reachable():
            self.commander.on_batch([], failed=True, now_s=now)
            return
        done: list[tuple[int, int]] = []
        failed = False
        for address, value in writes:
            at_s = yield self._next_request_s()
            self.writes += 1
            if not self._reachable() or self.firmware.write(address, [value], at_s) is not None:
                failed = True
                if stop_at_failure:
                    break
            else:
                done.append((address, value))
        self.commander.on_batch(done, failed=failed, now_s=self._now_s)

    @property
    def busy_until_s(self) -> float:
        return self._now_s


def _as_error(fault: FirmwareFault, link: InProcessBattery) -> DeviceError:
    """What the Modbus driver makes of the firmware's answer: silence or an exception."""
    name = link.commander.name
    if fault is FirmwareFault.NO_ANSWER:
        return DeviceUnavailable("no reply", device=name)
    return DeviceResponseError(f"Modbus exception {int(fault)}", device=name)


def run_in_time_order(world: World, requests: list[tuple[int, Requests[_T]]]) -> list[_T]:
    """Run the batteries' requests concurrently, as the daemon's tasks do, in time order.

    Each battery's requests are sequential; different batteries' interleave by their instants,
    and the plant is brought to each instant before the request is made.
    """
    results: dict[int, _T] = {}
    heap: list[tuple[float, int]] = []

    def step(k: int, at_s: float | None) -> None:
        gen = requests[k][1]
        try:
            next_s = next(gen) if at_s is None else gen.send(at_s)
        except StopIteration as stop:
            results[k] = stop.value
            return
        heapq.heappush(heap, (next_s, k))

    for k in range(len(requests)):
        step(k, None)
    while heap:
        at_s, k = heapq.heappop(heap)
        world.battery_at(requests[k][0], at_s)
        step(k, at_s)
    return [results[k] for k in range(len(requests))]


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
    on_cycle: CycleHook | None = None,
    phase: float | None = None,
) -> RunResult:
    """Replay ``scenario`` with ``policy_name`` in virtual time; score it and its invariants.

    ``phase`` (a fraction, see ``sim.replay.timing``) places the cycles against the meter's
    refresh; by default it is drawn from the scenario's seed. ``on_cycle`` sees every cycle
    with the world's ground truth (tests of fault behaviour).
    """
    wall_start = time.perf_counter()  # wall time of the run is a reported metric, not control
    settings = settings_for(scenario, policy_name)
    # In-process nothing reads the PV meter (the control law never uses it; only MQTT reports
    # it), so it is not simulated here; the wire replay and `serve` do serve it.
    world = World(scenario, with_pv_meter=False)
    policy = ErrorInjectingPolicy(policy or make_policy(settings), world)
    period = policy.period_s
    timing = timing_for(scenario, period, phase)
    links = [
        InProcessBattery(world, i, settings, timing.message_gap_s)
        for i in range(1, len(world.firmwares) + 1)
    ]
    tracker = MeterTracker()
    core = ControlCycle(policy, [link.commander.name for link in links])
    inputs = UserInputs()
    checker = InvariantChecker.for_world(settings, world, period)
    notes: list[str] = []
    probes = shutdown_probe_times(scenario)
    schedule = CycleSchedule(period, learn_phase=policy.learns_meter_phase)
    cycles = 0
    now = timing.first_tick_s
    while now < scenario.duration_s - 1e-9:
        _cycle(world, links, tracker, core, inputs, checker, now, period, notes, on_cycle)
        while probes and probes[0] <= now + 1e-9:
            probes.pop(0)
            probe_shutdown(world, links, checker)
        if progress is not None and cycles % 100 == 0:
            progress(now, scenario.duration_s)
        cycles += 1
        # The daemon's own schedule (engine.core.schedule), on the same readings.
        now = schedule.next_s(now, meter_updated_s=tracker.updated_s, busy_until_s=world.now_s)
    end = scenario.duration_s
    world.advance_to(end)
    # The daemon's shutdown: idle setpoints, then 42000 = 0x55BB, every battery at once.
    run_in_time_order(
        world, [(link.index, link.writing(Release(link.commander.name), end)) for link in links]
    )
    check_shutdown(world, checker, end)
    checker.finish(end)

    record = world.finish()
    record.modbus_reads = sum(link.reads for link in links)
    record.modbus_writes = sum(link.writes for link in links)
    metrics = score_run(scenario, record, wall_start)
    return RunResult(
        scenario=scenario.name,
        policy=policy_name,
        metrics=metrics,
        invariants=checker.report.passed(),
        report=checker.report,
        record=record,
        notes=notes,
        phase=timing.phase,
    )


def _cycle(
    world: World,
    links: list[InProcessBattery],
    tracker: MeterTracker,
    core: ControlCycle,
    inputs: UserInputs,
    checker: InvariantChecker,
    now: float,
    period: float,
    notes: list[str],
    on_cycle: CycleHook | None = None,
) -> None:
    """One cycle of the daemon's: read, decide (``ControlCycle``), write, then check."""
    world.advance_to(now)
    _read_meter(world, tracker, now)  # the meter answers at once (it is polled first)
    telemetry = tuple(run_in_time_order(world, [(ln.index, ln.reading(now)) for ln in links]))
    # The decision follows the slowest battery's reads; the writes follow the decision.
    decided_s = max([now, *(link.busy_until_s for link in links)])
    world.advance_to(decided_s)
    inputs.discharge_blocked = world.discharge_blocked_at(now)
    result = core.run(ControlCycle.snapshot(now, tracker, telemetry, inputs))
    by_name = {link.commander.name: link for link in links}
    run_in_time_order(
        world,
        [
            (by_name[job.battery].index, by_name[job.battery].writing(job, decided_s))
            for job in result.jobs
        ],
    )
    snap, plan = result.snapshot, result.plan
    if result.failure is not None:
        if not checker.failing:  # the traceback once per run of failing cycles
            notes.append(
                f"{now:8.1f} s control cycle failed: every battery to 0 W\n{result.failure}"
            )
        checker.crashed(now, result.failure, observe_world(world))
        if on_cycle is not None:
            on_cycle(world, snap, None)
        return
    for event in plan.events:
        notes.append(f"{now:8.1f} s {describe(event)}")
    check_cycle(world, checker, snap, plan, period)
    if on_cycle is not None:
        on_cycle(world, snap, plan)


def check_cycle(
    world: World, checker: InvariantChecker, snap: Snapshot, plan: Plan, period_s: float
) -> None:
    """Check one cycle's plan, after its writes, against the world's ground truth (also
    used by sim.replay.wire)."""
    checker.cycle(snap, plan, observe_world(world), period_s)


def check_shutdown(world: World, checker: InvariantChecker, end_s: float) -> None:
    """After the controller's shutdown: every reachable battery idle and out of RS485 control.

    A battery still unreachable (its fault outlasts the run) cannot be told anything; the
    shutdown must not wait for it, and the others must be idle and released.
    """
    reachable = [
        (name, fw)
        for i, (name, fw) in enumerate(zip(world.names, world.firmwares, strict=True), start=1)
        if world.transport_fault(i) is None
    ]
    moving = [name for name, fw in reachable if fw.target_w != 0 or fw.battery.target_w != 0]
    held = [name for name, fw in reachable if fw.control_enabled]
    checker.shutdown(
        end_s,
        all_idle=not moving,
        released=not held,
        detail=f"still steering: {moving}, still in RS485 control: {held}",
    )


def shutdown_probe_times(scenario: Scenario) -> list[float]:
    """When to try the shutdown path in the middle of each fault: 2 s after it starts (the
    batteries still carry load) and half-way through it."""
    times = set()
    for fault in scenario.faults:
        times.add(fault.at_s + min(2.0, fault.duration_s / 2))
        times.add(fault.at_s + fault.duration_s / 2)
    return sorted(t for t in times if t < scenario.duration_s)


def probe_shutdown(world: World, links: list[InProcessBattery], checker: InvariantChecker) -> None:
    """SIGTERM now, on copies: release every battery the daemon's way, let the plant run for
    ``SHUTDOWN_BUDGET_S`` and check every reachable battery idles and is released. The run
    itself goes on untouched."""
    world.settle()
    now = world.now_s
    moving: list[str] = []
    held: list[str] = []
    for link in links:
        if world.transport_fault(link.index) is not None:
            continue  # unreachable: the shutdown must not wait for it (the wire run times it)
        firmware = copy.deepcopy(link.firmware)
        commander = copy.deepcopy(link.commander)
        for address, value in commander.release_writes():
            firmware.write(address, [value], now)
        firmware.battery.advance(now, SHUTDOWN_BUDGET_S)
        if firmware.target_w != 0 or abs(firmware.battery.ac_power_w) > 0.5:
            moving.append(f"{link.commander.name} {firmware.battery.ac_power_w:.0f} W")
        if firmware.control_enabled:
            held.append(link.commander.name)
    checker.shutdown(
        now,
        all_idle=not moving,
        released=not held,
        detail=f"{SHUTDOWN_BUDGET_S:.0f} s after SIGTERM: {moving} still moving, {held} held",
    )


def score_run(scenario: Scenario, record: RunRecord, wall_start: float) -> dict[str, float]:
    """Every metric of one finished run against the reference; ``wall_start`` from
    ``time.perf_counter()`` at the run's start (the reported wall time, not control)."""
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
    return metrics
