"""mDNS on the loopback interface for the tests: whether it works here, and fresh serials.

Multicast sent on 127.0.0.1 reaches the other sockets of this machine on Linux (and nothing
leaves it); a sandbox without it skips the tests that need it, saying why.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from sim.servers.mdns import MdnsAdvertiser

LOOPBACK = ["127.0.0.1"]
_PROBED: list[str | None] = []  # the probe's verdict, once per run: None = works


async def loopback_multicast_problem() -> str | None:
    """Why mDNS on 127.0.0.1 cannot work here, or None when a second responder hears it."""
    if not _PROBED:
        _PROBED.append(await _probe_loopback_multicast())
    return _PROBED[0]


async def _probe_loopback_multicast() -> str | None:
    name = f"probe-{secrets.token_hex(4)}._mmbcprobe._tcp.local."
    info = AsyncServiceInfo(
        "_mmbcprobe._tcp.local.",
        name,
        addresses=[socket.inet_aton("127.0.0.1")],
        port=9,
        properties={"probe": "1"},
    )
    try:
        announcer = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        listener = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
    except OSError as err:
        return f"no mDNS socket on 127.0.0.1 here: {err}"
    try:
        await (await announcer.async_register_service(info))
        found = AsyncServiceInfo("_mmbcprobe._tcp.local.", name)
        if not await found.async_request(listener.zeroconf, 3000):
            return "mDNS multicast on 127.0.0.1 does not reach a second socket here"
    finally:
        await announcer.async_close()
        await listener.async_close()
    return None


def fresh_serial() -> str:
    """Another run on this machine may advertise at the same time: serials of our own."""
    return "3c39e7" + secrets.token_hex(3)


@pytest.fixture
async def loopback_multicast() -> None:
    """Skip unless mDNS sent on 127.0.0.1 reaches a second responder here."""
    problem = await loopback_multicast_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture
async def advertiser(loopback_multicast: None) -> AsyncIterator[MdnsAdvertiser]:
    """Announces simulated devices on the loopback interface for the test."""
    advertiser = MdnsAdvertiser(LOOPBACK)
    yield advertiser
    await advertiser.stop()
