"""MQTT bridge: publishes the fleet's state (retained), takes commands, announces itself to HA.

Topics, under the root ``topic_prefix`` (default ``mmbc``; every payload is UTF-8 text):

===============================  =========  ===================================================
topic                            retained   payload
===============================  =========  ===================================================
``status/online``                yes        ``online`` / ``offline`` (last will: ``offline``)
``status/soc``                   yes        fleet SoC %, one decimal (``67.4``)
``status/battery_power``         yes        W, integer, **+ = charging**, - = discharging
``status/grid_power``            yes        W, integer, + = import, - = export
``status/pv_power``              yes        W, integer, >= 0 producing (only with a PV meter)
``status/charge_total_wh``       yes        Wh, unsigned integer (lifetime, whole fleet)
``status/discharge_total_wh``    yes        Wh, unsigned integer (lifetime, whole fleet)
``status/discharge_blocked``     yes        ``true`` / ``false``
``status/mode``                  yes        ``normal`` / ``hold`` / ``charge`` / ``selfcontrol``
``status/control_quality``       yes        ``stable`` / ``oscillating`` / ``sluggish`` / ...
``status/grid_rms_w``            yes        W, integer: RMS grid error over the last minute
``battery/<n>/soc``              yes        SoC %, one decimal (n = 1-based configured order)
``battery/<n>/power``            yes        W, integer, **+ = charging** (as battery_power)
``battery/<n>/state``            yes        the battery state machine's state
``battery/<n>/online``           yes        ``true`` / ``false``
``control/block_discharge``      (cmd)      ``true`` / ``false``, case-insensitive
``control/mode``                 (cmd)      a mode name (case-insensitive) or evcc's ``1``-``4``
===============================  =========  ===================================================

A status value is published when it changes (as formatted), at most once per
``min_interval_s`` per topic, and re-sent every ``max_interval_s``; after a (re)connect
everything is sent at once. Only the latest value per topic is kept, so nothing queues
while the broker is away. An unknown value (``None``) publishes nothing: the topic keeps
its last retained value.

Commands arrive on a persistent session (fixed client id, ``clean_session=False``, QoS 1),
so a command sent while the engine reconnects is delivered when it is back. They are
handed to the callbacks; the new state shows up on the status topics once the runtime has
applied it and calls :meth:`MqttBridge.publish`. An invalid command is logged once
(naming topic and payload), changes nothing, and its status topic is republished at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import aiomqtt

from engine.adapters.ha_discovery import discovery_messages
from engine.core.model import MODE_BY_NUMBER, Mode
from engine.core.status import FleetStatus
from engine.core.units import battery_power_for_mqtt
from engine.ports import Clock
from engine.settings import MqttSettings

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

ONLINE: Final = "online"
OFFLINE: Final = "offline"
TRUE: Final = "true"
FALSE: Final = "false"

BLOCK_DISCHARGE_COMMAND: Final = "control/block_discharge"
MODE_COMMAND: Final = "control/mode"
ONLINE_STATUS: Final = "status/online"
DISCHARGE_BLOCKED_STATUS: Final = "status/discharge_blocked"
MODE_STATUS: Final = "status/mode"

_COMMAND_QOS: Final = 1
_STATUS_QOS: Final = 1
_MAX_QUEUED_COMMANDS: Final = 100  # a flood of commands is dropped, not buffered
_LOGGED_PAYLOAD_BYTES: Final = 64
_STOP_GRACE_S: Final = 5.0


# --- payloads (pure) ---------------------------------------------------------------------


def parse_block_discharge(payload: bytes) -> bool:
    """``true``/``false`` (any case, surrounding whitespace ignored); else ``ValueError``."""
    text = _decode(payload).strip().lower()
    if text == TRUE:
        return True
    if text == FALSE:
        return False
    msg = f"expected 'true' or 'false', got {_shorten(payload)}"
    raise ValueError(msg)


def parse_mode(payload: bytes) -> Mode:
    """A mode name (any case) or evcc's number ``1``-``4``; else ``ValueError``."""
    text = _decode(payload).strip().lower()
    if text.isascii() and text.isdigit():
        mode = MODE_BY_NUMBER.get(int(text))
        if mode is not None:
            return mode
    else:
        with contextlib.suppress(ValueError):
            return Mode(text)
    names = ", ".join(mode.value for mode in Mode)
    msg = f"expected one of {names} or 1-4, got {_shorten(payload)}"
    raise ValueError(msg)


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"payload is not UTF-8: {_shorten(payload)}"
        raise ValueError(msg) from None


