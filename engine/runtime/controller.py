"""The one control loop: read all devices concurrently, one snapshot, decide, write, report.

Everything waits on the injected clock, so this exact loop runs in real time in the daemon
and in virtual time under ``mmbc-sim run --wire``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.adapters.homewizard import MeterTracker, P1Reading
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.policies import Policy
from engine.core.units import pv_power_from_meter
from engine.errors import DeviceError
from engine.ports import Clock
from engine.runtime.status import FleetStatus, build_status

_LOGGER = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 4.5  # SIGTERM → every battery at 0 W and released within 5 s


class MeterSource(Protocol):
    async def read(self) -> P1Reading: ...


class BatteryLink(Protocol):
    name: str

    async def read(self) -> BatteryTelemetry: ...

    async def apply(self, power_w: int) -> bool: ...

    async def release(self) -> None: ...


class StatusSink(Protocol):
    def publish(self, status: FleetStatus) -> None: ...


@dataclass
class UserInputs:
    """What the user set over MQTT; applied at the next cycle."""

    mode: Mode = Mode.NORMAL
    discharge_blocked: bool = False


@dataclass
class CycleStats:
    """Cycle latency from the P1 response to the last Modbus write (bounded history)."""

    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    cycles: int = 0
    errors: int = 0


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
        sink: StatusSink | None = None,
        capacities: dict[str, float] | None = None,
        dry_run: bool = False,
        inputs: UserInputs | None = None,
    ) -> None:
        self.clock = clock
        self.policy = policy
        self.meter = meter
        self.batteries = list(batteries)
        self.pv_meter = pv_meter
        self.pv_negative = pv_negative_when_producing
        self.sink = sink
        self.capacities = capacities or {}
        self.dry_run = dry_run
        self.inputs = inputs or UserInputs()
        self.tracker = MeterTracker()
        self.stats = CycleStats()
        self.last_plan: Plan | None = None
        self.last_snapshot: Snapshot | None = None
        self._pv_w: float | None = None
        self._error_logged = False

    # ------------------------------------------------------------------ inputs
    def set_block_discharge(self, blocked: bool) -> None:
        self.inputs.discharge_blocked = blocked

    def set_mode(self, mode: Mode) -> None:
        self.inputs.mode = mode

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every ``policy.period_s`` until ``stop`` is set, then shut down safely."""
        period = self.policy.period_s
        next_tick = self.clock.now()
        try:
            while not stop.is_set():
                await self.cycle()
                next_tick += period
                delay = next_tick - self.clock.now()
                if delay < 0:  # fell behind (a stalled device): don't burst to catch up
                    next_tick = self.clock.now()
                    delay = 0.0
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass
        finally:
            await self.shutdown()

    async def cycle(self) -> Plan:
        """One cycle. Never raises: an unexpected error puts every battery at 0 W."""
        now = self.clock.now()
        meter_task = asyncio.create_task(self._read_meter(now))
        battery_reads = [asyncio.create_task(b.read()) for b in self.batteries]
        pv_task = asyncio.create_task(self._read_pv()) if self.pv_meter else None
        meter_done_s = await meter_task
        telemetry = tuple(await asyncio.gather(*battery_reads))
        if pv_task is not None:
            await pv_task
        snap = Snapshot(
            now_s=now,
            grid_w=self.tracker.grid_w if self.tracker.online else None,
            meter_updated_s=self.tracker.updated_s,
            batteries=telemetry,
            mode=self.inputs.mode,
            discharge_blocked=self.inputs.discharge_blocked,
            pv_w=self._pv_w,
        )
        try:
            plan = self.policy.decide(snap)
        except Exception:  # the one place that catches everything: fail safe, go on
            self.stats.errors += 1
            if not self._error_logged:
                _LOGGER.exception("control cycle failed: every battery to 0 W")
                self._error_logged = True
            plan = Plan(
                setpoints={b.name: 0 for b in self.batteries},
                fleet_state="safe_hold",
                battery_states={},
                reasons=("internal error",),
                safe_hold=True,
            )
        else:
            self._error_logged = False
        for reason in plan.reasons:
            _LOGGER.info("%s", reason)
        await self._write(plan)
        self.stats.cycles += 1
        self.stats.latencies_s.append(max(0.0, self.clock.now() - meter_done_s))
        self.last_plan = plan
        self.last_snapshot = snap
        if self.sink is not None:
            self.sink.publish(build_status(snap, plan, self.capacities))
        return plan

    async def _read_meter(self, now: float) -> float:
        try:
            reading = await self.meter.read()
        except DeviceError:
            self.tracker.failed(self.clock.now())
        else:
            self.tracker.update(reading, self.clock.now())
        del now
        return self.clock.now()

    async def _read_pv(self) -> None:
        assert self.pv_meter is not None
        try:
            reading = await self.pv_meter.read()
        except DeviceError:
            self._pv_w = None
        else:
            self._pv_w = pv_power_from_meter(
                reading.active_power_w, negative_when_producing=self.pv_negative
            )

    async def _write(self, plan: Plan) -> None:
        if self.dry_run:
            return
        jobs = []
        for b in self.batteries:
            if b.name in plan.setpoints:
                jobs.append(b.apply(plan.setpoints[b.name]))
            if b.name in plan.release:
                jobs.append(b.release())
        if jobs:
            await asyncio.gather(*jobs)

    async def shutdown(self) -> None:
        """Every battery to 0 W, then release RS485 control; bounded so exit stays < 5 s."""
        if self.dry_run:
            return

        async def stop_one(b: BatteryLink) -> None:
            await b.apply(0)
            await b.release()

        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET_S):
                await asyncio.gather(*(stop_one(b) for b in self.batteries))
        except TimeoutError:
            _LOGGER.error("shutdown: not every battery confirmed 0 W within %.1f s", SHUTDOWN_BUDGET_S)
        else:
            _LOGGER.info("shutdown: every battery at 0 W and released")
