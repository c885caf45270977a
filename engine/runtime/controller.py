"""The one control loop: read all devices concurrently, one snapshot, decide, write, report.

Everything waits on the injected clock, so this exact loop runs in real time in the daemon
and in virtual time under ``mmbc-sim run --wire``.

When the meter pushes its readings (HomeWizard API v2, ``push``), a task reads the stream and
keeps the newest reading that is new (its body differs from the last one the loop has); it
wakes the loop, which runs a cycle at once on that reading: no HTTP poll, and the reading's
age at the decision is about nothing (``PUSHED_READING_AGE_S``, which the policy's demand
window and loop-delay model take). The cycle schedule (``engine.core.schedule``) stays the
timer: each push tells it when the meter refreshes, and it runs a cycle about every period
in between (the batteries need their reads and re-asserts on a slow meter), placed just after
the next expected push so that a push on time comes first. Those timer cycles do not poll
either while the stream is trusted (connected, and its last push within two meter
intervals); once it is not, every timer cycle polls as without push, until pushes return
(the stream reconnects with backoff by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core.cycle import ControlCycle, CycleResult, Release, UserInputs
from engine.core.energy import CounterReading, EnergyLedger, EnergyTotals
from engine.core.events import MeterEvent, MeterLost, MeterReturned
from engine.core.meter import Availability, MeterTracker
from engine.core.model import Mode, Plan, Snapshot
from engine.core.policies import Policy
from engine.core.schedule import PUSHED_READING_AGE_S, CycleSchedule
from engine.core.status import build_status
from engine.core.units import pv_power_from_meter
from engine.errors import DeviceError
from engine.ports import (
    BatteryLink,
    Clock,
    CycleObserver,
    MeterPush,
    MeterSource,
    PushedMeterReading,
    StatusSink,
)
from engine.runtime.energy_store import EnergyStateFile
from engine.runtime.event_log import describe, level

_LOGGER = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.5  # SIGTERM → every battery at 0 W and released within 5 s
# A wake-up this much before the timer is the timer's own (clocks round).
TIMER_SLACK_S = 0.001
PUSH_RETRY_S = 5.0  # after a bug in the push task: read the stream afresh this much later


@dataclass
class CycleStats:
    """Counters, and the cycle latency from the P1 response to the last Modbus write.

    The latency is measured on ``Controller.latency_clock`` (the loop clock by default;
    ``time.perf_counter`` in the simulator, where the loop clock is virtual). Bounded history.
    """

    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    cycles: int = 0
    errors: int = 0  # cycles that raised: every battery to 0 W
    error_runs: int = 0  # runs of such cycles (one fail-safe hold each)
    meter_failures: int = 0  # meter polls that failed
    pushes: int = 0  # readings the meter pushed (new or not)
    pushed_cycles: int = 0  # cycles run on a pushed reading
    polls: int = 0  # cycles that polled the meter


class Controller:
    """Owns the cycle. Adapters are injected; nothing here knows sockets or protocols."""

    def __init__(
        self,
        *,
        clock: Clock,
        policy: Policy,
        meter: MeterSource,
        batteries: Sequence[BatteryLink],
        pv_meter: MeterSource | None = None,
        pv_negative_when_producing: bool = True,
        sinks: Sequence[StatusSink] = (),
        capacities: dict[str, float] | None = None,
        dry_run: bool = False,
        inputs: UserInputs | None = None,
        observer: CycleObserver | None = None,
        latency_clock: Callable[[], float] | None = None,
        battery_numbers: Mapping[str, int] | None = None,
        energy_store: EnergyStateFile | None = None,
        push: MeterPush | None = None,
    ) -> None:
        self.clock = clock
        self.policy = policy
        self.meter = meter
        self.batteries = list(batteries)
        self.pv_meter = pv_meter
        self.pv_negative = pv_negative_when_producing
        self.sinks = list(sinks)
        self.capacities = capacities or {}
        self.dry_run = dry_run
        self.inputs = inputs or UserInputs()
        self.observer = observer
        self.latency_clock = latency_clock or clock.now
        self.tracker = MeterTracker()
        self.stats = CycleStats()
        self.last_plan: Plan | None = None
        self.last_snapshot: Snapshot | None = None
        self._pv_w: float | None = None
        self._pv_online: bool | None = None
        self._error_logged = False
        self.core = ControlCycle(policy, [b.name for b in self.batteries])
        self.schedule = CycleSchedule(policy.period_s, learn_phase=policy.learns_meter_phase)
        # battery/<n> follows the configured number; by default the position in the list.
        self.battery_numbers = dict(battery_numbers or {})
        for position, battery in enumerate(self.batteries, start=1):
            self.battery_numbers.setdefault(battery.name, position)
        self.energy_store = energy_store
        self.energy = energy_store.load() if energy_store is not None else EnergyLedger()
        self.released_ok: bool | None = None  # set by shutdown(): every battery released?
        self._meter_events: list[MeterEvent] = []  # seen since the last report
        self.push = push
        self._pushed: PushedMeterReading | None = None  # the newest push no cycle has used
        self._last_push_s: float | None = None  # when the last push arrived (loop clock)
        self._push_wake = asyncio.Event()
        self._polled = False  # whether the last cycle polled the meter

    # ------------------------------------------------------------------ inputs
    def set_block_discharge(self, blocked: bool) -> None:
        self.inputs.discharge_blocked = blocked

    def set_mode(self, mode: Mode) -> None:
        self.inputs.mode = mode

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        """Cycle on ``schedule`` (every ``policy.period_s``, placed just after the meter's
        refresh when the policy learns it) and on every new pushed reading, until ``stop`` is
        set, then shut down safely.

        A cycle in progress when ``stop`` is set is abandoned (it may be waiting on a
        stalled battery), so the shutdown starts at once.
        """
        stop_wait = asyncio.ensure_future(stop.wait())
        receiver = asyncio.ensure_future(self._receive_pushes()) if self.push else None
        next_s = self.clock.now()
        try:
            while not stop.is_set():
                await self._wait(next_s, stop_wait)
                if stop.is_set():
                    break
                pushed = self._take_push()
                if pushed is None and self.clock.now() < next_s - TIMER_SLACK_S:
                    continue  # woken by a push that brought nothing new: keep the timer
                started_s = self.clock.now()
                cycle = asyncio.ensure_future(self.cycle(pushed))
                await asyncio.wait((cycle, stop_wait), return_when=asyncio.FIRST_COMPLETED)
                if not cycle.done():
                    cycle.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await cycle
                    break
                cycle.result()  # cycle() never raises; a bug here should still surface
                next_s = self._next_cycle_s(started_s, pushed)
        finally:
            stop_wait.cancel()
            if receiver is not None:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
            await self.shutdown()

    async def _wait(self, until_s: float, stop_wait: asyncio.Future[Any]) -> None:
        """Until ``until_s``, ``stop``, or a pushed reading, whichever comes first."""
        waits: list[asyncio.Future[Any]] = [stop_wait]
        if self.push is not None:
            waits.append(asyncio.ensure_future(self._push_wake.wait()))
        try:
            await asyncio.wait(
                waits,
                timeout=max(0.0, until_s - self.clock.now()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in waits[1:]:
                waiting.cancel()

    def _next_cycle_s(self, started_s: float, pushed: PushedMeterReading | None) -> float:
        """The schedule's next cycle after the one started at ``started_s``."""
        busy_until_s = self.clock.now()
        if pushed is not None:
            self.schedule.pushed(pushed.received_s)
        if pushed is not None or not self._polled:
            return self.schedule.next_unpolled_s(started_s, busy_until_s=busy_until_s)
        return self.schedule.next_s(
            started_s, meter_updated_s=self.tracker.updated_s, busy_until_s=busy_until_s
        )

    # ------------------------------------------------------------------ push
    async def _receive_pushes(self) -> None:
        """Keep the newest pushed reading that is new, and wake the loop for it."""
        assert self.push is not None
        while True:
            try:
                async for pushed in self.push.readings():
                    self._last_push_s = pushed.received_s
                    self.stats.pushes += 1
                    latest = self._pushed.reading if self._pushed else self.tracker.reading
                    if latest is not None and latest.fingerprint == pushed.reading.fingerprint:
                        continue  # the latest again (as sent on subscribing): nothing new
                    self._pushed = pushed
                    self._push_wake.set()
            except Exception:  # a bug: the timer cycles poll meanwhile; read afresh later
                _LOGGER.exception("reading the meter's pushed readings failed")
            await asyncio.sleep(PUSH_RETRY_S)

    def _take_push(self) -> PushedMeterReading | None:
        """The pushed reading for the next cycle, if one came that the tracker lacks."""
        pushed, self._pushed = self._pushed, None
        self._push_wake.clear()
        current = self.tracker.reading
        if pushed is None or (
            current is not None and current.fingerprint == pushed.reading.fingerprint
        ):
            return None
        return pushed

    def push_trusted(self, now_s: float) -> bool:
        """Whether the stream brings the readings now: connected, its last push recent."""
        return (
            self.push is not None
            and self.push.connected
            and self.schedule.push_fresh(now_s, self._last_push_s)
        )

    async def cycle(self, pushed: PushedMeterReading | None = None) -> Plan:
        """One cycle, on ``pushed`` if given. Never raises: an unexpected error puts every
        battery at 0 W."""
        now = self.clock.now()
        started = self.latency_clock()
        try:
            snap, meter_done = await self._read(now, pushed)
            if _LOGGER.isEnabledFor(logging.DEBUG):  # the reading's age at the decision
                _LOGGER.debug(
                    "cycle at %.6f: decided at %.6f on the reading seen at %s (%s)",
                    now,
                    self.clock.now(),
                    "none" if snap.meter_updated_s is None else f"{snap.meter_updated_s:.6f}",
                    "pushed" if pushed else "polled" if self._polled else "unpolled",
                )
            result = self.core.run(snap)
            await self._execute(result)
        except Exception as exc:  # a bug in the shell: fail safe, go on
            fallback = ControlCycle.snapshot(now, self.tracker, (), self.inputs, self._pv_w)
            result = self.core.fail_safe(fallback, exc)
            with contextlib.suppress(Exception):  # already failing safe; the next cycle retries
                await self._execute(result)
            return self._failed(now, result)
        if result.failure is not None:
            return self._failed(now, result)
        plan = result.plan
        done = self.latency_clock()
        latency_s = max(0.0, done - meter_done)
        self.stats.latencies_s.append(latency_s)
        self.stats.cycles += 1
        self._error_logged = False
        self.last_plan = plan
        self.last_snapshot = snap
        for event in plan.events:
            _LOGGER.log(level(event), "%s", describe(event))
        self._report(snap, plan, duration_s=max(0.0, done - started), latency_s=latency_s)
        return plan

    async def _read(
        self, now: float, pushed: PushedMeterReading | None = None
    ) -> tuple[Snapshot, float]:
        """Every device at once; the snapshot, and when the meter answered (latency start).

        The meter is polled unless ``pushed`` brings its reading or the stream is trusted.
        """
        self._polled = pushed is None and not self.push_trusted(now)
        if pushed is not None:
            self._use_pushed(pushed)
        meter_task = asyncio.ensure_future(self._read_meter()) if self._polled else None
        battery_reads = [asyncio.ensure_future(b.read(now)) for b in self.batteries]
        pv_task = asyncio.ensure_future(self._read_pv()) if self.pv_meter else None
        try:
            meter_done = await meter_task if meter_task is not None else self.latency_clock()
            telemetry = tuple(await asyncio.gather(*battery_reads))
            if pv_task is not None:
                await pv_task
        except BaseException:
            for task in (meter_task, *battery_reads, pv_task):
                if task is not None:
                    task.cancel()
            raise
        snap = ControlCycle.snapshot(
            now,
            self.tracker,
            telemetry,
            self.inputs,
            self._pv_w,
            reading_age_s=self.schedule.reading_age_bound_s()
            if self._polled
            else PUSHED_READING_AGE_S,
        )
        return snap, meter_done

    def _use_pushed(self, pushed: PushedMeterReading) -> None:
        """A pushed reading, as a poll that answered when it arrived."""
        self.stats.pushed_cycles += 1
        if self.tracker.update(pushed.reading, pushed.received_s) is Availability.RETURNED:
            self._meter_event(MeterReturned(self.tracker.name))

    def _failed(self, now: float, result: CycleResult) -> Plan:
        """Log the traceback once per run of failures; the 0 W writes are already out."""
        self.stats.errors += 1
        if not self._error_logged:
            _LOGGER.error("control cycle failed: every battery to 0 W", exc_info=result.error)
            self._error_logged = True
            self.stats.error_runs += 1
        self.last_plan = result.plan
        if self.observer is not None:
            self.observer.cycle_failed(now, result.failure or "")
        return result.plan

    def _report(self, snap: Snapshot, plan: Plan, *, duration_s: float, latency_s: float) -> None:
        if self.observer is not None:
            self.observer.cycle_done(snap, plan)
        meter_events = tuple(self._meter_events)
        self._meter_events.clear()
        try:
            totals = self._count_energy(snap)
        except Exception:  # reporting must never stop control
            _LOGGER.exception("counting the energy totals failed")
            totals = self.energy.totals
        if not self.sinks:
            return
        status = build_status(
            snap,
            plan,
            self.capacities,
            numbers=self.battery_numbers,
            energy=totals,
            meter_events=meter_events,
            cycle_duration_s=duration_s,
            cycle_latency_s=latency_s,
        )
        for sink in self.sinks:
            try:
                sink.publish(status)
            except Exception:  # reporting must never stop control
                _LOGGER.exception("publishing the status failed")

    def _count_energy(self, snap: Snapshot) -> EnergyTotals:
        """Feed the batteries' counters to the ledger; save it now and then."""
        totals = self.energy.observe(
            snap.now_s,
            (
                CounterReading(
                    number=self.battery_numbers[b.name],
                    serial_number=None if b.identity is None else b.identity.serial_number,
                    charge_wh=b.charge_total_wh,
                    discharge_wh=b.discharge_total_wh,
                )
                for b in snap.batteries
                if b.online and b.name in self.battery_numbers
            ),
        )
        if self.energy_store is not None:
            self.energy_store.maybe_save(self.energy, snap.now_s)
        return totals

    async def _read_meter(self) -> float:
        """Poll the P1 meter; returns ``latency_clock`` at the response (the latency start)."""
        self.stats.polls += 1
        event: MeterEvent | None = None
        try:
            reading = await self.meter.read()
        except DeviceError as err:
            self.stats.meter_failures += 1
            if self.tracker.failed(self.clock.now()) is Availability.LOST:
                event = MeterLost(self.tracker.name, str(err))
        else:
            if self.tracker.update(reading, self.clock.now()) is Availability.RETURNED:
                event = MeterReturned(self.tracker.name)
        if event is not None:
            self._meter_event(event)
        return self.latency_clock()

    def _meter_event(self, event: MeterEvent) -> None:
        """The meter went or came back: one log line, and an event for the next status."""
        _LOGGER.log(level(event), "%s", describe(event))
        self._meter_events.append(event)

    async def _read_pv(self) -> None:
        assert self.pv_meter is not None
        try:
            reading = await self.pv_meter.read()
        except DeviceError as err:
            self._pv_w = None
            if self._pv_online is not False:
                _LOGGER.warning("PV meter unavailable: %s", err)
            self._pv_online = False
        else:
            self._pv_w = pv_power_from_meter(
                reading.active_power_w, negative_when_producing=self.pv_negative
            )
            if self._pv_online is False:
                _LOGGER.info("PV meter available again")
            self._pv_online = True

    async def _execute(self, result: CycleResult) -> None:
        """The cycle's writes, every battery at once (a dry run writes nothing)."""
        if self.dry_run or not result.jobs:
            return
        by_name = {b.name: b for b in self.batteries}
        await asyncio.gather(
            *(
                by_name[job.battery].release()
                if isinstance(job, Release)
                else by_name[job.battery].apply(job.power_w)
                for job in result.jobs
            )
        )

    async def shutdown(self) -> None:
        """Every battery to 0 W, then release RS485 control; bounded so exit stays < 5 s.

        ``release`` writes the idle setpoints before 42000 = 0x55BB. A dry run never took
        control, so it has nothing to hand back. Then the energy state is written.
        """
        try:
            await self._release_all()
        finally:
            if self.energy_store is not None:
                with contextlib.suppress(Exception):  # logged by the store; exit goes on
                    await self.energy_store.close(self.energy)

    async def _release_all(self) -> None:
        if self.dry_run:
            self.released_ok = True
            return
        self.released_ok = False
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET_S):
                results = await asyncio.gather(*(b.release() for b in self.batteries))
        except TimeoutError:
            _LOGGER.error(
                "shutdown: not every battery confirmed 0 W within %.1f s", SHUTDOWN_BUDGET_S
            )
            return
        failed = [b.name for b, ok in zip(self.batteries, results, strict=True) if not ok]
        if failed:
            _LOGGER.error("shutdown: not released: %s", ", ".join(failed))
        else:
            self.released_ok = True
            _LOGGER.info("shutdown: every battery at 0 W and released")
