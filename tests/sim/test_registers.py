"""The register map pinned to the protocol reference, and the simulated firmware's semantics."""

from __future__ import annotations

import math

import pytest

from engine.adapters import marstek_registers as reg
from sim.plant.battery import VenusE
from sim.plant.firmware import (
    MAPPED_REGISTERS,
    FirmwareFault,
    ReadFault,
    VenusFirmware,
    WriteFault,
)
from sim.plant.params import BatteryParams

# Hard-coded from the protocol reference, Part 1, section 1.2 (register map) and 1.4 (control).
EXPECTED_ADDRESSES = {
    "REG_DEVICE_NAME": 31000,
    "REG_SOFTWARE_VERSION": 31100,
    "REG_EMS_VERSION": 31101,
    "REG_BMS_VERSION": 31102,
    "REG_SERIAL_NUMBER": 31200,
    "REG_BATTERY_VOLTAGE": 32100,
    "REG_BATTERY_CURRENT": 32101,
    "REG_BATTERY_POWER": 32102,
    "REG_SOC": 32104,
    "REG_CAPACITY": 32105,
    "REG_AC_VOLTAGE": 32200,
    "REG_AC_CURRENT": 32201,
    "REG_AC_POWER": 32202,
    "REG_AC_FREQUENCY": 32204,
    "REG_TOTAL_CHARGE": 33000,
    "REG_TOTAL_DISCHARGE": 33002,
    "REG_DAILY_CHARGE": 33004,
    "REG_DAILY_DISCHARGE": 33006,
    "REG_MONTHLY_CHARGE": 33008,
    "REG_MONTHLY_DISCHARGE": 33010,
    "REG_INTERNAL_TEMPERATURE": 35000,
    "REG_MOS1_TEMPERATURE": 35001,
    "REG_MOS2_TEMPERATURE": 35002,
    "REG_INVERTER_STATE": 35100,
    "REG_ALARMS": 36000,
    "REG_FAULTS": 36100,
    "REG_RS485_CONTROL": 42000,
    "REG_FORCE_MODE": 42010,
    "REG_CHARGE_SETPOINT": 42020,
    "REG_DISCHARGE_SETPOINT": 42021,
    "REG_USER_WORK_MODE": 43000,
    "REG_CHARGE_CUTOFF": 44000,
    "REG_DISCHARGE_CUTOFF": 44001,
    "REG_MAX_CHARGE_POWER": 44002,
    "REG_MAX_DISCHARGE_POWER": 44003,
}
EXPECTED_CONSTANTS = {
    "DEVICE_NAME_REGS": 10,
    "SERIAL_NUMBER_REGS": 10,
    "VERSION_REGS": 3,
    "ALARM_REGS": 2,
    "FAULT_REGS": 4,
    "RS485_ENABLE": 21930,  # 0x55AA
    "RS485_DISABLE": 21947,  # 0x55BB
    "FORCE_STOP": 0,
    "FORCE_CHARGE": 1,
    "FORCE_DISCHARGE": 2,
    "MAX_SETPOINT_W": 2500,
    "MAX_REGISTERS_PER_READ": 32,
}
EXPECTED_INVERTER_STATES = {
    "SLEEP": 0,
    "STANDBY": 1,
    "CHARGE": 2,
    "DISCHARGE": 3,
    "BACKUP": 4,
    "OTA": 5,
    "BYPASS": 6,
}

FAST = BatteryParams(dead_time_s=0.0, relay_delay_s=0.0, ramp_w_per_s=math.inf, standby_w=0.0)


def make(soc_pct: float = 50.0, params: BatteryParams = FAST) -> VenusFirmware:
    return VenusFirmware(VenusE(params, soc_pct, name="VNSE3-0"))


def settle(fw: VenusFirmware, start_s: float = 0.0, seconds: float = 10.0) -> float:
    """Advance the battery; returns the end time."""
    t_s = start_s
    while t_s < start_s + seconds - 1e-9:
        fw.battery.advance(t_s, 0.5)
        t_s += 0.5
    return t_s


