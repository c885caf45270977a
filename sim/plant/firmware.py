"""Venus E firmware as seen over Modbus: the holding-register image and the control semantics.

Used by the Modbus server and directly (in process) by the replay harness. Addresses come from
engine/adapters/marstek_registers.py only. Behaviour follows the protocol reference, Part 1:
force writes are acknowledged and stored but only obeyed while 42000 = 0x55AA; writing 43000
ends RS485 control; reads of more than 32 registers get no answer at all.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from collections.abc import Callable

from engine.adapters import marstek_registers as reg
from sim.plant.battery import VenusE

_LOGGER = logging.getLogger(__name__)


class FirmwareFault(enum.IntEnum):
    """Why a request failed. Values below 0x100 are the Modbus exception code sent back."""

    ILLEGAL_ADDRESS = 0x02  # unmapped register, or a write to a read-only one
    ILLEGAL_VALUE = 0x03  # value outside the register's range (e.g. 42020 > 2500), count 0
    NO_ANSWER = 0x100  # the device stays silent (read of > 32 registers, rebooting)


# The brief's names for the two directions; one enum so callers can compare either way.
ReadFault = FirmwareFault
WriteFault = FirmwareFault

DEFAULT_REBOOT_OFFLINE_S = 5.0
SOC_GARBAGE = 0xFFFF
AC_VOLTAGE_V = 230.0
AC_FREQUENCY_HZ = 50.0
DAY_S = 86_400.0
MONTH_S = 30 * DAY_S
WORK_MODE_MANUAL = 0
WORK_MODE_ANTI_FEED = 1
_MAX_WORK_MODE = 2
_ALARM_LOW_SOC_BIT = 1 << 4  # 36000 bit 4: low battery SoC warning
# Identification the simulated firmware reports (31100 x 0.01, 31101, 31102): plausible values.
SOFTWARE_VERSION_RAW = 153
EMS_VERSION = 153
BMS_VERSION = 213
SERIAL_PREFIX = "VNSESIM"
AMBIENT_C = 25.0
_FULL_LOAD_HEATING_C = 12.0  # the inverter runs this much warmer than ambient at 2500 W

_READ_ONLY: frozenset[int] = frozenset(
    [
        *range(reg.REG_DEVICE_NAME, reg.REG_DEVICE_NAME + reg.DEVICE_NAME_REGS),
        *range(reg.REG_SOFTWARE_VERSION, reg.REG_SOFTWARE_VERSION + reg.VERSION_REGS),
        *range(reg.REG_SERIAL_NUMBER, reg.REG_SERIAL_NUMBER + reg.SERIAL_NUMBER_REGS),
        *range(reg.REG_BATTERY_VOLTAGE, reg.REG_CAPACITY + 1),
        *range(reg.REG_AC_VOLTAGE, reg.REG_AC_FREQUENCY + 1),
        *range(reg.REG_TOTAL_CHARGE, reg.REG_MONTHLY_DISCHARGE + 2),
        *range(reg.REG_INTERNAL_TEMPERATURE, reg.REG_MOS2_TEMPERATURE + 1),
        reg.REG_INVERTER_STATE,
        *range(reg.REG_ALARMS, reg.REG_ALARMS + reg.ALARM_REGS),
        *range(reg.REG_FAULTS, reg.REG_FAULTS + reg.FAULT_REGS),
    ]
)
# Writable registers and their accepted value ranges (inclusive).
_WRITABLE: dict[int, tuple[int, int]] = {
    reg.REG_RS485_CONTROL: (0, 0xFFFF),  # only the two magic values; checked separately
    reg.REG_FORCE_MODE: (reg.FORCE_STOP, reg.FORCE_DISCHARGE),
    reg.REG_CHARGE_SETPOINT: (0, reg.MAX_SETPOINT_W),
    reg.REG_DISCHARGE_SETPOINT: (0, reg.MAX_SETPOINT_W),
    reg.REG_USER_WORK_MODE: (0, _MAX_WORK_MODE),
    reg.REG_CHARGE_CUTOFF: (800, 1000),
    reg.REG_DISCHARGE_CUTOFF: (120, 300),
    reg.REG_MAX_CHARGE_POWER: (0, reg.MAX_SETPOINT_W),
    reg.REG_MAX_DISCHARGE_POWER: (0, reg.MAX_SETPOINT_W),
}
MAPPED_REGISTERS: frozenset[int] = _READ_ONLY | frozenset(_WRITABLE)


@functools.lru_cache(maxsize=1024)
def _range_mapped(address: int, count: int) -> bool:
    """Every register of [address, address + count) exists (cached: drivers repeat reads)."""
    return all(addr in MAPPED_REGISTERS for addr in range(address, address + count))


def _u16(value: float) -> int:
    raw = round(value)
    return raw if 0 <= raw <= 0xFFFF else min(max(raw, 0), 0xFFFF)


# The converters run for every register of every read: the in-range case avoids clamping calls.
def _i16(value: float) -> int:
    raw = round(value)
    if not -0x8000 <= raw <= 0x7FFF:
        raw = min(max(raw, -0x8000), 0x7FFF)
    return reg.from_i16(raw)


def _u32(value: float) -> tuple[int, int]:
    return reg.from_i32(min(max(math.floor(value), 0), 0xFFFF_FFFF))


def _i32(value: float) -> tuple[int, int]:
    raw = round(value)
    if not -0x8000_0000 <= raw <= 0x7FFF_FFFF:
        raw = min(max(raw, -0x8000_0000), 0x7FFF_FFFF)
    return reg.from_i32(raw)


def encode_name(name: str, regs: int = reg.DEVICE_NAME_REGS) -> list[int]:
    """ASCII, two characters per register, high byte first, NUL padded (and truncated)."""
    raw = name.encode("ascii", errors="replace")[: regs * 2].ljust(regs * 2, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, regs * 2, 2)]


def simulated_serial_number(name: str) -> str:
    """The serial number a simulated battery reports: stable per name, at most 20 characters."""
    return f"{SERIAL_PREFIX}{name}"[: reg.SERIAL_NUMBER_REGS * 2]


# A block: a run of consecutive registers, as words at an instant (a fresh list per call).
_Block = Callable[[float], list[int]]
# How a read is served: (block, first, end offset into its words) for each block it touches.
_ReadPlan = tuple[tuple[_Block, int, int], ...]


class VenusFirmware:
    """The register image and firmware behaviour around one ``VenusE``.

    ``serial_number`` (31200) defaults to :func:`simulated_serial_number` of the battery's name.
    ``alarm_bits`` / ``fault_bits`` (36000 / 36100 bitfields) can be set by tests and faults;
    the low-SoC alarm bit is raised by the battery's own cut-off on top of them.
    """

    def __init__(self, battery: VenusE, serial_number: str | None = None) -> None:
        self.battery = battery
        self.serial_number = (
            simulated_serial_number(battery.name) if serial_number is None else serial_number
        )
        self.alarm_bits = 0
        self.fault_bits = 0
        self.control_enabled = False  # 42000 = 0x55AA (the firmware's "forced" byte)
        self.force_mode = reg.FORCE_STOP
        self.charge_setpoint_w = 0
        self.discharge_setpoint_w = 0
        self.work_mode = WORK_MODE_MANUAL  # 43000 as stored in EEPROM
        params = battery.params
        self.max_charge_power_w = _u16(min(params.max_charge_w, 0xFFFF))
        self.max_discharge_power_w = _u16(min(params.max_discharge_w, 0xFFFF))
        self.offline_until_s = -math.inf
        self.soc_garbage = False
        self.reads = 0
        self.writes = 0
        self._name_regs = encode_name(battery.name)
        self._capacity_reg = _u16(battery.capacity_wh)  # (32105: the capacity is fixed)
        self._day_index: int | None = None
        self._month_index: int | None = None
        self._day_base = (0.0, 0.0)
        self._month_base = (0.0, 0.0)
        # (first register, count, block): a read computes only the blocks it touches (how,
        # per (address, count), is remembered in _plans: drivers repeat their reads).
        self._plans: dict[tuple[int, int], _ReadPlan] = {}
        self._blocks: tuple[tuple[int, int, _Block], ...] = (
            (reg.REG_DEVICE_NAME, reg.DEVICE_NAME_REGS, self._block_name),
            (reg.REG_SOFTWARE_VERSION, reg.VERSION_REGS, self._block_versions),
            (reg.REG_SERIAL_NUMBER, reg.SERIAL_NUMBER_REGS, self._block_serial),
            (reg.REG_BATTERY_VOLTAGE, reg.REG_SOC - reg.REG_BATTERY_VOLTAGE, self._block_dc),
            (reg.REG_SOC, 2, self._block_soc),
            (reg.REG_AC_VOLTAGE, 2, self._block_ac_current),
            (reg.REG_AC_POWER, 2, self._block_ac_power),
            (reg.REG_AC_FREQUENCY, 1, self._block_ac_frequency),
            (reg.REG_TOTAL_CHARGE, 12, self._block_counters),  # 6 uint32 energies
            (reg.REG_INTERNAL_TEMPERATURE, 3, self._block_temperatures),  # internal, MOS 1 and 2
            (reg.REG_INVERTER_STATE, 1, self._block_inverter_state),
            (reg.REG_ALARMS, reg.ALARM_REGS, self._block_alarms),
            (reg.REG_FAULTS, reg.FAULT_REGS, self._block_faults),
            (reg.REG_RS485_CONTROL, 1, self._block_rs485_control),
            (reg.REG_FORCE_MODE, 1, self._block_force_mode),
            (reg.REG_CHARGE_SETPOINT, 2, self._block_setpoints),
            (reg.REG_USER_WORK_MODE, 1, self._block_work_mode),
            (reg.REG_CHARGE_CUTOFF, 4, self._block_limits),  # 2 cut-offs, 2 power limits
        )

    # ---------------------------------------------------------------- semantics
    @property
    def target_w(self) -> float:
        """What the firmware asks the inverter for (+ discharge): idle unless RS485 control."""
        if not self.control_enabled:
            return 0.0  # the battery's own logic; in the simulator that is idle
        if self.force_mode == reg.FORCE_CHARGE:
            return -float(min(self.charge_setpoint_w, self.max_charge_power_w))
        if self.force_mode == reg.FORCE_DISCHARGE:
            return float(min(self.discharge_setpoint_w, self.max_discharge_power_w))
        return 0.0

    def _apply(self, now_s: float) -> None:
        self.battery.set_target(self.target_w, now_s)

    def is_offline(self, now_s: float) -> bool:
        return now_s < self.offline_until_s

    # ---------------------------------------------------------------- Modbus access
    def read(self, address: int, count: int, now_s: float) -> list[int] | FirmwareFault:
        """FC 3: ``count`` holding registers from ``address``, or why there is no data."""
        self.reads += 1
        if now_s < self.offline_until_s:  # is_offline(now_s), without the call
            return FirmwareFault.NO_ANSWER
        plan = self._plans.get((address, count))
        if plan is None:  # not asked before (only a valid request gets a plan)
            if count > reg.MAX_REGISTERS_PER_READ:
                return FirmwareFault.NO_ANSWER
            if count < 1:
                return FirmwareFault.ILLEGAL_VALUE
            if address < 0 or address + count > 0x10000:
                return FirmwareFault.ILLEGAL_ADDRESS
            if not _range_mapped(address, count):
                return FirmwareFault.ILLEGAL_ADDRESS
            plan = self._plans[(address, count)] = self._plan(address, count)
        if len(plan) == 1:
            block, lo, hi = plan[0]
            return block(now_s)[lo:hi]
        values: list[int] = []
        for block, lo, hi in plan:
            values += block(now_s)[lo:hi]
        return values

    def write(self, address: int, values: list[int], now_s: float) -> FirmwareFault | None:
        """FC 6/16: write ``values`` from ``address``; all or nothing."""
        self.writes += 1
        if self.is_offline(now_s):
            return FirmwareFault.NO_ANSWER
        if not values:
            return FirmwareFault.ILLEGAL_VALUE
        for offset, value in enumerate(values):
            addr = address + offset
            limits = _WRITABLE.get(addr)
            if limits is None:
                return FirmwareFault.ILLEGAL_ADDRESS
            if not limits[0] <= value <= limits[1]:
                return FirmwareFault.ILLEGAL_VALUE
            if addr == reg.REG_RS485_CONTROL and value not in (
                reg.RS485_ENABLE,
                reg.RS485_DISABLE,
            ):
                return FirmwareFault.ILLEGAL_VALUE
        for offset, value in enumerate(values):
            self._store(address + offset, value)
        self._apply(now_s)
        return None

    def _store(self, address: int, value: int) -> None:
        if address == reg.REG_RS485_CONTROL:
            enable = value == reg.RS485_ENABLE
            if enable != self.control_enabled:
                _LOGGER.debug("%s: RS485 control %s", self.battery.name, enable)
            self.control_enabled = enable
        elif address == reg.REG_FORCE_MODE:
            self.force_mode = value
        elif address == reg.REG_CHARGE_SETPOINT:
            self.charge_setpoint_w = value
        elif address == reg.REG_DISCHARGE_SETPOINT:
            self.discharge_setpoint_w = value
        elif address == reg.REG_USER_WORK_MODE:
            # One firmware byte holds both: selecting a work mode ends RS485 control.
            self.work_mode = value
            self.control_enabled = False
        elif address == reg.REG_CHARGE_CUTOFF:
            self.battery.charge_cutoff_pct = value / 10.0
        elif address == reg.REG_DISCHARGE_CUTOFF:
            self.battery.discharge_cutoff_pct = value / 10.0
        elif address == reg.REG_MAX_CHARGE_POWER:
            self.max_charge_power_w = value
        elif address == reg.REG_MAX_DISCHARGE_POWER:
            self.max_discharge_power_w = value

    def _counters(self, now_s: float) -> tuple[float, float, float, float, float, float]:
        """Total, daily and monthly AC charge/discharge energy in Wh."""
        bat = self.battery
        totals = (bat.charged_wh, bat.discharged_wh)
        # The first read adopts the current day and month: everything so far counts as today.
        day = math.floor(now_s / DAY_S)
        if day != self._day_index:
            if self._day_index is not None:
                self._day_base = totals
            self._day_index = day
        month = math.floor(now_s / MONTH_S)
        if month != self._month_index:
            if self._month_index is not None:
                self._month_base = totals
            self._month_index = month
        return (
            totals[0],
            totals[1],
            totals[0] - self._day_base[0],
            totals[1] - self._day_base[1],
            totals[0] - self._month_base[0],
            totals[1] - self._month_base[1],
        )

    def _plan(self, address: int, count: int) -> _ReadPlan:
        """The blocks a mapped range [address, address + count) touches, in address order.

        Every register of the range is mapped and the blocks cover the mapped registers
        without overlap, so the slices of the touched blocks are the range, register by
        register.
        """
        end = address + count
        return tuple(
            (block, max(address - first, 0), min(end, first + n) - first)
            for first, n, block in self._blocks
            if first < end and address < first + n
        )

    def _block_name(self, _now_s: float) -> list[int]:
        return list(self._name_regs)

    def _block_versions(self, _now_s: float) -> list[int]:
        return [SOFTWARE_VERSION_RAW, EMS_VERSION, BMS_VERSION]

    def _block_serial(self, _now_s: float) -> list[int]:
        return encode_name(self.serial_number, reg.SERIAL_NUMBER_REGS)

    def _block_temperatures(self, _now_s: float) -> list[int]:
        # No thermal model: warmer with load, so the registers move like a real unit's.
        load = abs(self.battery.ac_power_w) / reg.MAX_SETPOINT_W
        internal_c = AMBIENT_C + _FULL_LOAD_HEATING_C * load
        return [
            _i16(internal_c * 10.0),
            _i16((internal_c + 3.0 * load) * 10.0),
            _i16((internal_c + 2.0 * load) * 10.0),
        ]

    def _block_dc(self, _now_s: float) -> list[int]:
        bat = self.battery
        dc_w = bat.dc_power_w
        battery_v = 48.0 + 6.0 * bat.soc_pct / 100.0  # 16s LFP, roughly linear in mid range
        return [_u16(battery_v * 100.0), _i16(dc_w / battery_v * 100.0), *_i32(dc_w)]

    def _block_soc(self, _now_s: float) -> list[int]:
        bat = self.battery
        soc_raw = _u16(math.floor(bat.soc_pct + 0.5))
        return [SOC_GARBAGE if self.soc_garbage else soc_raw, self._capacity_reg]

    def _block_ac_current(self, _now_s: float) -> list[int]:
        return [_u16(AC_VOLTAGE_V * 10.0), _i16(self.battery.ac_power_w / AC_VOLTAGE_V * 100.0)]

    def _block_ac_power(self, _now_s: float) -> list[int]:
        return list(_i32(self.battery.ac_power_w))

    def _block_ac_frequency(self, _now_s: float) -> list[int]:
        return [_u16(AC_FREQUENCY_HZ * 100.0)]

    def _block_counters(self, now_s: float) -> list[int]:
        words: list[int] = []
        for energy_wh in self._counters(now_s):
            words += _u32(energy_wh / 10.0)  # 0.01 kWh
        return words

    def _block_inverter_state(self, _now_s: float) -> list[int]:
        ac_w = self.battery.ac_power_w
        if ac_w > 0.0:
            return [reg.InverterState.DISCHARGE]
        if ac_w < 0.0:
            return [reg.InverterState.CHARGE]
        return [reg.InverterState.STANDBY]

    def _block_alarms(self, _now_s: float) -> list[int]:
        alarms = self.alarm_bits | (_ALARM_LOW_SOC_BIT if self.battery.discharge_blocked else 0)
        return [(alarms >> (16 * i)) & 0xFFFF for i in range(reg.ALARM_REGS)]

    def _block_faults(self, _now_s: float) -> list[int]:
        return [(self.fault_bits >> (16 * i)) & 0xFFFF for i in range(reg.FAULT_REGS)]

    def _block_rs485_control(self, _now_s: float) -> list[int]:
        return [reg.RS485_ENABLE if self.control_enabled else reg.RS485_DISABLE]

    def _block_force_mode(self, _now_s: float) -> list[int]:
        return [self.force_mode]

    def _block_setpoints(self, _now_s: float) -> list[int]:
        return [self.charge_setpoint_w, self.discharge_setpoint_w]

    def _block_work_mode(self, _now_s: float) -> list[int]:
        # Reads back 1 (anti-feed) while RS485 control is on, like the real firmware.
        return [WORK_MODE_ANTI_FEED if self.control_enabled else self.work_mode]

    def _block_limits(self, _now_s: float) -> list[int]:
        bat = self.battery
        return [
            _u16(bat.charge_cutoff_pct * 10.0),
            _u16(bat.discharge_cutoff_pct * 10.0),
            self.max_charge_power_w,
            self.max_discharge_power_w,
        ]

    # ---------------------------------------------------------------- scripted faults
    def reboot(self, now_s: float, offline_s: float = DEFAULT_REBOOT_OFFLINE_S) -> None:
        """Controller reboot: output off, setpoints 0, RS485 control lost, silent for a while."""
        _LOGGER.debug("%s: reboot for %.1f s", self.battery.name, offline_s)
        self.control_enabled = False
        self.force_mode = reg.FORCE_STOP
        self.charge_setpoint_w = 0
        self.discharge_setpoint_w = 0
        self.offline_until_s = now_s + offline_s
        self.battery.switch_off(now_s)

    def lose_control_mode(self, now_s: float | None = None) -> None:
        """42000 flips to 0x55BB by itself; setpoints stay stored but are no longer obeyed."""
        self.control_enabled = False
        when_s = now_s if now_s is not None else self.battery.time_s
        self._apply(when_s if when_s is not None else 0.0)

    def set_soc_garbage(self, garbage: bool) -> None:
        """32104 reads 0xFFFF while set."""
        self.soc_garbage = garbage

    def set_not_following(self, not_following: bool) -> None:
        """The battery acknowledges commands but delivers 0 W while set."""
        self.battery.not_following = not_following
