"""End to end: a real ``mmbc-engine`` process against a real ``mmbc-sim serve`` process.

The engine is configured only by environment variables, as a user's ``.env`` would, and runs
in an empty working directory so no ``.env`` or config file is picked up by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pymodbus.client import ModbusTcpClient

from engine.adapters import marstek_registers as reg
from tests.mqtt_broker import TEST_PASSWORD, TEST_USERNAME, broker_kind, start_broker

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = ROOT / "scenarios" / "default.toml"
BIN = Path(sys.executable).parent
# Generous bounds that only keep a broken run from hanging the suite; not timing assertions.
START_BOUND_S = 30.0
EXIT_BOUND_S = 15.0
CONFIG_PREFIXES = ("P1_", "PV_", "BATTERY_", "MQTT_", "MMBC_", "HTTP_")


def command(name: str, module: str) -> list[str]:
    """The console script if installed next to this Python, else ``python -m``."""
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MMBC setting, plus ``extra``.

    The engine's HTTP server listens on loopback only, on a free port, unless ``extra`` says
    otherwise.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update({"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(free_port())})
    env.update(extra)
    return env


def free_port_pair() -> int:
    """A free TCP port on 127.0.0.1 whose successor is free too (for two Modbus servers)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no pair of free ports")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lines:
    """A process's output, read on a thread so waiting for a line can have a bound."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, bound_s: float = START_BOUND_S) -> None:
        deadline = time.monotonic() + bound_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} not seen in: {self.lines}") from None
            if line is None:
                raise AssertionError(f"process ended before {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return

    def rest(self) -> str:
        self._thread.join(timeout=EXIT_BOUND_S)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


@dataclass
class Served:
    proc: subprocess.Popen[str]
    out: Lines
    p1_port: int
    modbus_port: int
    json_path: Path

    def engine_env(self, batteries: int = 2) -> dict[str, str]:
        env = {"P1_API_URL": f"http://127.0.0.1:{self.p1_port}/api/v1/data"}
        for n in range(1, batteries + 1):
            env[f"BATTERY_{n}_IP"] = "127.0.0.1"
            env[f"BATTERY_{n}_PORT"] = str(self.modbus_port + n - 1)
            env[f"BATTERY_{n}_ADDRESS"] = "1"
        return env

    def stop(self) -> dict[str, Any]:
        """SIGTERM; exit status 0; the score JSON's one run."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=EXIT_BOUND_S) == 0, self.out.rest()
        runs = json.loads(self.json_path.read_text(encoding="utf-8"))["runs"]
        assert len(runs) == 1
        run: dict[str, Any] = runs[0]
        return run


