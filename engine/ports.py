"""Protocols between the runtime and its adapters, and the injected clock."""

from __future__ import annotations

import asyncio
from typing import Protocol


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
