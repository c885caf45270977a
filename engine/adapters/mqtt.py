"""MQTT bridge: publishes the fleet's state (retained), takes commands, announces itself to HA.

Topics, under the root ``topic_prefix`` (default ``mmbc``; every payload is UTF-8 text):

====================================  ========  ==============================================
topic                                 retained  payload
====================================  ========  ==============================================
``status/online``                     yes       ``online`` / ``offline`` (last will: ``offline``)
``status/soc``                        yes       fleet SoC %, one decimal (``67.4``)
``status/battery_power``              yes       W, integer, **+ = charging**, - = discharging
``status/batteries_online``           yes       ``true`` while a battery reports (soc, power)
``status/grid_power``                 yes       W, integer, + = import, - = export
``status/grid_rms_w``                 yes       W, integer: RMS grid error over the last minute
``status/meter_online``               yes       ``true`` while the P1 reading is fresh
``status/pv_power``                   yes       W, integer, >= 0 producing (only with a PV meter)
``status/pv_meter_online``            yes       ``true`` while the PV meter answers (ditto)
``status/charge_total_wh``            yes       Wh, unsigned integer, never decreasing (fleet)
``status/discharge_total_wh``         yes       Wh, unsigned integer, never decreasing (fleet)
``status/discharge_blocked``          yes       ``true`` / ``false``: blocked by command or hold
``status/mode``                       yes       ``normal`` / ``hold`` / ``charge`` / ``selfcontrol``
``status/fleet_state``                yes       the fleet machine's state
``status/control_quality``            yes       ``stable`` / ``oscillating`` / ``sluggish`` / ...
``battery/<n>/online``                yes       ``true`` / ``false`` (n = the configured number)
``battery/<n>/soc``                   yes       SoC %, one decimal
``battery/<n>/power``                 yes       W, integer, **+ = charging** (as battery_power)
``battery/<n>/state``                 yes       the battery state machine's state
``battery/<n>/charge_total_kwh``      yes       kWh, two decimals: the battery's own counter
``battery/<n>/discharge_total_kwh``   yes       kWh, two decimals: the battery's own counter
``battery/<n>/stored_energy_kwh``     yes       kWh, two decimals (SoC x capacity)
``battery/<n>/voltage``               yes       V, two decimals (pack)
``battery/<n>/current``               yes       A, two decimals, **+ = charging** (as power)
``battery/<n>/temperature``           yes       degC, one decimal (internal)
``battery/<n>/alarm``, ``/fault``     yes       ``true`` / ``false``: any alarm / fault bit set
``battery/<n>/alarms``, ``/faults``   yes       JSON ``{"active": [names of the set bits]}``
``control/block_discharge``           (cmd)     ``true`` / ``false``, case-insensitive
``control/mode``                      (cmd)     a mode name (case-insensitive) or evcc's ``1``-``4``
====================================  ========  ==============================================

A status value is published when it changes (as formatted), at most once per
``min_interval_s`` per topic, and re-sent every ``max_interval_s``; after a (re)connect
everything is sent at once. Only the latest value per topic is kept, so nothing queues
while the broker is away. A value the engine no longer knows is not re-sent: its
``*online`` topic says ``false`` (Home Assistant shows it unavailable) until a fresh value
comes. A state is never published as ``unavailable`` or ``unknown`` (Home Assistant's
words for "no data").

At every connect the bridge first reads the retained topics under ``status/``, ``battery/``
and its discovery configs, and clears (empty retained payload) those it no longer publishes:
a removed battery's topics, a removed PV meter's, an entity that no longer exists.

Commands arrive on a persistent session (fixed client id, ``clean_session=False``, QoS 1),
so a command sent while the engine reconnects is delivered when it is back. Pending
commands are coalesced per topic (the latest one wins, never a queue limit; how many were
coalesced is logged); an invalid one is logged (the first, then a count) and changes
nothing, and its status topic is republished at once. Retained commands (left on the broker
with the retain flag): a retained ``control/block_discharge`` is applied at start (blocking
is the safe state the user asked for); a retained ``control/mode`` is never applied (it would
force, say, ``charge`` again after every restart) and is logged once; a retained copy that
arrives after a command on the same topic (the broker re-sends it at every subscribe) is
ignored. A broker that closes the connection right after connecting, again and again, is
usually another client with the same client id: that is logged once, and the retries back
off instead of kicking each other off every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import aiomqtt

from engine.adapters.ha_discovery import (
    BatteryDevice,
    config_filter,
    discovery_messages,
    node_id,
)
from engine.core.model import MODE_BY_NUMBER, BatteryIdentity, Mode
from engine.core.status import FleetStatus
from engine.core.units import battery_current_for_mqtt, battery_power_for_mqtt
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
COMMANDS: Final = (BLOCK_DISCHARGE_COMMAND, MODE_COMMAND)
ONLINE_STATUS: Final = "status/online"
DISCHARGE_BLOCKED_STATUS: Final = "status/discharge_blocked"
MODE_STATUS: Final = "status/mode"
METER_ONLINE_STATUS: Final = "status/meter_online"
PV_METER_ONLINE_STATUS: Final = "status/pv_meter_online"
BATTERIES_ONLINE_STATUS: Final = "status/batteries_online"

# Every topic the engine publishes (below the prefix); anything else retained under
# status/ and battery/ is cleared at connect.
FLEET_TOPICS: Final = (
    ONLINE_STATUS,
    "status/soc",
    "status/battery_power",
    BATTERIES_ONLINE_STATUS,
    "status/grid_power",
    "status/grid_rms_w",
    METER_ONLINE_STATUS,
    "status/charge_total_wh",
    "status/discharge_total_wh",
    DISCHARGE_BLOCKED_STATUS,
    MODE_STATUS,
    "status/fleet_state",
    "status/control_quality",
)
PV_TOPICS: Final = ("status/pv_power", PV_METER_ONLINE_STATUS)
BATTERY_TOPICS: Final = (
    "online",
    "soc",
    "power",
    "state",
    "charge_total_kwh",
    "discharge_total_kwh",
    "stored_energy_kwh",
    "voltage",
    "current",
    "temperature",
    "alarm",
    "alarms",
    "fault",
    "faults",
)
# Home Assistant's words for "no data": never published as a state, availability says it.
RESERVED_STATES: Final = frozenset({"unavailable", "unknown"})

_COMMAND_QOS: Final = 1
_STATUS_QOS: Final = 1
_SCAN_QOS: Final = 0  # nothing is queued for the scan's filters while the engine is away
_SCAN_WAIT_S: Final = 5.0  # the retained messages come in milliseconds; never wait long
_LOGGED_PAYLOAD_BYTES: Final = 64
_STOP_GRACE_S: Final = 5.0
_RECONNECT_CAP_S: Final = 30.0  # MqttSettings.reconnect_max_s is at most this
_LOG_WINDOW_S: Final = 60.0
_COMMAND_LOG_BURST: Final = 5  # command lines per topic and window before they are counted
_INVALID_LOG_BURST: Final = 1  # invalid payloads: the first, then a count
# Sessions the broker ends this soon after the connect, this many times in a row, are
# another client taking over the same client id.
_SHORT_SESSION_S: Final = _RECONNECT_CAP_S + 5.0
_TAKEOVER_COUNT: Final = 3


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


def format_battery_current(current_a: float) -> str:
    """Engine battery current (+ discharging) as MQTT wants it: two decimals, + = charging."""
    return _decimals(battery_current_for_mqtt(current_a), 2)


def format_unsigned(value: float) -> str:
    """An unsigned integer (energy counters)."""
    return str(max(0, round(value)))


def format_kwh(energy_wh: float) -> str:
    """Wh as kWh with two decimals (the battery counters count 0.01 kWh): ``12.34``."""
    return f"{max(0.0, energy_wh) / 1000.0:.2f}"


def _decimals(value: float, places: int) -> str:
    text = f"{value:.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # never "-0.00"


def format_bool(value: bool) -> str:
    return TRUE if value else FALSE


def _problems(names: tuple[str, ...]) -> str:
    return json.dumps({"active": list(names)})


def _state_word(value: str | None) -> str | None:
    return None if value is None or value in RESERVED_STATES else value


def published_topics(battery_numbers: Iterable[int], *, has_pv: bool) -> frozenset[str]:
    """Every topic suffix the engine publishes with this configuration."""
    topics = set(FLEET_TOPICS)
    if has_pv:
        topics.update(PV_TOPICS)
    for number in battery_numbers:
        topics.update(f"battery/{number}/{name}" for name in BATTERY_TOPICS)
    return frozenset(topics)


def status_payloads(status: FleetStatus, *, has_pv: bool) -> dict[str, str]:
    """Topic suffix (below the prefix) -> payload for every known value of ``status``.

    Unknown values (``None``, NaN) are left out; the ``*online`` topics say so.
    """
    out: dict[str, str] = {}

    def put(suffix: str, value: float | None, fmt: Callable[[float], str]) -> None:
        finite = _finite(value)
        if finite is not None:
            out[suffix] = fmt(finite)

    def put_word(suffix: str, value: str | None) -> None:
        word = _state_word(value)
        if word is not None:
            out[suffix] = word

    batteries_online = any(battery.available for battery in status.batteries)
    out[BATTERIES_ONLINE_STATUS] = format_bool(batteries_online)
    if batteries_online:
        put("status/soc", status.soc_pct, format_soc)
        put("status/battery_power", status.battery_power_w, format_battery_power)
    meter_fresh = status.meter_fresh and _finite(status.grid_w) is not None
    out[METER_ONLINE_STATUS] = format_bool(meter_fresh)
    if meter_fresh:
        put("status/grid_power", status.grid_w, format_watts)
        put("status/grid_rms_w", status.grid_rms_w, format_watts)
    if has_pv:
        out[PV_METER_ONLINE_STATUS] = format_bool(_finite(status.pv_w) is not None)
        put("status/pv_power", status.pv_w, format_watts)
    put("status/charge_total_wh", status.charge_total_wh, format_unsigned)
    put("status/discharge_total_wh", status.discharge_total_wh, format_unsigned)
    out[DISCHARGE_BLOCKED_STATUS] = format_bool(status.discharge_blocked)
    out[MODE_STATUS] = status.mode.value
    put_word("status/fleet_state", status.fleet_state)
    put_word("status/control_quality", status.quality)
    for battery in status.batteries:
        base = f"battery/{battery.index}"
        out[f"{base}/online"] = format_bool(battery.available)
        if not battery.available:
            continue
        put(f"{base}/soc", battery.soc_pct, format_soc)
        put(f"{base}/power", battery.power_w, format_battery_power)
        put_word(f"{base}/state", None if battery.state is None else battery.state.value)
        put(f"{base}/charge_total_kwh", battery.charge_total_wh, format_kwh)
        put(f"{base}/discharge_total_kwh", battery.discharge_total_wh, format_kwh)
        put(f"{base}/stored_energy_kwh", battery.stored_energy_wh, format_kwh)
        put(f"{base}/voltage", battery.voltage_v, lambda v: _decimals(v, 2))
        put(f"{base}/current", battery.current_a, format_battery_current)
        put(f"{base}/temperature", battery.temperature_c, lambda c: _decimals(c, 1))
        if battery.alarms is not None:
            out[f"{base}/alarm"] = format_bool(bool(battery.alarms))
            out[f"{base}/alarms"] = _problems(battery.alarms)
        if battery.faults is not None:
            out[f"{base}/fault"] = format_bool(bool(battery.faults))
            out[f"{base}/faults"] = _problems(battery.faults)
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

    def __contains__(self, topic: object) -> bool:
        return topic in self._slots

    def update(self, values: Mapping[str, str]) -> None:
        """Store the latest payloads; earlier unsent values are simply replaced."""
        for topic, payload in values.items():
            slot = self._slots.get(topic)
            if slot is None:
                self._slots[topic] = _Slot(payload)
            else:
                slot.payload = payload

    def replace(self, values: Mapping[str, str]) -> None:
        """Like :meth:`update`, and forget every topic not in ``values``.

        A value that became unknown is then no longer re-sent: its stale payload must not
        look live. When it is known again it is sent at once, like a new topic.
        """
        for topic in [t for t in self._slots if t not in values]:
            del self._slots[topic]
        self.update(values)

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


# --- log throttling (pure apart from the logger) -------------------------------------------


@dataclass(slots=True)
class _Window:
    start_s: float
    logged: int = 0
    suppressed: int = 0
    level: int = logging.INFO
    latest: str = ""


class LogThrottle:
    """At most ``burst`` lines per key and ``window_s``; the rest become one count line.

    The count line comes when the window has passed: at the key's next line, or at a
    :meth:`flush` (the bridge flushes whenever it wakes).
    """

    def __init__(self, logger: logging.Logger, *, burst: int, window_s: float) -> None:
        self._logger = logger
        self.burst = burst
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def log(self, now_s: float, key: str, level: int, message: str) -> None:
        window = self._windows.get(key)
        if window is None or now_s - window.start_s >= self.window_s:
            if window is not None:
                self._summarise(key, window)
            window = self._windows[key] = _Window(now_s)
        if window.logged < self.burst:
            window.logged += 1
            self._logger.log(level, "%s", message)
            return
        window.suppressed += 1
        window.level = max(window.level, level)
        window.latest = message

    def flush(self, now_s: float, *, everything: bool = False) -> None:
        for key, window in list(self._windows.items()):
            if everything or now_s - window.start_s >= self.window_s:
                self._summarise(key, window)
                del self._windows[key]

    def _summarise(self, key: str, window: _Window) -> None:
        if window.suppressed:
            self._logger.log(
                window.level,
                "%d more like this on %s within %g s; the latest: %s",
                window.suppressed,
                key,
                self.window_s,
                window.latest,
            )


# --- the incoming queue ----------------------------------------------------------------------


class CommandInbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, keeping only the latest pending message per topic.

    A flood can neither grow memory nor push out the newest command (a bounded FIFO drops
    the *incoming* message when full): a message replaces the pending one of its topic (and
    retain flag, so a retained copy never hides a live command). :meth:`coalesced` says how
    many a message replaced.
    """

    def _init(self, maxsize: int) -> None:
        del maxsize  # never full: one message per topic
        self._pending: dict[tuple[str, bool], aiomqtt.Message] = {}
        self._replaced: dict[tuple[str, bool], int] = {}
        self._replaced_by_message: dict[int, int] = {}
        self.coalesced_total = 0

    def _put(self, item: aiomqtt.Message) -> None:
        key = (item.topic.value, bool(item.retain))
        if key in self._pending:
            self._replaced[key] = self._replaced.get(key, 0) + 1
            self.coalesced_total += 1
        self._pending[key] = item

    def _get(self) -> aiomqtt.Message:
        key = next(iter(self._pending))
        item = self._pending.pop(key)
        replaced = self._replaced.pop(key, 0)
        if replaced:
            self._replaced_by_message[id(item)] = replaced
        return item

    def qsize(self) -> int:
        return len(self._pending)

    def empty(self) -> bool:
        return not self._pending

    def full(self) -> bool:
        return False

    def coalesced(self, message: aiomqtt.Message) -> int:
        """How many older pending messages ``message`` replaced (asked once per message)."""
        return self._replaced_by_message.pop(id(message), 0)