@contextlib.contextmanager
def serve_scenario(tmp_path: Path, scenario_path: Path) -> Iterator[Served]:
    """``mmbc-sim serve`` on ``scenario_path`` in real time, on free loopback ports; stopped
    (SIGTERM, then killed if it hangs) when the block ends, unless a test stopped it."""
    p1_port = free_port()
    modbus_port = free_port_pair()
    json_path = tmp_path / "served.json"
    proc = subprocess.Popen(
        [
            *command("mmbc-sim", "sim"),
            "serve",
            str(scenario_path),
            "--p1-port",
            str(p1_port),
            "--modbus-port",
            str(modbus_port),
            "--json",
            str(json_path),
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Lines(proc.stdout)
    try:
        out.wait_for("BATTERY_2_ADDRESS")
        yield Served(proc, out, p1_port, modbus_port, json_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=EXIT_BOUND_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``mmbc-sim serve`` on the default scenario (two batteries), in real time."""
    with serve_scenario(tmp_path, DEFAULT_SCENARIO) as served:
        yield served


def start_engine(
    tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[str], Lines]:
    workdir = tmp_path / "engine"
    workdir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [*command("mmbc-engine", "engine"), *args],
        cwd=workdir,
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, Lines(proc.stdout)


def read_register(port: int, address: int) -> int:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=1)
    try:
        assert client.connect()  # type: ignore[no-untyped-call]  # pymodbus ships no hints here
        reply = client.read_holding_registers(address, count=1, device_id=1)
        assert not reply.isError(), reply
        return int(reply.registers[0])
    finally:
        client.close()  # type: ignore[no-untyped-call]


@pytest.mark.slow
def test_engine_keeps_the_served_meter_near_zero_and_releases_on_sigterm(
    served: Served, tmp_path: Path
) -> None:
    engine, out = start_engine(tmp_path, served.engine_env())
    try:
        out.wait_for("battery_2 connected")
        time.sleep(20.0)  # 20 s of a winter evening under control
        # Under control right now: RS485 mode on, the fleet discharging.
        assert read_register(served.modbus_port, reg.REG_RS485_CONTROL) == reg.RS485_ENABLE
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=EXIT_BOUND_S) == 0, out.rest()
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    log = out.rest()
    assert "every battery at 0 W and released" in log
    assert "Traceback" not in log
    # Released: 42000 = 0x55BB, force mode idle, on both batteries.
    for port in (served.modbus_port, served.modbus_port + 1):
        assert read_register(port, reg.REG_RS485_CONTROL) == reg.RS485_DISABLE
        assert read_register(port, reg.REG_FORCE_MODE) == reg.FORCE_STOP

    run = served.stop()
    m = run["metrics"]
    assert run["policy"] == "external"
    assert run["invariants"] == {"limits_respected": True, "shutdown_safe": True}
    # The served window includes the engine's start; still far better than no battery.
    assert m["tracking_score"] > 0.5
    exchange_wh = m["import_wh"] + m["export_wh"]
    none_exchange_wh = m["none_import_wh"] + m["none_export_wh"]
    assert exchange_wh < 0.5 * none_exchange_wh
    assert m["modbus_writes"] > 0


@pytest.mark.slow
def test_dry_run_reads_but_never_writes(served: Served, tmp_path: Path) -> None:
    engine, out = start_engine(tmp_path, served.engine_env(), "--dry-run")
    try:
        out.wait_for("battery_2 connected")
        time.sleep(3.0)
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=EXIT_BOUND_S) == 0, out.rest()
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert "dry run" in out.rest()
    assert read_register(served.modbus_port, reg.REG_RS485_CONTROL) != reg.RS485_ENABLE
    run = served.stop()
    assert run["metrics"]["modbus_reads"] > 0
    assert run["metrics"]["modbus_writes"] == 0


async def wait_for_topic(client: aiomqtt.Client, topic: str, payload: str) -> None:
    async with asyncio.timeout(START_BOUND_S):
        async for message in client.messages:
            if message.topic.value == topic and message.payload == payload.encode():
                return


def stop_engine(engine: subprocess.Popen[str], out: Lines) -> None:
    """SIGTERM; the engine must exit with status 0."""
    if engine.poll() is None:
        engine.send_signal(signal.SIGTERM)
        try:
            rc = engine.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()
            raise
        assert rc == 0, out.rest()


@pytest.mark.slow
async def test_mqtt_commands_reach_the_batteries(served: Served, tmp_path: Path) -> None:
    async with start_broker() as broker:
        mqtt = {
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_USERNAME": TEST_USERNAME,
            "MQTT_PASSWORD": TEST_PASSWORD,
            "MQTT_MIN_INTERVAL_S": "0",
        }
        async with aiomqtt.Client(
            broker.host, broker.port, username=TEST_USERNAME, password=TEST_PASSWORD
        ) as client:
            await client.subscribe("mmbc/status/#", qos=1)
            engine, out = start_engine(tmp_path, served.engine_env() | mqtt)
            try:
                await wait_for_topic(client, "mmbc/status/online", "online")
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "false")
                await asyncio.sleep(5.0)  # the winter evening load: both batteries discharge
                assert read_register(served.modbus_port, reg.REG_FORCE_MODE) == (
                    reg.FORCE_DISCHARGE
                )
                await client.publish("mmbc/control/block_discharge", "true", qos=1)
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "true")
                await asyncio.sleep(3.0)
                for port in (served.modbus_port, served.modbus_port + 1):
                    assert read_register(port, reg.REG_FORCE_MODE) != reg.FORCE_DISCHARGE
                # Unblocked: the evening load is covered from the batteries again.
                await client.publish("mmbc/control/block_discharge", "FALSE", qos=1)
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "false")
                await asyncio.sleep(3.0)
                modes = [
                    read_register(port, reg.REG_FORCE_MODE)
                    for port in (served.modbus_port, served.modbus_port + 1)
                ]
                assert reg.FORCE_DISCHARGE in modes
            finally:
                await asyncio.to_thread(stop_engine, engine, out)
    assert "Traceback" not in out.rest()


def test_check_reaches_every_device(served: Served, tmp_path: Path) -> None:
    result = subprocess.run(
        [*command("mmbc-engine", "engine"), "--check"],
        cwd=tmp_path,
        env=clean_env(**served.engine_env()),
        capture_output=True,
        text=True,
        timeout=START_BOUND_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration is valid" in result.stdout
    assert "battery_1 127.0.0.1" in result.stdout
    assert "battery_2 127.0.0.1" in result.stdout
    assert "FAILED" not in result.stdout
    # A battery nobody answers for: exit 1, and that battery named as failed.
    env = served.engine_env()
    env["BATTERY_3_IP"] = "127.0.0.1"
    env["BATTERY_3_PORT"] = str(free_port())
    result = subprocess.run(
        [*command("mmbc-engine", "engine"), "--check"],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=START_BOUND_S,
        check=False,
    )
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert any(line.startswith("battery_3") for line in failed)
    assert not any(line.startswith(("battery_1", "battery_2")) for line in failed)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"BATTERY_1_PORT": "not-a-port"}, "BATTERY_1_PORT"),
        ({"BATTERY_1_PORT": "70000"}, "BATTERY_1_PORT"),
        ({"MMBC_DEADBAND_W": "-5"}, "MMBC_DEADBAND_W"),
        ({"MMBC_DEADBND_W": "5"}, "MMBC_DEADBND_W"),  # a misspelt key
    ],
)
def test_invalid_configuration_exits_2_naming_the_key(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    base = {"P1_API_URL": "http://127.0.0.1:9/api/v1/data", "BATTERY_1_IP": "127.0.0.1"}
    result = subprocess.run(
        command("mmbc-engine", "engine"),
        cwd=tmp_path,
        env=clean_env(**base, **env),
        capture_output=True,
        text=True,
        timeout=START_BOUND_S,
        check=False,
    )
    assert result.returncode == 2
    assert key in result.stderr
    assert result.stderr.count("\n") == 1  # one clear message, no traceback


def test_unknown_config_file_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "mmbc.toml"
    config.write_text("[control]\ndeadbnd_w = 5\n", encoding="utf-8")
    base = {"P1_API_URL": "http://127.0.0.1:9/api/v1/data", "BATTERY_1_IP": "127.0.0.1"}
    result = subprocess.run(
        [*command("mmbc-engine", "engine"), "--config", str(config)],
        cwd=tmp_path,
        env=clean_env(**base),
        capture_output=True,
        text=True,
        timeout=START_BOUND_S,
        check=False,
    )
    assert result.returncode == 2
    assert "control.deadbnd_w" in result.stderr


def force_modes(served: Served) -> list[int]:
    return [
        read_register(port, reg.REG_FORCE_MODE)
        for port in (served.modbus_port, served.modbus_port + 1)
    ]


@pytest.mark.slow
async def test_hold_mode_and_floods_end_on_the_last_command(served: Served, tmp_path: Path) -> None:
    async with start_broker() as broker:
        mqtt = {
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_USERNAME": TEST_USERNAME,
            "MQTT_PASSWORD": TEST_PASSWORD,
            "MQTT_MIN_INTERVAL_S": "0",
        }
        env = served.engine_env() | mqtt
        async with aiomqtt.Client(
            broker.host, broker.port, username=TEST_USERNAME, password=TEST_PASSWORD
        ) as client:
            await client.subscribe("mmbc/status/#", qos=1)
            engine, out = start_engine(tmp_path, env)
            try:
                await wait_for_topic(client, "mmbc/status/online", "online")
                await asyncio.sleep(5.0)  # the winter evening: the batteries discharge
                assert reg.FORCE_DISCHARGE in force_modes(served)
                # Hold blocks discharge, and the published state says so.
                await client.publish("mmbc/control/mode", "hold", qos=1)
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "true")
                await asyncio.sleep(3.0)
                assert reg.FORCE_DISCHARGE not in force_modes(served)
                await client.publish("mmbc/control/mode", "normal", qos=1)
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "false")
                # 1000 toggles at QoS 0, the last one blocks: the registers follow it.
                for i in range(1000):
                    payload = "true" if i % 2 else "false"
                    await client.publish("mmbc/control/block_discharge", payload, qos=0)
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "true")
                await asyncio.sleep(3.0)
                assert reg.FORCE_DISCHARGE not in force_modes(served)
            finally:
                await asyncio.to_thread(stop_engine, engine, out)
            first_log = out.rest()
            if broker_kind() != "mosquitto":
                return  # amqtt flags queued messages as retained: see test_mqtt's flood test
            # Stopped: 100 x "false", then "true", queue on the engine's persistent session.
            for _ in range(100):
                await client.publish("mmbc/control/block_discharge", "false", qos=1)
            await client.publish("mmbc/control/block_discharge", "true", qos=1)
            engine, out = start_engine(tmp_path, env)
            try:
                await wait_for_topic(client, "mmbc/status/online", "online")
                await wait_for_topic(client, "mmbc/status/discharge_blocked", "true")
                await asyncio.sleep(4.0)
                assert reg.FORCE_DISCHARGE not in force_modes(served)
            finally:
                await asyncio.to_thread(stop_engine, engine, out)
    log = out.rest()
    assert "Traceback" not in first_log + log
    commands = [line for line in first_log.splitlines() if "MQTT command" in line]
    assert len(commands) < 50  # a 1000-command flood is not 1000 log lines


@pytest.mark.slow
def test_exit_status_says_a_battery_was_not_released(served: Served, tmp_path: Path) -> None:
    engine, out = start_engine(tmp_path, served.engine_env())
    try:
        out.wait_for("battery_2 connected")
        time.sleep(2.0)
        served.proc.kill()  # the batteries' link dies: nothing can release them now
        served.proc.wait()
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=EXIT_BOUND_S) == 3, out.rest()
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    log = out.rest()
    assert "not released" in log
    assert "Traceback" not in log


async def retained_under(broker_host: str, port: int, topic_filter: str) -> dict[str, str]:
    """Every retained message under ``topic_filter``, read by a fresh client."""
    found: dict[str, str] = {}
    async with aiomqtt.Client(
        broker_host, port, username=TEST_USERNAME, password=TEST_PASSWORD
    ) as client:
        await client.subscribe(topic_filter, qos=1)
        await client.subscribe("e2e-sync", qos=1)
        await client.publish("e2e-sync", "x", qos=1)
        async with asyncio.timeout(START_BOUND_S):
            async for message in client.messages:
                if message.topic.value == "e2e-sync":
                    break
                if message.retain and message.payload:
                    found[message.topic.value] = bytes(message.payload).decode()
    return found


@pytest.mark.slow
async def test_a_battery_is_published_under_its_configured_number(
    served: Served, tmp_path: Path
) -> None:
    async with start_broker() as broker:
        env = {
            "P1_API_URL": f"http://127.0.0.1:{served.p1_port}/api/v1/data",
            "BATTERY_2_IP": "127.0.0.1",  # only battery 2 is configured
            "BATTERY_2_PORT": str(served.modbus_port + 1),
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_USERNAME": TEST_USERNAME,
            "MQTT_PASSWORD": TEST_PASSWORD,
            "MQTT_MIN_INTERVAL_S": "0",
            "MMBC_STATE_FILE": str(tmp_path / "state" / "energy.json"),  # a new directory too
        }
        state_file = tmp_path / "state" / "energy.json"
        engine, out = start_engine(tmp_path, env)
        try:
            async with aiomqtt.Client(
                broker.host, broker.port, username=TEST_USERNAME, password=TEST_PASSWORD
            ) as client:
                await client.subscribe("mmbc/battery/#", qos=1)
                await wait_for_topic(client, "mmbc/battery/2/online", "true")
                await asyncio.sleep(3.0)  # the identification is read in the first cycles
            state = await retained_under(broker.host, broker.port, "mmbc/battery/#")
            configs = await retained_under(broker.host, broker.port, "homeassistant/#")
        finally:
            await asyncio.to_thread(stop_engine, engine, out)
    assert "mmbc/battery/2/soc" in state
    assert not [topic for topic in state if topic.startswith("mmbc/battery/1/")]
    soc = json.loads(configs["homeassistant/sensor/mmbc/battery_2_soc/config"])
    assert soc["device"]["name"] == "MMBC Battery 2"
    assert soc["device"]["serial_number"] == "VNSESIMbattery_2"  # read from 31200
    assert "marstek_VNSESIMbattery_2" in soc["device"]["identifiers"]
    assert not [topic for topic in configs if "battery_1_" in topic]
    assert json.loads(state_file.read_text(encoding="utf-8"))["batteries"][0]["number"] == 2
