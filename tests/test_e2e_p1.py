"""End to end with the P1 meter found by mDNS and read over API v2: real ``mmbc-engine``
processes against the simulator's plant, P1 (HTTPS, token, button, websocket push) and Modbus
servers, run in this test in real time and advertised on the loopback interface.

Every serial is fresh: another run on this machine may advertise its own meters at the same
time. Without working loopback multicast the mDNS tests skip, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import signal
import stat
import statistics
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.adapters.homewizard_v2 import load_token
from sim.plant.world import RECORD_STEP_S, World
from sim.scenario import DEFAULT_SCENARIO, load_scenario
from sim.servers.homewizard_v2 import Button, V2MeterServer, start_v2_meter_server
from sim.servers.mdns import AdvertisedDevice, MdnsAdvertiser
from sim.servers.plant import WorldServers, start_world_servers
from sim.servers.tls import SimulatorCA
from tests.mdns import fresh_serial

BIN = Path(sys.executable).parent
CONFIG_PREFIXES = ("P1_", "PV_", "BATTERY_", "MQTT_", "MMBC_", "HTTP_")
# Generous bounds that only keep a broken run from hanging the suite; not timing assertions.
BOUND_S = 60.0
EXIT_BOUND_S = 15.0


def engine_command() -> list[str]:
    script = BIN / "mmbc-engine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def workdir(path: Path) -> Path:
    """An empty working directory: no .env or config file is picked up by accident."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update(extra)
    return env


@dataclass
class Engine:
    """An ``mmbc-engine`` process and its output, read as it comes."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str], *args: str) -> Engine:
        proc = await asyncio.create_subprocess_exec(
            *engine_command(),
            *args,
            cwd=workdir(cwd),
            env=clean_env(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        engine = cls(proc)
        engine._reader = asyncio.create_task(engine._read())
        return engine

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def wait_for(self, text: str, *, after: int = 0, bound_s: float = BOUND_S) -> int:
        """The index of the first line from ``after`` on that contains ``text``."""
        async with asyncio.timeout(bound_s):
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"ended before {text!r}:\n{self.text}")
                self._changed.clear()
                await self._changed.wait()

    async def finish(self, *, signal_: signal.Signals | None = signal.SIGTERM) -> int:
        if signal_ is not None and self.proc.returncode is None:
            self.proc.send_signal(signal_)
        try:
            async with asyncio.timeout(EXIT_BOUND_S):
                rc = await self.proc.wait()
                if self._reader is not None:
                    await self._reader
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        return rc


@dataclass
class LivePlant:
    """The default scenario's plant in real time behind its servers, the P1 over API v2."""

    world: World
    servers: WorldServers
    ca: SimulatorCA
    ca_file: Path
    serial: str
    clock: Callable[[], float]  # the plant's time for a request (brings the world there)

    @property
    def p1(self) -> V2MeterServer:
        assert self.servers.p1_v2 is not None
        return self.servers.p1_v2

    def batteries_env(self) -> dict[str, str]:
        env = {}
        for n, server in enumerate(self.servers.batteries, start=1):
            env[f"BATTERY_{n}_IP"] = server.host
            env[f"BATTERY_{n}_PORT"] = str(server.port)
        return env

    def mean_abs_w(self, series: str, last_s: float) -> float:
        """The mean magnitude of ``grid_w`` or ``net_w`` over the last ``last_s`` recorded."""
        record = self.world.record
        values: Sequence[float] = getattr(record, series)
        start = next(i for i, t in enumerate(record.t_s) if t >= record.t_s[-1] - last_s)
        return statistics.mean(abs(v) for v in itertools.islice(values, start, None))


@contextlib.asynccontextmanager
async def live_plant(tmp_path: Path, advertiser: MdnsAdvertiser) -> AsyncIterator[LivePlant]:
    loop = asyncio.get_running_loop()
    world = World(load_scenario(DEFAULT_SCENARIO), horizon_s=math.inf)
    world.meter.serial = fresh_serial()
    warm_s = 2.0  # the meter's first reading is visible
    world.advance_to(warm_s)
    started_s = loop.time()

    def plant_time() -> float:
        return warm_s + loop.time() - started_s

    def clock() -> float:
        world.advance_to(plant_time())
        return world.now_s

    ca = SimulatorCA()
    ca_file = ca.write_ca(tmp_path / "p1-ca.pem")
    servers = await start_world_servers(
        world,
        p1_api="v2",
        ca=ca,
        ca_file=ca_file,
        pv_port=None,
        button=Button(),
        time_source=plant_time,
    )

    async def advance() -> None:
        while True:
            await asyncio.sleep(RECORD_STEP_S / 5)
            world.advance_to(plant_time())
            await servers.apply_faults()

    tasks = [
        asyncio.create_task(advance()),
        asyncio.create_task(servers.push_samples(lambda t_s: started_s + t_s - warm_s)),
    ]
    plant = LivePlant(world, servers, ca, ca_file, world.meter.serial, clock)
    await advertiser.advertise(
        AdvertisedDevice(
            "HWE-P1",
            "P1 Meter",
            plant.serial,
            address="127.0.0.1",
            v2_port=plant.p1.port,
            identifier=world.meter.identifier,
        )
    )
    try:
        yield plant
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await servers.stop()


