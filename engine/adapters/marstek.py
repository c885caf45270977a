"""Marstek Venus E driver over Modbus TCP: ``MarstekBattery`` runs a ``VenusCommander``.

The logic (what to read and write, how replies are validated, the control life cycle of
register 42000) is ``engine.adapters.venus_commander``; this module adds the transport:
pymodbus, pacing, timeouts, reconnect backoff with a background probe, and the shutdown's
release of every battery at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Final

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from engine.adapters.marstek_registers import REG_SOC
from engine.adapters.venus_commander import VenusCommander, check_power
from engine.core.model import BatteryTelemetry
from engine.errors import (
    CommandRejected,
    ConfigError,
    DeviceError,
    DeviceResponseError,
    DeviceUnavailable,
)
from engine.ports import Clock

_LOGGER = logging.getLogger(__name__)


class MarstekBattery:
    """One Venus E over Modbus TCP (pymodbus), running a ``VenusCommander``.

    Never raises for device trouble: ``read`` reports ``online=False``, ``apply`` and
    ``release`` return False. Every request is bounded by ``timeout_s`` (real firmware
    stalls up to ~4.5 s; a stall costs one offline cycle, never a guessed value) and
    preceded by at least ``message_gap_s`` of silence. A failed connect waits
    ``backoff_initial_s``, doubling up to ``backoff_max_s``, before the next attempt;
    the wait is a check against the injected clock, so a dead battery never blocks the
    caller. After ``max_failed_requests`` failures in a row the connection is dropped and
    re-opened (a half-open TCP link otherwise only ever times out).

    While it backs off, a probe in the background (a fresh connection and one register read,
    at most every ``probe_interval_s``, never awaited by the caller) finds a battery that
    answers again; its connection is then used at once instead of after the rest of a
    backoff of up to ``backoff_max_s``: a Venus E has no watchdog, so every second out of
    control is a second at its last setpoint.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 502,
        unit_id: int = 1,
        *,
        clock: Clock,
        message_gap_s: float = 0.05,
        timeout_s: float = 1.0,
        reassert_s: float = 30.0,
        control_recheck_s: float = 60.0,
        counters_interval_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_failed_requests: int = 3,
        probe_interval_s: float = 2.0,
    ) -> None:
        if not 1 <= port <= 65535:
            raise ConfigError("port", f"must be 1..65535, got {port}")
        if not 0 <= unit_id <= 247:
            raise ConfigError("unit_id", f"must be 0..247, got {unit_id}")
        if timeout_s <= 0:
            raise ConfigError("timeout_s", f"must be > 0, got {timeout_s}")
        if message_gap_s < 0:
            raise ConfigError("message_gap_s", f"must be >= 0, got {message_gap_s}")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ConfigError("backoff_s", "need 0 < backoff_initial_s <= backoff_max_s")
        if max_failed_requests < 1:
            raise ConfigError("max_failed_requests", f"must be >= 1, got {max_failed_requests}")
        if probe_interval_s <= 0:
            raise ConfigError("probe_interval_s", f"must be > 0, got {probe_interval_s}")
        quiet_pymodbus_connect_failures()
        self.name = name
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.commander = VenusCommander(
            name,
            reassert_s=reassert_s,
            control_recheck_s=control_recheck_s,
            counters_interval_s=counters_interval_s,
        )
        self.reads = 0  # read requests issued
        self.writes = 0  # write requests issued
        self.connects = 0  # connection attempts by read/apply/release
        self.probes = 0  # probes started while backing off (each one connection attempt)
        self.errors = 0  # requests and connection attempts that failed
        self.retries = 0  # requests and connection attempts made right after a failed one
        self._last_attempt_failed = False
        self._clock = clock
        self._gap_s = message_gap_s
        self._timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_failed_requests = max_failed_requests
        self._client: AsyncModbusTcpClient | None = None
        self._next_connect_s = float("-inf")
        self._backoff_s = 0.0
        self._failed_requests = 0
        self._fresh = False  # connected, but no request answered yet
        self._last_io_s: float | None = None
        self._writes_failing = False
        self._probe_interval_s = probe_interval_s
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_started_s = float("-inf")
        # read/apply/release of one battery must not interleave on its single connection.
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> bool:
        """Open the connection now (ignoring any backoff). False if the battery is not there."""
        async with self._lock:
            try:
                await self._ensure_connected(ignore_backoff=True)
            except DeviceError as exc:
                _LOGGER.debug("Battery %s: %s", self.name, exc)
                return False
            return True

    async def read(self, now_s: float | None = None) -> BatteryTelemetry:
        """One read cycle. ``now_s`` stamps the cycle (default: the clock's now)."""
        async with self._lock:
            stamp = self._clock.now() if now_s is None else now_s
            dialogue = self.commander.read_cycle(stamp)
            block: tuple[int, int] | DeviceError = next(dialogue)
            try:
                await self._ensure_connected()
            except DeviceError as exc:
                block = exc  # not connected: the first block fails, and with it the cycle
            while True:
                reply: list[int] | DeviceError
                if isinstance(block, DeviceError):
                    reply = block
                else:
                    try:
                        reply = await self._read_block(*block)
                    except DeviceError as exc:
                        _LOGGER.debug("Battery %s: read %d failed: %s", self.name, block[0], exc)
                        reply = exc
                try:
                    block = dialogue.send(reply)
                except StopIteration as done:
                    telemetry: BatteryTelemetry = done.value
                    return telemetry

    async def apply(self, power_w: int) -> bool:
        """Command ``power_w`` (+ discharge, - charge, 0 idle); sends only what is needed.

        True when the battery acknowledged every write (or none was needed). Raises
        ``TypeError`` for a non-int power before anything is sent.
        """
        check_power(power_w)
        async with self._lock:
            try:
                # Connect before deciding: a new connection forgets what the battery holds,
                # and the writes must then include taking control again.
                await self._ensure_connected()
            except DeviceError as exc:
                self.commander.on_write_failed(self._clock.now())
                self._note_write_result(ok=False, reason=str(exc))
                return False
            writes = self.commander.writes_for(power_w, self._clock.now())
            if not writes:
                return True
            ok, reason = await self._send(writes, stop_at_failure=True)
            self._note_write_result(ok=ok, reason=reason)
            return ok

    async def release(self) -> bool:
        """Idle, then hand the battery back to its own logic (42000 = 0x55BB).

        Best effort on shutdown: connects regardless of backoff and tries every write
        even if an earlier one failed (a released battery runs its own safe logic).
        """
        await self._cancel_probe()  # a Venus E v3 takes one connection: the release's
        async with self._lock:
            writes = self.commander.release_writes()
            try:
                await self._ensure_connected(ignore_backoff=True)
            except DeviceError as exc:
                _LOGGER.warning("Battery %s not released: %s", self.name, exc)
                return False
            ok, reason = await self._send(writes, stop_at_failure=False)
            if not ok:
                _LOGGER.warning("Battery %s: release incomplete: %s", self.name, reason)
            return ok

    async def close(self) -> None:
        """Close the connection (no writes; call ``release`` first on shutdown)."""
        await self._cancel_probe()
        async with self._lock:
            self._drop_client()

    async def _cancel_probe(self) -> None:
        probe, self._probe_task = self._probe_task, None
        if probe is not None and not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    # -- internals -----------------------------------------------------------------------

    async def _send(
        self, writes: list[tuple[int, int]], *, stop_at_failure: bool
    ) -> tuple[bool, str]:
        """Write in order; returns (all acknowledged, the last failure's reason)."""
        done: list[tuple[int, int]] = []
        ok = True
        reason = ""
        for address, value in writes:
            try:
                if not stop_at_failure:  # release: re-open a connection lost mid-way
                    await self._ensure_connected(ignore_backoff=True)
                await self._write_register(address, value)
            except DeviceError as exc:
                ok = False
                reason = str(exc)
                _LOGGER.debug("Battery %s: write %d=%d failed: %s", self.name, address, value, exc)
                if stop_at_failure:
                    break
            else:
                done.append((address, value))
        # One batch for the commander: a full setpoint set restarts the re-assert timer.
        self.commander.on_batch(done, failed=not ok, now_s=self._clock.now())
        return ok, reason

    def _note_write_result(self, *, ok: bool, reason: str) -> None:
        if ok == (not self._writes_failing):
            return
        self._writes_failing = not ok
        if ok:
            _LOGGER.info("Battery %s accepts commands again", self.name)
        else:
            _LOGGER.warning("Battery %s: commands failing: %s", self.name, reason)

    async def _ensure_connected(self, *, ignore_backoff: bool = False) -> None:
        if self.connected:
            return
        self._drop_client()
        now_s = self._clock.now()
        if not ignore_backoff and now_s < self._next_connect_s:
            self._start_probe(now_s)
            msg = f"reconnect to {self.host}:{self.port} in {self._next_connect_s - now_s:.1f} s"
            raise DeviceUnavailable(msg, device=self.name)
        client = self._new_client()
        self.connects += 1
        self._note_attempt()
        try:
            async with asyncio.timeout(self._timeout_s):
                ok = bool(await client.connect())
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if not ok:
            self._note_failure()
            client.close()
            self._back_off()
            msg = f"cannot connect to {self.host}:{self.port}"
            raise DeviceUnavailable(msg, device=self.name)
        self._client = client
        self._last_attempt_failed = False
        # The backoff resets on the first answered request, not here: a device (or gateway)
        # that accepts and then drops every connection must not be hammered each cycle.
        self._fresh = True
        self._failed_requests = 0
        self._last_io_s = self._clock.now()
        self.commander.forget()
        self.commander.on_connected()

    def _new_client(self) -> AsyncModbusTcpClient:
        # pymodbus' own retries and reconnect loop are off: this class owns both, on the
        # injected clock. Its timeout is only a backstop behind asyncio.timeout.
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=f"marstek-{self.name}",
            timeout=self._timeout_s * 2 + 1.0,
            retries=0,
            reconnect_delay=0,
        )

    def _start_probe(self, now_s: float) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        if now_s - self._probe_started_s < self._probe_interval_s:
            return
        self._probe_started_s = now_s
        self.probes += 1
        self._probe_task = asyncio.ensure_future(self._probe())

    async def _probe(self) -> None:
        """Connect and read one register; if the battery answers, keep that connection."""
        client = self._new_client()
        answered = False
        try:
            async with asyncio.timeout(self._timeout_s):
                if await client.connect():
                    reply = await client.read_holding_registers(
                        REG_SOC, count=1, device_id=self.unit_id
                    )
                    answered = reply is not None and not reply.isError()
        except (TimeoutError, OSError, ModbusException):
            answered = False
        if not answered:
            client.close()
            return
        async with self._lock:
            if self.connected or self._clock.now() >= self._next_connect_s:
                client.close()  # connected meanwhile, or the backoff is over anyway
                return
            _LOGGER.debug("Battery %s answers again: backoff ended early", self.name)
            self._drop_client()
            self._client = client
            self._fresh = False  # it answered
            self._failed_requests = 0
            self._backoff_s = 0.0
            self._next_connect_s = float("-inf")
            self._last_io_s = self._clock.now()
            self.commander.forget()
            self.commander.on_connected()

    def _back_off(self) -> None:
        self._backoff_s = min(
            self._backoff_max_s,
            self._backoff_s * 2 if self._backoff_s else self._backoff_initial_s,
        )
        self._next_connect_s = self._clock.now() + self._backoff_s

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _pace(self) -> None:
        if self._last_io_s is None:
            return
        wait_s = self._last_io_s + self._gap_s - self._clock.now()
        if wait_s > 0:
            await self._clock.sleep(wait_s)

    async def _request(self, what: str, call: Any, *, is_write: bool = False) -> Any:
        """Run one request (``call`` makes the coroutine) under pacing and the timeout."""
        client = self._client
        if client is None:
            raise DeviceUnavailable("not connected", device=self.name)
        await self._pace()
        self._note_attempt()
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await call(client)
        except TimeoutError as exc:
            self._request_failed()
            msg = f"no reply to {what} within {self._timeout_s:g} s"
            raise DeviceUnavailable(msg, device=self.name) from exc
        except (ConnectionException, OSError) as exc:
            self._request_failed()
            raise DeviceUnavailable(f"{what}: connection lost ({exc})", device=self.name) from exc
        except ModbusException as exc:
            self._request_failed()
            raise DeviceResponseError(f"{what}: {exc}", device=self.name) from exc
        finally:
            self._last_io_s = self._clock.now()
        if reply is None or reply.isError():
            self._request_failed()
            code = getattr(reply, "exception_code", None)
            if is_write:
                msg = f"{what} refused: Modbus exception {code}"
                raise CommandRejected(msg, device=self.name, retryable=False)
            raise DeviceResponseError(f"{what}: Modbus exception {code}", device=self.name)
        self._failed_requests = 0
        self._fresh = False
        self._backoff_s = 0.0
        self._last_attempt_failed = False
        return reply

    def _note_attempt(self) -> None:
        if self._last_attempt_failed:
            self.retries += 1

    def _note_failure(self) -> None:
        self.errors += 1
        self._last_attempt_failed = True

    def _request_failed(self) -> None:
        self._note_failure()
        if self._fresh:  # not one answer on this connection: count it as a failed connect
            self._fresh = False
            self._failed_requests = 0
            self._drop_client()
            self._back_off()
            return
        self._failed_requests += 1
        # A closed connection must be re-opened; a run of timeouts on an open one may be a
        # half-open link that never recovers by itself.
        if not self.connected or self._failed_requests >= self._max_failed_requests:
            self._failed_requests = 0
            self._drop_client()

    async def _read_block(self, address: int, count: int) -> list[int]:
        self.reads += 1
        reply = await self._request(
            f"read {address}+{count}",
            lambda c: c.read_holding_registers(address, count=count, device_id=self.unit_id),
        )
        registers = list(getattr(reply, "registers", None) or [])
        if len(registers) != count:
            self._note_failure()
            msg = f"read {address}: {len(registers)} registers returned, {count} asked"
            raise DeviceResponseError(msg, device=self.name)
        return [int(r) for r in registers]

    async def _write_register(self, address: int, value: int) -> None:
        self.writes += 1
        reply = await self._request(
            f"write {address}={value}",
            lambda c: c.write_register(address, value, device_id=self.unit_id),
            is_write=True,
        )
        echoed = list(getattr(reply, "registers", None) or [])
        if getattr(reply, "address", address) != address or echoed[:1] != [value]:
            self._note_failure()
            msg = f"write {address}={value}: echo {getattr(reply, 'address', None)}={echoed}"
            raise DeviceResponseError(msg, device=self.name)