def read1(fw: VenusFirmware, address: int, now_s: float = 0.0) -> int:
    result = fw.read(address, 1, now_s)
    assert isinstance(result, list)
    return result[0]


def read_i32(fw: VenusFirmware, address: int, now_s: float = 0.0) -> int:
    result = fw.read(address, 2, now_s)
    assert isinstance(result, list)
    return reg.to_i32(*result)


def command(fw: VenusFirmware, power_w: int, now_s: float) -> None:
    for address, value in reg.setpoint_writes(power_w):
        assert fw.write(address, [value], now_s) is None


# ------------------------------------------------------------------ golden register map


def test_every_register_address_matches_the_reference() -> None:
    module_addresses = {name: getattr(reg, name) for name in dir(reg) if name.startswith("REG_")}
    assert module_addresses == EXPECTED_ADDRESSES


def test_control_values_and_limits_match_the_reference() -> None:
    for name, value in EXPECTED_CONSTANTS.items():
        assert getattr(reg, name) == value, name
    states = {
        name: getattr(reg.InverterState, name) for name in dir(reg.InverterState) if name.isupper()
    }
    assert states == EXPECTED_INVERTER_STATES


def test_word_helpers_use_high_word_first() -> None:
    assert reg.from_i32(-1500) == (0xFFFF, 0xFA24)
    assert reg.to_i32(0xFFFF, 0xFA24) == -1500
    assert reg.to_u32(0x0001, 0x0002) == 65538
    assert reg.to_i16(0xFF9C) == -100


def test_fault_aliases_share_one_enum_with_modbus_exception_codes() -> None:
    assert ReadFault is WriteFault is FirmwareFault
    assert int(FirmwareFault.ILLEGAL_ADDRESS) == 2
    assert int(FirmwareFault.ILLEGAL_VALUE) == 3


# ------------------------------------------------------------------ register image


def test_identification_and_battery_registers() -> None:
    fw = make(soc_pct=83.4)
    name_regs = fw.read(reg.REG_DEVICE_NAME, reg.DEVICE_NAME_REGS, 0.0)
    assert isinstance(name_regs, list)
    raw = b"".join(word.to_bytes(2, "big") for word in name_regs)
    assert raw.rstrip(b"\0") == b"VNSE3-0"
    assert read1(fw, reg.REG_SOC) == 83
    assert read1(fw, reg.REG_CAPACITY) == 5120
    assert 4800 <= read1(fw, reg.REG_BATTERY_VOLTAGE) <= 5500  # 0.01 V
    assert read1(fw, reg.REG_AC_VOLTAGE) == 2300  # 0.1 V
    assert read1(fw, reg.REG_AC_FREQUENCY) == 5000  # 0.01 Hz
    assert read1(fw, reg.REG_INVERTER_STATE) == reg.InverterState.STANDBY
    assert read1(fw, reg.REG_CHARGE_CUTOFF) == 1000  # 0.1 %
    assert read1(fw, reg.REG_DISCHARGE_CUTOFF) == 120
    assert read1(fw, reg.REG_MAX_CHARGE_POWER) == 2500
    assert read1(fw, reg.REG_MAX_DISCHARGE_POWER) == 2500