class _RetainedScan:
    """Collects the retained topics under the engine's prefixes at connect."""

    def __init__(self, filters: tuple[str, ...], sync_topic: str, token: str) -> None:
        self.filters = filters
        self.sync_topic = sync_topic
        self.token = token
        self.retained: set[str] = set()
        self.done = asyncio.Event()

    def take(self, message: aiomqtt.Message, payload: bytes) -> bool:
        """Handle ``message`` if it belongs to the scan; False if it does not."""
        if message.topic.value == self.sync_topic:
            if payload == self.token.encode():
                self.done.set()
            return True
        if not any(message.topic.matches(f) for f in self.filters):
            return False
        if message.retain and payload:
            self.retained.add(message.topic.value)
        return True


# --- the bridge ----------------------------------------------------------------------------


class MqttBridge:
    """Keeps one MQTT connection alive, publishes the latest state, takes commands.

    The control loop never waits on MQTT: :meth:`publish` only stores the status. Run
    :meth:`run` as a task next to the control loop; it returns after :meth:`stop`.
    ``battery_numbers``: the configured battery numbers (``battery/<n>``).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        clock: Clock,
        on_block_discharge: Callable[[bool], None],
        on_mode: Callable[[Mode], None],
        has_pv: bool,
        battery_numbers: Sequence[int],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_block_discharge = on_block_discharge
        self._on_mode = on_mode
        self._has_pv = has_pv
        self._batteries: dict[int, BatteryDevice] = {n: BatteryDevice(n) for n in battery_numbers}
        self._prefix = settings.topic_prefix
        self._node = node_id(self._prefix)
        self._tls_context = settings.ssl_context()  # files were checked when validated
        self._schedule = PublishSchedule(
            min_interval_s=settings.min_interval_s, max_interval_s=settings.max_interval_s
        )
        self._discovery_sent: dict[str, str] = {}  # topic -> payload sent on this connection
        self._discovery_cache: dict[str, str] | None = None  # rebuilt when an identity changes
        self._discovery_published: dict[str, str] | None = None  # the configs last sent
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
        self._session_started_s: float | None = None
        self._short_sessions = 0
        self._scan: _RetainedScan | None = None
        self._commands_seen: set[str] = set()  # command topics applied since start
        self._ignored_retained_modes: set[bytes] = set()
        self._command_log = LogThrottle(_LOGGER, burst=_COMMAND_LOG_BURST, window_s=_LOG_WINDOW_S)
        self._invalid_log = LogThrottle(_LOGGER, burst=_INVALID_LOG_BURST, window_s=_LOG_WINDOW_S)
        self.coalesced = 0  # commands replaced by a newer one before they were handled
        self.rejected = 0  # invalid commands
        self.cleared = 0  # stale retained topics cleared

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
        self._schedule.replace({self.topic(suffix): value for suffix, value in payloads.items()})
        for battery in status.batteries:
            self._learn_identity(battery.index, battery.identity)
        self._wake.set()

    def _learn_identity(self, number: int, identity: BatteryIdentity | None) -> None:
        known = self._batteries.get(number)
        if known is None or identity is None or identity == known.identity:
            return
        self._batteries[number] = BatteryDevice(number, identity)
        self._discovery_cache = None  # the sender publishes the changed configs

    def discovery(self) -> dict[str, str]:
        """Topic -> JSON payload of every discovery config now (empty: discovery off)."""
        if not self._settings.discovery:
            return {}
        if self._discovery_cache is None:
            self._discovery_cache = {
                message.topic: json.dumps(message.payload)
                for message in discovery_messages(
                    topic_prefix=self._prefix,
                    discovery_prefix=self._settings.discovery_prefix,
                    batteries=[self._batteries[n] for n in sorted(self._batteries)],
                    has_pv=self._has_pv,
                )
            }
        return self._discovery_cache

    def known_topics(self) -> frozenset[str]:
        """Every full topic the engine publishes (state and discovery)."""
        state = published_topics(self._batteries, has_pv=self._has_pv)
        return frozenset({self.topic(suffix) for suffix in state} | set(self.discovery()))

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
                self._session_started_s = None
                try:
                    await self._until_stopped(self._session(), grace_s=_STOP_GRACE_S)
                except aiomqtt.MqttError as exc:
                    self._note_session_end(exc)
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
            self._command_log.flush(self._clock.now(), everything=True)
            self._invalid_log.flush(self._clock.now(), everything=True)
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

    def _client(self, inbox: CommandInbox) -> aiomqtt.Client:
        settings = self._settings

        def queue_factory(maxsize: int = 0) -> CommandInbox:
            del maxsize
            return inbox

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
            # The inbox coalesces per topic, so it needs no size limit (see CommandInbox).
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", queue_factory),
        )

    def _close_session(self) -> None:
        self._closing.set()
        self._wake.set()

    async def _session(self) -> None:
        inbox = CommandInbox()
        async with self._client(inbox) as client:
            self._connected = True
            self._connections += 1
            self._session_started_s = self._clock.now()
            self._note_reachable()
            try:
                await self._serve(client, inbox)
            finally:
                self._connected = False
                self.coalesced += inbox.coalesced_total

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        for suffix in COMMANDS:
            await client.subscribe(self.topic(suffix), qos=_COMMAND_QOS)
        await self._clear_stale_retained(client)
        self._discovery_sent = {}
        self._discovery_published = None
        await self._publish_discovery(client)
        await client.publish(self.topic(ONLINE_STATUS), ONLINE, qos=_STATUS_QOS, retain=True)
        self._schedule.reset()  # republish everything on this connection
        self._wake.set()

    async def _clear_stale_retained(self, client: aiomqtt.Client) -> None:
        """Clear the retained topics under our prefixes that the engine no longer publishes.

        Subscribes to them, waits until a marker published after the subscribe comes back
        (the broker sends the retained messages first), unsubscribes, then clears.
        """
        filters = (
            self.topic("status/#"),
            self.topic("battery/#"),
            config_filter(self._settings.discovery_prefix, self._node),
        )
        sync_topic = self.topic(f"sync/{node_id(self._settings.client_id)}")
        scan = _RetainedScan(filters, sync_topic, token=f"scan-{self._connections}")
        self._scan = scan
        try:
            await client.subscribe(sync_topic, qos=_COMMAND_QOS)
            for topic_filter in filters:
                await client.subscribe(topic_filter, qos=_SCAN_QOS)
            await client.publish(sync_topic, scan.token, qos=_COMMAND_QOS)
            try:
                async with asyncio.timeout(min(self._settings.timeout_s, _SCAN_WAIT_S)):
                    await scan.done.wait()
            except TimeoutError:
                _LOGGER.debug("MQTT: retained scan not confirmed; clearing what was seen")
            await client.unsubscribe([*filters, sync_topic])
        finally:
            self._scan = None
        known = self.known_topics()
        # Discovery configs first: Home Assistant drops the entity before its state goes.
        discovery_root = f"{self._settings.discovery_prefix}/"
        stale = sorted(
            (topic for topic in scan.retained if topic not in known),
            key=lambda topic: (not topic.startswith(discovery_root), topic),
        )
        for topic in stale:
            await client.publish(topic, b"", qos=_STATUS_QOS, retain=True)
        if stale:
            self.cleared += len(stale)
            shown = ", ".join(stale[:6]) + (", ..." if len(stale) > 6 else "")
            _LOGGER.info(
                "MQTT: cleared %d retained topics MMBC no longer publishes: %s", len(stale), shown
            )

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        """Publish the discovery configs that changed since they were last sent."""
        configs = self.discovery()
        if self._discovery_published is configs:
            return  # nothing changed since the last look (the common case: every wake)
        for topic, payload in configs.items():
            if self._discovery_sent.get(topic) != payload:
                await client.publish(topic, payload, qos=_STATUS_QOS, retain=True)
                self._discovery_sent[topic] = payload
        self._discovery_published = configs

    async def _serve(self, client: aiomqtt.Client, inbox: CommandInbox) -> None:
        # The receiver runs from the start: the retained scan and commands that arrive while
        # the connect sequence publishes must not wait.
        receiver = asyncio.create_task(self._receive(client, inbox))
        sender = asyncio.create_task(self._connect_then_send(client))
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

    async def _receive(self, client: aiomqtt.Client, inbox: CommandInbox) -> None:
        commands = {self.topic(suffix): suffix for suffix in COMMANDS}
        async for message in client.messages:
            payload = _payload_bytes(message.payload)
            replaced = inbox.coalesced(message)  # taken for every message: nothing piles up
            suffix = commands.get(message.topic.value)
            if suffix is not None:
                self._handle_command(
                    suffix, payload, retained=bool(message.retain), replaced=replaced
                )
            elif self._scan is None or not self._scan.take(message, payload):
                _LOGGER.debug("ignoring MQTT message on %s", message.topic.value)
            self._flush_logs()

    async def _connect_then_send(self, client: aiomqtt.Client) -> None:
        await self._on_connect(client)
        await self._send(client)

    async def _send(self, client: aiomqtt.Client) -> None:
        while not self._closing.is_set():
            self._wake.clear()  # before reading the schedule, so no update is missed
            await self._publish_discovery(client)  # a battery's identity became known
            for topic, payload in self._schedule.due(self._clock.now()):
                await client.publish(topic, payload, qos=_STATUS_QOS, retain=True)
                self._schedule.mark_sent(topic, payload, self._clock.now())
            self._flush_logs()
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

    def _handle_command(
        self, suffix: str, payload: bytes, *, retained: bool, replaced: int
    ) -> None:
        topic = self.topic(suffix)
        if retained:
            if suffix in self._commands_seen:
                # The broker re-sends its retained copy at every subscribe; a command that
                # came since is newer.
                _LOGGER.debug("ignoring the retained copy of %s: a newer command applies", topic)
                return
            if suffix == MODE_COMMAND:
                self._ignore_retained_mode(topic, payload)
                return
        if suffix == BLOCK_DISCHARGE_COMMAND:
            try:
                blocked = parse_block_discharge(payload)
            except ValueError as exc:
                self._reject(topic, exc, DISCHARGE_BLOCKED_STATUS)
                return
            what = f"block discharge = {format_bool(blocked)}"
            _call(self._on_block_discharge, blocked)
        else:
            try:
                mode = parse_mode(payload)
            except ValueError as exc:
                self._reject(topic, exc, MODE_STATUS)
                return
            what = f"mode = {mode.value}"
            _call(self._on_mode, mode)
        self._commands_seen.add(suffix)
        notes = []
        if retained:
            notes.append(f"retained on the broker: the last {suffix} before the start")
        if replaced:
            notes.append(f"the latest of {replaced + 1}; {replaced} older ones coalesced")
        line = f"MQTT command: {what}" + (f" ({'; '.join(notes)})" if notes else "")
        self._command_log.log(self._clock.now(), topic, logging.INFO, line)

    def _ignore_retained_mode(self, topic: str, payload: bytes) -> None:
        if payload in self._ignored_retained_modes:
            _LOGGER.debug("ignoring the retained %s again", topic)
            return
        self._ignored_retained_modes.add(payload)
        _LOGGER.warning(
            "ignoring the retained %s = %s: a retained mode would be applied again at every"
            " start; publish %s without the retain flag (clear it with an empty retained"
            " message)",
            topic,
            _shorten(payload),
            topic,
        )

    def _reject(self, topic: str, error: ValueError, status_suffix: str) -> None:
        self.rejected += 1
        self._invalid_log.log(
            self._clock.now(),
            topic,
            logging.WARNING,
            f"ignoring an invalid MQTT command on {topic}: {error}",
        )
        # Republish the state so a UI that showed the rejected value snaps back.
        if self._schedule.force(self.topic(status_suffix)):
            self._wake.set()

    def _flush_logs(self) -> None:
        now_s = self._clock.now()
        self._command_log.flush(now_s)
        self._invalid_log.flush(now_s)

    # -- availability logging: one line when the broker goes away, one when it returns

    def _note_reachable(self) -> None:
        settings = self._settings
        if self._reachable is None:
            _LOGGER.info("connected to MQTT broker %s:%d", settings.host, settings.port)
        elif self._reachable is False:
            _LOGGER.info("MQTT broker %s:%d reachable again", settings.host, settings.port)
        else:
            _LOGGER.debug("reconnected to MQTT broker %s:%d", settings.host, settings.port)
        self._reachable = True

    def _note_session_end(self, exc: aiomqtt.MqttError) -> None:
        started_s = self._session_started_s
        if started_s is None:  # the connect itself failed
            self._note_unreachable(exc)
            return
        if self._clock.now() - started_s >= _SHORT_SESSION_S:
            self._short_sessions = 0
            self._backoff_s = self._settings.reconnect_min_s
            self._note_unreachable(exc)
            return
        # Closed right after connecting: keep backing off, so two engines sharing a client
        # id take turns at most every reconnect_max_s instead of every second.
        self._short_sessions += 1
        _LOGGER.debug("MQTT connection closed right after connecting: %s", exc)
        if self._short_sessions == _TAKEOVER_COUNT:
            settings = self._settings
            _LOGGER.warning(
                "MQTT broker %s:%d closed the connection right after connecting %d times in a"
                " row: is another client using the client id %r? Give each engine its own"
                " MQTT_CLIENT_ID (retrying up to every %g s)",
                settings.host,
                settings.port,
                _TAKEOVER_COUNT,
                settings.client_id,
                settings.reconnect_max_s,
            )

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
    "CommandInbox",
    "LogThrottle",
    "MqttBridge",
    "MqttSettings",
    "PublishSchedule",
    "format_battery_current",
    "format_battery_power",
    "format_bool",
    "format_kwh",
    "format_soc",
    "format_unsigned",
    "format_watts",
    "parse_block_discharge",
    "parse_mode",
    "published_topics",
    "status_payloads",
]
