"""aiohttp app emulating a HomeWizard meter's local API v2: HTTPS, token, button, websocket push.

What it serves (docs/v2/*.mdx): ``GET /api`` (401 without a valid token: the v2 detection
probe), ``GET /api/measurement`` and ``GET /api/system`` with ``Authorization: Bearer``,
``POST /api/user`` (403 ``user:creation-not-enabled`` until the simulated button is pressed,
then a token for ``BUTTON_WINDOW_S``; reusing a name replaces its token), and ``/api/ws``
(authorisation, ``subscribe``/``unsubscribe``, one-shot polls; a subscribed socket gets the
latest measurement and then every new one the moment the model has it). The bodies and faults
come from the meter model, the same one the v1 server serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from sim.plant.meter import UNAUTHORIZED_BODY, V2_API_VERSION, MeterResponse
from sim.servers.tls import SimulatorCA

_LOGGER = logging.getLogger(__name__)

BUTTON_WINDOW_S = 30.0  # token requests are granted this long after a press
WS_AUTHORISATION_S = 40.0  # the device closes a socket not authorised by then
DEFAULT_PUSH_CHECK_S = 0.05
_USER_NAME = re.compile(r"^local/[a-zA-Z0-9\-_/\\# ]{1,40}$")
_JSON = "application/json"


class ServedV2Meter(Protocol):
    """What the server needs from a meter model (``P1MeterModel``, ``KwhMeterModel``)."""

    @property
    def identifier(self) -> str: ...

    def respond_measurement(
        self, now_s: float, *, pushed: bool = False
    ) -> MeterResponse | None: ...

    def respond_device_v2(self, now_s: float) -> MeterResponse | None: ...


class Button:
    """The meter's pairing button: a press opens a window in which tokens are handed out."""

    def __init__(self, window_s: float = BUTTON_WINDOW_S, *, always_pressed: bool = False) -> None:
        self.window_s = window_s
        self.always_pressed = always_pressed
        self._pressed_s: float | None = None

    def press(self, now_s: float) -> None:
        self._pressed_s = now_s

    def is_open(self, now_s: float) -> bool:
        if self.always_pressed:
            return True
        return self._pressed_s is not None and 0.0 <= now_s - self._pressed_s <= self.window_s


@dataclass(eq=False)
class _PushSocket:
    ws: web.WebSocketResponse
    measurement: bool = False  # subscribed to the measurement topic
    last_body: str | None = None


@dataclass
class _Counters:
    user_requests: int = 0
    tokens_issued: int = 0
    sockets_opened: int = 0
    frames_pushed: int = 0
    rejected_tokens: int = 0