def test_serial_number_and_versions() -> None:
    fw = make()
    serial = fw.read(reg.REG_SERIAL_NUMBER, reg.SERIAL_NUMBER_REGS, 0.0)
    assert isinstance(serial, list)
    assert reg.decode_text(serial) == "VNSESIMVNSE3-0"
    fw.serial_number = "AB12"
    serial = fw.read(reg.REG_SERIAL_NUMBER, reg.SERIAL_NUMBER_REGS, 0.0)
    assert isinstance(serial, list)
    assert serial[:3] == [0x4142, 0x3132, 0]  # high byte first, NUL padded
    versions = fw.read(reg.REG_SOFTWARE_VERSION, reg.VERSION_REGS, 0.0)
    assert isinstance(versions, list)
    assert all(0 < value < 0xFFFF for value in versions)
    # The identification blocks end where the reference says: one more register is unmapped.
    assert fw.read(reg.REG_SERIAL_NUMBER, 11, 0.0) is FirmwareFault.ILLEGAL_ADDRESS
    assert fw.read(reg.REG_SOFTWARE_VERSION, 4, 0.0) is FirmwareFault.ILLEGAL_ADDRESS


def test_temperatures_are_tenths_of_a_degree_and_rise_with_load() -> None:
    fw = make()
    idle_c = reg.to_i16(read1(fw, reg.REG_INTERNAL_TEMPERATURE)) / 10.0
    assert 15.0 <= idle_c <= 35.0
    assert fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0) is None
    command(fw, 2500, 0.0)
    settle(fw)
    temps = fw.read(reg.REG_INTERNAL_TEMPERATURE, 3, 10.0)
    assert isinstance(temps, list)
    assert reg.to_i16(temps[0]) / 10.0 > idle_c
    assert all(reg.to_i16(t) >= temps[0] for t in temps[1:])  # MOSFETs run warmer


def test_alarm_and_fault_bitfields_span_their_registers() -> None:
    fw = make()
    assert fw.read(reg.REG_FAULTS, reg.FAULT_REGS, 0.0) == [0, 0, 0, 0]
    fw.fault_bits = (1 << 21) | (1 << 58)  # BMS protection, over-temperature
    fw.alarm_bits = 1 << 17  # BLE abnormal
    faults = fw.read(reg.REG_FAULTS, reg.FAULT_REGS, 0.0)
    alarms = fw.read(reg.REG_ALARMS, reg.ALARM_REGS, 0.0)
    assert isinstance(faults, list)
    assert isinstance(alarms, list)
    assert faults == [0, 1 << 5, 0, 1 << 10]
    assert alarms == [0, 1 << 1]
    assert reg.bit_names(reg.bits_of(faults), reg.FAULT_BITS) == (
        "BMS protection",
        "over-temperature",
    )
    assert reg.bit_names(reg.bits_of(alarms), reg.ALARM_BITS) == ("BLE abnormal",)
    assert reg.bit_names(1 << 9, reg.ALARM_BITS) == ("bit 9",)


def test_decode_text_rejects_blank_and_garbled_blocks() -> None:
    assert reg.decode_text([0x4142, 0x0043]) == "AB"
    assert reg.decode_text([0, 0, 0]) == ""
    assert reg.decode_text([0xFFFF] * 10) == ""
    assert reg.decode_text([0x41E9]) == ""  # not ASCII


def test_soc_register_rounds_the_exact_soc() -> None:
    assert read1(make(soc_pct=12.0), reg.REG_SOC) == 12
    assert read1(make(soc_pct=49.5), reg.REG_SOC) == 50
    assert read1(make(soc_pct=49.49), reg.REG_SOC) == 49


def test_power_signs_ac_plus_discharging_dc_plus_charging() -> None:
    fw = make()
    assert fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0) is None
    command(fw, -1500, 0.0)
    settle(fw)
    assert read_i32(fw, reg.REG_AC_POWER) == -1500
    assert read_i32(fw, reg.REG_BATTERY_POWER) > 0  # charging the cells
    assert read_i32(fw, reg.REG_BATTERY_POWER) < 1500  # minus conversion loss
    assert reg.to_i16(read1(fw, reg.REG_BATTERY_CURRENT)) > 0
    assert reg.to_i16(read1(fw, reg.REG_AC_CURRENT)) < 0
    assert read1(fw, reg.REG_INVERTER_STATE) == reg.InverterState.CHARGE
    command(fw, 800, 10.0)
    settle(fw, 10.0)
    assert read_i32(fw, reg.REG_AC_POWER) == 800
    assert read_i32(fw, reg.REG_BATTERY_POWER) < -800  # drawn from the cells, plus loss
    assert read1(fw, reg.REG_INVERTER_STATE) == reg.InverterState.DISCHARGE


