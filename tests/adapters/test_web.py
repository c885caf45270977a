"""The HTTP server on a real loopback socket: metrics, health, controls, the live stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.adapters.web import BatteryCounters, DashboardServer, EngineCounters
from engine.adapters.web.history import History, point_of
from engine.adapters.web.server import MAX_STREAMS, STATIC_DIR
from engine.core.events import (
    BatteryLost,
    Excluded,
    HandoverStarted,
    MeterLost,
    SafeHoldCause,
    SafeHoldEntered,
    SafeHoldLeft,
)
from engine.core.model import Mode
from engine.core.states import BatteryState, FleetState
from engine.core.status import BatteryStatus, FleetStatus
from engine.runtime.event_log import describe, severity

TOKEN = "correct-horse-battery"
LOGGER = "engine.adapters.web.server"


class ManualClock:
    """The engine's clock, moved by the test."""

    def __init__(self, t_s: float = 1000.0) -> None:
        self.t_s = t_s

    def now(self) -> float:
        return self.t_s

    async def sleep(self, seconds: float) -> None:
        self.t_s += max(0.0, seconds)
        await asyncio.sleep(0)


def sample_status(**changes: Any) -> FleetStatus:
    """Two batteries: garage discharging 600 W as commanded, attic offline."""
    status = FleetStatus(
        soc_pct=55.0,
        battery_power_w=600.0,
        grid_w=12.0,
        pv_w=None,
        charge_total_wh=1000.0,
        discharge_total_wh=2000.0,
        discharge_blocked=False,
        mode=Mode.NORMAL,
        batteries=(
            BatteryStatus(1, "garage", 55.0, 600.0, BatteryState.DISCHARGING, True, setpoint_w=600),
            BatteryStatus(2, "attic", None, None, BatteryState.UNAVAILABLE, False),
        ),
        quality="stable",
        grid_rms_w=14.5,
        fleet_state=FleetState.NORMAL,
        now_s=1000.0,
        meter_age_s=0.4,
        cycle_duration_s=0.03,
        cycle_latency_s=0.02,
    )
    return replace(status, **changes)


@dataclass
class Inputs:
    modes: list[Mode] = field(default_factory=list)
    blocks: list[bool] = field(default_factory=list)


