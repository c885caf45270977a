"""Tests of the Venus E driver: the pure commander, then the TCP shell against the simulator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.logging import Log

from engine.adapters.marstek import MarstekBattery, quiet_pymodbus_connect_failures, release_all
from engine.adapters.marstek_registers import (
    FORCE_CHARGE,
    FORCE_DISCHARGE,
    FORCE_STOP,
    MAX_REGISTERS_PER_READ,
    REG_AC_POWER,
    REG_CHARGE_SETPOINT,
    REG_DISCHARGE_SETPOINT,
    REG_FORCE_MODE,
    REG_RS485_CONTROL,
    REG_SOC,
    REG_TOTAL_CHARGE,
    RS485_DISABLE,
    RS485_ENABLE,
    from_i16,
    from_i32,
    setpoint_writes,
)
from engine.adapters.venus_commander import (
    BLOCK_AC_POWER,
    BLOCK_CONTROL,
    BLOCK_COUNTERS,
    BLOCK_FAULTS,
    BLOCK_SERIAL,
    BLOCK_SOC,
    BLOCK_VERSIONS,
    DIAGNOSTIC_BLOCKS,
    EXTRA_READ_ATTEMPTS,
    EXTRA_READS_PER_CYCLE,
    IDENTITY_BLOCKS,
    ControlState,
    VenusCommander,
)
from engine.core.model import BatteryIdentity, BatteryTelemetry
from engine.errors import ConfigError
from engine.ports import Clock, LoopClock
from sim.plant.battery import VenusE
from sim.plant.firmware import FirmwareFault, VenusFirmware, encode_name
from sim.plant.params import BatteryParams
from sim.servers.modbus import BatteryServer, start_battery_server
from tests.fakes import FakeClock

# ---------------------------------------------------------------------------------------
# Pure tests of VenusCommander
# ---------------------------------------------------------------------------------------


def _read_ok(
    cmd: VenusCommander,
    now_s: float,
    *,
    soc: int = 50,
    power_w: int = 0,
    control: int = RS485_ENABLE,
    counters: tuple[int, int] = (1234, 567),
) -> list[tuple[int, int]]:
    """One healthy read cycle; returns the blocks that were due."""
    blocks = cmd.reads_due(now_s)
    for address, _count in blocks:
        if address == REG_SOC:
            cmd.on_read(address, [soc, 5120], now_s)
        elif address == REG_AC_POWER:
            cmd.on_read(address, list(from_i32(power_w)), now_s)
        elif address == REG_TOTAL_CHARGE:
            cmd.on_read(address, [*from_i32(counters[0]), *from_i32(counters[1])], now_s)
        elif address == REG_RS485_CONTROL:
            cmd.on_read(address, [control], now_s)
    return blocks


def _state(cmd: VenusCommander) -> ControlState:
    # a call, so mypy does not keep a narrowed property type across state changes
    return cmd.control_state


def _take_control(cmd: VenusCommander, power_w: int, now_s: float) -> None:
    """First command plus the read-back that confirms control."""
    cmd.on_written(cmd.writes_for(power_w, now_s), now_s)
    _read_ok(cmd, now_s)
    assert _state(cmd) is ControlState.CONFIRMED


def test_first_cycle_reads_every_block_in_one_request_each() -> None:
    cmd = VenusCommander("b1")
    blocks = cmd.reads_due(0.0)
    assert blocks[:2] == [BLOCK_SOC, BLOCK_AC_POWER]  # the vital ones first
    assert set(blocks) == {BLOCK_SOC, BLOCK_AC_POWER, BLOCK_CONTROL, BLOCK_COUNTERS}
    assert BLOCK_SOC == (32104, 2)
    assert BLOCK_AC_POWER == (32202, 2)
    assert BLOCK_COUNTERS == (33000, 4)
    assert BLOCK_CONTROL == (42000, 1)
    assert all(count <= MAX_REGISTERS_PER_READ for _, count in blocks)


def test_first_command_takes_control_before_the_setpoint() -> None:
    cmd = VenusCommander("b1")
    writes = cmd.writes_for(800, 0.0)
    assert writes == [(REG_RS485_CONTROL, RS485_ENABLE), *setpoint_writes(800)]


def test_control_already_held_on_the_device_is_not_rewritten() -> None:
    cmd = VenusCommander("b1")
    _read_ok(cmd, 0.0, control=RS485_ENABLE)
    assert _state(cmd) is ControlState.CONFIRMED
    assert cmd.writes_for(-300, 0.0) == list(setpoint_writes(-300))


def test_unchanged_setpoint_is_not_resent() -> None:
    cmd = VenusCommander("b1", reassert_s=30.0)
    _take_control(cmd, 500, 0.0)
    assert cmd.held_power_w == 500
    assert cmd.writes_for(500, 1.0) == []
    assert cmd.writes_for(500, 29.9) == []


def test_changed_setpoint_sends_only_changed_registers_force_mode_last() -> None:
    cmd = VenusCommander("b1")
    _take_control(cmd, 500, 0.0)
    assert cmd.writes_for(700, 1.0) == [(REG_DISCHARGE_SETPOINT, 700)]
    # direction change: everything differs, force mode goes last
    writes = cmd.writes_for(-400, 1.0)
    assert writes == list(setpoint_writes(-400))
    assert writes[-1] == (REG_FORCE_MODE, FORCE_CHARGE)
    # to idle: force mode first so the battery stops before the setpoint is zeroed
    assert cmd.writes_for(0, 1.0) == [(REG_FORCE_MODE, FORCE_STOP), (REG_DISCHARGE_SETPOINT, 0)]


def test_setpoint_beyond_the_limit_is_clamped_and_not_resent() -> None:
    cmd = VenusCommander("b1")
    _take_control(cmd, 9000, 0.0)
    assert cmd.held_power_w == 2500
    assert cmd.writes_for(2500, 1.0) == []


def test_setpoint_is_reasserted_in_full_periodically() -> None:
    cmd = VenusCommander("b1", reassert_s=30.0)
    _take_control(cmd, 500, 0.0)
    cmd.on_written(cmd.writes_for(700, 10.0), 10.0)  # a partial write does not restart the timer
    assert cmd.writes_for(700, 29.0) == []
    assert cmd.writes_for(700, 30.0) == list(setpoint_writes(700))
    cmd.on_written(cmd.writes_for(700, 30.0), 30.0)
    assert cmd.writes_for(700, 59.0) == []
    assert cmd.writes_for(700, 60.0) == list(setpoint_writes(700))


def test_control_is_rechecked_every_interval() -> None:
    cmd = VenusCommander("b1", control_recheck_s=60.0)
    _take_control(cmd, 0, 0.0)
    assert BLOCK_CONTROL not in _read_ok(cmd, 30.0)
    assert BLOCK_CONTROL not in _read_ok(cmd, 59.0)
    assert BLOCK_CONTROL in _read_ok(cmd, 60.0)
    assert BLOCK_CONTROL not in _read_ok(cmd, 61.0)


def test_control_written_is_read_back_next_cycle() -> None:
    cmd = VenusCommander("b1")
    _read_ok(cmd, 0.0, control=RS485_DISABLE)
    assert cmd.control_lost_count == 0  # never had it: not a loss
    cmd.on_written(cmd.writes_for(100, 0.0), 0.0)
    assert _state(cmd) is ControlState.WRITTEN
    assert BLOCK_CONTROL in cmd.reads_due(1.0)


def test_lost_control_is_counted_and_reapplied_with_the_full_setpoint() -> None:
    cmd = VenusCommander("b1", control_recheck_s=60.0)
    _take_control(cmd, 500, 0.0)
    telemetry_blocks = _read_ok(cmd, 60.0, control=RS485_DISABLE)
    assert BLOCK_CONTROL in telemetry_blocks
    assert cmd.telemetry(60.0).rs485_control is False
    assert cmd.control_lost_count == 1
    assert _state(cmd) is ControlState.LOST
    assert cmd.held_power_w is None
    assert cmd.writes_for(500, 60.5) == [
        (REG_RS485_CONTROL, RS485_ENABLE),
        *setpoint_writes(500),
    ]
    cmd.on_written(cmd.writes_for(500, 60.5), 60.5)
    assert BLOCK_CONTROL in _read_ok(cmd, 61.0)
    assert _state(cmd) is ControlState.CONFIRMED
    assert cmd.control_lost_count == 1


def test_control_read_back_lost_right_after_writing_counts_as_lost() -> None:
    cmd = VenusCommander("b1")
    cmd.on_written(cmd.writes_for(100, 0.0), 0.0)
    _read_ok(cmd, 1.0, control=RS485_DISABLE)
    assert cmd.control_lost_count == 1
    assert cmd.writes_for(100, 1.0)[0] == (REG_RS485_CONTROL, RS485_ENABLE)


def test_failed_write_is_resent_in_full() -> None:
    cmd = VenusCommander("b1")
    _take_control(cmd, 500, 0.0)
    writes = cmd.writes_for(-800, 1.0)
    cmd.on_written(writes[:1], 1.0)  # the first landed, the second failed
    cmd.on_write_failed(1.0)
    assert cmd.held_power_w is None
    assert cmd.writes_for(-800, 2.0) == list(setpoint_writes(-800))
    # even the old value is re-sent: the battery's state is unknown
    assert cmd.writes_for(500, 2.0) == list(setpoint_writes(500))


def test_release_idles_then_hands_control_back() -> None:
    cmd = VenusCommander("b1")
    _take_control(cmd, 1500, 0.0)
    writes = cmd.release_writes()
    assert writes == [*setpoint_writes(0), (REG_RS485_CONTROL, RS485_DISABLE)]
    assert writes[0] == (REG_FORCE_MODE, FORCE_STOP)
    cmd.on_written(writes, 1.0)
    assert _state(cmd) is ControlState.RELEASED
    assert cmd.held_power_w == 0
    assert BLOCK_CONTROL not in cmd.reads_due(100.0)
    # commanding again takes control again
    assert cmd.writes_for(200, 2.0)[0] == (REG_RS485_CONTROL, RS485_ENABLE)


def test_healthy_telemetry_is_decoded() -> None:
    cmd = VenusCommander("b1")
    _read_ok(cmd, 0.0, soc=77, power_w=-1234, counters=(123456, 654321))
    t = cmd.telemetry(0.0)
    assert t.name == "b1"
    assert t.online is True
    assert t.soc_pct == 77.0
    assert t.power_w == -1234.0  # 0xFFFF_FB2E: int32, charging
    assert t.capacity_wh == 5120.0
    assert t.charge_total_wh == pytest.approx(1234560.0)
    assert t.discharge_total_wh == pytest.approx(6543210.0)
    assert t.rs485_control is True


def test_discharging_power_is_positive() -> None:
    cmd = VenusCommander("b1")
    cmd.reads_due(0.0)
    cmd.on_read(REG_SOC, [50, 5120], 0.0)
    cmd.on_read(REG_AC_POWER, [0x0000, 2000], 0.0)
    assert cmd.telemetry(0.0).power_w == 2000.0
    cmd.reads_due(1.0)
    cmd.on_read(REG_SOC, [50, 5120], 1.0)
    cmd.on_read(REG_AC_POWER, [0x0000, 0xFFFF], 1.0)  # high word first: 65535, not -1
    t = cmd.telemetry(1.0)
    assert t.power_w is None  # 65535 W is not a plausible reading
    assert t.online is False


@pytest.mark.parametrize("raw_soc", [0xFFFF, 101, 250])
def test_garbage_soc_is_none_and_battery_unhealthy(raw_soc: int) -> None:
    cmd = VenusCommander("b1")
    cmd.reads_due(0.0)
    cmd.on_read(REG_SOC, [raw_soc, 5120], 0.0)
    cmd.on_read(REG_AC_POWER, [0, 300], 0.0)
    t = cmd.telemetry(0.0)
    assert t.soc_pct is None
    assert t.online is False
    assert t.power_w == 300.0  # the rest is still validated data


@pytest.mark.parametrize("raw_soc", [0, 11, 100])
def test_soc_bounds_are_valid(raw_soc: int) -> None:
    cmd = VenusCommander("b1")
    _read_ok(cmd, 0.0, soc=raw_soc)
    t = cmd.telemetry(0.0)
    assert t.online is True
    assert t.soc_pct == float(raw_soc)


def test_garbage_counters_and_capacity_are_none() -> None:
    cmd = VenusCommander("b1")
    cmd.reads_due(0.0)
    cmd.on_read(REG_SOC, [50, 0xFFFF], 0.0)
    cmd.on_read(REG_AC_POWER, [0, 0], 0.0)
    cmd.on_read(REG_TOTAL_CHARGE, [0xFFFF, 0xFFFF, 0, 7], 0.0)
    t = cmd.telemetry(0.0)
    assert t.online is True
    assert t.capacity_wh is None
    assert t.charge_total_wh is None
    assert t.discharge_total_wh == 70.0


def test_counters_are_read_at_their_own_interval() -> None:
    cmd = VenusCommander("b1", counters_interval_s=10.0)
    assert BLOCK_COUNTERS in _read_ok(cmd, 0.0, counters=(100, 200))
    assert BLOCK_COUNTERS not in _read_ok(cmd, 5.0)
    assert cmd.telemetry(5.0).charge_total_wh == 1000.0  # last known, lifetime counter
    assert BLOCK_COUNTERS in cmd.reads_due(10.0)


def test_short_reply_fails_the_cycle() -> None:
    cmd = VenusCommander("b1")
    cmd.reads_due(0.0)
    cmd.on_read(REG_SOC, [50], 0.0)
    cmd.on_read(REG_AC_POWER, [0, 10], 0.0)
    t = cmd.telemetry(0.0)
    assert t.online is False
    assert t.soc_pct is None


def test_unknown_block_is_a_programming_error() -> None:
    cmd = VenusCommander("b1")
    cmd.reads_due(0.0)
    with pytest.raises(ValueError, match="32200"):
        cmd.on_read(32200, [1], 0.0)


def test_failed_read_reports_nothing_and_forgets_the_device_state() -> None:
    cmd = VenusCommander("b1")
    _take_control(cmd, 500, 0.0)
    cmd.reads_due(1.0)
    cmd.on_read(REG_SOC, [60, 5120], 1.0)
    cmd.on_read_failed(1.0, "timeout")
    t = cmd.telemetry(1.0)
    assert t.online is False
    assert t.soc_pct is None
    assert t.power_w is None
    # it may have rebooted meanwhile: verify control and re-send everything
    assert BLOCK_CONTROL in cmd.reads_due(2.0)
    assert cmd.writes_for(500, 2.0) == [(REG_RS485_CONTROL, RS485_ENABLE), *setpoint_writes(500)]


def test_each_cycle_starts_empty() -> None:
    cmd = VenusCommander("b1")
    _read_ok(cmd, 0.0, soc=40)
    cmd.reads_due(1.0)  # nothing answered in this cycle
    t = cmd.telemetry(1.0)
    assert t.online is False
    assert t.soc_pct is None


@pytest.mark.parametrize("bad", [True, 12.5, "100", None])
def test_non_int_power_is_refused(bad: object) -> None:
    cmd = VenusCommander("b1")
    with pytest.raises(TypeError, match="power_w"):
        cmd.writes_for(bad, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"reassert_s": 0.0}, {"control_recheck_s": -1.0}, {"counters_interval_s": -1.0}]
)
def test_bad_commander_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        VenusCommander("b1", **kwargs)


def test_availability_is_logged_once_per_transition(caplog: pytest.LogCaptureFixture) -> None:
    cmd = VenusCommander("b1")
    caplog.set_level(logging.INFO, logger="engine.adapters.venus_commander")
    _read_ok(cmd, 0.0)
    cmd.telemetry(0.0)
    for i in range(1, 4):
        cmd.reads_due(float(i))
        cmd.on_read_failed(float(i), "no reply")
        cmd.telemetry(float(i))
    for i in range(4, 7):
        _read_ok(cmd, float(i))
        cmd.telemetry(float(i))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("available again" in m for m in messages) == 1
    assert any("no reply" in m for m in messages)
    assert cmd.online is True


def _implied_power_w(regs: dict[int, int]) -> int | None:
    mode = regs.get(REG_FORCE_MODE)
    if mode == FORCE_DISCHARGE:
        return regs.get(REG_DISCHARGE_SETPOINT)
    if mode == FORCE_CHARGE:
        charge_w = regs.get(REG_CHARGE_SETPOINT)
        return None if charge_w is None else -charge_w
    return 0 if mode == FORCE_STOP else None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-3000, max_value=3000),
            st.floats(min_value=0.0, max_value=40.0),
            st.integers(min_value=-1, max_value=4),  # index of a failing write, -1 = none
        ),
        min_size=1,
        max_size=25,
    )
)
def test_device_always_ends_up_holding_the_last_command(
    steps: list[tuple[int, float, int]],
) -> None:
    """Whatever the de-duplication skips, a successful command leaves the right setpoint."""
    cmd = VenusCommander("b1", reassert_s=30.0)
    device: dict[int, int] = {REG_RS485_CONTROL: RS485_DISABLE}
    now_s = 0.0
    for power_w, dt_s, fail_at in steps:
        now_s += dt_s
        writes = cmd.writes_for(power_w, now_s)
        landed = writes if fail_at < 0 or fail_at >= len(writes) else writes[:fail_at]
        for address, value in landed:
            device[address] = value
        cmd.on_written(landed, now_s)
        if landed is not writes:
            cmd.on_write_failed(now_s)
            continue
        assert device[REG_RS485_CONTROL] == RS485_ENABLE
        assert _implied_power_w(device) == max(-2500, min(2500, power_w))
        assert cmd.held_power_w == _implied_power_w(device)
        # the direction not in use is always zeroed
        if power_w > 0:
            assert device[REG_CHARGE_SETPOINT] == 0
        elif power_w < 0:
            assert device[REG_DISCHARGE_SETPOINT] == 0


def test_battery_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        MarstekBattery("b1", "127.0.0.1", clock=LoopClock(), timeout_s=0.0)
    with pytest.raises(ConfigError, match="unit_id"):
        MarstekBattery("b1", "127.0.0.1", unit_id=300, clock=LoopClock())


# ---------------------------------------------------------------------------------------
# MarstekBattery against the simulator's Modbus TCP server on 127.0.0.1
# ---------------------------------------------------------------------------------------

TIMEOUT_S = 0.5  # per request; the stall tests stall longer than this


def _firmware(soc_pct: float = 50.0, name: str = "b1") -> VenusFirmware:
    # instant response, so one advance() step shows a commanded power at the AC terminals
    params = BatteryParams(dead_time_s=0.0, ramp_w_per_s=0.0, relay_delay_s=0.0)
    return VenusFirmware(VenusE(params, soc_pct, name=name))


def _advance(firmware: VenusFirmware, dt_s: float = 1.0) -> None:
    battery = firmware.battery
    now_s = asyncio.get_running_loop().time()
    start_s = now_s if battery.time_s is None else max(now_s, battery.time_s)
    battery.advance(start_s, dt_s)


def _battery(server: BatteryServer, clock: Clock | None = None, **kwargs: Any) -> MarstekBattery:
    options: dict[str, Any] = {
        "message_gap_s": 0.0,
        "timeout_s": TIMEOUT_S,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    }
    options.update(kwargs)
    return MarstekBattery(
        server.firmware.battery.name,
        "127.0.0.1",
        server.port,
        clock=clock if clock is not None else LoopClock(),
        **options,
    )


@pytest.fixture
async def server() -> AsyncIterator[BatteryServer]:
    battery_server = await start_battery_server(_firmware(), host="127.0.0.1", port=0)
    yield battery_server
    await battery_server.stop()


@pytest.fixture
async def battery(server: BatteryServer) -> AsyncIterator[MarstekBattery]:
    driver = _battery(server)
    assert await driver.connect()
    yield driver
    await driver.close()


async def _read_until_online(driver: MarstekBattery, cycles: int = 40) -> BatteryTelemetry:
    telemetry = await driver.read()
    for _ in range(cycles):
        if telemetry.online:
            break
        await asyncio.sleep(0.05)
        telemetry = await driver.read()
    return telemetry


async def test_read_reports_validated_telemetry(battery: MarstekBattery) -> None:
    t = await battery.read()
    assert t.online is True
    assert t.soc_pct == 50.0
    assert t.power_w == 0.0
    assert t.capacity_wh == 5120.0
    assert t.rs485_control is False  # not taken yet
    # SoC, power, control, counters: one request each; then two reporting-only blocks.
    assert battery.reads == 4 + EXTRA_READS_PER_CYCLE


async def test_commands_land_in_the_firmware(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    firmware = server.firmware
    await battery.read()
    assert await battery.apply(800)
    assert firmware.control_enabled
    assert (firmware.force_mode, firmware.charge_setpoint_w, firmware.discharge_setpoint_w) == (
        FORCE_DISCHARGE,
        0,
        800,
    )
    assert await battery.apply(-600)
    assert (firmware.force_mode, firmware.charge_setpoint_w, firmware.discharge_setpoint_w) == (
        FORCE_CHARGE,
        600,
        0,
    )
    assert await battery.apply(0)
    assert (firmware.force_mode, firmware.charge_setpoint_w, firmware.discharge_setpoint_w) == (
        FORCE_STOP,
        0,
        0,
    )
    writes = battery.writes
    assert await battery.apply(0)  # unchanged: nothing sent
    assert battery.writes == writes
    assert (await battery.read()).rs485_control is True


async def test_ac_power_is_positive_discharging_negative_charging(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    assert await battery.apply(1000)
    _advance(server.firmware)
    assert (await battery.read()).power_w == 1000.0
    assert await battery.apply(-700)
    _advance(server.firmware)
    assert (await battery.read()).power_w == -700.0


async def test_offline_battery_reads_offline_then_recovers_and_is_recommanded(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    firmware = server.firmware
    assert (await battery.read()).online
    assert await battery.apply(500)
    writes_before = battery.writes
    await server.set_offline(True)
    t = await battery.read()
    assert t.online is False
    assert t.soc_pct is None
    assert t.power_w is None
    assert not await battery.apply(500)
    await server.set_offline(False)
    t = await _read_until_online(battery)
    assert t.online is True
    assert t.soc_pct == 50.0
    # it may have rebooted while out of sight: the whole command goes out again
    assert await battery.apply(500)
    assert battery.writes - writes_before >= 3
    assert firmware.control_enabled
    assert firmware.target_w == 500.0


async def test_exception_replies_make_the_battery_offline(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    assert (await battery.read()).online
    server.exception_mode = True
    t = await battery.read()
    assert t.online is False
    assert t.soc_pct is None
    assert not await battery.apply(300)
    server.exception_mode = False
    assert (await _read_until_online(battery)).online
    assert await battery.apply(300)
    assert server.firmware.target_w == 300.0


async def test_failed_requests_count_as_errors_and_the_next_attempts_as_retries(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    assert (await battery.read()).online
    assert (battery.errors, battery.retries) == (0, 0)
    server.exception_mode = True
    assert not (await battery.read()).online  # the first request fails, the cycle stops
    assert (battery.errors, battery.retries) == (1, 0)
    assert not (await battery.read()).online
    assert (battery.errors, battery.retries) == (2, 1)
    server.exception_mode = False
    assert (await _read_until_online(battery)).online
    errors, retries = battery.errors, battery.retries
    assert retries >= 2  # the attempt that succeeded followed a failure
    assert (await battery.read()).online
    assert (battery.errors, battery.retries) == (errors, retries)  # healthy: nothing counted


async def test_stall_longer_than_the_timeout_is_offline_not_a_guess(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    firmware = server.firmware
    assert await battery.apply(400)
    _advance(firmware)
    assert (await battery.read()).power_w == 400.0
    server.stall_s = TIMEOUT_S * 2
    t = await battery.read()
    assert t.online is False
    assert t.power_w is None  # not the last known 400 W
    assert t.soc_pct is None
    assert battery.commander.held_power_w is None  # the write state is unknown too
    server.stall_s = 0.0
    t = await _read_until_online(battery)
    assert t.online is True
    assert t.power_w == 400.0


async def test_garbage_soc_from_the_device_is_offline(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    server.firmware.set_soc_garbage(True)
    t = await battery.read()
    assert t.online is False
    assert t.soc_pct is None
    server.firmware.set_soc_garbage(False)
    assert (await battery.read()).soc_pct == 50.0


async def test_control_lost_on_the_device_is_reapplied_within_the_recheck_interval(
    server: BatteryServer,
) -> None:
    firmware = server.firmware
    clock = FakeClock(1000.0)
    driver = _battery(server, clock, control_recheck_s=60.0, reassert_s=1000.0)
    try:
        await driver.read()
        assert await driver.apply(600)
        await driver.read()  # confirms control
        lost_at_s = clock.now()
        firmware.lose_control_mode()
        assert firmware.target_w == 0.0  # the firmware ignores the stored setpoint now
        reapplied_at_s = None
        for _ in range(8):  # 10 s cycles: a recheck must come within 60 s
            clock.t_s += 10.0
            await driver.read()
            await driver.apply(600)
            if firmware.control_enabled:
                reapplied_at_s = clock.now()
                break
        assert reapplied_at_s is not None
        assert reapplied_at_s - lost_at_s <= 60.0
        assert driver.commander.control_lost_count == 1
        assert firmware.target_w == 600.0
    finally:
        await driver.close()


async def test_reconnect_backs_off_exponentially_on_the_injected_clock(
    server: BatteryServer,
) -> None:
    clock = FakeClock()
    driver = _battery(server, clock, backoff_initial_s=1.0, backoff_max_s=4.0)
    try:
        await server.set_offline(True)
        attempts: list[float] = []
        for step in range(40):  # 0.0, 0.5, ... 19.5 s
            clock.t_s = step * 0.5
            before = driver.connects
            assert (await driver.read()).online is False
            if driver.connects > before:
                attempts.append(clock.t_s)
        assert attempts[:5] == [0.0, 1.0, 3.0, 7.0, 11.0]  # 1, 2, 4, then capped at 4
        await server.set_offline(False)
        clock.t_s = 100.0
        assert (await driver.read()).online is True
    finally:
        await driver.close()


async def test_requests_are_paced_through_the_injected_clock(server: BatteryServer) -> None:
    clock = FakeClock(1000.0)
    driver = _battery(server, clock, message_gap_s=0.2)
    try:
        assert (await driver.read()).online
        assert len(clock.sleeps) == 4 + EXTRA_READS_PER_CYCLE  # one gap before each request
        assert all(s == pytest.approx(0.2) for s in clock.sleeps)
    finally:
        await driver.close()


async def test_the_unit_id_is_sent_with_every_request(server: BatteryServer) -> None:
    wrong = _battery(server, unit_id=2)
    try:
        assert (await wrong.read()).online is False  # a gateway would not answer for unit 2
    finally:
        await wrong.close()


async def test_release_idles_and_hands_back_control(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    firmware = server.firmware
    assert await battery.apply(1500)
    assert await battery.release()
    assert firmware.control_enabled is False
    assert (firmware.force_mode, firmware.charge_setpoint_w, firmware.discharge_setpoint_w) == (
        FORCE_STOP,
        0,
        0,
    )
    assert await battery.apply(200)  # commanding again takes control again
    assert firmware.control_enabled


async def test_one_dead_battery_does_not_block_the_others(server: BatteryServer) -> None:
    stalled = await start_battery_server(_firmware(name="b2"), host="127.0.0.1", port=0)
    healthy = _battery(server)
    dead = _battery(stalled, timeout_s=0.2)
    try:
        assert await healthy.apply(700)
        assert await dead.apply(700)
        stalled.stall_s = 30.0
        good, bad = await asyncio.gather(healthy.read(), dead.read())
        assert good.online is True
        assert bad.online is False
        released = await release_all([healthy, dead])
        assert released == {"b1": True, "b2": False}
        assert server.firmware.control_enabled is False
        assert server.firmware.target_w == 0.0
    finally:
        await healthy.close()
        await dead.close()
        await stalled.stop()


# ---------------------------------------------------------------------------------------
# Identification and diagnostics (reporting only)
# ---------------------------------------------------------------------------------------


def _extras_ok(cmd: VenusCommander, now_s: float, replies: dict[int, list[int]]) -> None:
    for address, _count in cmd.extra_reads_due(now_s, limit=99):
        if address in replies:
            cmd.on_read(address, replies[address], now_s)


def test_identity_and_diagnostics_are_validated() -> None:
    cmd = VenusCommander("b1", counters_interval_s=10.0)
    _read_ok(cmd, 0.0)
    _extras_ok(
        cmd,
        0.0,
        {
            31000: encode_name("VNSE3-0"),
            31100: [153, 0xFFFF, 213],  # EMS version missing
            31200: [0xFFFF] * 10,  # no serial: all ones
            32100: [5234, from_i16(-1234)],  # 52.34 V, charging 12.34 A
            35000: [from_i16(-52)],  # -5.2 degC
            36000: [1 << 4, 0],
            36100: [0, 0, 0, 0],
        },
    )
    t = cmd.telemetry(0.0)
    assert t.identity == BatteryIdentity(
        device_name="VNSE3-0", serial_number=None, software_version="1.53", bms_version=213
    )
    assert t.identity is not None
    assert t.identity.firmware == "1.53 (BMS 213)"
    assert t.voltage_v == pytest.approx(52.34)
    assert t.current_a == pytest.approx(12.34)  # engine sign: + discharging
    assert t.temperature_c == pytest.approx(-5.2)
    assert t.alarms == ("low battery SoC warning",)
    assert t.faults == ()
    # Garbage diagnostics become None, never a value.
    _extras_ok(cmd, 10.0, {32100: [0xFFFF, 0x7FFF], 35000: [0x7FFF]})
    t = cmd.telemetry(10.0)
    assert (t.voltage_v, t.current_a, t.temperature_c) == (None, None, None)


def test_identity_is_read_once_per_connection_and_diagnostics_every_interval() -> None:
    cmd = VenusCommander("b1", counters_interval_s=10.0)
    first = cmd.extra_reads_due(0.0, limit=99)
    assert set(first) == {*IDENTITY_BLOCKS, *DIAGNOSTIC_BLOCKS}
    assert cmd.extra_reads_due(0.0) == first[:EXTRA_READS_PER_CYCLE]  # spread over cycles
    _extras_ok(cmd, 0.0, {address: [0] * count for address, count in first})
    assert cmd.extra_reads_due(5.0, limit=99) == []
    assert set(cmd.extra_reads_due(10.0, limit=99)) == set(DIAGNOSTIC_BLOCKS)
    cmd.on_connected()
    assert set(IDENTITY_BLOCKS) <= set(cmd.extra_reads_due(5.0, limit=99))


def test_a_refused_block_is_not_asked_again_and_never_makes_the_battery_offline() -> None:
    cmd = VenusCommander("b1", counters_interval_s=10.0)
    _read_ok(cmd, 0.0)
    cmd.on_extra_read_failed(BLOCK_SERIAL[0], 0.0, refused=True)
    for _ in range(EXTRA_READ_ATTEMPTS):  # a block that only ever times out is given up too
        cmd.on_extra_read_failed(BLOCK_FAULTS[0], 0.0, refused=False)
    assert cmd.telemetry(0.0).online
    cmd.on_connected()
    due = cmd.extra_reads_due(1000.0, limit=99)
    assert BLOCK_SERIAL not in due
    assert BLOCK_FAULTS not in due
    assert BLOCK_VERSIONS in due


class _NoSerialFirmware(VenusFirmware):
    """A firmware without 31200 (like the Venus E v3): the serial read gets an exception."""

    def read(self, address: int, count: int, now_s: float) -> list[int] | FirmwareFault:
        if address == BLOCK_SERIAL[0]:
            self.reads += 1
            return FirmwareFault.ILLEGAL_ADDRESS
        return super().read(address, count, now_s)


async def test_identity_and_diagnostics_from_the_simulator(
    battery: MarstekBattery, server: BatteryServer
) -> None:
    firmware = server.firmware
    assert await battery.apply(1000)
    _advance(firmware)
    t = await battery.read()
    for _ in range(4):  # the reporting-only blocks come two a cycle
        t = await battery.read()
    assert t.identity is not None
    assert t.identity.serial_number == "VNSESIMb1"
    assert t.identity.firmware == "1.53 (EMS 153, BMS 213)"
    assert t.voltage_v is not None
    assert 40.0 <= t.voltage_v <= 58.4
    assert t.current_a is not None
    assert t.current_a > 0
    assert t.temperature_c is not None
    assert t.temperature_c > 25.0
    assert (t.alarms, t.faults) == ((), ())
    # The identification is not read again on the same connection.
    reads = battery.reads
    await battery.read()
    assert battery.reads - reads <= 4  # the vital blocks only (diagnostics not yet due)


async def test_a_battery_without_a_serial_register_stays_online() -> None:
    params = BatteryParams(dead_time_s=0.0, ramp_w_per_s=0.0, relay_delay_s=0.0)
    firmware = _NoSerialFirmware(VenusE(params, 50.0, name="v3"))
    server = await start_battery_server(firmware, host="127.0.0.1", port=0)
    driver = _battery(server)
    try:
        telemetry = [await driver.read() for _ in range(6)]
        assert all(t.online for t in telemetry)
        identity = telemetry[-1].identity
        assert identity is not None
        assert identity.serial_number is None
        assert identity.software_version == "1.53"
        refused = firmware.reads
        await server.set_offline(True)
        await server.set_offline(False)
        for _ in range(6):  # reconnects, reads the identification again, minus the serial
            await driver.read()
        assert (await _read_until_online(driver)).online
        assert driver.commander.extra_reads_due(1e9, limit=99).count(BLOCK_SERIAL) == 0
        assert firmware.reads > refused
    finally:
        await driver.close()
        await server.stop()


async def test_a_returning_battery_is_found_by_the_probe_before_the_backoff_ends(
    server: BatteryServer,
) -> None:
    clock = FakeClock()
    driver = _battery(
        server, clock, backoff_initial_s=30.0, backoff_max_s=30.0, probe_interval_s=1.0
    )
    try:
        assert (await driver.read()).online
        await server.set_offline(True)
        for _ in range(3):  # connection lost, then refused: backing off for 30 s
            clock.t_s += 1.0
            assert (await driver.read()).online is False
        await server.set_offline(False)
        back_at_s = None
        for _ in range(20):  # 20 s of injected time: well inside the 30 s backoff
            clock.t_s += 1.0
            if (await driver.read()).online:
                back_at_s = clock.t_s
                break
            # Let the background probe (real sockets) finish before the next cycle.
            probe = driver._probe_task
            if probe is not None:
                await asyncio.wait_for(asyncio.shield(probe), timeout=5.0)
        assert back_at_s is not None, "the battery stayed out of control for the whole backoff"
        assert driver.probes >= 1
        assert await driver.apply(300)  # a new connection: control is taken again
        assert server.firmware.control_enabled
    finally:
        await driver.close()


def test_pymodbus_repeated_connect_failures_leave_no_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # pymodbus replaces a line identical to its last one by "Repeating....": that one goes too,
    # while a repeat of any other pymodbus line is still shown.
    quiet_pymodbus_connect_failures()
    warn = cast("Callable[..., None]", Log.warning)  # pymodbus' own logger, untyped
    with caplog.at_level(logging.DEBUG, logger="pymodbus.logging"):
        for _ in range(3):
            warn("Failed to connect {}", "[Errno 111] Connection refused")
        warn("Frame check failed, ignoring!!")
        warn("Frame check failed, ignoring!!")
    assert [r.getMessage() for r in caplog.records] == [
        "Frame check failed, ignoring!!",
        "Repeating....",
    ]


async def test_a_dead_battery_logs_one_line_down_and_one_up_without_pymodbus_noise(
    server: BatteryServer, caplog: pytest.LogCaptureFixture
) -> None:
    driver = _battery(server, backoff_initial_s=0.01, backoff_max_s=0.02, probe_interval_s=0.01)
    try:
        with caplog.at_level(logging.DEBUG):
            assert (await driver.read()).online
            await server.set_offline(True)
            for _ in range(30):  # many reconnect attempts and probes
                await driver.read()
                await asyncio.sleep(0.01)
            await server.set_offline(False)
            assert (await _read_until_online(driver)).online
    finally:
        await driver.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if "Failed to connect" in r.getMessage()]
    assert [r.getMessage() for r in warnings if "unavailable" in r.getMessage()] == [
        warnings[0].getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    back = [r for r in caplog.records if "available again" in r.getMessage()]
    assert len(back) == 1
