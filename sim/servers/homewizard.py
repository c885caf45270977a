"""aiohttp app emulating a HomeWizard meter's local API v1 (``/api``, ``/api/v1/data``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from sim.plant.meter import MeterResponse

_LOGGER = logging.getLogger(__name__)

DATA_PATH = "/api/v1/data"


class ServedMeter(Protocol):
    """What the server needs from a meter model (``P1MeterModel``, ``KwhMeterModel``)."""

    def respond_data(self, now_s: float) -> MeterResponse | None: ...

    def respond_device(self, now_s: float) -> MeterResponse | None: ...


class MeterServer:
    """A running meter API on ``host:port``; ``url`` is the full ``/api/v1/data`` URL."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, closing: asyncio.Event) -> None:
        self._runner = runner
        self._closing = closing
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self.url = f"{self.base_url}{DATA_PATH}"

    async def stop(self) -> None:
        """Release requests held by an outage, then close the listener and connections."""
        self._closing.set()
        await self._runner.cleanup()


async def start_meter_server(
    model: ServedMeter,
    host: str = "127.0.0.1",
    port: int = 0,
    now: Callable[[], float] | None = None,
) -> MeterServer:
    """Serve ``model`` on ``host:port`` (0 = a free port); ``now`` defaults to the loop clock.

    The loop clock makes it run unchanged in virtual time under looptime.
    """
    clock = now or asyncio.get_running_loop().time
    closing = asyncio.Event()

    async def answer(response: MeterResponse | None) -> web.Response:
        if response is None:
            # Outage: accept the request and never answer, so the client's timeout fires.
            # Released (with a 503 nobody reads) only when the server stops.
            await closing.wait()
            return web.Response(status=503)
        return web.Response(
            status=response.status, text=response.body, content_type=response.content_type
        )

    async def data(request: web.Request) -> web.Response:
        return await answer(model.respond_data(clock()))

    async def device(request: web.Request) -> web.Response:
        return await answer(model.respond_device(clock()))

    app = web.Application()
    app.router.add_get(DATA_PATH, data)
    app.router.add_get("/api", device)
    # handler_cancellation: a client that gives up on a hung request frees its handler.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    _LOGGER.debug("meter API on http://%s:%d", host, bound_port)
    return MeterServer(runner, host, bound_port, closing)
