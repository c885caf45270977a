"""The engine's HTTP server: Prometheus metrics, a health check and a live dashboard.

It runs on the control loop's event loop (aiohttp) and never makes the cycle wait:
:meth:`DashboardServer.publish` (the controller's status sink) only stores the status, adds a
chart point and hands one encoded message to each open dashboard's bounded queue; a dashboard
that cannot keep up is disconnected (its browser reconnects and gets a fresh snapshot), never
buffered for.

Routes:

=========================  ==============================================================
``GET /``                  the dashboard page (assets under ``/static/``, all served here)
``GET /api/stream``        server-sent events: ``snapshot`` first, then ``status`` per cycle
``GET /api/snapshot``      the same snapshot as JSON
``GET /api/long``          only the history since start (the page refreshes it every minute)
``GET /metrics``           Prometheus text exposition (``engine.adapters.web.metrics``)
``GET /healthz``           200 while cycles complete and the meter is fresh, else 503
``POST /api/mode``         ``{"mode": "hold"}``; needs ``Authorization: Bearer <token>``
``POST /api/discharge_block``  ``{"blocked": true}``; same
=========================  ==============================================================

Without a token every write answers 403 and the page is read-only. The token is compared in
constant time and is never logged, echoed or put into the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.adapters.web.history import History, point_of
from engine.adapters.web.metrics import CountersSource, EngineMetrics
from engine.core.events import SafeHoldCause, SafeHoldEntered, SafeHoldLeft, StatusEvent
from engine.core.model import Mode
from engine.core.status import FleetStatus
from engine.ports import Clock

_LOGGER = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
MAX_STREAMS: Final = 16  # open dashboards at once; more get 503
_STREAM_QUEUE: Final = 32  # messages a dashboard may fall behind before it is dropped
_WRITE_TIMEOUT_S: Final = 10.0  # a dashboard whose socket accepts nothing for this long goes
_KEEPALIVE_S: Final = 15.0  # a comment line when no cycle completes, so proxies keep it open
_MAX_BODY_BYTES: Final = 4096
_SHUTDOWN_TIMEOUT_S: Final = 1.0
_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " connect-src 'self'; frame-ancestors 'none'"
    ),
}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def status_json(status: FleetStatus) -> dict[str, Any]:
    """The live state the page shows (engine signs: grid + import, battery + discharging)."""
    return {
        "now_s": status.now_s,
        # A stale or missing reading is shown as unavailable, never as a value.
        "grid_w": _finite(status.grid_w) if status.meter_fresh else None,
        "pv_w": _finite(status.pv_w),
        "battery_power_w": _finite(status.battery_power_w),
        "soc_pct": _finite(status.soc_pct),
        "mode": status.mode.value,
        "discharge_blocked": status.discharge_blocked,
        "fleet_state": None if status.fleet_state is None else status.fleet_state.value,
        "quality": status.quality,
        "grid_rms_w": _finite(status.grid_rms_w) if status.meter_fresh else None,
        "meter_age_s": _finite(status.meter_age_s),
        "charge_total_wh": _finite(status.charge_total_wh),
        "discharge_total_wh": _finite(status.discharge_total_wh),
        "cycle_latency_s": _finite(status.cycle_latency_s),
        "batteries": [
            {
                "index": b.index,
                "name": b.name,
                "online": b.available,
                "state": None if b.state is None else b.state.value,
                "soc_pct": _finite(b.soc_pct),
                "power_w": _finite(b.power_w),
                "setpoint_w": b.setpoint_w,
            }
            for b in status.batteries
        ],
    }


def _sse(event: str, payload: object) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {data}\n\n".encode()


class _Stream:
    """One open dashboard: its queue of encoded messages, and whether it fell behind."""

    __slots__ = ("overflowed", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_STREAM_QUEUE)
        self.overflowed = False

    def offer(self, message: bytes) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True


class DashboardServer:
    """The HTTP server; also a ``StatusSink`` (``publish``) for the controller.

    ``host`` ``None`` or ``""`` listens on every interface; ``port`` 0 takes a free port
    (see :attr:`port`). ``/healthz`` fails while the core holds every battery for a stale
    meter (its verdict knows the meter's own update interval), once the reading the last cycle
    used is older than ``meter_max_age_s`` (a backstop for policies without that verdict), and
    once no cycle completed for ``cycle_stale_s``. ``describe``
    and ``severity`` turn an event into its log line and whether it warns
    (``engine.runtime.event_log``), so the page shows the words the log uses.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        battery_names: Sequence[str],
        on_mode: Callable[[Mode], None],
        on_block_discharge: Callable[[bool], None],
        describe: Callable[[StatusEvent], str],
        severity: Callable[[StatusEvent], int],
        host: str | None = None,
        port: int = 8099,
        token: str | None = None,
        counters: CountersSource | None = None,
        meter_max_age_s: float = 30.0,
        cycle_stale_s: float = 10.0,
        period_s: float = 1.0,
        has_pv: bool = False,
        version: str = "",
        window_s: float = 3600.0,
        max_events: int = 100,
    ) -> None:
        if not 0 <= port <= 65535:
            msg = f"port {port} is not a TCP port"
            raise ValueError(msg)
        self._clock = clock
        self._battery_names = tuple(battery_names)
        self._on_mode = on_mode
        self._on_block_discharge = on_block_discharge
        self._describe = describe
        self._severity = severity
        self._host = host or None
        self._port = port
        self._token = token.encode() if token else None
        self._meter_max_age_s = meter_max_age_s
        self._meter_stale_hold = False  # the core holds every battery for a stale meter
        self._cycle_stale_s = cycle_stale_s
        self._period_s = period_s
        self._has_pv = has_pv
        self.metrics = EngineMetrics(
            battery_names=self._battery_names,
            counters=counters,
            now=clock.now,
            version=version,
        )
        self.history = History(window_s=window_s)
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._status: FleetStatus | None = None
        self._status_payload: dict[str, Any] | None = None
        self._streams: set[_Stream] = set()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    # -- the status sink

    def publish(self, status: FleetStatus) -> None:
        """Store one cycle's status; never blocks and never waits for a browser."""
        self._status = status
        for event in status.events:
            match event:
                case SafeHoldEntered(cause=SafeHoldCause.METER_STALE):
                    self._meter_stale_hold = True
                case SafeHoldLeft(cause=SafeHoldCause.METER_STALE):
                    self._meter_stale_hold = False
        self.metrics.observe(status)
        point = point_of(status)
        self.history.add(point)
        new_events = [self._event_json(status.now_s, event) for event in status.events]
        self._events.extend(new_events)
        self._status_payload = status_json(status) | {"meter_stale": self._meter_stale(status)}
        if not self._streams:
            return
        message = _sse(
            "status",
            {
                "status": self._status_payload,
                "point": self._point_json(point),
                "events": new_events,
            },
        )
        for stream in self._streams:
            stream.offer(message)

    def _meter_stale(self, status: FleetStatus) -> bool:
        age_s = status.meter_age_s
        return self._meter_stale_hold or age_s is None or age_s > self._meter_max_age_s

    def _event_json(self, t_s: float, event: StatusEvent) -> dict[str, Any]:
        return {
            "t_s": t_s,
            "kind": type(event).__name__,
            "level": "warning" if self._severity(event) >= logging.WARNING else "info",
            "text": self._describe(event),
        }

    @staticmethod
    def _point_json(point: tuple[float | None, ...]) -> list[float | None]:
        return [None if v is None or not math.isfinite(v) else round(v, 1) for v in point]

    # -- life cycle

    @property
    def port(self) -> int | None:
        """The port listened on, once started."""
        return self._bound_port

    async def start(self) -> bool:
        """Listen. False (with one log line) when the address cannot be bound; never raises."""
        app = self._make_app()
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        where = f"{self._host or '*'}:{self._port}"
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            why = "the port is in use" if exc.errno == errno.EADDRINUSE else str(exc)
            _LOGGER.error(
                "HTTP server not started on %s (%s): control goes on without it", where, why
            )
            return False
        self._runner = runner
        self._bound_port = self._first_port(runner) or self._port
        _LOGGER.info(
            "HTTP server on %s:%d (dashboard /, metrics /metrics, health /healthz; controls %s)",
            self._host or "*",
            self._bound_port,
            "on" if self._token else "off",
        )
        return True

    @staticmethod
    def _first_port(runner: web.AppRunner) -> int | None:
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return None

    async def stop(self) -> None:
        """Close every dashboard stream and the listener."""
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[_headers])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/long", self._long)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/api/mode", self._set_mode)
        app.router.add_post("/api/discharge_block", self._set_block)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
        return app

    # -- read-only routes

    async def _index(self, request: web.Request) -> web.FileResponse:
        del request
        return web.FileResponse(STATIC_DIR / "index.html")

    def snapshot(self) -> dict[str, Any]:
        """Everything a freshly opened page needs: settings, state, charts, recent events."""
        return {
            "now_s": self._clock.now(),
            "batteries": list(self._battery_names),
            "has_pv": self._has_pv,
            "controls": self._token is not None,
            "modes": [mode.value for mode in Mode],
            "period_s": self._period_s,
            "status": self._status_payload,
            "events": list(self._events),
            "recent": self.history.recent_columns(),
            "long": self.history.long_columns(),
            "long_bucket_s": self.history.bucket_s,
        }

    async def _snapshot(self, request: web.Request) -> web.Response:
        del request
        return web.json_response(self.snapshot(), headers={"Cache-Control": "no-store"})

    async def _long(self, request: web.Request) -> web.Response:
        del request
        # Small (at most max_buckets points): refreshed often without re-sending the hour.
        body = {"long": self.history.long_columns(), "long_bucket_s": self.history.bucket_s}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if len(self._streams) >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many open dashboards")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        stream = _Stream()
        self._streams.add(stream)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await self._write(response, b"retry: 2000\n\n" + _sse("snapshot", self.snapshot()))
            while not self._closing.is_set() and not stream.overflowed:
                getter = asyncio.ensure_future(stream.queue.get())
                done, _ = await asyncio.wait(
                    (getter, closing), timeout=_KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if closing in done:
                        break
                    await self._write(response, b": keepalive\n\n")
                    continue
                await self._write(response, getter.result())
        except (ConnectionError, TimeoutError):
            pass  # the browser went away or stopped reading; it reconnects by itself
        finally:
            closing.cancel()
            self._streams.discard(stream)
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(_WRITE_TIMEOUT_S):
            await response.write(data)

    async def _metrics(self, request: web.Request) -> web.Response:
        del request
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, JSON body) as ``/healthz`` answers."""
        status = self._status
        if status is None:
            return False, {"status": "unhealthy", "reason": "no control cycle completed yet"}
        cycle_age_s = max(0.0, self._clock.now() - status.now_s)
        body: dict[str, Any] = {
            "cycle_age_s": round(cycle_age_s, 1),
            "meter_age_s": None if status.meter_age_s is None else round(status.meter_age_s, 1),
        }
        if cycle_age_s > self._cycle_stale_s:
            reason = f"no control cycle completed for {cycle_age_s:.0f} s"
        elif status.meter_age_s is None:
            reason = "no meter reading yet"
        elif self._meter_stale_hold:
            reason = (
                f"meter stale (reading {status.meter_age_s:.0f} s old): every battery held at 0 W"
            )
        elif status.meter_age_s > self._meter_max_age_s:
            reason = (
                f"meter reading is {status.meter_age_s:.0f} s old"
                f" (limit {self._meter_max_age_s:g} s)"
            )
        else:
            return True, {"status": "ok", **body}
        return False, {"status": "unhealthy", "reason": reason, **body}

    async def _healthz(self, request: web.Request) -> web.Response:
        del request
        healthy, body = self.health()
        return web.json_response(
            body, status=200 if healthy else 503, headers={"Cache-Control": "no-store"}
        )

    # -- controls

    def _authorise(self, request: web.Request) -> None:
        if self._token is None:
            raise web.HTTPForbidden(
                text=json.dumps({"error": "controls are off (no HTTP_TOKEN is set)"}),
                content_type="application/json",
            )
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            _LOGGER.warning("HTTP control refused from %s: wrong or missing token", request.remote)
            raise web.HTTPForbidden(
                text=json.dumps({"error": "wrong or missing token"}),
                content_type="application/json",
            )

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise _bad_request("expected a JSON object")
        return body

    async def _set_mode(self, request: web.Request) -> web.Response:
        self._authorise(request)
        value = (await self._body(request)).get("mode")
        try:
            mode = Mode(value.strip().lower()) if isinstance(value, str) else None
        except ValueError:
            mode = None
        if mode is None:
            names = ", ".join(m.value for m in Mode)
            raise _bad_request(f"mode must be one of {names}")
        _LOGGER.info("HTTP command: mode = %s", mode.value)
        self._on_mode(mode)
        return web.json_response({"mode": mode.value})

    async def _set_block(self, request: web.Request) -> web.Response:
        self._authorise(request)
        value = (await self._body(request)).get("blocked")
        if not isinstance(value, bool):
            raise _bad_request("blocked must be true or false")
        _LOGGER.info("HTTP command: block discharge = %s", "true" if value else "false")
        self._on_block_discharge(value)
        return web.json_response({"blocked": value})


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": reason}), content_type="application/json")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(_HEADERS)
    return response
