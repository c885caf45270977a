"""Marstek Venus E (v1/v2) Modbus register map: the one copy used by the driver and the simulator.

Holding registers only (FC 3 read, FC 6 write), PDU address = register number, 32-bit values
high word first. Sources: shared protocol reference, section 1.2 (pinned by a golden test).
"""

from __future__ import annotations

from typing import Final

# Identification
REG_DEVICE_NAME: Final = 31000  # char, 10 registers
DEVICE_NAME_REGS: Final = 10

# Battery (DC side)
REG_BATTERY_VOLTAGE: Final = 32100  # uint16, 0.01 V
REG_BATTERY_CURRENT: Final = 32101  # int16, 0.01 A
REG_BATTERY_POWER: Final = 32102  # int32, 1 W, + charging (DC convention)
REG_SOC: Final = 32104  # uint16, 1 %
REG_CAPACITY: Final = 32105  # uint16, Wh (0.001 kWh)

# AC side
REG_AC_VOLTAGE: Final = 32200  # uint16, 0.1 V
REG_AC_CURRENT: Final = 32201  # int16, 0.01 A
REG_AC_POWER: Final = 32202  # int32, 1 W, + discharging
REG_AC_FREQUENCY: Final = 32204  # uint16, 0.01 Hz (v1/v2)

# Energy counters, uint32, 0.01 kWh, AC side
REG_TOTAL_CHARGE: Final = 33000
REG_TOTAL_DISCHARGE: Final = 33002
REG_DAILY_CHARGE: Final = 33004
REG_DAILY_DISCHARGE: Final = 33006
REG_MONTHLY_CHARGE: Final = 33008
REG_MONTHLY_DISCHARGE: Final = 33010

REG_INVERTER_STATE: Final = 35100  # enum InverterState
REG_ALARMS: Final = 36000  # 2 registers, bitfield

# Control
REG_RS485_CONTROL: Final = 42000
RS485_ENABLE: Final = 0x55AA
RS485_DISABLE: Final = 0x55BB
REG_FORCE_MODE: Final = 42010  # 0 stop, 1 charge, 2 discharge
FORCE_STOP: Final = 0
FORCE_CHARGE: Final = 1
FORCE_DISCHARGE: Final = 2
REG_CHARGE_SETPOINT: Final = 42020  # 0..2500 W
REG_DISCHARGE_SETPOINT: Final = 42021  # 0..2500 W
REG_USER_WORK_MODE: Final = 43000  # 0 manual, 1 anti-feed, 2 trade; writing it ends RS485 control
REG_CHARGE_CUTOFF: Final = 44000  # 0.1 %, 800..1000
REG_DISCHARGE_CUTOFF: Final = 44001  # 0.1 %, 120..300
REG_MAX_CHARGE_POWER: Final = 44002  # W (EEPROM: never written cyclically)
REG_MAX_DISCHARGE_POWER: Final = 44003  # W (EEPROM)

MAX_SETPOINT_W: Final = 2500
MAX_REGISTERS_PER_READ: Final = 32  # a longer read gets no answer at all


class InverterState:
    """Register 35100 values."""

    SLEEP: Final = 0
    STANDBY: Final = 1
    CHARGE: Final = 2
    DISCHARGE: Final = 3
    BACKUP: Final = 4
    OTA: Final = 5
    BYPASS: Final = 6


def setpoint_writes(power_w: int) -> tuple[tuple[int, int], ...]:
    """The register writes that command ``power_w`` (+ discharge, - charge, 0 idle).

    Mirrors upstream MMBC: the unused direction's setpoint is zeroed. The force mode is
    written last so the battery never runs the new direction with a stale setpoint.
    """
    magnitude = min(abs(int(power_w)), MAX_SETPOINT_W)
    if power_w > 0:
        return (
            (REG_CHARGE_SETPOINT, 0),
            (REG_DISCHARGE_SETPOINT, magnitude),
            (REG_FORCE_MODE, FORCE_DISCHARGE),
        )
    if power_w < 0:
        return (
            (REG_DISCHARGE_SETPOINT, 0),
            (REG_CHARGE_SETPOINT, magnitude),
            (REG_FORCE_MODE, FORCE_CHARGE),
        )
    return (
        (REG_FORCE_MODE, FORCE_STOP),
        (REG_CHARGE_SETPOINT, 0),
        (REG_DISCHARGE_SETPOINT, 0),
    )


def to_u32(high: int, low: int) -> int:
    """Two registers, high word first, as an unsigned 32-bit value."""
    return ((high & 0xFFFF) << 16) | (low & 0xFFFF)


def to_i32(high: int, low: int) -> int:
    """Two registers, high word first, as a signed 32-bit value."""
    value = to_u32(high, low)
    return value - (1 << 32) if value & 0x8000_0000 else value


def from_i32(value: int) -> tuple[int, int]:
    """A signed (or unsigned) 32-bit value as two registers, high word first."""
    raw = value & 0xFFFF_FFFF
    return (raw >> 16) & 0xFFFF, raw & 0xFFFF


def to_i16(raw: int) -> int:
    """One register as a signed 16-bit value."""
    raw &= 0xFFFF
    return raw - 0x10000 if raw & 0x8000 else raw


def from_i16(value: int) -> int:
    """A signed 16-bit value as one register."""
    return value & 0xFFFF
