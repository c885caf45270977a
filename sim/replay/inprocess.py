"""Closed-loop replay in virtual time, in-process: the engine's own code against the plant.

The daemon's cycle (``engine.core.cycle.ControlCycle``) decides from what the meter and the
batteries report; the battery driver's logic
(``engine.adapters.venus_commander.VenusCommander``) and the P1 parser and tracker run exactly
as in the daemon, only the transport is a direct call into the simulated firmware instead of
a socket. The timing is the daemon's too: cycles at a phase against the meter's refresh
(``sim.replay.timing``), each battery's Modbus requests paced by the daemon's message gap,
the writes after the slowest battery's reads, every request at its own instant of the plant
(``World.battery_at``). ``--wire`` (``sim.replay.wire``) swaps in the real sockets and
gives the same figures.

A scenario whose meter speaks API v2 (``[meter] api = "v2"``) pushes its readings: each new
sample reaches the loop the instant it becomes visible (``PushMirror``: what the simulated
device's websocket sends, through the engine's v2 parser), and the loop does what the
daemon's controller does with a push stream (``engine.runtime.controller``): a cycle at once
on each new reading (or right after the cycle in progress), no poll while the stream's last
push is recent, the same ``CycleSchedule`` timing the cycles in between.
"""

from __future__ import annotations

import copy
import heapq
import json
import os
import time
from collections.abc import Callable, Generator, Iterable
from typing import TypeAlias, TypeVar

from engine.adapters.homewizard_data import parse_data
from engine.adapters.meter_json import decode_body
from engine.adapters.venus_commander import VenusCommander
from engine.core.cycle import ControlCycle, Release, UserInputs, WriteJob
from engine.core.meter import MeterTracker, P1Reading
from engine.core.model import BatteryTelemetry, Plan, Snapshot
from engine.core.policies import Policy, make_policy
from engine.core.schedule import PUSHED_READING_AGE_S, CycleSchedule
from engine.core.settings import BatterySpec, ControlSettings
from engine.errors import DeviceError, DeviceResponseError, DeviceUnavailable
from engine.runtime.event_log import describe
from sim.plant.firmware import FirmwareFault, VenusFirmware
from sim.plant.params import MeterApi
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
from sim.scoring.metrics import Metrics, score
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

    def writing(self, job: WriteJob, now: float) -> Requests[None] | None:
        """One job's writes from ``now`` on, in order, as ``MarstekBattery`` sends them; None
        when there is nothing to send (most cycles: the battery holds the command already)."""
        self._now_s = max(self._now_s, now)
        if isinstance(job, Release):
            # As the daemon's release: every write is tried; a failed one stops nothing.
            writes, stop_at_failure = self.commander.release_writes(), False
        else:
            writes, stop_at_failure = self.commander.writes_for(job.power_w, now), True
        return self._sending(writes, now, stop_at_failure=stop_at_failure) if writes else None

    def _sending(
        self, writes: list[tuple[int, int]], now: float, *, stop_at_failure: bool
    ) -> Requests[None]:
        """``writing``'s requests: ``writes`` in order, each at its instant."""
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
    for k, (_index, gen) in enumerate(requests):
        try:
            heap.append((next(gen), k))
        except StopIteration as stop:
            results[k] = stop.value
    heapq.heapify(heap)
    battery_at = world.battery_at
    while heap:
        at_s, k = heap[0]
        index, gen = requests[k]
        battery_at(index, at_s)
        try:
            heapq.heapreplace(heap, (gen.send(at_s), k))
        except StopIteration as stop:
            results[k] = stop.value
            heapq.heappop(heap)
    return [results[k] for k in range(len(requests))]


def _write_in_time_order(
    world: World, jobs: list[tuple[InProcessBattery, WriteJob]], now: float
) -> None:
    """Each job's writes from ``now`` on (one job per battery), the fleet's in time order.

    A job with nothing to send has no requests: it is left out (no generator built), which
    reorders nothing, as each battery's writes depend on its own link alone."""
    requests: list[tuple[int, Requests[None]]] = []
    for link, job in jobs:
        writing = link.writing(job, now)
        if writing is not None:
            requests.append((link.index, writing))
    if requests:
        run_in_time_order(world, requests)


