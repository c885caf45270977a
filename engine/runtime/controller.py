"""The one control loop: read all devices concurrently, one snapshot, decide, write, report.

Everything waits on the injected clock, so this exact loop runs in real time in the daemon
and in virtual time under ``mmbc-sim run --wire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.core.events import MeterEvent, MeterLost, MeterReturned, SafeHoldCause, SafeHoldEntered
from engine.core.meter import Availability, MeterTracker
from engine.core.model import Mode, Plan, Snapshot
from engine.core.policies import Policy
from engine.core.states import FleetState
from engine.core.status import build_status
from engine.core.units import pv_power_from_meter
from engine.errors import DeviceError
from engine.ports import BatteryLink, Clock, CycleObserver, MeterSource, StatusSink
from engine.runtime.event_log import describe, level

_LOGGER = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.5  # SIGTERM → every battery at 0 W and released within 5 s


@dataclass
class UserInputs:
    """What the user set over MQTT; applied at the next cycle."""

    mode: Mode = Mode.NORMAL
    discharge_blocked: bool = False


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


def _safe_plan(names: Sequence[str]) -> Plan:
    return Plan(
        setpoints=dict.fromkeys(names, 0),
        fleet_state=FleetState.SAFE_HOLD,
        battery_states={},
        events=(SafeHoldEntered(SafeHoldCause.INTERNAL_ERROR),),
        safe_hold=True,
    )


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
        self._released: set[str] = set()  # released by a plan; not commanded since
        self._meter_events: list[MeterEvent] = []  # seen since the last report

    # ------------------------------------------------------------------ inputs
    def set_block_discharge(self, blocked: bool) -> None:
        self.inputs.discharge_blocked = blocked

    def set_mode(self, mode: Mode) -> None:
        self.inputs.mode = mode

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every ``policy.period_s`` until ``stop`` is set, then shut down safely.

        A cycle in progress when ``stop`` is set is abandoned (it may be waiting on a
        stalled battery), so the shutdown starts at once.
        """
        period = self.policy.period_s
        next_tick = self.clock.now()
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                cycle = asyncio.ensure_future(self.cycle())
                await asyncio.wait((cycle, stop_wait), return_when=asyncio.FIRST_COMPLETED)
                if not cycle.done():
                    cycle.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await cycle
                    break
                cycle.result()  # cycle() never raises; a bug here should still surface
                next_tick += period
                delay = next_tick - self.clock.now()
                if delay < 0:  # fell behind (a stalled device): don't burst to catch up
                    next_tick = self.clock.now()
                    delay = 0.0
                await asyncio.wait((stop_wait,), timeout=delay)
        finally:
            stop_wait.cancel()
            await self.shutdown()

    async def cycle(self) -> Plan:
        """One cycle. Never raises: an unexpected error puts every battery at 0 W."""
        now = self.clock.now()
        started = self.latency_clock()
        try:
            snap, plan, meter_done = await self._read_and_decide(now)
            await self._write(plan)
        except Exception as exc:  # the one place that catches everything: fail safe, go on
            return await self._fail_safe(now, exc)
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

    async def _read_and_decide(self, now: float) -> tuple[Snapshot, Plan, float]:
        meter_task = asyncio.ensure_future(self._read_meter())
        battery_reads = [asyncio.ensure_future(b.read(now)) for b in self.batteries]
        pv_task = asyncio.ensure_future(self._read_pv()) if self.pv_meter else None
        try:
            meter_done = await meter_task
            telemetry = tuple(await asyncio.gather(*battery_reads))
            if pv_task is not None:
                await pv_task
        except BaseException:
            for task in (meter_task, *battery_reads, pv_task):
                if task is not None:
                    task.cancel()
            raise
        snap = Snapshot(
            now_s=now,
            grid_w=self.tracker.grid_w if self.tracker.online else None,
            meter_updated_s=self.tracker.updated_s,
            batteries=telemetry,
            mode=self.inputs.mode,
            discharge_blocked=self.inputs.discharge_blocked,
            pv_w=self._pv_w,
        )
        return snap, self.policy.decide(snap), meter_done

    async def _fail_safe(self, now: float, exc: Exception) -> Plan:
        """Log the traceback once per run of failures, command 0 W everywhere, report."""
        self.stats.errors += 1
        detail = "".join(traceback.format_exception(exc, limit=5))
        if not self._error_logged:
            _LOGGER.error("control cycle failed: every battery to 0 W", exc_info=exc)
            self._error_logged = True
            self.stats.error_runs += 1
        plan = _safe_plan([b.name for b in self.batteries])
        try:
            await self._write(plan)
        except Exception:  # already failing safe; the next cycle retries
            _LOGGER.debug("safe hold write failed", exc_info=True)
        self.last_plan = plan
        if self.observer is not None:
            self.observer.cycle_failed(now, detail)
        return plan

    def _report(self, snap: Snapshot, plan: Plan, *, duration_s: float, latency_s: float) -> None:
        if self.observer is not None:
            self.observer.cycle_done(snap, plan)
        meter_events = tuple(self._meter_events)
        self._meter_events.clear()
        if not self.sinks:
            return
        status = build_status(
            snap,
            plan,
            self.capacities,
            meter_events=meter_events,
            cycle_duration_s=duration_s,
            cycle_latency_s=latency_s,
        )
        for sink in self.sinks:
            try:
                sink.publish(status)
            except Exception:  # reporting must never stop control
                _LOGGER.exception("publishing the status failed")

    async def _read_meter(self) -> float:
        """Poll the P1 meter; returns ``latency_clock`` at the response (the latency start)."""
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
            _LOGGER.log(level(event), "%s", describe(event))
            self._meter_events.append(event)
        return self.latency_clock()

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

    async def _write(self, plan: Plan) -> None:
        if self.dry_run:
            return
        jobs = []
        for b in self.batteries:
            if b.name in plan.release:
                # Released once is enough: the battery runs its own logic until commanded.
                if b.name not in self._released:
                    self._released.add(b.name)
                    jobs.append(b.release())
            elif b.name in plan.setpoints:
                self._released.discard(b.name)
                jobs.append(b.apply(plan.setpoints[b.name]))
        if jobs:
            await asyncio.gather(*jobs)

    async def shutdown(self) -> None:
        """Every battery to 0 W, then release RS485 control; bounded so exit stays < 5 s.

        ``release`` writes the idle setpoints before 42000 = 0x55BB. A dry run never took
        control, so it has nothing to hand back.
        """
        if self.dry_run:
            return
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
            _LOGGER.info("shutdown: every battery at 0 W and released")
