"""API v2 push: the ``wss://<host>/api/ws`` measurement stream as an async iterator of readings.

Protocol (docs/v2/websocket.mdx): the device opens with ``authorization_requested``; we answer
``{"type":"authorization","data":<token>}`` (within 40 s) and get ``authorized``; then
``{"type":"subscribe","data":"measurement"}`` makes it send the latest measurement and every
change after it as ``{"type":"measurement","data":{...as /api/measurement...}}``.

Each reading carries ``received_s``, the event loop's clock when its frame arrived, so the
controller can judge its age the same way as a polled one. A lost socket (closed, silent for
``idle_timeout_s``, unreachable) is reconnected with exponential backoff, on the loop's clock;
the caller polls meanwhile (``connected`` says when). A malformed frame is dropped and counted,
never yielded. One log line when the stream goes, one when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import aiohttp

from engine.adapters.homewizard_v2.client import (
    API_VERSION_HEADER,
    MAX_BODY_BYTES,
    REQUESTED_API_VERSION,
    WEBSOCKET_PATH,
    HomeWizardV2Client,
    MeterIdentityError,
    MeterUnauthorizedError,
)
from engine.adapters.homewizard_v2.measurement import parse_measurement
from engine.adapters.meter_json import decode_body
from engine.core.meter import P1Reading
from engine.errors import DeviceError, DeviceResponseError, DeviceUnavailable

_LOGGER = logging.getLogger(__name__)

MEASUREMENT_TOPIC = "measurement"


@dataclass(frozen=True, slots=True)
class PushedReading:
    """A reading the meter pushed, and when it arrived (event loop clock, s)."""

    reading: P1Reading
    received_s: float


class MeasurementStream:
    """Readings pushed by one v2 meter; iterate it in a task of its own (it never ends).

    Uses ``client``'s address, certificate name, token and session, so a token set on the
    client after pairing again is used at the next reconnect.
    """

    def __init__(
        self,
        client: HomeWizardV2Client,
        *,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not (0 < initial_backoff_s <= max_backoff_s) or connect_timeout_s <= 0:
            msg = "backoff and timeouts must be positive, initial <= max"
            raise ValueError(msg)
        self.client = client
        self.connect_timeout_s = connect_timeout_s
        # DSMR 5 meters push every second, DSMR 4 every 10 s; silence well beyond that is a
        # dead connection (a half-open TCP socket never says so itself).
        self.idle_timeout_s = idle_timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.connections = 0  # successful authorisations, for the caller's statistics
        self.rejected_frames = 0
        self.last_received_s: float | None = None
        self._lost_logged = False
        self._rejection_logged = False
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._moved = asyncio.Event()  # set by ``use``: connect again at once
        self._closing: asyncio.Future[bool] | None = None  # closing the old socket

    def use(self, client: HomeWizardV2Client) -> None:
        """Read from ``client`` from now on (the meter moved to another address): the socket
        to the old one is closed and the new one is tried at once, without backoff."""
        self.client = client
        self._moved.set()
        socket = self._socket
        if socket is not None and not socket.closed:
            # Its pending receive then returns CLOSED, and the loop reconnects.
            self._closing = asyncio.ensure_future(socket.close())

    def __aiter__(self) -> AsyncIterator[PushedReading]:
        return self.readings()

    async def readings(self) -> AsyncGenerator[PushedReading]:
        """Connect, yield readings, reconnect after a loss; forever (cancel or aclose to stop)."""
        backoff_s = self.initial_backoff_s
        while True:
            try:
                async with contextlib.aclosing(self._one_connection()) as frames:
                    async for pushed in frames:
                        backoff_s = self.initial_backoff_s
                        yield pushed
                reason = "the meter ended the stream"
            except MeterUnauthorizedError as err:
                reason = str(err)
                backoff_s = self.max_backoff_s  # only pairing again helps; don't hammer
            except DeviceError as err:
                reason = str(err)
            self.connected = False
            if self._moved.is_set():
                self._moved.clear()  # a new address: try it now
                backoff_s = self.initial_backoff_s
                continue
            if not self._lost_logged:
                self._lost_logged = True
                _LOGGER.warning(
                    "%s: push stream lost (%s); polling meanwhile, reconnecting with backoff",
                    self.client.name,
                    reason,
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff_s):
                    await self._moved.wait()
            if self._moved.is_set():
                self._moved.clear()
                backoff_s = self.initial_backoff_s
            else:
                backoff_s = min(backoff_s * 2, self.max_backoff_s)

    @property
    def url(self) -> str:
        return self.client.base_url.replace("https://", "wss://", 1) + WEBSOCKET_PATH

    async def _one_connection(self) -> AsyncGenerator[PushedReading]:
        client = self.client
        if not client.token:
            raise client.rejected_token("no token")
        loop = asyncio.get_running_loop()
        self._moved.clear()  # whatever moved before, this connection uses the current client
        ws = await self._connect()
        self._socket = ws
        try:
            await self._send(ws, {"type": "subscribe", "data": MEASUREMENT_TOPIC})
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        message = await ws.receive()
                except TimeoutError:
                    msg = f"{client.name}: nothing pushed for {self.idle_timeout_s:g} s"
                    raise DeviceUnavailable(msg, device=client.name) from None
                except (aiohttp.ClientError, OSError) as exc:
                    msg = f"{client.name}: push socket failed: {exc!r}"
                    raise DeviceUnavailable(msg, device=client.name) from exc
                received_s = loop.time()
                if message.type in {
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                }:
                    msg = f"{client.name}: the meter closed the push socket"
                    raise DeviceUnavailable(msg, device=client.name)
                if message.type is aiohttp.WSMsgType.ERROR:
                    msg = f"{client.name}: push socket error: {ws.exception()!r}"
                    raise DeviceUnavailable(msg, device=client.name)
                reading = self._reading_of(message)
                if reading is not None:
                    self.last_received_s = received_s
                    yield PushedReading(reading, received_s)
        finally:
            self.connected = False
            self._socket = None
            with contextlib.suppress(Exception):  # closing is best effort
                await ws.close()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, object]) -> None:
        try:
            await ws.send_json(frame)
        except (aiohttp.ClientError, OSError) as exc:  # the socket closed under us
            msg = f"{self.client.name}: cannot write to the push socket: {exc!r}"
            raise DeviceUnavailable(msg, device=self.client.name) from exc

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        """Open the socket and authorise, within ``connect_timeout_s``."""
        client = self.client
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ws = await client.session.ws_connect(
                    self.url,
                    ssl=client.ssl_context,
                    server_hostname=client.identifier,
                    headers={API_VERSION_HEADER: REQUESTED_API_VERSION},
                    max_msg_size=MAX_BODY_BYTES,
                    autoclose=True,
                    autoping=True,
                )
                try:
                    await self._authorise(ws)
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError as exc:
            msg = f"{client.name}: no authorised push socket within {self.connect_timeout_s:g} s"
            raise DeviceUnavailable(msg, device=client.name) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            msg = f"{client.name}: {self.url} is not {client.identifier} ({exc.certificate_error})"
            raise MeterIdentityError(msg, device=client.name) from exc
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise client.rejected_token("push socket refused with 401") from exc
            msg = f"{client.name}: push socket refused: HTTP {exc.status}"
            raise DeviceUnavailable(msg, device=client.name) from exc
        except (aiohttp.ClientError, OSError) as exc:
            msg = f"{client.name}: cannot open {self.url}: {exc!r}"
            raise DeviceUnavailable(msg, device=client.name) from exc
        client.token_accepted()
        self.connected = True
        self.connections += 1
        if self._lost_logged:
            self._lost_logged = False
            _LOGGER.info("%s: push stream back", client.name)
        elif self.connections == 1:
            _LOGGER.info("%s: receiving pushed readings from %s", client.name, self.url)
        return ws

    async def _authorise(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        client = self.client
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                msg = f"{client.name}: push socket closed before authorisation"
                raise DeviceUnavailable(msg, device=client.name)
            frame = _frame_of(message.data)
            kind = None if frame is None else frame.get("type")
            if kind == "authorization_requested":
                await ws.send_json({"type": "authorization", "data": client.token})
            elif kind == "authorized":
                return
            elif kind == "error":
                assert frame is not None
                raise client.rejected_token(f"push socket: {_error_message(frame)}")
            # anything else before authorisation carries nothing for us

    def _reading_of(self, message: aiohttp.WSMessage) -> P1Reading | None:
        """A measurement frame's reading; None for other frames; malformed ones are counted."""
        if message.type is not aiohttp.WSMsgType.TEXT:
            self._reject("a non-text frame")
            return None
        frame = _frame_of(message.data)
        if frame is None:
            self._reject("a frame that is not a JSON object")
            return None
        kind = frame.get("type")
        if kind == MEASUREMENT_TOPIC:
            try:
                reading = parse_measurement(frame.get("data"), device=self.client.name)
            except DeviceResponseError as err:
                self._reject(str(err))
                return None
            self._rejection_logged = False
            return reading
        if kind == "error":
            message_text = _error_message(frame)
            if "unauthorized" in message_text:
                raise self.client.rejected_token(f"push socket: {message_text}")
            _LOGGER.debug("%s: push socket error frame: %s", self.client.name, message_text)
        return None

    def _reject(self, what: str) -> None:
        self.rejected_frames += 1
        if not self._rejection_logged:
            self._rejection_logged = True
            _LOGGER.warning("%s: dropped a pushed frame: %s", self.client.name, what[:120])


def _frame_of(data: object) -> dict[str, object] | None:
    if not isinstance(data, str):
        return None
    try:
        frame = decode_body(data)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) else None


def _error_message(frame: dict[str, object]) -> str:
    data = frame.get("data")
    if isinstance(data, dict):
        return str(data.get("message", data))[:120]
    return str(data)[:120]