def _shorten(payload: bytes) -> str:
    if len(payload) <= _LOGGED_PAYLOAD_BYTES:
        return repr(payload)
    return f"{payload[:_LOGGED_PAYLOAD_BYTES]!r}... ({len(payload)} bytes)"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def format_soc(soc_pct: float) -> str:
    """SoC with one decimal: ``67.4``."""
    return f"{soc_pct:.1f}"


def format_watts(power_w: float) -> str:
    """An integer number of watts, sign kept."""
    return str(round(power_w))


def format_battery_power(power_w: float) -> str:
    """Engine battery power (+ discharging) as MQTT wants it: integer, + = charging."""
    return str(battery_power_for_mqtt(power_w))


def format_unsigned(value: float) -> str:
    """An unsigned integer (energy counters)."""
    return str(max(0, round(value)))


def format_bool(value: bool) -> str:
    return TRUE if value else FALSE


def status_payloads(status: FleetStatus, *, has_pv: bool) -> dict[str, str]:
    """Topic suffix (below the prefix) -> payload for every known value of ``status``.

    Unknown values (``None``, NaN) are left out, so their topics keep their last value.
    """
    out: dict[str, str] = {}

    def put(suffix: str, value: float | None, fmt: Callable[[float], str]) -> None:
        finite = _finite(value)
        if finite is not None:
            out[suffix] = fmt(finite)

    put("status/soc", status.soc_pct, format_soc)
    put("status/battery_power", status.battery_power_w, format_battery_power)
    put("status/grid_power", status.grid_w, format_watts)
    if has_pv:
        put("status/pv_power", status.pv_w, format_watts)
    put("status/charge_total_wh", status.charge_total_wh, format_unsigned)
    put("status/discharge_total_wh", status.discharge_total_wh, format_unsigned)
    out[DISCHARGE_BLOCKED_STATUS] = format_bool(status.discharge_blocked)
    out[MODE_STATUS] = status.mode.value
    if status.fleet_state is not None:
        out["status/fleet_state"] = status.fleet_state.value
    if status.quality is not None:
        out["status/control_quality"] = status.quality
    put("status/grid_rms_w", status.grid_rms_w, format_watts)
    for battery in status.batteries:
        base = f"battery/{battery.index}"
        put(f"{base}/soc", battery.soc_pct, format_soc)
        put(f"{base}/power", battery.power_w, format_battery_power)
        if battery.state is not None:
            out[f"{base}/state"] = battery.state.value
        out[f"{base}/online"] = format_bool(battery.online)
    return out


# --- publishing schedule (pure) ------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    payload: str
    sent_payload: str | None = None
    sent_s: float | None = None
    force: bool = False


class PublishSchedule:
    """Latest value per topic and when it may be sent; the rate limiter, free of I/O.

    A topic is due when it was never sent (or since :meth:`reset`), when it is forced, when
    its value changed and ``min_interval_s`` passed since its last send, or when
    ``max_interval_s`` passed since its last send.
    """

    def __init__(self, *, min_interval_s: float, max_interval_s: float) -> None:
        self._min_interval_s = min_interval_s
        self._max_interval_s = max_interval_s
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def update(self, values: Mapping[str, str]) -> None:
        """Store the latest payloads; earlier unsent values are simply replaced."""
        for topic, payload in values.items():
            slot = self._slots.get(topic)
            if slot is None:
                self._slots[topic] = _Slot(payload)
            else:
                slot.payload = payload

    def force(self, topic: str) -> bool:
        """Make ``topic`` due now, regardless of the interval. False if it has no value yet."""
        slot = self._slots.get(topic)
        if slot is None:
            return False
        slot.force = True
        return True

    def reset(self) -> None:
        """Forget what was sent (a new connection: the broker may have lost everything)."""
        for slot in self._slots.values():
            slot.sent_payload = None
            slot.sent_s = None

    def _due_at(self, slot: _Slot) -> float:
        if slot.sent_s is None or slot.force:
            return -math.inf
        if slot.payload != slot.sent_payload:
            return slot.sent_s + self._min_interval_s
        return slot.sent_s + self._max_interval_s

    def due(self, now_s: float) -> list[tuple[str, str]]:
        """``(topic, payload)`` to send now, in first-seen order."""
        return [
            (topic, slot.payload)
            for topic, slot in self._slots.items()
            if self._due_at(slot) <= now_s
        ]

    def mark_sent(self, topic: str, payload: str, now_s: float) -> None:
        slot = self._slots.get(topic)
        if slot is None:
            return
        slot.sent_payload = payload
        slot.sent_s = now_s
        if slot.payload == payload:
            slot.force = False

    def next_due_s(self) -> float | None:
        """Clock time of the next due topic; ``None`` when nothing is stored."""
        if not self._slots:
            return None
        return min(self._due_at(slot) for slot in self._slots.values())


