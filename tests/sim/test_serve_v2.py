"""``mmbc-sim serve --p1-api v2|both``: the served P1 over API v2, paired with the simulated
button (SIGUSR1), read and pushed, and found by mDNS; the world servers' v2 plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.adapters.homewizard_v2 import HomeWizardV2Client, MeasurementStream, pair
from sim.plant.world import RECORD_STEP_S, World
from sim.replay.serve import env_snippet
from sim.scenario import DEFAULT_SCENARIO, load_scenario
from sim.servers.plant import start_world_servers
from sim.servers.tls import SimulatorCA

BIN = Path(sys.executable).parent


def _command() -> list[str]:
    script = BIN / "mmbc-sim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sim"]


async def _read_until(stream: asyncio.StreamReader, marker: str) -> str:
    text = ""
    async with asyncio.timeout(30):
        while marker not in text:
            line = await stream.readline()
            if not line:
                break
            text += line.decode()
    return text


@pytest.mark.slow
async def test_serve_v2_pairs_with_sigusr1_reads_and_pushes(tmp_path: Path) -> None:
    serve = await asyncio.create_subprocess_exec(
        *_command(),
        "serve",
        DEFAULT_SCENARIO,
        "--p1-api",
        "v2",
        "--p1-port",
        "0",
        "--p1-tls-port",
        "0",
        "--modbus-port",
        "0",
        "--tls-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert serve.stdout is not None
    try:
        banner = await _read_until(serve.stdout, "SIGINT/SIGTERM")
        assert "P1_API=v2" in banner
        assert "P1_API_URL" not in banner  # v1 is off on this meter
        host = re.search(r"^P1_HOST=(\S+)$", banner, re.M)
        serial = re.search(r"^P1_SERIAL=(\S+)$", banner, re.M)
        pid = re.search(r"kill -USR1 (\d+)", banner)
        assert host, banner
        assert serial, banner
        assert pid, banner
        assert f"P1_CA_FILE={tmp_path / 'p1-ca.pem'}" in banner
        async with HomeWizardV2Client(
            host.group(1),
            identifier=f"appliance/p1dongle/{serial.group(1)}",
            ca_file=tmp_path / "p1-ca.pem",
            timeout_s=2.0,
        ) as client:

            def press(_: str) -> None:
                os.kill(int(pid.group(1)), signal.SIGUSR1)  # the user presses the button

            client.set_token(await pair(client, prompt=press, retry_s=0.2, wait_s=10.0))
            polled = await client.read()
            stream = MeasurementStream(client)
            pushed = []
            async with asyncio.timeout(20), contextlib.aclosing(stream.readings()) as frames:
                async for reading in frames:
                    pushed.append(reading)
                    if len(pushed) == 3:
                        break
        assert abs(polled.active_power_w) < 20_000
        assert len({p.reading.fingerprint for p in pushed}) == 3  # new samples, not repeats
    finally:
        serve.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await serve.wait()
    assert serve.returncode == 0


def test_serve_refuses_an_unknown_p1_api() -> None:
    result = subprocess.run(
        [*_command(), "serve", DEFAULT_SCENARIO, "--p1-api", "v3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--p1-api" in result.stderr


async def test_world_servers_serve_both_apis_and_push_after_each_step(tmp_path: Path) -> None:
    world = World(load_scenario(Path(DEFAULT_SCENARIO)))
    for _ in range(4):
        world.advance_to(world.now_s + RECORD_STEP_S)
    ca = SimulatorCA()
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    servers = await start_world_servers(
        world, p1_api="both", ca=ca, ca_file=ca_file, p1_users={"local/mmbc": "A" * 32}
    )
    try:
        assert servers.p1 is not None
        assert servers.p1_v2 is not None
        snippet = env_snippet(servers)
        assert f"P1_API_URL={servers.p1.url}" in snippet
        assert f"# P1_HOST=127.0.0.1:{servers.p1_v2.port}" in snippet
        async with HomeWizardV2Client(
            f"127.0.0.1:{servers.p1_v2.port}",
            identifier=world.meter.identifier,
            token="A" * 32,
            ca_file=ca_file,
        ) as client:
            stream = MeasurementStream(client)
            frames = stream.readings()
            first = await anext(frames)
            world.advance_to(world.now_s + RECORD_STEP_S)
            world.advance_to(world.now_s + RECORD_STEP_S)  # a new sample is visible now
            await servers.apply_faults()  # the step's hook pushes it
            async with asyncio.timeout(5):
                second = await anext(frames)
            await frames.aclose()
            assert second.reading.fingerprint != first.reading.fingerprint
            assert (await client.read()).fingerprint == second.reading.fingerprint
    finally:
        await servers.stop()
    with pytest.raises(ValueError, match="p1_api"):
        await start_world_servers(world, p1_api="v3")
