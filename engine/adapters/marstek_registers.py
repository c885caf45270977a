"""Marstek Venus E (v1/v2) Modbus register map: the one copy used by the driver and the simulator.

Holding registers only (FC 3 read, FC 6 write), PDU address = register number, 32-bit values
high word first. Sources: shared protocol reference, section 1.2 (pinned by a golden test).
"""

from __future__ import annotations

from typing import Final

# Identification (v1/v2; read once per connection)
REG_DEVICE_NAME: Final = 31000  # char, 10 registers
DEVICE_NAME_REGS: Final = 10
REG_SOFTWARE_VERSION: Final = 31100  # uint16, 0.01
REG_EMS_VERSION: Final = 31101  # uint16
REG_BMS_VERSION: Final = 31102  # uint16
VERSION_REGS: Final = 3  # 31100..31102
REG_SERIAL_NUMBER: Final = 31200  # char, 10 registers
SERIAL_NUMBER_REGS: Final = 10

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

# Temperatures, int16, 0.1 degC
REG_INTERNAL_TEMPERATURE: Final = 35000
REG_MOS1_TEMPERATURE: Final = 35001
REG_MOS2_TEMPERATURE: Final = 35002

REG_INVERTER_STATE: Final = 35100  # enum InverterState
REG_ALARMS: Final = 36000  # bitfield: 36000 holds bits 0-15, 36001 bits 16-31
ALARM_REGS: Final = 2
REG_FAULTS: Final = 36100  # bitfield: 36100 bits 0-15 ... 36103 bits 48-63
FAULT_REGS: Final = 4

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


# Bit names (Viper e_v12 numbering, protocol reference section 1.2). Bit n lives in register
# base + n // 16, at position n % 16; a set bit that is not named here is reported by number.
ALARM_BITS: Final[dict[int, str]] = {
    0: "PLL abnormal restart",
    1: "over-temperature limit",
    2: "low-temperature limit",
    3: "fan abnormal",
    4: "low battery SoC warning",
    5: "output over-current warning",
    6: "abnormal line sequence",
    16: "WiFi abnormal",
    17: "BLE abnormal",
    18: "network abnormal",
    19: "CT connection abnormal",
}
FAULT_BITS: Final[dict[int, str]] = {
    0: "grid over-voltage",
    1: "grid under-voltage",
    2: "grid over-frequency",
    3: "grid under-frequency",
    4: "grid peak voltage",
    5: "DC over-current",
    6: "DC over-voltage",
    16: "battery over-voltage",
    17: "battery under-voltage",
    18: "battery over-current",
    19: "battery low SoC",
    20: "battery communication failure",
    21: "BMS protection",
    32: "inverter soft-start timeout",
    33: "self-check failure",
    34: "EEPROM failure",
    35: "other system failure",
    48: "bus over-voltage",
    49: "output over-current",
    50: "transformer over-current",
    51: "battery over-current (hardware)",
    52: "hardware protection",
    53: "output over-current (hardware)",
    54: "HV bus over-voltage",
    55: "HV bus under-voltage",
    56: "over-power",
    57: "FSM abnormal",
    58: "over-temperature",
}


def bits_of(words: list[int] | tuple[int, ...]) -> int:
    """Bitfield registers as one integer: the first register holds bits 0-15."""
    value = 0
    for i, word in enumerate(words):
        value |= (word & 0xFFFF) << (16 * i)
    return value


def bit_names(value: int, names: dict[int, str]) -> tuple[str, ...]:
    """The names of the set bits of ``value``, lowest first; unnamed bits as ``bit <n>``."""
    return tuple(
        names.get(bit, f"bit {bit}") for bit in range(value.bit_length()) if value >> bit & 1
    )


def decode_text(words: list[int] | tuple[int, ...]) -> str:
    """A char register block: two ASCII characters per register, high byte first, NUL ends.

    Returns ``""`` for anything that is not printable ASCII (a blank or garbled block).
    """
    raw = b"".join((word & 0xFFFF).to_bytes(2, "big") for word in words)
    text = raw.split(b"\0", 1)[0].strip(b" \xff")
    if not text or any(not 0x20 <= byte < 0x7F for byte in text):
        return ""
    return text.decode("ascii").strip()


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