def test_energy_counters_in_hundredths_of_a_kwh() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    command(fw, 1000, 0.0)
    t_s = settle(fw, 0.0, 1800.0)  # 0.5 kWh out
    command(fw, -2000, t_s)
    t_s = settle(fw, t_s, 900.0)  # 0.5 kWh in
    total_charge = reg.to_u32(*fw.read(reg.REG_TOTAL_CHARGE, 2, t_s))  # type: ignore[misc]
    total_discharge = reg.to_u32(*fw.read(reg.REG_TOTAL_DISCHARGE, 2, t_s))  # type: ignore[misc]
    assert total_charge in (49, 50)
    assert total_discharge in (49, 50)
    # Daily counters restart at the next day, the totals do not.
    next_day_s = 86_400.0 * 1.5
    assert reg.to_u32(*fw.read(reg.REG_DAILY_DISCHARGE, 2, t_s)) == total_discharge  # type: ignore[misc]
    assert reg.to_u32(*fw.read(reg.REG_DAILY_DISCHARGE, 2, next_day_s)) == 0  # type: ignore[misc]
    assert reg.to_u32(*fw.read(reg.REG_TOTAL_DISCHARGE, 2, next_day_s)) == total_discharge  # type: ignore[misc]


# ------------------------------------------------------------------ firmware semantics


def test_force_writes_without_rs485_control_are_acknowledged_but_ignored() -> None:
    fw = make()
    assert read1(fw, reg.REG_RS485_CONTROL) == reg.RS485_DISABLE
    command(fw, 1200, 0.0)
    assert read1(fw, reg.REG_FORCE_MODE) == reg.FORCE_DISCHARGE
    assert read1(fw, reg.REG_DISCHARGE_SETPOINT) == 1200
    t_s = settle(fw)
    assert read_i32(fw, reg.REG_AC_POWER) == 0
    # Enabling control makes the stored setpoints act.
    assert fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], t_s) is None
    assert read1(fw, reg.REG_RS485_CONTROL) == reg.RS485_ENABLE
    t_s = settle(fw, t_s)
    assert read_i32(fw, reg.REG_AC_POWER) == 1200


def test_setpoint_write_sequences_drive_the_battery() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    t_s = 0.0
    for power_w in (-1500, 700, 0, 2500, -2500):
        command(fw, power_w, t_s)
        t_s = settle(fw, t_s)
        assert read_i32(fw, reg.REG_AC_POWER) == power_w


def test_writing_the_work_mode_ends_rs485_control() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    assert read1(fw, reg.REG_USER_WORK_MODE) == 1  # reads anti-feed while forced
    command(fw, 900, 0.0)
    t_s = settle(fw)
    assert read_i32(fw, reg.REG_AC_POWER) == 900
    assert fw.write(reg.REG_USER_WORK_MODE, [0], t_s) is None
    assert read1(fw, reg.REG_RS485_CONTROL) == reg.RS485_DISABLE
    assert read1(fw, reg.REG_USER_WORK_MODE) == 0
    t_s = settle(fw, t_s)
    assert read_i32(fw, reg.REG_AC_POWER) == 0


def test_disable_value_releases_control() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    command(fw, -600, 0.0)
    t_s = settle(fw)
    assert fw.write(reg.REG_RS485_CONTROL, [reg.RS485_DISABLE], t_s) is None
    settle(fw, t_s)
    assert read_i32(fw, reg.REG_AC_POWER) == 0


