"""Marstek Venus E driver logic: what to read and write, without any I/O.

``VenusCommander`` decides what to read and write; it never touches a socket or a clock,
so the simulator's in-process replay runs the very same logic against its firmware model,
without loading pymodbus or asyncio. ``engine.adapters.marstek.MarstekBattery`` runs a
commander over Modbus TCP.

One read cycle, as the runtime drives it::

    blocks = commander.reads_due(now_s)        # starts a cycle
    for address, count in blocks:              # stop at the first failure
        commander.on_read(address, values, now_s)   # or commander.on_read_failed(now_s, why)
    telemetry = commander.telemetry(now_s)     # validated values, availability logging

One command::

    writes = commander.writes_for(power_w, now_s)   # [] when nothing needs sending
    ... write them in order; stop at the first failure ...
    commander.on_batch(writes_done, failed=..., now_s=now_s)   # the acknowledged prefix

Control (register 42000) life cycle, ``ControlState``:

- UNKNOWN at start and after any failed read cycle (the battery may have rebooted while we
  could not see it, and a reboot clears both 42000 and the setpoints): read it back in the
  next cycle; ``writes_for`` writes 0x55AA first.
- WRITTEN after 0x55AA was acknowledged: read back in the next cycle to confirm.
- CONFIRMED when read back as 0x55AA: re-read every ``control_recheck_s``.
- LOST when read back as anything else (the firmware drops RS485 mode by itself, and
  keeps acknowledging setpoint writes it then ignores): ``control_lost_count`` grows,
  everything the battery holds is forgotten and the next ``writes_for`` re-applies 0x55AA
  plus the full setpoint.
- RELEASED after ``release_writes`` went out (0x55BB): the next ``writes_for`` takes
  control again.

Setpoints: the commander remembers what each of 42010/42020/42021 holds (as acknowledged).
A changed setpoint sends only the registers whose value differs (in ``setpoint_writes``
order, so the force mode still goes last); every ``reassert_s`` the full set is sent again
whether or not it changed. A failed write forgets what the battery holds, so the next
command is sent in full.

Reporting-only reads (``extra_reads_due``): the identification (device name, versions,
serial number) once per connection, and the diagnostics (pack voltage and current,
temperature, alarm and fault bits) every ``counters_interval_s``. They come after the
cycle's vital reads, at most ``EXTRA_READS_PER_CYCLE`` a cycle, and a failed one never makes
the battery unavailable: a block the battery refuses (exception reply), or that fails
``EXTRA_READ_ATTEMPTS`` times, is not asked for again.

Fail-safe: replies are validated before they become telemetry. SoC 0xFFFF or > 100,
an implausible AC power, or an all-ones counter becomes ``None``; a battery without a valid
SoC and AC power this cycle is reported ``online=False``, so the core never bases a
setpoint on a bad reply. One log line when a battery becomes unavailable, one when it
returns.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import Final, TypeAlias

from engine.adapters.marstek_registers import (
    ALARM_BITS,
    ALARM_REGS,
    DEVICE_NAME_REGS,
    FAULT_BITS,
    FAULT_REGS,
    FORCE_CHARGE,
    FORCE_DISCHARGE,
    FORCE_STOP,
    MAX_REGISTERS_PER_READ,
    REG_AC_POWER,
    REG_ALARMS,
    REG_BATTERY_VOLTAGE,
    REG_CHARGE_SETPOINT,
    REG_DEVICE_NAME,
    REG_DISCHARGE_SETPOINT,
    REG_FAULTS,
    REG_FORCE_MODE,
    REG_INTERNAL_TEMPERATURE,
    REG_RS485_CONTROL,
    REG_SERIAL_NUMBER,
    REG_SOC,
    REG_SOFTWARE_VERSION,
    REG_TOTAL_CHARGE,
    RS485_DISABLE,
    RS485_ENABLE,
    SERIAL_NUMBER_REGS,
    VERSION_REGS,
    bit_names,
    bits_of,
    decode_text,
    setpoint_writes,
    to_i16,
    to_i32,
    to_u32,
)
from engine.core.model import BatteryIdentity, BatteryTelemetry
from engine.core.timers import elapsed, reached
from engine.errors import (
    ConfigError,
    DeviceError,
    DeviceResponseError,
)

_LOGGER = logging.getLogger(__name__)
_NO_IDENTITY: Final = BatteryIdentity()  # nothing identified yet

# A Venus E delivers at most 2500 W; anything far beyond is a garbled reply, not a reading.
MAX_PLAUSIBLE_AC_W: Final = 5000
MAX_SOC_PCT: Final = 100
_U32_GARBAGE: Final = 0xFFFF_FFFF
_U16_GARBAGE: Final = 0xFFFF
_WH_PER_COUNTER_UNIT: Final = 10.0  # counters count 0.01 kWh

# The blocks the commander reads. Each multi-register value is read in one request that
# starts at its first word: reading the second word alone upsets the firmware.
BLOCK_SOC: Final = (REG_SOC, 2)  # 32104 SoC %, 32105 capacity Wh
BLOCK_AC_POWER: Final = (REG_AC_POWER, 2)  # int32, + discharging
BLOCK_COUNTERS: Final = (REG_TOTAL_CHARGE, 4)  # 33000 charged, 33002 discharged (uint32)
BLOCK_CONTROL: Final = (REG_RS485_CONTROL, 1)
# Reporting only (see the module docstring).
BLOCK_DEVICE_NAME: Final = (REG_DEVICE_NAME, DEVICE_NAME_REGS)
BLOCK_VERSIONS: Final = (REG_SOFTWARE_VERSION, VERSION_REGS)  # software, EMS, BMS
BLOCK_SERIAL: Final = (REG_SERIAL_NUMBER, SERIAL_NUMBER_REGS)
BLOCK_DC: Final = (REG_BATTERY_VOLTAGE, 2)  # 32100 voltage (0.01 V), 32101 current (0.01 A)
BLOCK_TEMPERATURE: Final = (REG_INTERNAL_TEMPERATURE, 1)  # 0.1 degC
BLOCK_ALARMS: Final = (REG_ALARMS, ALARM_REGS)
BLOCK_FAULTS: Final = (REG_FAULTS, FAULT_REGS)
IDENTITY_BLOCKS: Final = (BLOCK_DEVICE_NAME, BLOCK_VERSIONS, BLOCK_SERIAL)
DIAGNOSTIC_BLOCKS: Final = (BLOCK_DC, BLOCK_TEMPERATURE, BLOCK_ALARMS, BLOCK_FAULTS)
EXTRA_READS_PER_CYCLE: Final = 2
EXTRA_READ_ATTEMPTS: Final = 3
_BLOCK_COUNTS: Final = dict(
    (BLOCK_SOC, BLOCK_AC_POWER, BLOCK_COUNTERS, BLOCK_CONTROL, *IDENTITY_BLOCKS, *DIAGNOSTIC_BLOCKS)
)
assert all(count <= MAX_REGISTERS_PER_READ for count in _BLOCK_COUNTS.values())
_BLOCK_WHAT: Final = {
    REG_DEVICE_NAME: "device name",
    REG_SOFTWARE_VERSION: "firmware versions",
    REG_SERIAL_NUMBER: "serial number",
    REG_BATTERY_VOLTAGE: "pack voltage and current",
    REG_INTERNAL_TEMPERATURE: "temperature",
    REG_ALARMS: "alarm bits",
    REG_FAULTS: "fault bits",
}
# Plausible ranges: a Venus E pack is 16 LFP cells (40-58.4 V) and delivers at most ~2.5 kW.
_PACK_VOLTAGE_RANGE_V: Final = (10.0, 80.0)
_MAX_PACK_CURRENT_A: Final = 150.0
_TEMPERATURE_RANGE_C: Final = (-40.0, 120.0)

_SETPOINT_REGS: Final = frozenset({REG_FORCE_MODE, REG_CHARGE_SETPOINT, REG_DISCHARGE_SETPOINT})

# A read cycle as a dialogue: blocks out, registers (or the request's error) back, telemetry.
ReadCycle: TypeAlias = Generator[tuple[int, int], "list[int] | DeviceError", BatteryTelemetry]


class ControlState(StrEnum):
    """What the commander knows about register 42000 (see the module docstring)."""

    UNKNOWN = "unknown"
    WRITTEN = "written"
    CONFIRMED = "confirmed"
    LOST = "lost"
    RELEASED = "released"


class _Extra:
    """The schedule of one reporting-only block."""

    __slots__ = ("failures", "next_s", "refused")

    def __init__(self) -> None:
        self.next_s = float("-inf")
        self.failures = 0
        self.refused = False  # refused or failed too often: never asked again


class _Diagnostics:
    """The last valid diagnostics (reporting only)."""

    __slots__ = ("alarms", "current_a", "faults", "temperature_c", "voltage_v")

    def __init__(self) -> None:
        self.voltage_v: float | None = None
        self.current_a: float | None = None
        self.temperature_c: float | None = None
        self.alarms: tuple[str, ...] | None = None
        self.faults: tuple[str, ...] | None = None


class _Cycle:
    """Values read in the current cycle (validated), and why it went wrong, if it did."""

    __slots__ = ("capacity_wh", "failed", "power_w", "problem", "rs485_control", "soc_pct")

    def __init__(self) -> None:
        self.failed = False
        self.problem: str | None = None
        self.soc_pct: float | None = None
        self.capacity_wh: float | None = None
        self.power_w: float | None = None
        self.rs485_control: bool | None = None


def check_power(power_w: int) -> int:
    """``power_w`` if it is a setpoint in watts (an int, + discharge); else ``TypeError``."""
    # bool is an int subclass; True as "1 W" would be a silent bug, so refuse it.
    if isinstance(power_w, bool) or not isinstance(power_w, int):
        msg = f"power_w must be an int (W, + discharge), got {power_w!r}"
        raise TypeError(msg)
    return power_w


class VenusCommander:
    """The driver's logic for one Venus E, synchronous and free of I/O and clocks.

    ``reassert_s``: the full setpoint is re-sent at least this often even if unchanged.
    ``control_recheck_s``: 42000 is read back at least this often once confirmed.
    ``counters_interval_s``: lifetime counters are read this often (0 = every cycle); they
    only feed reporting, so they need not cost a request every cycle.
    """

    def __init__(
        self,
        name: str,
        *,
        reassert_s: float = 30.0,
        control_recheck_s: float = 60.0,
        counters_interval_s: float = 10.0,
    ) -> None:
        if reassert_s <= 0:
            raise ConfigError("reassert_s", f"must be > 0, got {reassert_s}")
        if control_recheck_s <= 0:
            raise ConfigError("control_recheck_s", f"must be > 0, got {control_recheck_s}")
        if counters_interval_s < 0:
            raise ConfigError("counters_interval_s", f"must be >= 0, got {counters_interval_s}")
        self.name = name
        self.reassert_s = reassert_s
        self.control_recheck_s = control_recheck_s
        self.counters_interval_s = counters_interval_s
        self.control_lost_count = 0
        self._control = ControlState.UNKNOWN
        self._control_checked_s: float | None = None
        self._held: dict[int, int] = {}  # setpoint register -> value the battery acknowledged
        self._full_write_s: float | None = None
        self._counters_read_s: float | None = None
        self._charge_total_wh: float | None = None
        self._discharge_total_wh: float | None = None
        self._cycle = _Cycle()
        self._online: bool | None = None
        self._offline_since_s: float | None = None
        self._extras = {block: _Extra() for block in (*IDENTITY_BLOCKS, *DIAGNOSTIC_BLOCKS)}
        self._extras_next_s = float("-inf")  # the earliest next_s of the blocks still asked for
        self._identity = _NO_IDENTITY
        self._identity_known = False  # anything identified (compared once per change)
        self._diagnostics = _Diagnostics()

    # -- state, for the runtime and for tests --------------------------------------------

    @property
    def control_state(self) -> ControlState:
        return self._control

    @property
    def online(self) -> bool | None:
        """Availability as of the last ``telemetry`` call; None before the first."""
        return self._online

    @property
    def held_power_w(self) -> int | None:
        """The setpoint the battery is believed to hold (+ discharge), None if unknown."""
        mode = self._held.get(REG_FORCE_MODE)
        charge_w = self._held.get(REG_CHARGE_SETPOINT)
        discharge_w = self._held.get(REG_DISCHARGE_SETPOINT)
        if mode is None or charge_w is None or discharge_w is None:
            return None
        if mode == FORCE_DISCHARGE:
            return discharge_w
        if mode == FORCE_CHARGE:
            return -charge_w
        return 0 if mode == FORCE_STOP else None

    @property
    def identity(self) -> BatteryIdentity:
        """What the battery said it is (fields stay None until read and valid)."""
        return self._identity

    def on_connected(self) -> None:
        """A new connection: the identification is read again (once), unless refused."""
        for block in IDENTITY_BLOCKS:
            self._extras[block].next_s = float("-inf")
        self._extras_next_s = float("-inf")

    def forget(self) -> None:
        """Forget everything the battery is believed to hold (control and setpoints).

        Called after any failure and on every new connection: a battery that rebooted
        while out of sight comes back with 42000 released and the setpoints at 0.
        """
        if self._control is not ControlState.RELEASED:
            self._control = ControlState.UNKNOWN
        self._held.clear()
        self._full_write_s = None

    # -- reading -------------------------------------------------------------------------

    def reads_due(self, now_s: float) -> list[tuple[int, int]]:
        """Start a cycle: the (address, count) blocks to read now, in order.

        The previous cycle's values are dropped. SoC and AC power come first: without
        them the cycle is worthless, so the caller may stop at the first failure.
        """
        self._cycle = _Cycle()
        blocks = [BLOCK_SOC, BLOCK_AC_POWER]
        if self._control_check_due(now_s):
            blocks.append(BLOCK_CONTROL)
        if self._counters_read_s is None or elapsed(
            now_s, self._counters_read_s, self.counters_interval_s
        ):
            blocks.append(BLOCK_COUNTERS)
        return blocks

    def read_cycle(self, now_s: float) -> ReadCycle:
        """One whole read cycle as a dialogue with the transport, stamped ``now_s``.

        Yields each (address, count) block to read, in order; the transport sends back the
        registers, or the ``DeviceError`` the request ended in. The vital blocks come first
        (a failure ends the cycle: the battery is unavailable), then the reporting-only ones
        (a failure ends those, never the cycle). Returns the cycle's telemetry. Every
        transport (Modbus TCP, the simulator's direct calls) runs this same dialogue.
        """
        for address, count in self.reads_due(now_s):
            reply = yield address, count
            if isinstance(reply, DeviceError):
                self.on_read_failed(now_s, str(reply))
                return self.telemetry(now_s)
            self.on_read(address, reply, now_s)
        for address, count in self.extra_reads_due(now_s):
            reply = yield address, count
            if isinstance(reply, DeviceError):
                refused = isinstance(reply, DeviceResponseError)
                self.on_extra_read_failed(address, now_s, refused=refused)
                break
            self.on_read(address, reply, now_s)
        return self.telemetry(now_s)

    def extra_reads_due(
        self, now_s: float, limit: int = EXTRA_READS_PER_CYCLE
    ) -> list[tuple[int, int]]:
        """Up to ``limit`` reporting-only blocks to read after this cycle's vital ones.

        Report each attempt with ``on_read`` or ``on_extra_read_failed``; blocks not
        attempted stay due.
        """
        if not reached(now_s, self._extras_next_s):
            return []  # the common cycle: none is due (asked every cycle, per battery)
        due = [
            block
            for block, extra in self._extras.items()
            if not extra.refused and reached(now_s, extra.next_s)
        ]
        return due[:limit]

    def on_extra_read_failed(self, address: int, now_s: float, *, refused: bool) -> None:
        """A reporting-only read failed; ``refused``: the battery answered with an exception."""
        block = (address, _BLOCK_COUNTS[address])
        extra = self._extras.get(block)
        if extra is None:
            msg = f"{address} is not a reporting-only block"
            raise ValueError(msg)
        extra.failures += 1
        if refused or extra.failures >= EXTRA_READ_ATTEMPTS:
            extra.refused = True
            _LOGGER.info(
                "Battery %s does not report its %s; not asking again",
                self.name,
                _BLOCK_WHAT[address],
            )
        self._schedule_extra(block, extra, now_s)

    def _schedule_extra(self, block: tuple[int, int], extra: _Extra, now_s: float) -> None:
        # The identification is read once per connection; the diagnostics every interval.
        if block in IDENTITY_BLOCKS:
            extra.next_s = float("inf")
        else:
            extra.next_s = now_s + self.counters_interval_s
        self._extras_next_s = min(
            (e.next_s for e in self._extras.values() if not e.refused), default=float("inf")
        )

    def _control_check_due(self, now_s: float) -> bool:
        if self._control in (ControlState.UNKNOWN, ControlState.WRITTEN):
            return True
        if self._control is ControlState.CONFIRMED:
            return self._control_checked_s is None or elapsed(
                now_s, self._control_checked_s, self.control_recheck_s
            )
        # LOST: we already know; the next command re-applies it. RELEASED: not ours.
        return False

    def on_read(self, address: int, values: Sequence[int], now_s: float) -> None:
        """Record the reply to one block read (raw register values)."""
        expected = _BLOCK_COUNTS.get(address)
        if expected is None:
            msg = f"{address} is not a block this commander reads"
            raise ValueError(msg)
        if len(values) != expected:
            if (address, expected) in self._extras:
                self.on_extra_read_failed(address, now_s, refused=False)
                return
            self.on_read_failed(
                now_s, f"reply to read {address} had {len(values)} registers, not {expected}"
            )
            return
        # Each word as a 16-bit value: int(v) & 0xFFFF. The blocks of every cycle mask
        # theirs one by one, without building a list per read.
        cycle = self._cycle
        if address == REG_SOC:
            soc_raw = int(values[0]) & 0xFFFF
            capacity_raw = int(values[1]) & 0xFFFF
            if soc_raw > MAX_SOC_PCT:  # 0xFFFF included: the firmware's "no value"
                cycle.problem = f"invalid SoC {soc_raw}"
            else:
                cycle.soc_pct = float(soc_raw)
            if capacity_raw not in (0, _U16_GARBAGE):
                cycle.capacity_wh = float(capacity_raw)
        elif address == REG_AC_POWER:
            power_w = to_i32(int(values[0]) & 0xFFFF, int(values[1]) & 0xFFFF)
            if abs(power_w) > MAX_PLAUSIBLE_AC_W:
                cycle.problem = f"implausible AC power {power_w} W"
            else:
                cycle.power_w = float(power_w)
        elif address == REG_RS485_CONTROL:
            self._on_control_read(int(values[0]) & 0xFFFF, now_s)
        else:
            words = [int(v) & 0xFFFF for v in values]
            if address == REG_TOTAL_CHARGE:
                self._counters_read_s = now_s
                self._charge_total_wh = _counter_wh(to_u32(words[0], words[1]))
                self._discharge_total_wh = _counter_wh(to_u32(words[2], words[3]))
            else:
                self._on_extra_read(address, words, now_s)

    def _on_extra_read(self, address: int, words: list[int], now_s: float) -> None:
        block = (address, _BLOCK_COUNTS[address])
        extra = self._extras[block]
        extra.failures = 0
        self._schedule_extra(block, extra, now_s)
        identity = self._identity
        diagnostics = self._diagnostics
        if address == REG_DEVICE_NAME:
            self._set_identity(replace(identity, device_name=decode_text(words) or None))
        elif address == REG_SERIAL_NUMBER:
            self._set_identity(replace(identity, serial_number=decode_text(words) or None))
        elif address == REG_SOFTWARE_VERSION:
            software, ems, bms = (None if w in (0, _U16_GARBAGE) else w for w in words)
            self._set_identity(
                replace(
                    identity,
                    software_version=None if software is None else f"{software / 100:.2f}",
                    ems_version=ems,
                    bms_version=bms,
                )
            )
        elif address == REG_BATTERY_VOLTAGE:
            voltage_v = words[0] / 100.0
            low_v, high_v = _PACK_VOLTAGE_RANGE_V
            diagnostics.voltage_v = voltage_v if low_v <= voltage_v <= high_v else None
            # 32101 counts + while charging; inside the engine + is discharging.
            current_a = -to_i16(words[1]) / 100.0
            plausible = diagnostics.voltage_v is not None and abs(current_a) <= _MAX_PACK_CURRENT_A
            diagnostics.current_a = current_a if plausible else None
        elif address == REG_INTERNAL_TEMPERATURE:
            temperature_c = to_i16(words[0]) / 10.0
            low_c, high_c = _TEMPERATURE_RANGE_C
            diagnostics.temperature_c = temperature_c if low_c <= temperature_c <= high_c else None
        elif address == REG_ALARMS:
            diagnostics.alarms = bit_names(bits_of(words), ALARM_BITS)
        elif address == REG_FAULTS:
            diagnostics.faults = bit_names(bits_of(words), FAULT_BITS)

    def _set_identity(self, identity: BatteryIdentity) -> None:
        self._identity = identity
        self._identity_known = identity != _NO_IDENTITY

    def _on_control_read(self, raw: int, now_s: float) -> None:
        self._control_checked_s = now_s
        enabled = raw == RS485_ENABLE
        self._cycle.rs485_control = enabled
        if enabled:
            if self._control is not ControlState.RELEASED:
                self._control = ControlState.CONFIRMED
            return
        if self._control in (ControlState.WRITTEN, ControlState.CONFIRMED):
            self.control_lost_count += 1
            _LOGGER.warning(
                "Battery %s dropped RS485 control (42000 = 0x%04X); re-applying",
                self.name,
                raw,
            )
        if self._control is not ControlState.RELEASED:
            self._control = ControlState.LOST
            # Writes in 42010..42021 are ignored outside RS485 mode; send them all again.
            self._held.clear()
            self._full_write_s = None

    def on_read_failed(self, now_s: float, reason: str = "read failed") -> None:
        """The cycle's reads failed (timeout, lost connection, exception reply, ...)."""
        del now_s  # part of the interface for symmetry; the failure itself is timeless
        self._cycle.failed = True
        self._cycle.problem = reason
        self.forget()

    def telemetry(self, now_s: float) -> BatteryTelemetry:
        """This cycle's validated telemetry; logs once when availability changes."""
        cycle = self._cycle
        online = not cycle.failed and cycle.soc_pct is not None and cycle.power_w is not None
        self._note_availability(online, cycle, now_s)
        identity = self._identity if self._identity_known else None
        if cycle.failed:
            return BatteryTelemetry(name=self.name, online=False, identity=identity)
        diagnostics = self._diagnostics
        return BatteryTelemetry(
            name=self.name,
            online=online,
            soc_pct=cycle.soc_pct,
            power_w=cycle.power_w,
            rs485_control=cycle.rs485_control,
            charge_total_wh=self._charge_total_wh,
            discharge_total_wh=self._discharge_total_wh,
            capacity_wh=cycle.capacity_wh,
            identity=identity,
            voltage_v=diagnostics.voltage_v,
            current_a=diagnostics.current_a,
            temperature_c=diagnostics.temperature_c,
            alarms=diagnostics.alarms,
            faults=diagnostics.faults,
        )

    def _note_availability(self, online: bool, cycle: _Cycle, now_s: float) -> None:
        previous = self._online
        self._online = online
        if online == previous:
            return
        if not online:
            self._offline_since_s = now_s
            _LOGGER.warning(
                "Battery %s unavailable: %s", self.name, cycle.problem or "no valid reading"
            )
        elif previous is None:
            _LOGGER.info("Battery %s connected (SoC %.0f%%)", self.name, cycle.soc_pct or 0.0)
        else:
            since_s = self._offline_since_s if self._offline_since_s is not None else now_s
            _LOGGER.info("Battery %s available again after %.1f s", self.name, now_s - since_s)

    # -- writing -------------------------------------------------------------------------

    def writes_for(self, power_w: int, now_s: float) -> list[tuple[int, int]]:
        """The (address, value) writes that make the battery run ``power_w`` (+ discharge).

        Empty when the battery already holds it and no re-assert is due. Raises
        ``TypeError`` for a non-int power (bad input never becomes a setpoint).
        """
        target = setpoint_writes(check_power(power_w))
        writes: list[tuple[int, int]] = []
        take_control = self._control not in (ControlState.WRITTEN, ControlState.CONFIRMED)
        if take_control:
            writes.append((REG_RS485_CONTROL, RS485_ENABLE))
        reassert_due = self._full_write_s is None or elapsed(
            now_s, self._full_write_s, self.reassert_s
        )
        if take_control or reassert_due or not self._held.keys() >= _SETPOINT_REGS:
            writes.extend(target)
        else:
            writes.extend((reg, value) for reg, value in target if self._held.get(reg) != value)
        return writes

    def release_writes(self) -> list[tuple[int, int]]:
        """Idle (all three setpoint registers), then hand control back (42000 = 0x55BB)."""
        return [*setpoint_writes(0), (REG_RS485_CONTROL, RS485_DISABLE)]

    def on_written(self, writes: Iterable[tuple[int, int]], now_s: float) -> None:
        """Record the writes of one batch the battery acknowledged (a prefix is fine).

        Call once per batch, before ``on_write_failed`` if a later write failed: a batch
        holding all three setpoint registers restarts the re-assert timer.
        """
        done = list(writes)
        for address, value in done:
            if address == REG_RS485_CONTROL:
                if value == RS485_ENABLE:
                    self._control = ControlState.WRITTEN  # read back in the next cycle
                elif value == RS485_DISABLE:
                    self._control = ControlState.RELEASED
            elif address in _SETPOINT_REGS:
                self._held[address] = value
        if {address for address, _ in done} >= _SETPOINT_REGS:
            self._full_write_s = now_s

    def on_batch(self, done: Iterable[tuple[int, int]], *, failed: bool, now_s: float) -> None:
        """One batch's outcome, as every transport reports it: the writes the battery
        acknowledged (a prefix of the batch), then whether a later one failed."""
        self.on_written(done, now_s)
        if failed:
            self.on_write_failed(now_s)

    def on_write_failed(self, now_s: float) -> None:
        """A write failed: what the battery holds is unknown, so the next command goes in full."""
        del now_s
        self._held.clear()
        self._full_write_s = None


def _counter_wh(raw: int) -> float | None:
    return None if raw == _U32_GARBAGE else raw * _WH_PER_COUNTER_UNIT