def mdns_env(plant: LivePlant, token_file: Path) -> dict[str, str]:
    """The engine's P1 settings without an address: found on loopback by mDNS."""
    return {
        "P1_MDNS_INTERFACES": "127.0.0.1",
        "P1_CA_FILE": str(plant.ca_file),  # the simulator's CA instead of HomeWizard's
        "P1_TOKEN_FILE": str(token_file),
    }


@pytest.mark.slow
async def test_the_engine_finds_pairs_pushes_and_follows_the_meter(
    tmp_path: Path, advertiser: MdnsAdvertiser
) -> None:
    async with live_plant(tmp_path, advertiser) as plant:
        token_file = tmp_path / "data" / "p1-token.json"
        env = mdns_env(plant, token_file)
        # Pairing: the meter is found, the user is asked for the button and presses it.
        pairing = await Engine.start(
            tmp_path / "pair", {**env, "P1_SERIAL": plant.serial}, "pair-p1"
        )
        await pairing.wait_for("Press the button")
        plant.p1.press_button()
        assert await pairing.finish(signal_=None) == 0, pairing.text
        stored = load_token(token_file)
        assert stored is not None
        assert stored.serial == plant.serial
        assert stored.token in plant.p1.users.values()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stored.token not in pairing.text

        # Running: no address, no serial; the token file says which meter, push on.
        engine = await Engine.start(tmp_path / "run", {**env, **plant.batteries_env()})
        try:
            chosen = await engine.wait_for("mmbc-engine ")
            assert (
                f"HWE-P1 {plant.serial} at 127.0.0.1:{plant.p1.port} over API v2"
                " (found by mDNS), push on" in engine.lines[chosen]
            )
            await engine.wait_for("receiving pushed readings")
            await asyncio.sleep(15.0)
            # Under control, near zero: the winter evening's load is covered.
            assert plant.mean_abs_w("grid_w", 8.0) < 0.25 * plant.mean_abs_w("net_w", 8.0)
            assert plant.p1.push_sockets == 1

            # The router gives the meter another address: the old one goes dark.
            old = plant.p1
            moved = await start_v2_meter_server(
                plant.world.meter,
                plant.ca,
                host="127.0.0.2",
                now=plant.clock,
                push_check_s=None,
                users=dict(old.users),
            )
            plant.servers.p1_v2 = moved  # the plant's pushes go to the new address
            await old.stop()
            moved_at = len(engine.lines)
            await advertiser.move(plant.serial, "127.0.0.2", v2_port=moved.port)
            await engine.wait_for(
                f"moved from 127.0.0.1:{old.port} to 127.0.0.2:{moved.port}", after=moved_at
            )
            back = await engine.wait_for("available again", after=moved_at)
            async with asyncio.timeout(BOUND_S):
                while moved.push_sockets == 0:  # noqa: ASYNC110 - another process's doing
                    await asyncio.sleep(0.2)
            await asyncio.sleep(12.0)
            assert plant.mean_abs_w("grid_w", 5.0) < 0.25 * plant.mean_abs_w("net_w", 5.0)
            assert moved.counters.frames_pushed > 5
        finally:
            rc = await engine.finish()
        log = engine.text
        assert rc == 0, log
        # While the meter was away the batteries were held at 0 W, as for any stale meter.
        assert any("every battery at 0 W" in line for line in engine.lines[moved_at:back])
        assert sum("moved from" in line for line in engine.lines) == 1
        assert "every battery at 0 W and released" in log
        assert "Traceback" not in log
        assert stored.token not in log


@pytest.mark.slow
async def test_discover_lists_the_devices_on_the_network(
    tmp_path: Path, advertiser: MdnsAdvertiser
) -> None:
    meter, pv = fresh_serial(), fresh_serial()
    await advertiser.advertise(
        AdvertisedDevice("HWE-P1", "P1 Meter", meter, v1_port=8080, v2_port=8443)
    )
    await advertiser.advertise(AdvertisedDevice("HWE-KWH1", "kWh Meter", pv, v1_port=8081))
    found = await Engine.start(tmp_path, {"P1_MDNS_INTERFACES": "127.0.0.1"}, "discover")
    assert await found.finish(signal_=None) == 0, found.text
    rows = {line.split()[1]: line for line in found.lines[1:] if len(line.split()) > 1}
    assert found.lines[0].split()[:4] == ["type", "serial", "address", "APIs"]
    assert rows[meter].split()[0] == "HWE-P1"
    assert "127.0.0.1" in rows[meter]
    assert "v1 :8080, v2 2.0.0 :8443" in rows[meter]
    assert rows[pv].split()[0] == "HWE-KWH1"
    assert "v1 :8081" in rows[pv]


