"""The sockets of one ``World``: its P1 (+ PV) meter API and one Modbus server per battery.

Shared by ``mmbc-sim run --wire`` (virtual time) and ``mmbc-sim serve`` (real time). The servers
read the world's own clock (``world.now_s``), so a request sees the plant exactly as the last
plant step left it, whatever the event loop's time. ``apply_faults`` puts the world's
transport-level faults on the wire after each plant step: ``battery_offline`` (and a reboot's
offline window) closes the battery's listener, ``battery_stall`` delays every answer,
``battery_exception`` answers every request with an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from dataclasses import dataclass, field

from sim.plant.world import World
from sim.servers.homewizard import MeterServer, start_meter_server
from sim.servers.modbus import DEFAULT_STALL_S, BatteryServer, start_battery_server

DEFAULT_UNIT_ID = 1


class ListenError(OSError):
    """A server could not listen: names what it was for and the address it wanted."""

    def __init__(self, what: str, host: str, port: int, cause: OSError) -> None:
        reason = "already in use" if cause.errno == errno.EADDRINUSE else (cause.strerror or cause)
        super().__init__(cause.errno, f"{what}: cannot listen on {host}:{port} ({reason})")
        self.what = what
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class WorldServers:
    """The running endpoints of one world; ``stop`` closes them all."""

    world: World
    host: str
    p1: MeterServer
    pv: MeterServer | None
    batteries: list[BatteryServer]
    unit_id: int = DEFAULT_UNIT_ID
    # The transport fault last applied per battery (1-based index), so changes are acted on once.
    _applied: dict[int, str | None] = field(default_factory=dict)

    @property
    def p1_url(self) -> str:
        return self.p1.url

    @property
    def pv_url(self) -> str | None:
        return None if self.pv is None else self.pv.url

    async def apply_faults(self) -> None:
        """Mirror ``world.transport_fault`` onto the Modbus servers (call after each step)."""
        for index, server in enumerate(self.batteries, start=1):
            kind = self.world.transport_fault(index)
            if self._applied.get(index, None) == kind:
                continue
            self._applied[index] = kind
            server.stall_s = DEFAULT_STALL_S if kind == "battery_stall" else 0.0
            server.exception_mode = kind == "battery_exception"
            await server.set_offline(kind == "battery_offline")

    def env(self) -> dict[str, str]:
        """The engine's configuration for these endpoints, as ``.env`` variables."""
        env = {"P1_API_URL": self.p1.url}
        if self.pv is not None:
            env["PV_API_URL"] = self.pv.url
        for index, server in enumerate(self.batteries, start=1):
            env[f"BATTERY_{index}_IP"] = server.host
            env[f"BATTERY_{index}_PORT"] = str(server.port)
            env[f"BATTERY_{index}_ADDRESS"] = str(server.unit_id)
        return env

    async def stop(self) -> None:
        """Close every listener and connection; safe to call twice."""
        servers: list[MeterServer | BatteryServer] = [self.p1, *self.batteries]
        if self.pv is not None:
            servers.append(self.pv)
        for server in servers:
            with contextlib.suppress(Exception):  # closing is best effort; all must be tried
                await server.stop()


async def start_world_servers(
    world: World,
    *,
    host: str = "127.0.0.1",
    p1_port: int = 0,
    pv_port: int | None = 0,
    modbus_port: int = 0,
    unit_id: int = DEFAULT_UNIT_ID,
) -> WorldServers:
    """Serve ``world``: P1 on ``p1_port``, PV (if the world has one) on ``pv_port``, batteries
    on ``modbus_port``, ``modbus_port + 1``, ... (0 = free ports everywhere).

    ``pv_port=None`` leaves a world's PV meter unserved.
    """

    def clock() -> float:
        return world.now_s

    started: list[MeterServer | BatteryServer] = []
    try:
        try:
            p1 = await start_meter_server(world.meter, host, p1_port, now=clock)
        except OSError as exc:
            raise ListenError("P1 meter", host, p1_port, exc) from exc
        started.append(p1)
        pv: MeterServer | None = None
        if world.pv_meter is not None and pv_port is not None:
            try:
                pv = await start_meter_server(world.pv_meter, host, pv_port, now=clock)
            except OSError as exc:
                raise ListenError("PV meter", host, pv_port, exc) from exc
            started.append(pv)
        batteries: list[BatteryServer] = []
        for i, firmware in enumerate(world.firmwares):
            port = modbus_port + i if modbus_port else 0
            try:
                server = await start_battery_server(firmware, host, port, unit_id, clock=clock)
            except OSError as exc:
                raise ListenError(f"battery_{i + 1} Modbus", host, port, exc) from exc
            started.append(server)
            batteries.append(server)
    except BaseException:
        await asyncio.gather(*(s.stop() for s in started), return_exceptions=True)
        raise
    return WorldServers(world=world, host=host, p1=p1, pv=pv, batteries=batteries, unit_id=unit_id)