# --- the bridge ----------------------------------------------------------------------------


class MqttBridge:
    """Keeps one MQTT connection alive, publishes the latest state, takes commands.

    The control loop never waits on MQTT: :meth:`publish` only stores the status. Run
    :meth:`run` as a task next to the control loop; it returns after :meth:`stop`.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        clock: Clock,
        on_block_discharge: Callable[[bool], None],
        on_mode: Callable[[Mode], None],
        has_pv: bool,
        battery_names: Sequence[str],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_block_discharge = on_block_discharge
        self._on_mode = on_mode
        self._has_pv = has_pv
        self._battery_names = tuple(battery_names)
        self._prefix = settings.topic_prefix
        self._tls_context = settings.ssl_context()  # files were checked when validated
        self._schedule = PublishSchedule(
            min_interval_s=settings.min_interval_s, max_interval_s=settings.max_interval_s
        )
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        # Ends the current session's loops. Cancellation alone is not enough: on Python
        # 3.11 asyncio.wait_for (inside aiomqtt's publish) can swallow a cancellation.
        self._closing = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._connected = False
        self._reachable: bool | None = None  # for one log line per outage
        self._backoff_s = settings.reconnect_min_s
        self._connections = 0
        self.rejected_commands = 0  # invalid command payloads, each logged and ignored

    # -- public surface

    @property
    def connected(self) -> bool:
        """Whether a broker connection is up right now."""
        return self._connected

    @property
    def connections(self) -> int:
        """How many times a connection was established (1 after the first connect)."""
        return self._connections

    def topic(self, suffix: str) -> str:
        """The full topic for a suffix such as ``status/soc``."""
        return f"{self._prefix}/{suffix}"

    def publish(self, status: FleetStatus) -> None:
        """Store ``status`` for publishing. Never blocks, never raises for the broker's sake."""
        payloads = status_payloads(status, has_pv=self._has_pv)
        self._schedule.update({self.topic(suffix): value for suffix, value in payloads.items()})
        self._wake.set()

    async def run(self) -> None:
        """Connect, serve, and reconnect with exponential backoff until :meth:`stop`."""
        if self._running:
            msg = "MqttBridge.run() is already running"
            raise RuntimeError(msg)
        self._running = True
        self._finished.clear()
        try:
            while not self._stop_requested.is_set():
                self._closing = asyncio.Event()  # fresh per session, before it can be closed
                try:
                    await self._until_stopped(self._session(), grace_s=_STOP_GRACE_S)
                except aiomqtt.MqttError as exc:
                    self._note_unreachable(exc)
                except Exception:  # a bug must not silence MQTT for good: log, back off, retry
                    _LOGGER.exception("MQTT session failed unexpectedly; reconnecting")
                if self._stop_requested.is_set():
                    break
                delay_s = self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, self._settings.reconnect_max_s)
                _LOGGER.debug("MQTT reconnect in %.1f s", delay_s)
                await self._until_stopped(self._clock.sleep(delay_s), grace_s=0.0)
        finally:
            self._connected = False
            self._running = False
            self._finished.set()

    async def stop(self) -> None:
        """Publish ``offline`` (retained), disconnect, and wait for :meth:`run` to return."""
        self._stop_requested.set()
        self._close_session()
        if self._running:
            # run() gives the session _STOP_GRACE_S to say goodbye, then cancels it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_GRACE_S + 1.0):
                    await self._finished.wait()

    # -- connection

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        return aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password_text(),
            identifier=settings.client_id,
            clean_session=False,
            keepalive=settings.keepalive_s,
            timeout=settings.timeout_s,
            will=aiomqtt.Will(self.topic(ONLINE_STATUS), OFFLINE, qos=1, retain=True),
            tls_context=self._tls_context,
            max_queued_incoming_messages=_MAX_QUEUED_COMMANDS,
        )

    def _close_session(self) -> None:
        self._closing.set()
        self._wake.set()

    async def _session(self) -> None:
        async with self._client() as client:
            self._connected = True
            self._connections += 1
            self._backoff_s = self._settings.reconnect_min_s
            self._note_reachable()
            try:
                await self._on_connect(client)
                await self._serve(client)
            finally:
                self._connected = False

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        for suffix in (BLOCK_DISCHARGE_COMMAND, MODE_COMMAND):
            await client.subscribe(self.topic(suffix), qos=_COMMAND_QOS)
        if self._settings.discovery:
            for message in discovery_messages(
                topic_prefix=self._prefix,
                discovery_prefix=self._settings.discovery_prefix,
                battery_names=self._battery_names,
                has_pv=self._has_pv,
            ):
                payload = "" if message.payload is None else json.dumps(message.payload)
                await client.publish(message.topic, payload, qos=_STATUS_QOS, retain=True)
        await client.publish(self.topic(ONLINE_STATUS), ONLINE, qos=_STATUS_QOS, retain=True)
        self._schedule.reset()  # republish everything on this connection
        self._wake.set()

    async def _serve(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.create_task(self._receive(client))
        sender = asyncio.create_task(self._send(client))
        stopper = asyncio.create_task(self._closing.wait())
        tasks = (receiver, sender, stopper)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._close_session()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in (receiver, sender):
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        if stopper in done:  # asked to close (stop or cancellation), not a broken link
            await client.publish(self.topic(ONLINE_STATUS), OFFLINE, qos=_STATUS_QOS, retain=True)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._handle_command(message.topic.value, _payload_bytes(message.payload))

    async def _send(self, client: aiomqtt.Client) -> None:
        while not self._closing.is_set():
            self._wake.clear()  # before reading the schedule, so no update is missed
            for topic, payload in self._schedule.due(self._clock.now()):
                await client.publish(topic, payload, qos=_STATUS_QOS, retain=True)
                self._schedule.mark_sent(topic, payload, self._clock.now())
            next_s = self._schedule.next_due_s()
            delay_s = None if next_s is None else max(0.0, next_s - self._clock.now())
            await self._wait_wake(delay_s)

    async def _wait_wake(self, delay_s: float | None) -> None:
        waits: list[asyncio.Task[object]] = [asyncio.create_task(self._wake.wait())]
        if delay_s is not None:
            waits.append(asyncio.create_task(self._clock.sleep(delay_s)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _until_stopped(self, work: Awaitable[None], *, grace_s: float) -> None:
        """Await ``work`` until :meth:`stop` (or our own cancellation) intervenes.

        Then the session is asked to close and gets ``grace_s`` to say goodbye (publish
        ``offline``, disconnect) before it is cancelled. Exceptions of ``work`` propagate.
        """
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                self._close_session()
                if grace_s > 0:
                    await asyncio.wait((task,), timeout=grace_s)
                task.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
        if not task.cancelled():
            task.result()

    # -- commands

    def _handle_command(self, topic: str, payload: bytes) -> None:
        if topic == self.topic(BLOCK_DISCHARGE_COMMAND):
            try:
                blocked = parse_block_discharge(payload)
            except ValueError:
                self._reject(topic, payload, DISCHARGE_BLOCKED_STATUS)
                return
            _LOGGER.info("MQTT command: block discharge = %s", format_bool(blocked))
            _call(self._on_block_discharge, blocked)
        elif topic == self.topic(MODE_COMMAND):
            try:
                mode = parse_mode(payload)
            except ValueError:
                self._reject(topic, payload, MODE_STATUS)
                return
            _LOGGER.info("MQTT command: mode = %s", mode.value)
            _call(self._on_mode, mode)
        else:
            _LOGGER.debug("ignoring MQTT message on %s", topic)

    def _reject(self, topic: str, payload: bytes, status_suffix: str) -> None:
        self.rejected_commands += 1
        _LOGGER.warning("ignoring invalid payload %s on %s", _shorten(payload), topic)
        # Republish the state so a UI that showed the rejected value snaps back.
        if self._schedule.force(self.topic(status_suffix)):
            self._wake.set()

    # -- availability logging: one line when the broker goes away, one when it returns

    def _note_reachable(self) -> None:
        settings = self._settings
        if self._reachable is False:
            _LOGGER.info("MQTT broker %s:%d reachable again", settings.host, settings.port)
        else:
            _LOGGER.info("connected to MQTT broker %s:%d", settings.host, settings.port)
        self._reachable = True

    def _note_unreachable(self, exc: aiomqtt.MqttError) -> None:
        settings = self._settings
        if self._reachable is not False:
            _LOGGER.warning(
                "MQTT broker %s:%d unavailable (%s); control goes on, retrying up to every %g s",
                settings.host,
                settings.port,
                exc,
                settings.reconnect_max_s,
            )
        else:
            _LOGGER.debug("MQTT broker still unavailable: %s", exc)
        self._reachable = False


def _call(callback: Callable[[_T], None], value: _T) -> None:
    # A failing command handler is a bug in the runtime, but it must not take the MQTT
    # connection (and with it every later command) down.
    try:
        callback(value)
    except Exception:
        _LOGGER.exception("MQTT command handler failed for %r", value)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return b"" if payload is None else str(payload).encode("utf-8")


__all__ = [
    "MqttBridge",
    "MqttSettings",
    "PublishSchedule",
    "format_battery_power",
    "format_bool",
    "format_soc",
    "format_unsigned",
    "format_watts",
    "parse_block_discharge",
    "parse_mode",
    "status_payloads",
]
