"""The sockets of one ``World``: its P1 (+ PV) meter API and one Modbus server per battery.

The P1 meter speaks API v1 (HTTP), v2 (HTTPS with a test CA, token, push) or both
(``p1_api``), like a real dongle before firmware 6, after it with v1 switched off, or with v1
left on.

Shared by ``mmbc-sim run --wire`` (virtual time) and ``mmbc-sim serve`` (real time). Each
request brings the world to its own instant first (``time_source``), so it sees the plant of
that instant, exactly as the in-process replay's requests do. ``apply_faults`` puts the
world's transport-level faults on the wire (call it as the plant advances):
``battery_offline`` (and a reboot's offline window) closes the battery's listener,
``battery_stall`` delays every answer, ``battery_exception`` answers every request with an
exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sim.plant.params import FaultKind
from sim.plant.world import World
from sim.servers.homewizard import MeterServer, start_meter_server
from sim.servers.homewizard_v2 import Button, V2MeterServer, start_v2_meter_server
from sim.servers.modbus import DEFAULT_STALL_S, BatteryServer, start_battery_server
from sim.servers.tls import SimulatorCA

DEFAULT_UNIT_ID = 1
P1_APIS = ("v1", "v2", "both")


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
    p1: MeterServer | None  # API v1; None when the P1 speaks v2 only
    pv: MeterServer | None
    batteries: list[BatteryServer]
    unit_id: int = DEFAULT_UNIT_ID
    p1_v2: V2MeterServer | None = None
    ca_file: Path | None = None  # the test CA a v2 client must trust
    # The transport fault last applied per battery (1-based index), so changes are acted on once.
    _applied: dict[int, FaultKind | None] = field(default_factory=dict)

    @property
    def p1_url(self) -> str:
        """The v1 ``/api/v1/data`` URL, else the v2 HTTPS base URL."""
        if self.p1 is not None:
            return self.p1.url
        assert self.p1_v2 is not None
        return self.p1_v2.base_url

    @property
    def pv_url(self) -> str | None:
        return None if self.pv is None else self.pv.url

    async def apply_faults(self) -> None:
        """Mirror ``world.transport_fault`` onto the Modbus servers (call after each step);
        push a new P1 reading to v2 websocket subscribers the moment the step makes one.
        """
        if self.p1_v2 is not None:
            await self.p1_v2.publish()
        for index, server in enumerate(self.batteries, start=1):
            kind = self.world.transport_fault(index)
            if self._applied.get(index, None) == kind:
                continue
            self._applied[index] = kind
            server.stall_s = DEFAULT_STALL_S if kind == FaultKind.BATTERY_STALL else 0.0
            server.exception_mode = kind == FaultKind.BATTERY_EXCEPTION
            await server.set_offline(kind == FaultKind.BATTERY_OFFLINE)

    async def push_samples(
        self, loop_time_of: Callable[[float], float] | None = None, *, after_s: float = 1e-6
    ) -> None:
        """Push each new P1 sample to the v2 subscribers the instant it becomes visible, as
        the device does (the plant's steps alone would push it at the next step); forever.

        ``loop_time_of`` maps plant time to the loop's clock (the identity by default);
        ``after_s`` lets the loop clock's rounding pass, so the sample is surely visible.
        """
        if self.p1_v2 is None:
            return
        loop = asyncio.get_running_loop()
        to_loop = loop_time_of or (lambda t_s: t_s)
        at_s = self.world.meter.next_visible_s(self.world.now_s)
        while True:
            await asyncio.sleep(max(0.0, to_loop(at_s) + after_s - loop.time()))
            if self.p1_v2 is not None:  # the server may be replaced (a meter that moved)
                await self.p1_v2.publish()
            at_s = self.world.meter.next_visible_s(at_s)

    def env(self) -> dict[str, str]:
        """The engine's configuration for these endpoints, as ``.env`` variables.

        With a v1 P1 that is its URL, as always; a v2-only P1 gives the v2 settings.
        """
        env = {"P1_API_URL": self.p1.url} if self.p1 is not None else self.env_v2()
        if self.pv is not None:
            env["PV_API_URL"] = self.pv.url
        for index, server in enumerate(self.batteries, start=1):
            env[f"BATTERY_{index}_IP"] = server.host
            env[f"BATTERY_{index}_PORT"] = str(server.port)
            env[f"BATTERY_{index}_ADDRESS"] = str(server.unit_id)
        return env

    def env_v2(self) -> dict[str, str]:
        """The API v2 settings for the P1 (for the engine's v2 support); {} without v2."""
        if self.p1_v2 is None:
            return {}
        env = {
            "P1_API": "v2",
            "P1_HOST": f"{self.p1_v2.host}:{self.p1_v2.port}",
            "P1_SERIAL": self.p1_v2.identifier.rsplit("/", 1)[-1],
        }
        if self.ca_file is not None:
            env["P1_CA_FILE"] = str(self.ca_file)
        return env

    async def stop(self) -> None:
        """Close every listener and connection; safe to call twice."""
        servers: list[MeterServer | BatteryServer | V2MeterServer] = [*self.batteries]
        for meter in (self.p1, self.p1_v2, self.pv):
            if meter is not None:
                servers.append(meter)
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
    p1_api: str = "v1",
    p1_tls_port: int = 0,
    ca: SimulatorCA | None = None,
    ca_file: Path | None = None,
    button: Button | None = None,
    p1_users: dict[str, str] | None = None,
    time_source: Callable[[], float] | None = None,
) -> WorldServers:
    """Serve ``world``: P1 on ``p1_port``, PV (if the world has one) on ``pv_port``, batteries
    on ``modbus_port``, ``modbus_port + 1``, ... (0 = free ports everywhere).

    ``pv_port=None`` leaves a world's PV meter unserved. ``p1_api`` "v2" or "both" serves API
    v2 on ``p1_tls_port`` with a certificate from ``ca`` (made here if None), the pairing
    ``button`` and the pre-paired ``p1_users``; ``ca_file`` is where its CA was written.

    ``time_source`` gives the plant's time of a request (the loop's clock, or real time
    scaled by ``mmbc-sim serve --speed``): each request first brings the world there, so it
    sees the plant of its own instant. Without it requests see the world as last advanced.
    """
    if p1_api not in P1_APIS:
        msg = f"p1_api must be one of {', '.join(P1_APIS)}, not {p1_api!r}"
        raise ValueError(msg)

    def clock() -> float:
        if time_source is not None:
            world.advance_to(time_source())
        return world.now_s

    def battery_clock(index: int) -> Callable[[], float]:
        def now() -> float:
            if time_source is not None:
                world.battery_at(index, time_source())
            return world.now_s

        return now

    started: list[MeterServer | BatteryServer | V2MeterServer] = []
    try:
        p1 = None
        if p1_api in {"v1", "both"}:
            try:
                p1 = await start_meter_server(world.meter, host, p1_port, now=clock)
            except OSError as exc:
                raise ListenError("P1 meter", host, p1_port, exc) from exc
            started.append(p1)
        p1_v2 = None
        if p1_api in {"v2", "both"}:
            try:
                p1_v2 = await start_v2_meter_server(
                    world.meter,
                    ca or SimulatorCA(),
                    host=host,
                    port=p1_tls_port,
                    now=clock,
                    button=button,
                    push_check_s=None,  # apply_faults publishes after every plant step
                    users=p1_users,
                )
            except OSError as exc:
                raise ListenError("P1 meter (API v2)", host, p1_tls_port, exc) from exc
            started.append(p1_v2)
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
                server = await start_battery_server(
                    firmware, host, port, unit_id, clock=battery_clock(i + 1)
                )
            except OSError as exc:
                raise ListenError(f"battery_{i + 1} Modbus", host, port, exc) from exc
            started.append(server)
            batteries.append(server)
    except BaseException:
        await asyncio.gather(*(s.stop() for s in started), return_exceptions=True)
        raise
    return WorldServers(
        world=world,
        host=host,
        p1=p1,
        pv=pv,
        batteries=batteries,
        unit_id=unit_id,
        p1_v2=p1_v2,
        ca_file=ca_file,
    )