def _read_meter(world: World, tracker: MeterTracker, now: float, api: MeterApi) -> None:
    """What the P1 client would get: the served body, through the real parser."""
    meter = world.meter
    v2 = api is MeterApi.V2
    body: object
    if meter.fault is None:
        # fast path: the same dict the server would serialise
        body = meter.measurement_json(now) if v2 else meter.data_json(now)
    else:
        response = meter.respond_measurement(now) if v2 else meter.respond_data(now)
        if response is None or response.status != HTTP_OK:
            tracker.failed(now)
            return
        try:
            body = decode_body(response.body)
        except ValueError:
            tracker.failed(now)
            return
    try:
        reading = _parse_measurement(body) if v2 else parse_data(body)
    except DeviceError:
        tracker.failed(now)
        return
    tracker.update(reading, now)


def _parse_measurement(body: object) -> P1Reading:
    """The engine's API v2 parser, imported when a v2 scenario first needs it: the v2 package
    brings its HTTPS and websocket client (aiohttp), which a v1 replay never loads."""
    from engine.adapters.homewizard_v2 import parse_measurement

    return parse_measurement(body)


class PushMirror:
    """The v2 push stream, in-process: what the simulated device's websocket sends.

    The device sends its latest body when the stream subscribes (the controller's first
    cycle) and then each changed body the instant its sample becomes visible, unless it
    answers with an error (an outage, a fault); the stream drops a body the engine's parser
    rejects. The socket never drops here.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.connected = False
        self.last_received_s: float | None = None  # the controller's freshness mark
        self._last_body: str | None = None  # the device's last pushed body
        self._checked_s = 0.0  # every push up to here has been offered

    def connect(self, now_s: float) -> None:
        """Subscribe at ``now_s``: the device sends its latest body at once."""
        self.connected = True
        self._checked_s = now_s
        self._offer(now_s)

    def pushes_until(self, until_s: float) -> Generator[tuple[float, P1Reading]]:
        """The readings pushed after the last one offered, up to ``until_s``, in order (the
        world is brought to each push's instant).

        Pushes during the cycle in progress fall before the world's present, which cannot go
        back: of those only the newest matters (the loop keeps the newest), and it is the
        sample visible now, so it is taken from the world as it is.
        """
        meter = self.world.meter
        at_s = meter.next_visible_s(self._checked_s)
        while at_s <= until_s + 1e-9:
            later_s = meter.next_visible_s(at_s)
            self._checked_s = at_s
            past = at_s < self.world.now_s - 1e-9
            if past and later_s <= min(until_s, self.world.now_s) + 1e-9:
                at_s = later_s  # a newer one came before the present: this one is replaced
                continue
            if not past:
                self.world.advance_to(at_s)
            reading = self._offer(at_s, self.world.now_s)
            if reading is not None:
                yield at_s, reading
            at_s = later_s

    def _offer(self, at_s: float, seen_s: float | None = None) -> P1Reading | None:
        """The device pushes its body as it is at ``seen_s`` (default ``at_s``); the reading
        arrives at ``at_s``, unless the device or the stream drops it."""
        seen_s = at_s if seen_s is None else seen_s
        response = self.world.meter.respond_measurement(seen_s, pushed=True)
        if response is None or response.status != HTTP_OK or response.body == self._last_body:
            return None  # the device pushes nothing
        self._last_body = response.body
        try:
            reading = _parse_measurement(decode_body(response.body))
        except (ValueError, DeviceError):
            return None  # a frame the stream drops
        self.last_received_s = at_s
        return reading


def _newer(
    pushes: Iterable[tuple[float, P1Reading]], tracker: MeterTracker
) -> tuple[float, P1Reading] | None:
    """As the controller keeps pushes: the newest whose body differs from the one before it
    (the kept one, else the tracker's), if it still differs from the tracker's."""
    kept: tuple[float, P1Reading] | None = None
    for pushed in pushes:
        latest = kept[1] if kept is not None else tracker.reading
        if latest is None or latest.fingerprint != pushed[1].fingerprint:
            kept = pushed
    current = tracker.reading
    if kept is None or (current is not None and current.fingerprint == kept[1].fingerprint):
        return None
    return kept


def _first_new(
    push: PushMirror, until_s: float, tracker: MeterTracker
) -> tuple[float, P1Reading] | None:
    """The first push up to ``until_s`` whose body the tracker lacks (it wakes the loop)."""
    for pushed in push.pushes_until(until_s):
        current = tracker.reading
        if current is None or current.fingerprint != pushed[1].fingerprint:
            return pushed
    return None


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
    api = scenario.meter.api
    push = PushMirror(world) if api is MeterApi.V2 else None
    pushed: tuple[float, P1Reading] | None = None
    cycles = 0
    now = timing.first_tick_s
    while now < scenario.duration_s - 1e-9:
        # As the controller: poll unless a push brings the reading or the stream is trusted.
        trusted = push is not None and schedule.push_fresh(now, push.last_received_s)
        polled = pushed is None and not trusted
        if push is not None and not push.connected:
            push.connect(now)  # the controller's push task subscribes during its first cycle
        _cycle(
            world,
            links,
            tracker,
            core,
            inputs,
            checker,
            now,
            period,
            notes,
            on_cycle,
            schedule.reading_age_bound_s() if polled else PUSHED_READING_AGE_S,
            api=api,
            pushed=pushed,
            poll=polled,
        )
        while probes and probes[0] <= now + 1e-9:
            probes.pop(0)
            probe_shutdown(world, links, checker)
        if progress is not None and cycles % 100 == 0:
            progress(now, scenario.duration_s)
        cycles += 1
        # The daemon's own schedule (engine.core.schedule), on the same readings.
        busy_until_s = world.now_s
        if pushed is not None:
            schedule.pushed(pushed[0])
        if polled:
            next_s = schedule.next_s(
                now, meter_updated_s=tracker.updated_s, busy_until_s=busy_until_s
            )
        else:
            next_s = schedule.next_unpolled_s(now, busy_until_s=busy_until_s)
        pushed = None
        if push is not None:
            # A push during the cycle runs the next one right after it; else the first
            # new push before the timer does.
            pushed = _newer(push.pushes_until(busy_until_s), tracker)
            if pushed is not None:
                next_s = busy_until_s
            else:
                pushed = _first_new(push, next_s, tracker)
                if pushed is not None:
                    next_s = pushed[0]
        now = next_s
    end = scenario.duration_s
    world.advance_to(end)
    # The daemon's shutdown: idle setpoints, then 42000 = 0x55BB, every battery at once.
    _write_in_time_order(world, [(link, Release(link.commander.name)) for link in links], end)
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
    reading_age_s: float | None = None,
    *,
    api: MeterApi = MeterApi.V1,
    pushed: tuple[float, P1Reading] | None = None,
    poll: bool = True,
) -> None:
    """One cycle of the daemon's: read, decide (``ControlCycle``), write, then check.

    ``pushed``: the reading the meter pushed (and when), used instead of a poll; ``poll``
    False: the meter is not polled (its readings are pushed)."""
    world.advance_to(now)
    if pushed is not None:
        tracker.update(pushed[1], pushed[0])  # as a poll answered when it arrived
    elif poll:
        _read_meter(world, tracker, now, api)  # the meter answers at once (polled first)
    telemetry = tuple(run_in_time_order(world, [(ln.index, ln.reading(now)) for ln in links]))
    # The decision follows the slowest battery's reads; the writes follow the decision.
    decided_s = max([now, *(link.busy_until_s for link in links)])
    world.advance_to(decided_s)
    inputs.discharge_blocked = world.discharge_blocked_at(now)
    snap = ControlCycle.snapshot(now, tracker, telemetry, inputs, reading_age_s=reading_age_s)
    result = core.run(snap)
    by_name = {link.commander.name: link for link in links}
    _write_in_time_order(world, [(by_name[job.battery], job) for job in result.jobs], decided_s)
    snap, plan = result.snapshot, result.plan
    world.record.note_cycle(
        now, None if result.failure else snap.grid_w, plan.setpoints, plan.release
    )
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


def score_run(scenario: Scenario, record: RunRecord, wall_start: float) -> Metrics:
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
    record.oracle_grid_w = oracle.grid_w
    metrics = score(record, oracle, scenario.tariff)
    record.wall_seconds = time.perf_counter() - wall_start
    return metrics.replace(wall_seconds=record.wall_seconds)
