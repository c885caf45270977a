"""The simulated battery over real Modbus TCP: a pymodbus client against the server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse

from engine.adapters import marstek_registers as reg
from sim.plant.battery import VenusE
from sim.plant.firmware import VenusFirmware
from sim.plant.params import BatteryParams
from sim.servers.modbus import DEFAULT_STALL_S, BatteryServer, start_battery_server

FAST = BatteryParams(dead_time_s=0.0, relay_delay_s=0.0, ramp_w_per_s=math.inf, standby_w=0.0)
NO_ANSWER_TIMEOUT_S = 0.3


@pytest.fixture
def firmware() -> VenusFirmware:
    return VenusFirmware(VenusE(FAST, 50.0, name="VNSE-SIM"))


@pytest.fixture
async def server(firmware: VenusFirmware) -> AsyncIterator[BatteryServer]:
    # The firmware's clock is the battery model's time, so tests decide when things happen.
    battery_server = await start_battery_server(
        firmware, "127.0.0.1", 0, unit_id=1, clock=lambda: firmware.battery.time_s or 0.0
    )
    yield battery_server
    await battery_server.stop()


def make_client(port: int, timeout_s: float = 2.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=timeout_s, retries=0, reconnect_delay=0
    )


@pytest.fixture
async def client(server: BatteryServer) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = make_client(server.port, NO_ANSWER_TIMEOUT_S)
    assert await modbus.connect()
    yield modbus
    modbus.close()


async def read(client: AsyncModbusTcpClient, address: int, count: int = 1) -> list[int]:
    response = await client.read_holding_registers(address, count=count, device_id=1)
    assert not response.isError(), response
    return list(response.registers)


async def write(client: AsyncModbusTcpClient, address: int, value: int) -> None:
    response = await client.write_register(address, value, device_id=1)
    assert not response.isError(), response


def settle(firmware: VenusFirmware, seconds: float = 5.0) -> None:
    t_s = firmware.battery.time_s or 0.0
    for _ in range(round(seconds / 0.5)):
        firmware.battery.advance(t_s, 0.5)
        t_s += 0.5


async def test_reads_soc_capacity_and_name(client: AsyncModbusTcpClient) -> None:
    assert await read(client, reg.REG_SOC, 2) == [50, 5120]
    name = await read(client, reg.REG_DEVICE_NAME, reg.DEVICE_NAME_REGS)
    assert b"".join(w.to_bytes(2, "big") for w in name).rstrip(b"\0") == b"VNSE-SIM"


async def test_control_sequence_moves_the_battery_and_ac_power_is_signed(
    client: AsyncModbusTcpClient, firmware: VenusFirmware
) -> None:
    await write(client, reg.REG_RS485_CONTROL, reg.RS485_ENABLE)
    assert await read(client, reg.REG_RS485_CONTROL) == [reg.RS485_ENABLE]
    for address, value in reg.setpoint_writes(-1200):
        await write(client, address, value)
    settle(firmware)
    high, low = await read(client, reg.REG_AC_POWER, 2)
    assert high == 0xFFFF  # negative int32, high word first
    assert reg.to_i32(high, low) == -1200
    for address, value in reg.setpoint_writes(700):
        await write(client, address, value)
    settle(firmware)
    assert reg.to_i32(*await read(client, reg.REG_AC_POWER, 2)) == 700
    assert firmware.writes == 7
    assert firmware.reads >= 3


async def test_force_write_without_control_is_acknowledged_and_ignored(
    client: AsyncModbusTcpClient, firmware: VenusFirmware
) -> None:
    for address, value in reg.setpoint_writes(900):
        await write(client, address, value)
    assert await read(client, reg.REG_DISCHARGE_SETPOINT) == [900]
    settle(firmware)
    assert reg.to_i32(*await read(client, reg.REG_AC_POWER, 2)) == 0


async def test_multi_register_write_reaches_the_firmware(
    client: AsyncModbusTcpClient, firmware: VenusFirmware
) -> None:
    response = await client.write_registers(reg.REG_CHARGE_SETPOINT, [300, 400], device_id=1)
    assert not response.isError()
    assert (firmware.charge_setpoint_w, firmware.discharge_setpoint_w) == (300, 400)


@pytest.mark.parametrize(
    ("address", "count", "code"),
    [(30000, 1, 2), (42001, 1, 2), (32100, 7, 2)],
)
async def test_unmapped_read_gets_an_exception(
    client: AsyncModbusTcpClient, address: int, count: int, code: int
) -> None:
    response = await client.read_holding_registers(address, count=count, device_id=1)
    assert isinstance(response, ExceptionResponse)
    assert response.exception_code == code


async def test_bad_writes_get_exceptions(client: AsyncModbusTcpClient) -> None:
    too_much = await client.write_register(reg.REG_CHARGE_SETPOINT, 2600, device_id=1)
    assert isinstance(too_much, ExceptionResponse)
    assert too_much.exception_code == 3
    read_only = await client.write_register(reg.REG_SOC, 10, device_id=1)
    assert isinstance(read_only, ExceptionResponse)
    assert read_only.exception_code == 2
    assert await read(client, reg.REG_CHARGE_SETPOINT) == [0]


async def test_more_than_32_registers_get_no_answer(client: AsyncModbusTcpClient) -> None:
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(reg.REG_BATTERY_VOLTAGE, count=33, device_id=1)
    # The connection is still usable afterwards.
    assert await read(client, reg.REG_SOC) == [50]


async def test_rebooting_firmware_does_not_answer(
    client: AsyncModbusTcpClient, firmware: VenusFirmware
) -> None:
    firmware.reboot(0.0, offline_s=5.0)
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(reg.REG_SOC, count=1, device_id=1)
    settle(firmware, 5.0)
    assert await read(client, reg.REG_SOC) == [50]


async def test_other_unit_id_gets_gateway_no_response(client: AsyncModbusTcpClient) -> None:
    response = await client.read_holding_registers(reg.REG_SOC, count=1, device_id=7)
    assert isinstance(response, ExceptionResponse)
    assert response.exception_code == 0x0B


async def test_exception_mode_answers_every_request_with_an_exception(
    server: BatteryServer, client: AsyncModbusTcpClient, firmware: VenusFirmware
) -> None:
    server.exception_mode = True
    response = await client.read_holding_registers(reg.REG_SOC, count=1, device_id=1)
    assert isinstance(response, ExceptionResponse)
    assert response.exception_code == 4
    response = await client.write_register(reg.REG_FORCE_MODE, 1, device_id=1)
    assert isinstance(response, ExceptionResponse)
    assert firmware.force_mode == 0  # not applied
    server.exception_mode = False
    assert await read(client, reg.REG_SOC) == [50]


async def test_offline_refuses_connections_and_drops_open_ones(
    server: BatteryServer, client: AsyncModbusTcpClient
) -> None:
    port = server.port
    await server.set_offline(True)
    assert server.offline
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(reg.REG_SOC, count=1, device_id=1)
    refused = make_client(port)
    assert not await refused.connect()  # connection refused
    refused.close()
    await server.set_offline(False)
    assert server.port == port
    again = make_client(port)
    assert await again.connect()
    assert await read(again, reg.REG_SOC) == [50]
    again.close()


async def test_soc_garbage_over_the_wire(
    client: AsyncModbusTcpClient, firmware: VenusFirmware
) -> None:
    firmware.set_soc_garbage(True)
    assert await read(client, reg.REG_SOC) == [0xFFFF]


@pytest.mark.looptime
async def test_stall_answers_late_in_virtual_time(server: BatteryServer) -> None:
    assert DEFAULT_STALL_S == 4.5
    server.stall_s = DEFAULT_STALL_S
    slow = make_client(server.port, timeout_s=8.0)
    assert await slow.connect()
    loop = asyncio.get_running_loop()
    start_s = loop.time()
    assert await read(slow, reg.REG_CAPACITY) == [5120]
    assert loop.time() - start_s >= DEFAULT_STALL_S  # virtual seconds, not wall time
    impatient = make_client(server.port, timeout_s=1.0)
    assert await impatient.connect()
    with pytest.raises(ModbusIOException):
        await impatient.read_holding_registers(reg.REG_SOC, count=1, device_id=1)
    slow.close()
    impatient.close()


@pytest.mark.looptime
async def test_a_late_answer_never_answers_a_newer_request(server: BatteryServer) -> None:
    # Request A (SoC) stalls past the client's timeout; request B (capacity) follows. A's late
    # answer arrives while B is pending and must not be taken as B's.
    modbus = make_client(server.port, timeout_s=0.6)
    assert await modbus.connect()
    server.stall_s = 1.0
    with pytest.raises(ModbusIOException):
        await modbus.read_holding_registers(reg.REG_SOC, count=1, device_id=1)
    server.stall_s = 0.5  # B is answered at 1.1 s, after A's stale answer at 1.0 s
    assert await read(modbus, reg.REG_CAPACITY) == [5120]
    modbus.close()