@dataclass
class V2MeterServer:
    """A running v2 device on ``host:port``; ``identifier`` is its certificate's name."""

    model: ServedV2Meter
    host: str
    port: int
    button: Button
    clock: Callable[[], float]
    users: dict[str, str] = field(default_factory=dict)  # user name -> token
    counters: _Counters = field(default_factory=_Counters)
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _sockets: set[_PushSocket] = field(default_factory=set)
    _ticker: asyncio.Task[None] | None = None

    @property
    def identifier(self) -> str:
        return self.model.identifier

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def push_sockets(self) -> int:
        return len(self._sockets)

    def press_button(self) -> None:
        """Press the pairing button now (the server's clock)."""
        self.button.press(self.clock())

    def add_user(self, name: str) -> str:
        """Create (or replace) ``name``'s token as if paired; returns the token."""
        token = secrets.token_hex(16).upper()  # 32 of A-F0-9, as the real devices
        self.users[name] = token
        self.counters.tokens_issued += 1
        return token

    def revoke_all(self) -> None:
        """Delete every user, as removing them in the HomeWizard app does."""
        self.users.clear()

    def authorised(self, token: str | None) -> bool:
        return token is not None and token in self.users.values()

    async def drop_push_sockets(self) -> None:
        """Close every websocket from the device side (a reboot, a Wi-Fi drop)."""
        for socket in list(self._sockets):
            await socket.ws.close()

    async def publish(self) -> None:
        """Push the newest measurement to subscribed sockets, if it changed since the last."""
        subscribed = [s for s in self._sockets if s.measurement]
        if not subscribed:
            return
        response = self.model.respond_measurement(self.clock(), pushed=True)
        if response is None or response.status != 200:
            return  # an outage or an error: the device pushes nothing
        for socket in subscribed:
            await self._push(socket, response.body)

    async def _push(self, socket: _PushSocket, body: str) -> None:
        if body == socket.last_body or socket.ws.closed:
            return
        socket.last_body = body
        # Spliced as text: a garbage body makes a garbage frame, as on a broken device.
        with contextlib.suppress(ConnectionError, RuntimeError):  # the socket went meanwhile
            await socket.ws.send_str(f'{{"type":"measurement","data":{body}}}')
            self.counters.frames_pushed += 1

    async def stop(self) -> None:
        """Release held requests, close the sockets and the listener."""
        self._closing.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for socket in list(self._sockets):
            with contextlib.suppress(Exception):  # closing is best effort
                await socket.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._version_check])
        app.router.add_get("/api", self._device)
        app.router.add_get("/api/measurement", self._measurement)
        app.router.add_get("/api/system", self._system)
        app.router.add_post("/api/user", self._create_user)
        app.router.add_get("/api/ws", self._websocket)
        return app

    @web.middleware
    async def _version_check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        version = request.headers.get("X-Api-Version")
        if version is not None and version.split(".")[0] != "2":
            return _error(400, "request:api-version-not-supported")
        return await handler(request)

    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    async def _answer(self, response: MeterResponse | None) -> web.Response:
        if response is None:
            # Outage: accept the request and never answer, so the client's timeout fires.
            await self._closing.wait()
            return web.Response(status=503)
        return web.Response(
            status=response.status, text=response.body, content_type=response.content_type
        )

    async def _authorised_or_401(self, request: web.Request) -> web.Response | None:
        if self.authorised(self._bearer(request)):
            return None
        self.counters.rejected_tokens += 1
        return web.Response(status=401, text=UNAUTHORIZED_BODY, content_type=_JSON)

    async def _device(self, request: web.Request) -> web.Response:
        refused = await self._authorised_or_401(request)
        return refused or await self._answer(self.model.respond_device_v2(self.clock()))

    async def _measurement(self, request: web.Request) -> web.Response:
        refused = await self._authorised_or_401(request)
        return refused or await self._answer(self.model.respond_measurement(self.clock()))

    async def _system(self, request: web.Request) -> web.Response:
        refused = await self._authorised_or_401(request)
        if refused is not None:
            return refused
        body = {
            "wifi_ssid": "My Wi-Fi",
            "wifi_rssi_db": -77,
            "cloud_enabled": False,
            "uptime_s": int(self.clock()),
            "status_led_brightness_pct": 100,
            "api_v1_enabled": False,
        }
        return web.json_response(body)

    async def _create_user(self, request: web.Request) -> web.Response:
        self.counters.user_requests += 1
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError):
            return _error(400, "request:json-invalid")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not _USER_NAME.match(name):
            return _error(400, "user:invalid-name")
        if not self.button.is_open(self.clock()):
            return _error(403, "user:creation-not-enabled")
        return web.json_response({"token": self.add_user(name), "name": name})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.model.respond_device_v2(self.clock()) is None:  # outage: never answers
            await self._closing.wait()
            return web.Response(status=503)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        socket = _PushSocket(ws)
        self._sockets.add(socket)
        self.counters.sockets_opened += 1
        try:
            await ws.send_json(
                {"type": "authorization_requested", "data": {"api_version": V2_API_VERSION}}
            )
            if await self._ws_authorise(ws):
                await self._ws_serve(socket)
        finally:
            self._sockets.discard(socket)
            await ws.close()
        return ws

    async def _ws_authorise(self, ws: web.WebSocketResponse) -> bool:
        try:
            async with asyncio.timeout(WS_AUTHORISATION_S):
                message = await ws.receive()
        except TimeoutError:
            return False
        frame = _frame(message.data) if message.type is WSMsgType.TEXT else None
        token = None if frame is None else frame.get("data")
        if frame is None or frame.get("type") != "authorization" or not isinstance(token, str):
            await ws.send_json({"type": "error", "data": {"message": "user:unauthorized"}})
            return False
        if not self.authorised(token):
            self.counters.rejected_tokens += 1
            await ws.send_json({"type": "error", "data": {"message": "user:unauthorized"}})
            return False
        await ws.send_json({"type": "authorized"})
        return True

    async def _ws_serve(self, socket: _PushSocket) -> None:
        async for message in socket.ws:
            if message.type is not WSMsgType.TEXT:
                continue
            frame = _frame(message.data)
            kind = None if frame is None else frame.get("type")
            topic = None if frame is None else frame.get("data")
            if kind == "subscribe" and topic in {"measurement", "*"}:
                socket.measurement = True
                socket.last_body = None  # "the device sends the latest values" at once
                await self.publish()
            elif kind == "unsubscribe" and topic in {"measurement", "*"}:
                socket.measurement = False
            elif kind == "measurement":
                response = self.model.respond_measurement(self.clock(), pushed=True)
                if response is not None and response.status == 200:
                    await socket.ws.send_str(f'{{"type":"measurement","data":{response.body}}}')
            elif kind in {"subscribe", "unsubscribe"}:
                pass  # other topics: nothing of theirs is simulated
            else:
                await socket.ws.send_json(
                    {"type": "error", "data": {"message": "request:unknown-type"}}
                )

    async def _tick(self, period_s: float) -> None:
        """Notice new samples on the loop's clock (when nobody calls ``publish`` after steps)."""
        while True:
            await asyncio.sleep(period_s)
            await self.publish()


def _frame(data: object) -> dict[str, object] | None:
    if not isinstance(data, str):
        return None
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) else None


def _error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


async def start_v2_meter_server(
    model: ServedV2Meter,
    ca: SimulatorCA,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    now: Callable[[], float] | None = None,
    button: Button | None = None,
    push_check_s: float | None = DEFAULT_PUSH_CHECK_S,
    users: dict[str, str] | None = None,
) -> V2MeterServer:
    """Serve ``model`` over HTTPS on ``host:port`` (0 = a free port) with a certificate from
    ``ca`` naming ``model.identifier``; ``now`` defaults to the loop clock.

    ``push_check_s``: how often the server looks for a new sample to push on its own (None:
    only when ``publish`` is called, e.g. after each plant step). ``users`` pre-pairs tokens.
    """
    clock = now or asyncio.get_running_loop().time
    server = V2MeterServer(
        model=model,
        host=host,
        port=port,
        button=button or Button(),
        clock=clock,
        users=dict(users or {}),
    )
    runner = web.AppRunner(server.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ca.server_context(model.identifier))
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    server._runner = runner
    server.port = int(runner.addresses[0][1])
    if push_check_s is not None:
        server._ticker = asyncio.create_task(server._tick(push_check_s))
    _LOGGER.debug("meter API v2 on https://%s:%d", host, server.port)
    return server