@pytest.mark.slow
async def test_without_a_meter_to_choose_the_engine_exits_2_naming_the_setting(
    tmp_path: Path, advertiser: MdnsAdvertiser
) -> None:
    first, second = fresh_serial(), fresh_serial()
    for serial in (first, second):
        await advertiser.advertise(AdvertisedDevice("HWE-P1", "P1 Meter", serial, v1_port=8080))
    env = {"P1_MDNS_INTERFACES": "127.0.0.1", "BATTERY_1_IP": "127.0.0.1"}
    several = await Engine.start(tmp_path / "several", env)
    assert await several.finish(signal_=None) == 2
    assert "set P1_SERIAL" in several.text
    assert first in several.text
    assert second in several.text
    missing = fresh_serial()
    absent = await Engine.start(tmp_path / "absent", {**env, "P1_SERIAL": missing})
    assert await absent.finish(signal_=None) == 2
    assert f"no P1 meter with serial {missing}" in absent.text
    assert absent.text.count("\n") == 1  # one clear message, no traceback


@pytest.fixture
async def v2_meter(tmp_path: Path) -> AsyncIterator[tuple[V2MeterServer, Path, Button]]:
    """A v2 P1 meter alone (no mDNS), its CA file and its button."""
    world = World(load_scenario(DEFAULT_SCENARIO))
    world.advance_to(2.0)
    ca = SimulatorCA()
    button = Button()
    server = await start_v2_meter_server(
        world.meter, ca, now=lambda: world.now_s, push_check_s=None, button=button
    )
    yield server, ca.write_ca(tmp_path / "ca.pem"), button
    await server.stop()


def host_env(server: V2MeterServer, ca_file: Path) -> dict[str, str]:
    return {
        "P1_HOST": f"127.0.0.1:{server.port}",
        "P1_SERIAL": server.identifier.rsplit("/", 1)[-1],
        "P1_CA_FILE": str(ca_file),
    }


async def test_pair_p1_print_shows_the_token_instead_of_storing_it(
    tmp_path: Path, v2_meter: tuple[V2MeterServer, Path, Button]
) -> None:
    server, ca_file, button = v2_meter
    button.always_pressed = True
    token_file = tmp_path / "token.json"
    env = {**host_env(server, ca_file), "P1_TOKEN_FILE": str(token_file)}
    pairing = await Engine.start(tmp_path / "pair", env, "pair-p1", "--print")
    assert await pairing.finish(signal_=None) == 0, pairing.text
    (token_line,) = [line for line in pairing.lines if line.startswith("P1_TOKEN=")]
    assert token_line.strip().removeprefix("P1_TOKEN=") in server.users.values()
    assert not token_file.exists()


async def test_pair_p1_gives_up_when_nobody_presses_the_button(
    tmp_path: Path, v2_meter: tuple[V2MeterServer, Path, Button]
) -> None:
    server, ca_file, _ = v2_meter
    token_file = tmp_path / "token.json"
    env = {**host_env(server, ca_file), "P1_TOKEN_FILE": str(token_file)}
    pairing = await Engine.start(tmp_path / "pair", env, "pair-p1", "--wait-s", "2")
    assert await pairing.finish(signal_=None) == 1
    assert "Press the button" in pairing.text
    assert "was the button pressed?" in pairing.text
    assert server.counters.user_requests >= 2  # it kept asking through the wait
    assert server.users == {}
    assert not token_file.exists()


async def test_pair_p1_refuses_a_v1_url(tmp_path: Path) -> None:
    env = {"P1_API_URL": "http://127.0.0.1:9/api/v1/data"}
    pairing = await Engine.start(tmp_path, env, "pair-p1")
    assert await pairing.finish(signal_=None) == 2
    assert "P1_API_URL" in pairing.text


async def test_check_reads_the_meter_over_v2(tmp_path: Path) -> None:
    world = World(load_scenario(DEFAULT_SCENARIO))
    world.advance_to(2.0)
    ca = SimulatorCA()
    token = "0123456789ABCDEF0123456789ABCDEF"
    servers = await start_world_servers(
        world,
        p1_api="v2",
        ca=ca,
        ca_file=ca.write_ca(tmp_path / "ca.pem"),
        pv_port=None,
        p1_users={"local/mmbc": token},
    )
    try:
        assert servers.p1_v2 is not None
        env = {**host_env(servers.p1_v2, tmp_path / "ca.pem"), "P1_TOKEN": token}
        for n, server in enumerate(servers.batteries, start=1):
            env[f"BATTERY_{n}_IP"] = server.host
            env[f"BATTERY_{n}_PORT"] = str(server.port)
        check = await Engine.start(tmp_path / "check", env, "--check")
        assert await check.finish(signal_=None) == 0, check.text
    finally:
        await servers.stop()
    (p1_line,) = [line for line in check.lines if line.startswith("P1 meter")]
    assert f"127.0.0.1:{servers.p1_v2.port}" in p1_line
    assert "over API v2, push on: OK" in p1_line
    assert token not in check.text
