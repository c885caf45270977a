"""``mmbc-engine --check`` reaches the MQTT broker too: a real mosquitto, plain and with TLS.

The meter and the batteries are the simulator's servers on loopback; the broker is started on a
free port (see tests/mqtt_broker.py). The check must say what answered and exit 1 when the
broker does not, or when its certificate is not the configured CA's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.app import EXIT_CHECK_FAILED, EXIT_OK, check
from engine.config import build_config
from sim.plant.world import RECORD_STEP_S, World
from sim.scenario import load_scenario
from sim.servers.plant import WorldServers, start_world_servers
from tests.mqtt_broker import (
    HOST,
    TEST_PASSWORD,
    TEST_USERNAME,
    make_tls_files,
    refused_port,
    start_broker,
)

KETTLE = Path(__file__).resolve().parent.parent / "scenarios" / "kettle.toml"


@pytest.fixture
async def plant() -> AsyncIterator[WorldServers]:
    world = World(load_scenario(KETTLE))
    for _ in range(4):
        world.advance_to(world.now_s + RECORD_STEP_S)  # so the meter has a reading to give
    servers = await start_world_servers(world)
    try:
        yield servers
    finally:
        await servers.stop()


def _mqtt_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("MQTT broker")]


async def test_check_says_the_broker_answered(
    plant: WorldServers, capsys: pytest.CaptureFixture[str]
) -> None:
    async with start_broker() as broker:
        config = build_config(
            environ={
                **plant.env(),
                "MQTT_HOST": HOST,
                "MQTT_PORT": str(broker.port),
                "MQTT_USERNAME": TEST_USERNAME,
                "MQTT_PASSWORD": TEST_PASSWORD,
            }
        )
        status = await check(config)

    out = capsys.readouterr().out
    assert status == EXIT_OK, out
    assert _mqtt_lines(out) == [f"MQTT broker {HOST}:{broker.port}: OK (no TLS, user mmbc-test)"]
    assert "check: everything answered" in out
    assert TEST_PASSWORD not in out


async def test_check_fails_when_no_broker_answers(
    plant: WorldServers, capsys: pytest.CaptureFixture[str]
) -> None:
    with refused_port() as port:
        config = build_config(environ={**plant.env(), "MQTT_HOST": HOST, "MQTT_PORT": str(port)})
        status = await check(config)

    out = capsys.readouterr().out
    assert status == EXIT_CHECK_FAILED
    (line,) = _mqtt_lines(out)
    assert line.startswith(f"MQTT broker {HOST}:{port}: FAILED (no TLS")
    assert "battery_1 127.0.0.1" in out  # the devices were still checked
    assert not any(" FAILED" in x for x in out.splitlines() if x.startswith(("battery", "P1")))


async def test_check_uses_tls_with_the_configured_ca(
    plant: WorldServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = make_tls_files(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_tls_files(tmp_path / "other")
    if files is None or other is None:
        pytest.skip("needs the openssl command to make certificates")
    async with start_broker(tls=files) as broker:
        env = {
            **plant.env(),
            "MQTT_HOST": HOST,
            "MQTT_PORT": str(broker.port),
            "MQTT_USERNAME": TEST_USERNAME,
        }
        right = await check(build_config(environ={**env, "MQTT_CA_FILE": files.certfile}))
        right_out = capsys.readouterr().out
        wrong = await check(build_config(environ={**env, "MQTT_CA_FILE": other.certfile}))
        wrong_out = capsys.readouterr().out

    assert right == EXIT_OK, right_out
    assert _mqtt_lines(right_out) == [f"MQTT broker {HOST}:{broker.port}: OK (TLS, user mmbc-test)"]
    assert wrong == EXIT_CHECK_FAILED
    (line,) = _mqtt_lines(wrong_out)
    assert line.startswith(f"MQTT broker {HOST}:{broker.port}: FAILED (TLS, user mmbc-test: ")
    assert "certificate" in line.lower()
