"""API v2 push: the websocket stream against the simulated v2 meter, in virtual time.

The server pushes each new sample the moment the meter model has it (the model's clock is the
loop clock); the stream must deliver one reading per meter interval, stamped with the loop
time it arrived, reconnect after losing the socket, and never yield a malformed frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.adapters.homewizard_v2 import (
    HomeWizardV2Client,
    MeasurementStream,
    PushedReading,
)
from sim.plant.meter import P1MeterModel
from sim.plant.params import MeterParams
from sim.servers.homewizard_v2 import V2MeterServer, start_v2_meter_server
from sim.servers.tls import SimulatorCA
from tests.adapters.conftest import USER

pytestmark = pytest.mark.looptime
INTERVAL_S = 1.0
LATENCY_S = 0.5
PUSH_LOGGER = "engine.adapters.homewizard_v2.push"


@dataclass
class LiveMeter:
    model: P1MeterModel
    server: V2MeterServer
    client: HomeWizardV2Client


@contextlib.asynccontextmanager
async def live_meter(ca: SimulatorCA, ca_file: Path) -> AsyncIterator[LiveMeter]:
    """A v2 meter holding 600 W, sampling every second on the loop's clock, and a client.

    Started inside the test, not in fixtures: looptime's virtual clock starts with the test,
    and a server ticking on the real clock from before would never tick again.
    """
    loop = asyncio.get_running_loop()
    model = P1MeterModel(
        MeterParams(interval_s=INTERVAL_S, latency_s=LATENCY_S, noise_w=0.0),
        serial="5c2fafaabbcc",
    )
    model.observe(loop.time(), 600.0)
    await asyncio.sleep(INTERVAL_S + LATENCY_S)  # the first reading is visible
    server = await start_v2_meter_server(model, ca, push_check_s=0.01)
    client = HomeWizardV2Client(
        f"127.0.0.1:{server.port}",
        identifier=server.identifier,
        token=server.add_user(USER),
        ca_file=ca_file,
        timeout_s=2.0,
    )
    try:
        yield LiveMeter(model, server, client)
    finally:
        await client.close()
        await server.stop()


async def take(
    stream: MeasurementStream,
    count: int,
    *,
    within_s: float = 60.0,
    each: object = None,
) -> list[PushedReading]:
    """The first ``count`` readings (virtual time bounds the wait)."""
    readings: list[PushedReading] = []
    async with asyncio.timeout(within_s), contextlib.aclosing(stream.readings()) as pushed:
        async for reading in pushed:
            readings.append(reading)
            if callable(each):
                result = each(len(readings))
                if asyncio.iscoroutine(result):
                    await result
            if len(readings) == count:
                break
    return readings


async def test_each_new_sample_arrives_once_per_meter_interval(
    simulator_ca: SimulatorCA, ca_file: Path
) -> None:
    loop = asyncio.get_running_loop()
    async with live_meter(simulator_ca, ca_file) as meter:
        stream = MeasurementStream(meter.client)
        start_s = loop.time()
        readings = await take(stream, 8)
        assert stream.connections == 1
    assert not stream.connected  # the iteration ended, and with it the socket
    assert all(r.reading.active_power_w == 600.0 for r in readings)
    # The first is the latest value at subscription; then one per sample, each at the
    # moment the sample became visible (the meter's latency after its instant).
    gaps = [b.received_s - a.received_s for a, b in itertools.pairwise(readings[1:])]
    assert gaps == pytest.approx([INTERVAL_S] * len(gaps), abs=0.05)
    assert len({r.reading.fingerprint for r in readings}) == len(readings)
    assert start_s <= readings[0].received_s <= readings[-1].received_s <= loop.time()
    assert stream.last_received_s == readings[-1].received_s


async def test_a_power_change_reaches_the_stream_with_the_next_sample(
    simulator_ca: SimulatorCA, ca_file: Path
) -> None:
    loop = asyncio.get_running_loop()
    changed_s: list[float] = []
    async with live_meter(simulator_ca, ca_file) as meter:

        def step(n: int) -> None:
            if n == 2:
                changed_s.append(loop.time())
                meter.model.observe(loop.time(), -250.0)

        readings = await take(MeasurementStream(meter.client), 6, each=step)
    first_new = next(r for r in readings if r.reading.active_power_w == -250.0)
    # Visible at the next sample instant plus the latency: within one interval + latency.
    assert 0 < first_new.received_s - changed_s[0] <= INTERVAL_S + LATENCY_S + 0.05
    assert all(r.reading.active_power_w == -250.0 for r in readings[readings.index(first_new) :])


async def test_reconnects_after_the_meter_drops_the_socket_and_polls_meanwhile(
    simulator_ca: SimulatorCA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PUSH_LOGGER)
    polled: list[float] = []
    async with live_meter(simulator_ca, ca_file) as meter:
        stream = MeasurementStream(meter.client, initial_backoff_s=2.0)

        async def drop_then_poll(n: int) -> None:
            if n == 3:
                await meter.server.drop_push_sockets()
                polled.append((await meter.client.read()).active_power_w)  # polling works

        readings = await take(stream, 7, each=drop_then_poll)
        assert meter.server.counters.sockets_opened == 2
    assert stream.connections == 2
    assert polled == [600.0]
    gap = max(b.received_s - a.received_s for a, b in itertools.pairwise(readings))
    assert gap >= 2.0  # the backoff, on the loop clock
    messages = [r.getMessage() for r in caplog.records]
    assert sum("push stream lost" in m for m in messages) == 1
    assert sum("push stream back" in m for m in messages) == 1


async def test_repeated_losses_back_off_exponentially_and_log_once(
    simulator_ca: SimulatorCA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PUSH_LOGGER)
    loop = asyncio.get_running_loop()
    async with live_meter(simulator_ca, ca_file) as meter:
        stream = MeasurementStream(
            meter.client, connect_timeout_s=1.0, initial_backoff_s=1.0, max_backoff_s=4.0
        )

        async def outage(n: int) -> None:
            if n == 2:
                lost_s.append(loop.time())
                meter.model.set_fault("outage")  # the device stops answering, sockets too
                await meter.server.drop_push_sockets()
                loop.call_later(20.0, meter.model.clear_fault)

        lost_s: list[float] = []
        readings = await take(stream, 4, each=outage)
        attempts = meter.server.counters.sockets_opened
    back_after_s = readings[2].received_s - lost_s[0]
    # Backoffs of 1, 2, 4, 4, 4... s, each attempt timing out after 1 s: the first attempt
    # after the fault clears connects, at most one backoff + one timeout late.
    assert 20.0 <= back_after_s <= 20.0 + 4.0 + 1.0 + 0.5
    assert attempts == 2  # the held attempts never reached the socket handler's accept
    messages = [r.getMessage() for r in caplog.records]
    assert sum("push stream lost" in m for m in messages) == 1
    assert sum("push stream back" in m for m in messages) == 1


async def test_a_silent_socket_is_replaced(simulator_ca: SimulatorCA, ca_file: Path) -> None:
    loop = asyncio.get_running_loop()
    async with live_meter(simulator_ca, ca_file) as meter:
        stream = MeasurementStream(meter.client, idle_timeout_s=5.0, initial_backoff_s=1.0)

        def freeze(n: int) -> None:
            if n == 2:
                meter.model.set_fault("frozen")  # the same body every time: nothing to push
                loop.call_later(12.0, meter.model.clear_fault)

        readings = await take(stream, 4, each=freeze)
    assert stream.connections >= 2
    assert readings[2].received_s - readings[1].received_s >= 5.0
    assert readings[-1].reading.active_power_w == 600.0


async def test_malformed_pushes_are_dropped_never_yielded(
    simulator_ca: SimulatorCA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    async with live_meter(simulator_ca, ca_file) as meter:
        stream = MeasurementStream(meter.client)

        def garble(n: int) -> None:
            if n == 1:
                meter.model.set_fault("garbage")  # truncated JSON, then bodies without power
                loop.call_later(4.0, meter.model.clear_fault)

        readings = await take(stream, 3, each=garble)
    assert all(r.reading.active_power_w == 600.0 for r in readings)
    assert stream.rejected_frames >= 2
    assert readings[1].received_s - readings[0].received_s >= 3.0
    assert stream.connections == 1  # a bad frame is dropped, not a reason to reconnect
    assert sum("dropped a pushed frame" in r.getMessage() for r in caplog.records) == 1


async def test_a_rejected_token_is_one_log_line_and_pairing_again_recovers(
    simulator_ca: SimulatorCA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    async with live_meter(simulator_ca, ca_file) as meter:
        meter.server.revoke_all()
        stream = MeasurementStream(meter.client, initial_backoff_s=1.0, max_backoff_s=5.0)

        def pair_again() -> None:
            meter.client.set_token(meter.server.add_user(USER))

        loop.call_later(30.0, pair_again)
        start_s = loop.time()
        readings = await take(stream, 2)
        rejected_tokens = meter.server.counters.rejected_tokens
        tokens = list(meter.server.users.values())
    assert readings[0].received_s - start_s >= 30.0
    assert 5 <= rejected_tokens <= 8  # it kept trying, every 5 s: not hammering
    rejected = [r for r in caplog.records if "rejected our token" in r.getMessage()]
    assert len(rejected) == 1
    assert "pair again" in rejected[0].getMessage()
    for token in tokens:
        assert token not in caplog.text


async def test_without_a_token_the_stream_does_not_connect(
    simulator_ca: SimulatorCA, ca_file: Path
) -> None:
    async with live_meter(simulator_ca, ca_file) as meter:
        meter.client.set_token(None)
        stream = MeasurementStream(meter.client)
        with pytest.raises(TimeoutError):
            await take(stream, 1, within_s=10.0)
        assert meter.server.counters.sockets_opened == 0
    assert not stream.connected


async def test_use_moves_the_stream_to_another_address_at_once(
    simulator_ca: SimulatorCA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The meter got a new address: the stream leaves the old socket and, without waiting for
    its backoff, reads from the new one (same device, same token)."""
    caplog.set_level(logging.INFO, logger=PUSH_LOGGER)
    loop = asyncio.get_running_loop()
    async with live_meter(simulator_ca, ca_file) as meter:
        token = meter.client.token
        assert token is not None
        moved = await start_v2_meter_server(
            meter.model, simulator_ca, host="127.0.0.2", push_check_s=0.01, users={USER: token}
        )
        stream = MeasurementStream(meter.client, initial_backoff_s=50.0, max_backoff_s=50.0)
        moved_at: list[float] = []
        try:
            client = HomeWizardV2Client(
                f"127.0.0.2:{moved.port}",
                identifier=moved.identifier,
                token=token,
                ca_file=ca_file,
                timeout_s=2.0,
            )

            async def move(n: int) -> None:
                if n == 2:
                    moved_at.append(loop.time())
                    await meter.server.stop()  # the old address goes dark
                    stream.use(client)

            readings = await take(stream, 5, each=move)
            await client.close()
            assert moved.counters.sockets_opened == 1
            assert moved.counters.frames_pushed >= 3
        finally:
            await moved.stop()
    after = readings[2:]  # all from the new address
    assert all(r.received_s >= moved_at[0] for r in after)
    assert after[0].received_s - moved_at[0] < 50.0  # not after the 50 s backoff
    assert stream.client is client
    assert not any("push stream lost" in r.getMessage() for r in caplog.records)
