"""Protocols between the runtime and its adapters, and the injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from engine.core.meter import P1Reading
from engine.core.model import BatteryTelemetry, Plan, Snapshot
from engine.core.status import FleetStatus


class Clock(Protocol):
    """Time as the engine sees it: monotonic seconds and sleeping on the same timeline."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's clock: real time in production, virtual time under looptime.

    Never the wall clock, so the simulator can replay a day in seconds with the same code.
    """

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class MeterSource(Protocol):
    async def read(self) -> P1Reading: ...


class PushedMeterReading(Protocol):
    """A reading the meter pushed, and when it arrived (the loop clock, s)."""

    @property
    def reading(self) -> P1Reading: ...

    @property
    def received_s(self) -> float: ...


class MeterPush(Protocol):
    """Readings the meter pushes as it has them (``engine.adapters.homewizard_v2``'s stream).

    ``readings`` never ends by itself (it reconnects); ``connected`` says whether a socket
    is up right now.
    """

    @property
    def connected(self) -> bool: ...

    def readings(self) -> AsyncIterator[PushedMeterReading]: ...


class BatteryLink(Protocol):
    """One battery as the loop drives it (``engine.adapters.marstek.MarstekBattery``).

    Device trouble never raises: ``read`` reports ``online=False``, ``apply``/``release``
    return False.
    """

    name: str

    async def read(self, now_s: float | None = None) -> BatteryTelemetry: ...

    async def apply(self, power_w: int) -> bool: ...

    async def release(self) -> bool: ...


class StatusSink(Protocol):
    def publish(self, status: FleetStatus) -> None: ...


class CycleObserver(Protocol):
    """Sees every cycle (the simulator checks its invariants here); must not raise."""

    def cycle_done(self, snap: Snapshot, plan: Plan) -> None: ...

    def cycle_failed(self, now_s: float, detail: str) -> None: ...
