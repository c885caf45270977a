"""A pymodbus Modbus TCP server per simulated battery, delegating every request to VenusFirmware.

Built on pymodbus's ``SimDevice``/``SimData`` with an ``action`` hook: one block covers the whole
address space so pymodbus never answers on its own; the hook asks the firmware, fills the
register image on reads, forwards writes and turns firmware faults into exception responses or
silence. Fault switches for the scenarios: ``exception_mode`` (every request gets an exception),
``stall_s`` (every answer is late, like firmware v150's cloud upload) and ``set_offline``
(listener closed: connection refused; open connections dropped). Time is the event loop's
clock (or an injected one), so the server also runs under looptime.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import traceback
from collections.abc import Callable
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from sim.plant.firmware import FirmwareFault, VenusFirmware

_LOGGER = logging.getLogger(__name__)

DEFAULT_STALL_S = 4.5  # firmware v150: Modbus stalls ~4-4.5 s during the TLS upload
_READ_FUNCTION_CODES = frozenset({3, 4})
_ADDRESS_SPACE = 0x10000


class _RequestHandler(ServerRequestHandler):
    """One client connection.

    pymodbus's handler keeps only the latest request (``last_pdu``) and stamps the response with
    its transaction id when the datastore returns; with a slow answer a newer request would lend
    its id to the old answer. This handler binds each answer to its own request and cancels
    requests still waiting (stall, no answer) when the connection goes away.
    """

    def __init__(self, owner: Any, battery_server: BatteryServer) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect
        )
        self._battery_server = battery_server
        self._tasks: set[asyncio.Task[None]] = set()

    def handle_later(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None:
            return
        task = asyncio.get_running_loop().create_task(self._handle(pdu, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, pdu: Any, addr: Any) -> None:
        if self._battery_server.unit_id not in (0, pdu.dev_id):
            # Behind an RS485 gateway nobody answers for another unit id (unit 0: answer all,
            # like the Venus E v3's own TCP stack).
            response: Any = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        else:
            try:
                response = await pdu.datastore_update(self.server.context, pdu.dev_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # pymodbus does the same: answer, never kill the server
                _LOGGER.error("Modbus request failed: %s\n%s", exc, traceback.format_exc())
                response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        if self.transport is not None:
            self.server_send(response, addr)  # type: ignore[no-untyped-call]

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        for task in list(self._tasks):
            task.cancel()


class _TcpServer(ModbusTcpServer):
    def __init__(self, device: SimDevice, address: tuple[str, int], owner: BatteryServer) -> None:
        super().__init__(device, address=address)
        self._owner = owner

    def callback_new_connection(self) -> _RequestHandler:
        return _RequestHandler(self, self._owner)


class BatteryServer:
    """A running Modbus TCP endpoint for one ``VenusFirmware``."""

    def __init__(
        self,
        firmware: VenusFirmware,
        host: str,
        port: int,
        unit_id: int,
        clock: Callable[[], float] | None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id {unit_id} outside 0..255")
        self.firmware = firmware
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.exception_mode = False  # battery_exception fault: every request gets an exception
        self.stall_s = 0.0  # battery_stall fault: answers come this late (DEFAULT_STALL_S)
        self._clock = clock
        self._server: _TcpServer | None = None
        self._offline = False
        self._stopped = False

    @property
    def offline(self) -> bool:
        return self._offline

    @property
    def running(self) -> bool:
        return self._server is not None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        is_read = function_code in _READ_FUNCTION_CODES
        if set_values is None and not is_read:
            return None  # pymodbus reading back a write it just stored: echo the request
        if self.stall_s > 0.0:
            await asyncio.sleep(self.stall_s)
        if self.exception_mode:
            if is_read:
                self.firmware.reads += 1
            else:
                self.firmware.writes += 1
            return ExcCodes.DEVICE_FAILURE
        now_s = self._now()
        if is_read:
            result = self.firmware.read(address, count, now_s)
            if isinstance(result, FirmwareFault):
                return await self._fault(result)
            offset = address - start_address
            current_registers[offset : offset + count] = result
            return None
        values = [int(v) for v in set_values or ()]
        fault = self.firmware.write(address, values, now_s)
        if fault is not None:
            return await self._fault(fault)
        return None

    async def _fault(self, fault: FirmwareFault) -> ExcCodes:
        if fault is FirmwareFault.NO_ANSWER:
            # Silence: wait until the connection or the server goes away (task cancelled).
            await asyncio.get_running_loop().create_future()
        return ExcCodes(int(fault))

    def _device(self) -> SimDevice:
        block = SimData(address=0, count=_ADDRESS_SPACE, datatype=DataType.REGISTERS)
        return SimDevice(id=0, simdata=block, action=self._action)

    def _check_port_free(self) -> None:
        """Bind the address as asyncio would (SO_REUSEADDR): ``OSError`` naming it if taken.

        pymodbus only logs why it cannot listen and raises a bare RuntimeError; checking first
        gives the caller the real reason (port in use, address not local, ...).
        """
        if self.port == 0:
            return
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        family, kind, proto, _name, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)

    async def _listen(self) -> None:
        self._check_port_free()
        server = _TcpServer(self._device(), (self.host, self.port), self)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen, please check address."
            msg = f"cannot listen on {self.host}:{self.port}"
            raise OSError(errno.EADDRNOTAVAIL, msg) from exc
        listener = cast(asyncio.Server, server.transport)
        self.port = listener.sockets[0].getsockname()[1]
        self._server = server

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        listener = cast(asyncio.Server | None, server.transport)
        await server.shutdown()  # type: ignore[no-untyped-call]  # listener + open connections
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.wait_closed()

    async def set_offline(self, offline: bool) -> None:
        """Offline: connections refused and open ones dropped; back online on the same port."""
        if offline == self._offline or self._stopped:
            self._offline = offline
            return
        self._offline = offline
        if offline:
            _LOGGER.info("battery %s: Modbus server offline", self.firmware.battery.name)
            await self._close()
        else:
            _LOGGER.info("battery %s: Modbus server back online", self.firmware.battery.name)
            await self._listen()

    async def stop(self) -> None:
        self._stopped = True
        await self._close()


async def start_battery_server(
    firmware: VenusFirmware,
    host: str = "127.0.0.1",
    port: int = 0,
    unit_id: int = 1,
    *,
    clock: Callable[[], float] | None = None,
) -> BatteryServer:
    """Serve ``firmware`` over Modbus TCP; ``port=0`` picks a free port (see ``.port``).

    ``clock`` gives the firmware's ``now_s`` (default: the running loop's time).
    """
    battery_server = BatteryServer(firmware, host, port, unit_id, clock)
    await battery_server._listen()
    return battery_server
