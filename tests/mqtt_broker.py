"""A real MQTT broker on a free 127.0.0.1 port for tests: mosquitto if installed, else amqtt.

``MMBC_TEST_BROKER=amqtt`` (or ``mosquitto``) forces one. Usage::

    async with start_broker() as broker:
        ...  # broker.host, broker.port; await broker.restart()

Both brokers treat clients that send a username as real (non-anonymous) users, so
persistent sessions queue QoS 1 messages while such a client is away: amqtt drops them
for anonymous sessions, so its listener here requires a username (any password).
A restart keeps the port; without ``persistence`` it loses retained messages and
sessions (what a broker restart on a plain install does), with it mosquitto keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

HOST = "127.0.0.1"
TEST_USERNAME = "mmbc-test"
TEST_PASSWORD = "not-a-secret"

BrokerKind = Literal["mosquitto", "amqtt"]

_READY_TIMEOUT_S = 10.0


def broker_kind() -> BrokerKind:
    """Which broker the tests use: ``MMBC_TEST_BROKER``, else mosquitto when on PATH."""
    forced = os.environ.get("MMBC_TEST_BROKER", "").strip().lower()
    if forced in ("mosquitto", "amqtt"):
        return "mosquitto" if forced == "mosquitto" else "amqtt"
    if forced:
        msg = f"MMBC_TEST_BROKER must be 'mosquitto' or 'amqtt', not {forced!r}"
        raise ValueError(msg)
    return "mosquitto" if shutil.which("mosquitto") else "amqtt"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port nobody listens on, kept bound (not listening) while in use.

    A port that was merely free a moment ago can become a client's own ephemeral source port;
    a connect to it then reaches itself (TCP self-connect) and an MQTT client reads its own
    CONNECT back. Held bound, the port refuses every connection and is nobody's source port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


async def _wait_listening(port: int, alive: Any) -> None:
    """Until something accepts on ``port``; ``alive()`` False aborts (the broker died)."""
    async with asyncio.timeout(_READY_TIMEOUT_S):
        while True:
            if not alive():
                msg = f"MQTT broker on port {port} exited during startup"
                raise RuntimeError(msg)
            try:
                _reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1; ``certfile`` doubles as the CA file."""

    certfile: str
    keyfile: str


def make_tls_files(directory: Path) -> TlsFiles | None:
    """Create a self-signed cert for 127.0.0.1 with the ``openssl`` CLI; None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={HOST}",
            "-addext",
            f"subjectAltName=IP:{HOST}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-keyout",
            str(keyfile),
            "-out",
            str(certfile),
        ],
        check=True,
        capture_output=True,
    )
    return TlsFiles(str(certfile), str(keyfile))


class TestBroker:
    """A running broker; ``restart()`` brings it back on the same port."""

    __test__ = False  # not a pytest test class

    kind: BrokerKind
    host = HOST
    port: int

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class _Mosquitto(TestBroker):
    kind: BrokerKind = "mosquitto"

    def __init__(self, *, persistence: bool, tls: TlsFiles | None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="mmbc-mosquitto-"))
        self.port = _free_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._config = self._dir / "mosquitto.conf"
        tls_lines = [f"certfile {tls.certfile}", f"keyfile {tls.keyfile}"] if tls else []
        self._config.write_text(
            "\n".join(
                [
                    f"listener {self.port} {HOST}",
                    *tls_lines,
                    # Started as root, mosquitto drops to user "mosquitto", who cannot read
                    # our private temp dir; naming the current user keeps it (no-op otherwise).
                    f"user {getpass.getuser()}",
                    "allow_anonymous true",
                    f"persistence {'true' if persistence else 'false'}",
                    f"persistence_location {self._dir}/",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        self._log = self._dir / "mosquitto.log"

    async def start(self) -> None:
        mosquitto = shutil.which("mosquitto")
        assert mosquitto is not None
        with self._log.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                mosquitto,
                "-c",
                str(self._config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        proc = self._proc
        try:
            await _wait_listening(self.port, lambda: proc.returncode is None)
        except (RuntimeError, TimeoutError) as exc:
            await self.stop()
            msg = f"mosquitto did not start: {self._log.read_text(errors='replace')}"
            raise RuntimeError(msg) from exc

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()  # SIGTERM: mosquitto saves its persistence file on the way out
        try:
            async with asyncio.timeout(5.0):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


class _Amqtt(TestBroker):
    kind: BrokerKind = "amqtt"

    def __init__(self, *, tls: TlsFiles | None) -> None:
        self.port = 0
        self._broker: Any = None
        self._tls = tls

    def _config(self) -> dict[str, Any]:
        listener: dict[str, Any] = {"type": "tcp", "bind": f"{HOST}:{self.port}"}
        if self._tls is not None:
            listener |= {
                "ssl": True,
                "certfile": self._tls.certfile,
                "keyfile": self._tls.keyfile,
            }
        return {
            "listeners": {"default": listener},
            # No $SYS or logging plugins; a username makes a session non-anonymous, so
            # its QoS 1 messages are queued while it is away (as mosquitto does).
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}
            },
        }

    async def start(self) -> None:
        from amqtt.broker import Broker

        broker = Broker(self._config())
        await broker.start()
        self._broker = broker
        sockets = broker._servers["default"].instance.sockets
        self.port = int(sockets[0].getsockname()[1])  # listening once start() returns

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()


@contextlib.asynccontextmanager
async def start_broker(
    *,
    persistence: bool = False,
    kind: BrokerKind | None = None,
    tls: TlsFiles | None = None,
) -> AsyncIterator[TestBroker]:
    """Start a broker on a free loopback port; stop it (and clean up) on exit.

    With ``tls`` the listener speaks TLS only (see :func:`make_tls_files`).
    """
    chosen = kind or broker_kind()
    broker: TestBroker = (
        _Mosquitto(persistence=persistence, tls=tls) if chosen == "mosquitto" else _Amqtt(tls=tls)
    )
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
        if isinstance(broker, _Mosquitto):
            broker.cleanup()