def test_more_than_32_registers_get_no_answer() -> None:
    fw = make()
    assert fw.read(reg.REG_BATTERY_VOLTAGE, 33, 0.0) is FirmwareFault.NO_ANSWER
    assert fw.read(40000, 100, 0.0) is FirmwareFault.NO_ANSWER


@pytest.mark.parametrize(
    ("address", "count"),
    [(30000, 1), (32103 + 3, 1), (32100, 7), (42001, 1), (44004, 1), (65535, 2)],
)
def test_unmapped_registers_are_an_illegal_address(address: int, count: int) -> None:
    assert make().read(address, count, 0.0) is FirmwareFault.ILLEGAL_ADDRESS


def test_zero_count_is_an_illegal_value() -> None:
    assert make().read(reg.REG_SOC, 0, 0.0) is FirmwareFault.ILLEGAL_VALUE


def test_a_refused_read_is_refused_again_after_a_valid_one() -> None:
    # Reads are served by a plan remembered per (address, count): only valid ones get one.
    fw = make()
    for _ in range(2):
        assert fw.read(reg.REG_SOC, 2, 0.0) == fw.read(reg.REG_SOC, 2, 0.0)
        assert fw.read(reg.REG_SOC, 0, 0.0) is FirmwareFault.ILLEGAL_VALUE
        assert fw.read(reg.REG_CAPACITY, 2, 0.0) is FirmwareFault.ILLEGAL_ADDRESS
        assert fw.read(reg.REG_SOC, 33, 0.0) is FirmwareFault.NO_ANSWER


def test_every_mapped_range_reads_register_by_register_the_same() -> None:
    # A read spanning several of the firmware's blocks is their registers in address order.
    fw = make(soc_pct=37.0)
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    command(fw, 700, 0.0)
    t_s = settle(fw)
    fw.alarm_bits, fw.fault_bits = 0x1234_5678, 0x0102_0304_0506_0708
    mapped = sorted(MAPPED_REGISTERS)
    single = {}
    for address in mapped:
        words = fw.read(address, 1, t_s)
        assert isinstance(words, list)
        single[address] = words[0]
    spans = 0
    for address in mapped:
        for count in range(1, reg.MAX_REGISTERS_PER_READ + 1):
            if address + count - 1 not in single or any(
                a not in single for a in range(address, address + count)
            ):
                break
            assert fw.read(address, count, t_s) == [
                single[a] for a in range(address, address + count)
            ]
            spans += 1
    assert spans > len(mapped)


@pytest.mark.parametrize(
    ("address", "value", "fault"),
    [
        (reg.REG_CHARGE_SETPOINT, 2501, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_DISCHARGE_SETPOINT, 65535, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_FORCE_MODE, 3, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_RS485_CONTROL, 1, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_USER_WORK_MODE, 7, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_CHARGE_CUTOFF, 700, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_DISCHARGE_CUTOFF, 301, FirmwareFault.ILLEGAL_VALUE),
        (reg.REG_SOC, 50, FirmwareFault.ILLEGAL_ADDRESS),  # read-only
        (reg.REG_AC_POWER, 0, FirmwareFault.ILLEGAL_ADDRESS),
        (41999, 0, FirmwareFault.ILLEGAL_ADDRESS),  # unmapped
    ],
)
def test_bad_writes_raise_an_exception_and_change_nothing(
    address: int, value: int, fault: FirmwareFault
) -> None:
    fw = make()
    before = [fw.read(a, 1, 0.0) for a in (42000, 42010, 42020, 42021, 43000, 44000, 44001)]
    assert fw.write(address, [value], 0.0) is fault
    after = [fw.read(a, 1, 0.0) for a in (42000, 42010, 42020, 42021, 43000, 44000, 44001)]
    assert after == before