@dataclass
class Running:
    server: DashboardServer
    clock: ManualClock
    inputs: Inputs
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def counters() -> EngineCounters:
    return EngineCounters(
        cycles=120,
        cycle_errors=3,
        cycle_error_runs=1,
        meter_failures=7,
        batteries=(
            BatteryCounters("garage", reads=400, writes=50, errors=2, retries=1, connects=1,
                            control_lost=0),
            BatteryCounters("attic", reads=380, writes=40, errors=9, retries=8, connects=5,
                            control_lost=1),
        ),
        mqtt_connected=True,
        mqtt_reconnects=2,
        mqtt_rejected_commands=4,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running(token: str | None = None, **kwargs: Any) -> AsyncIterator[Running]:
    clock = ManualClock()
    inputs = Inputs()
    server = DashboardServer(
        clock=clock,
        battery_names=["garage", "attic"],
        on_mode=inputs.modes.append,
        on_block_discharge=inputs.blocks.append,
        describe=describe,
        severity=severity,
        host="127.0.0.1",
        port=0,
        token=token,
        counters=counters,
        **kwargs,
    )
    assert await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(server, clock, inputs, session)
    finally:
        await server.stop()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value, through prometheus_client's parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def get_metrics(
    r: Running,
) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    async with r.session.get(f"{r.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return text, parse_metrics(text)


def one(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


# ---------------------------------------------------------------------------------------
# /metrics


async def test_metrics_expose_the_status_and_counters_in_base_units() -> None:
    async with running() as r:
        r.server.publish(sample_status())
        r.clock.t_s = 1002.5
        _, m = await get_metrics(r)
    assert m[one("mmbc_grid_power_watts")] == 12.0
    assert m[one("mmbc_battery_power_watts", battery="garage")] == 600.0
    assert m[one("mmbc_battery_setpoint_watts", battery="garage")] == 600.0
    assert m[one("mmbc_battery_state_of_charge_ratio", battery="garage")] == 0.55
    assert m[one("mmbc_battery_available", battery="garage")] == 1.0
    assert m[one("mmbc_battery_available", battery="attic")] == 0.0
    assert m[one("mmbc_battery_state", battery="garage", state="discharging")] == 1.0
    assert m[one("mmbc_battery_state", battery="garage", state="idle")] == 0.0
    assert m[one("mmbc_battery_state", battery="attic", state="unavailable")] == 1.0
    assert m[one("mmbc_mode", mode="normal")] == 1.0
    assert m[one("mmbc_mode", mode="hold")] == 0.0
    assert m[one("mmbc_fleet_state", state="normal")] == 1.0
    assert m[one("mmbc_control_quality", quality="stable")] == 1.0
    assert m[one("mmbc_grid_error_rms_watts")] == 14.5
    assert m[one("mmbc_meter_reading_age_seconds")] == 0.4
    assert m[one("mmbc_last_cycle_age_seconds")] == 2.5
    assert m[one("mmbc_discharge_blocked")] == 0.0
    assert m[one("mmbc_charged_energy_joules_total")] == 1000.0 * 3600
    assert m[one("mmbc_discharged_energy_joules_total")] == 2000.0 * 3600
    assert m[one("mmbc_cycle_duration_seconds_count")] == 1.0
    assert m[one("mmbc_cycle_duration_seconds_bucket", le="0.05")] == 1.0
    assert m[one("mmbc_cycle_duration_seconds_bucket", le="0.025")] == 0.0
    assert m[one("mmbc_cycle_latency_seconds_sum")] == pytest.approx(0.02)
    assert m[one("mmbc_cycles_total")] == 120.0
    assert m[one("mmbc_meter_failures_total")] == 7.0
    assert m[one("mmbc_fail_safe_holds_total", cause="internal_error")] == 1.0
    assert m[one("mmbc_modbus_reads_total", battery="attic")] == 380.0
    assert m[one("mmbc_modbus_errors_total", battery="attic")] == 9.0
    assert m[one("mmbc_modbus_retries_total", battery="attic")] == 8.0
    assert m[one("mmbc_battery_control_lost_total", battery="attic")] == 1.0
    assert m[one("mmbc_mqtt_reconnects_total")] == 2.0
    assert m[one("mmbc_mqtt_rejected_commands_total")] == 4.0
    assert m[one("mmbc_mqtt_connected")] == 1.0
    # Unknown this cycle: left out, never a stale or made-up value.
    assert one("mmbc_battery_power_watts", battery="attic") not in m
    assert one("mmbc_battery_setpoint_watts", battery="attic") not in m
    assert one("mmbc_battery_state_of_charge_ratio", battery="attic") not in m
    assert one("mmbc_pv_power_watts") not in m
    assert any(name.startswith("process_") for name, _ in m)


async def test_metrics_count_the_events_of_every_cycle() -> None:
    events = (
        SafeHoldEntered(SafeHoldCause.METER_STALE),
        Excluded("attic", until_s=1300.0, delivered_w=0.0, commanded_w=800),
        HandoverStarted("garage", "attic"),
    )
    async with running() as r:
        r.server.publish(sample_status(events=events))
        r.server.publish(sample_status(now_s=1001.0, events=events[1:2]))
        _, m = await get_metrics(r)
    assert m[one("mmbc_fail_safe_holds_total", cause="meter_stale")] == 1.0
    assert m[one("mmbc_exclusions_total", battery="attic")] == 2.0
    assert m[one("mmbc_exclusions_total", battery="garage")] == 0.0
    assert m[one("mmbc_handovers_total")] == 1.0


async def test_an_unknown_grid_reading_disappears_from_the_metrics() -> None:
    async with running() as r:
        r.server.publish(sample_status())
        r.server.publish(sample_status(now_s=1001.0, grid_w=None, meter_age_s=None))
        _, m = await get_metrics(r)
    assert one("mmbc_grid_power_watts") not in m
    assert one("mmbc_meter_reading_age_seconds") not in m


async def test_a_stale_grid_reading_is_never_shown_as_a_value() -> None:
    async with running() as r:
        r.server.publish(sample_status(now_s=1001.0, meter_fresh=False, meter_age_s=9.0))
        _, m = await get_metrics(r)
        snap = r.server.snapshot()
    assert one("mmbc_grid_power_watts") not in m
    assert one("mmbc_grid_error_rms_watts") not in m
    assert m[one("mmbc_meter_reading_age_seconds")] == 9.0
    assert snap["status"]["grid_w"] is None
    assert snap["recent"][1] == [None]


async def test_promtool_accepts_the_metrics(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    async with running() as r:
        r.server.publish(sample_status(events=(SafeHoldEntered(SafeHoldCause.METER_STALE),)))
        text, _ = await get_metrics(r)
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""  # no lint findings either


# ---------------------------------------------------------------------------------------
# /healthz


async def health(r: Running) -> tuple[int, dict[str, Any]]:
    async with r.session.get(f"{r.url}/healthz") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def test_healthz_follows_the_cycle_and_the_meter() -> None:
    stale = SafeHoldEntered(SafeHoldCause.METER_STALE)
    async with running(meter_max_age_s=20.0, cycle_stale_s=10.0) as r:
        status, body = await health(r)
        assert (status, body["reason"]) == (503, "no control cycle completed yet")
        r.server.publish(sample_status(meter_age_s=None))
        status, body = await health(r)
        assert (status, body["reason"]) == (503, "no meter reading yet")
        r.server.publish(sample_status())
        status, body = await health(r)
        assert (status, body["status"]) == (200, "ok")
        # The core's verdict: stale, every battery at 0 W.
        r.server.publish(sample_status(now_s=1001.0, meter_age_s=6.0, events=(stale,)))
        r.clock.t_s = 1001.0
        status, body = await health(r)
        assert status == 503
        assert body["reason"] == "meter stale (reading 6 s old): every battery held at 0 W"
        r.server.publish(sample_status(now_s=1002.0, meter_age_s=8.0))
        r.clock.t_s = 1002.0
        assert (await health(r))[0] == 503  # still held
        left = SafeHoldLeft(SafeHoldCause.METER_STALE)
        r.server.publish(sample_status(now_s=1003.0, meter_age_s=0.2, events=(left,)))
        r.clock.t_s = 1003.0
        assert (await health(r))[0] == 200
        # The backstop, for a policy without a stale verdict.
        r.server.publish(sample_status(now_s=1004.0, meter_age_s=25.0))
        r.clock.t_s = 1004.0
        status, body = await health(r)
        assert status == 503
        assert "meter reading is 25 s old (limit 20 s)" in body["reason"]
        r.server.publish(sample_status(now_s=1005.0))
        r.clock.t_s = 1016.0  # no cycle for 11 s: stuck
        status, body = await health(r)
        assert status == 503
        assert "no control cycle completed for 11 s" in body["reason"]


# ---------------------------------------------------------------------------------------
# controls


async def post(
    r: Running, path: str, body: object, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with r.session.post(f"{r.url}{path}", json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_without_a_token_every_write_is_forbidden() -> None:
    async with running(token=None) as r:
        assert (await post(r, "/api/mode", {"mode": "hold"}))[0] == 403
        assert (await post(r, "/api/mode", {"mode": "hold"}, token="anything"))[0] == 403
        assert (await post(r, "/api/discharge_block", {"blocked": True}, token=TOKEN))[0] == 403
        assert r.inputs == Inputs()
        r.server.publish(sample_status())
        async with r.session.get(f"{r.url}/api/snapshot") as response:
            assert (await response.json())["controls"] is False


async def test_with_a_token_only_that_token_is_obeyed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        async with running(token=TOKEN) as r:
            assert (await post(r, "/api/mode", {"mode": "hold"}))[0] == 403
            assert (await post(r, "/api/mode", {"mode": "hold"}, token=TOKEN + "x"))[0] == 403
            assert (await post(r, "/api/mode", {"mode": "hold"}, token=TOKEN[:-1]))[0] == 403
            assert r.inputs == Inputs()
            assert await post(r, "/api/mode", {"mode": "HOLD"}, token=TOKEN) == (
                200,
                {"mode": "hold"},
            )
            assert await post(r, "/api/discharge_block", {"blocked": True}, token=TOKEN) == (
                200,
                {"blocked": True},
            )
            # Bad input: a clear 400, nothing changes.
            assert (await post(r, "/api/mode", {"mode": "turbo"}, token=TOKEN))[0] == 400
            assert (await post(r, "/api/mode", ["hold"], token=TOKEN))[0] == 400
            assert (await post(r, "/api/discharge_block", {"blocked": "yes"}, token=TOKEN))[
                0
            ] == 400
            async with r.session.post(
                f"{r.url}/api/mode",
                data=b"\xff{",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response:
                assert response.status == 400
            async with r.session.get(f"{r.url}/api/snapshot") as response:
                text = await response.text()
            async with r.session.get(f"{r.url}/") as response:
                page = await response.text()
    assert r.inputs == Inputs(modes=[Mode.HOLD], blocks=[True])
    assert json.loads(text)["controls"] is True
    for shown in (text, page, caplog.text):
        assert TOKEN not in shown
        assert TOKEN[:-1] not in shown
    assert "wrong or missing token" in caplog.text


# ---------------------------------------------------------------------------------------
# the live stream


async def read_event(response: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next server-sent event (name, JSON data), skipping comments and retry hints."""
    name = ""
    async with asyncio.timeout(10.0):
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                return name, json.loads(line.removeprefix("data: "))


async def test_the_stream_sends_a_snapshot_then_every_cycle() -> None:
    async with running() as r:
        r.server.publish(sample_status(events=(BatteryLost("attic"),)))
        async with r.session.get(f"{r.url}/api/stream") as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            name, snap = await read_event(response)
            assert name == "snapshot"
            assert snap["batteries"] == ["garage", "attic"]
            assert snap["status"]["grid_w"] == 12.0
            assert snap["recent"] == [[1000.0], [12.0], [600.0], [None], [55.0], [None]]
            assert [e["text"] for e in snap["events"]] == [describe(BatteryLost("attic"))]
            assert snap["events"][0]["level"] == "warning"
            lost = MeterLost("p1", "no answer")
            r.server.publish(sample_status(now_s=1001.0, grid_w=-40.0, events=(lost,)))
            name, update = await read_event(response)
            assert name == "status"
            assert update["status"]["grid_w"] == -40.0
            assert update["point"] == [1001.0, -40.0, 600.0, None, 55.0, None]
            assert update["events"] == [
                {"t_s": 1001.0, "kind": "MeterLost", "level": "warning", "text": describe(lost)}
            ]
        async with r.session.get(f"{r.url}/api/long") as response:
            long = await response.json()
    # Since start, in buckets (the first 60 s bucket averages both cycles); never the hour.
    assert long == {
        "long": [[960.0], [-14.0], [600.0], [None], [55.0], [None]],
        "long_bucket_s": 60.0,
    }


async def until(condition: Callable[[], bool], bound_s: float = 30.0) -> None:
    async with asyncio.timeout(bound_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_a_dashboard_that_stops_reading_is_dropped_not_buffered() -> None:
    async with running() as r:
        r.server.publish(sample_status())
        # A raw socket that never reads: the server's writes back up, its queue fills.
        reader, writer = await asyncio.open_connection("127.0.0.1", r.server.port)
        writer.write(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await until(lambda: bool(r.server._streams))
        big = sample_status(events=tuple(BatteryLost(f"b{i}") for i in range(200)))
        for i in range(2000):  # publish never waits, however far behind the reader is
            r.server.publish(replace(big, now_s=1001.0 + i))
        await until(lambda: not r.server._streams)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        del reader
        assert (await health(r))[0] == 200  # the server itself is fine


async def test_too_many_dashboards_get_503() -> None:
    async with running() as r:
        r.server.publish(sample_status())
        responses = []
        for _ in range(MAX_STREAMS):
            response = await r.session.get(f"{r.url}/api/stream")
            assert response.status == 200
            await read_event(response)
            responses.append(response)
        async with r.session.get(f"{r.url}/api/stream") as response:
            assert response.status == 503
        for response in responses:
            response.close()


# ---------------------------------------------------------------------------------------
# the page and its assets


async def test_the_page_and_every_asset_are_served_from_the_package() -> None:
    async with running() as r:
        async with r.session.get(f"{r.url}/") as response:
            assert response.status == 200
            page = await response.text()
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        for asset in (
            "dashboard.js",
            "dashboard.css",
            "vendor/uPlot.iife.min.js",
            "vendor/uPlot.min.css",
            "vendor/uPlot.LICENSE",
        ):
            async with r.session.get(f"{r.url}/static/{asset}") as response:
                assert response.status == 200, asset
        async with r.session.get(f"{r.url}/static/../server.py") as response:
            assert response.status in (403, 404)
    assert 'name="viewport"' in page
    # Offline on a LAN: nothing is loaded from anywhere but the engine.
    for text in (page, *(p.read_text() for p in STATIC_DIR.glob("*.*"))):
        assert 'src="http' not in text
        assert 'href="http' not in text
        assert "url(http" not in text
    assert "MIT License" in (STATIC_DIR / "vendor" / "uPlot.LICENSE").read_text()


# ---------------------------------------------------------------------------------------
# start-up


async def test_a_port_in_use_is_one_log_line_and_no_crash(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DashboardServer(
            clock=ManualClock(),
            battery_names=["garage"],
            on_mode=lambda mode: None,
            on_block_discharge=lambda blocked: None,
            describe=describe,
            severity=severity,
            host="127.0.0.1",
            port=port,
        )
        with caplog.at_level(logging.INFO, logger=LOGGER):
            assert await server.start() is False
        server.publish(sample_status())  # still a harmless sink
        await server.stop()
    lines = [rec for rec in caplog.records if rec.name == LOGGER]
    assert len(lines) == 1
    assert lines[0].levelno == logging.ERROR
    assert "port is in use" in lines[0].getMessage()
    assert "control goes on" in lines[0].getMessage()


# ---------------------------------------------------------------------------------------
# history (pure)


def test_the_recent_window_keeps_one_hour() -> None:
    history = History(window_s=3600.0)
    for t in range(5000):
        history.add(point_of(sample_status(now_s=float(t), grid_w=float(t))))
    columns = history.recent_columns()
    assert columns[0][0] == 5000 - 1 - 3600
    assert columns[0][-1] == 4999
    assert columns[1][-1] == 4999.0
    assert len(history) == 3601


def test_the_long_history_stays_bounded_and_keeps_the_mean() -> None:
    history = History(bucket_s=60.0, max_buckets=100)
    for t in range(0, 30 * 24 * 3600, 10):  # a month at one point per 10 s
        history.add((float(t), 100.0 if t % 20 else 0.0, 600.0, None, 55.0, None))
    assert history.long_length <= 100
    assert history.bucket_s >= 30 * 24 * 3600 / 100
    columns = history.long_columns()
    assert columns[0][0] == 0.0
    assert columns[0] == sorted(t for t in columns[0] if t is not None)
    # Every bucket averages as many 0 W as 100 W points.
    assert all(value == 50.0 for value in columns[1][:-1])
    assert columns[3] == [None] * len(columns[0])  # the offline battery never reported


def test_time_running_backwards_is_ignored() -> None:
    history = History()
    history.add(point_of(sample_status(now_s=10.0)))
    history.add(point_of(sample_status(now_s=5.0)))
    assert history.recent_columns()[0] == [10.0]