class _ConnectFailureFilter(logging.Filter):
    """Drops pymodbus' "Failed to connect" line, repeated at every attempt.

    ``VenusCommander`` logs one line when a battery becomes unavailable and one when it
    returns; pymodbus would add one per reconnect attempt (every probe, every backoff step).
    pymodbus replaces a line identical to its previous one by "Repeating....", which goes
    with the line it repeats.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dropped_last = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == _PYMODBUS_REPEATING:
            return not self._dropped_last
        self._dropped_last = message.startswith("Failed to connect")
        return not self._dropped_last


_PYMODBUS_LOGGER: Final = "pymodbus.logging"
_PYMODBUS_REPEATING: Final = "Repeating...."  # pymodbus.logging's stand-in for a repeated line
_CONNECT_FAILURE_FILTER: Final = _ConnectFailureFilter()


def quiet_pymodbus_connect_failures() -> None:
    """Install the filter on pymodbus' logger (idempotent; called by ``MarstekBattery``)."""
    logger = logging.getLogger(_PYMODBUS_LOGGER)
    if _CONNECT_FAILURE_FILTER not in logger.filters:
        logger.addFilter(_CONNECT_FAILURE_FILTER)


async def release_all(batteries: Iterable[MarstekBattery]) -> dict[str, bool]:
    """Idle and release every battery concurrently (shutdown); one's trouble never blocks others."""
    fleet = list(batteries)
    results = await asyncio.gather(*(battery.release() for battery in fleet))
    return {battery.name: ok for battery, ok in zip(fleet, results, strict=True)}