def test_a_multi_register_write_is_all_or_nothing() -> None:
    fw = make()
    assert fw.write(reg.REG_CHARGE_SETPOINT, [500, 3000], 0.0) is FirmwareFault.ILLEGAL_VALUE
    assert read1(fw, reg.REG_CHARGE_SETPOINT) == 0
    assert fw.write(reg.REG_CHARGE_SETPOINT, [500, 600], 0.0) is None
    assert read1(fw, reg.REG_CHARGE_SETPOINT) == 500
    assert read1(fw, reg.REG_DISCHARGE_SETPOINT) == 600


def test_max_power_registers_clamp_the_forced_power() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    assert fw.write(reg.REG_MAX_DISCHARGE_POWER, [800], 0.0) is None
    command(fw, 2000, 0.0)
    settle(fw)
    assert read_i32(fw, reg.REG_AC_POWER) == 800


def test_cutoff_registers_set_the_battery_cutoffs() -> None:
    fw = make(soc_pct=20.0)
    assert fw.write(reg.REG_DISCHARGE_CUTOFF, [300], 0.0) is None
    assert fw.battery.discharge_cutoff_pct == 30.0
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    command(fw, 1000, 0.0)
    settle(fw)
    assert read_i32(fw, reg.REG_AC_POWER) == 0  # already below the new cut-off
    assert read1(fw, reg.REG_ALARMS) & (1 << 4)  # low SoC warning


def test_reboot_resets_setpoints_drops_control_and_goes_silent() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    command(fw, 1500, 0.0)
    t_s = settle(fw)
    fw.reboot(t_s, offline_s=4.0)
    assert fw.offline_until_s == t_s + 4.0
    assert fw.battery.ac_power_w == 0.0  # inverter output switched off during the reboot
    assert fw.read(reg.REG_SOC, 1, t_s + 1.0) is FirmwareFault.NO_ANSWER
    assert fw.write(reg.REG_FORCE_MODE, [1], t_s + 1.0) is FirmwareFault.NO_ANSWER
    back_s = t_s + 4.0
    assert read1(fw, reg.REG_RS485_CONTROL, back_s) == reg.RS485_DISABLE
    assert read1(fw, reg.REG_FORCE_MODE, back_s) == 0
    assert read1(fw, reg.REG_CHARGE_SETPOINT, back_s) == 0
    assert read1(fw, reg.REG_DISCHARGE_SETPOINT, back_s) == 0
    settle(fw, t_s)
    assert read_i32(fw, reg.REG_AC_POWER, back_s) == 0


def test_lost_control_mode_keeps_setpoints_but_stops_obeying() -> None:
    fw = make()
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    command(fw, -1000, 0.0)
    t_s = settle(fw)
    fw.lose_control_mode(t_s)
    assert read1(fw, reg.REG_RS485_CONTROL) == reg.RS485_DISABLE
    assert read1(fw, reg.REG_CHARGE_SETPOINT) == 1000
    settle(fw, t_s)
    assert read_i32(fw, reg.REG_AC_POWER) == 0


def test_soc_garbage_and_not_following_faults() -> None:
    fw = make()
    fw.set_soc_garbage(True)
    assert read1(fw, reg.REG_SOC) == 0xFFFF
    fw.set_soc_garbage(False)
    assert read1(fw, reg.REG_SOC) == 50
    fw.write(reg.REG_RS485_CONTROL, [reg.RS485_ENABLE], 0.0)
    fw.set_not_following(True)
    command(fw, 1000, 0.0)
    t_s = settle(fw)
    assert read1(fw, reg.REG_DISCHARGE_SETPOINT) == 1000
    assert read_i32(fw, reg.REG_AC_POWER) == 0
    fw.set_not_following(False)
    settle(fw, t_s)
    assert read_i32(fw, reg.REG_AC_POWER) == 1000


def test_request_counters_count_every_request() -> None:
    fw = make()
    fw.read(reg.REG_SOC, 1, 0.0)
    fw.read(30000, 1, 0.0)  # failed requests count too: they cost a round trip
    fw.write(reg.REG_FORCE_MODE, [0], 0.0)
    assert (fw.reads, fw.writes) == (2, 1)
