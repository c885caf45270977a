"""Tests of the MQTT bridge, HA discovery and the published status, against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.adapters.ha_discovery import (
    MODE_OPTIONS,
    BatteryDevice,
    discovery_messages,
    node_id,
)
from engine.adapters.mqtt import (
    CommandInbox,
    MqttBridge,
    MqttSettings,
    PublishSchedule,
    format_battery_power,
    format_soc,
    format_unsigned,
    parse_block_discharge,
    parse_mode,
    published_topics,
    status_payloads,
)
from engine.core.energy import EnergyTotals
from engine.core.model import BatteryIdentity, BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.states import BatteryState, FleetState
from engine.core.status import BatteryStatus, FleetStatus, build_status
from engine.ports import LoopClock
from tests.fakes import FakeClock
from tests.mqtt_broker import (
    HOST,
    TEST_PASSWORD,
    TEST_USERNAME,
    TestBroker,
    broker_kind,
    make_tls_files,
    refused_port,
    start_broker,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0  # upper bound for anything to arrive; tests never assert on durations
LOGGER_NAME = "engine.adapters.mqtt"
SYNC_ROOT = "test-sync/"  # barrier messages, outside every topic the bridge uses

# ---------------------------------------------------------------------------------------
# helpers


def sample_status(**changes: Any) -> FleetStatus:
    """A fleet charging 800 W (engine sign: -800) while importing 350 W."""
    status = FleetStatus(
        soc_pct=67.44,
        battery_power_w=-800.0,
        grid_w=350.4,
        pv_w=2100.2,
        charge_total_wh=12345.6,
        discharge_total_wh=6789.0,
        discharge_blocked=False,
        mode=Mode.HOLD,
        batteries=(
            BatteryStatus(
                1,
                "garage",
                55.55,
                -1100.0,
                BatteryState.CHARGING,
                True,
                identity=BatteryIdentity(serial_number="SN-GARAGE", software_version="1.53"),
                charge_total_wh=1234.0,
                discharge_total_wh=560.0,
                stored_energy_wh=2844.2,
                voltage_v=52.346,
                current_a=-21.0,
                temperature_c=27.36,
                alarms=("low battery SoC warning",),
                faults=(),
            ),
            BatteryStatus(2, "attic", 80.0, 300.0, BatteryState.DISCHARGING, True),
        ),
        quality="stable",
        grid_rms_w=42.6,
        fleet_state=FleetState.HOLD,
    )
    return replace(status, **changes)


# Every topic of sample_status() and its exact payload: MQTT battery power is + = charging.
EXPECTED_STATE = {
    "mmbc/status/online": "online",
    "mmbc/status/soc": "67.4",
    "mmbc/status/battery_power": "800",
    "mmbc/status/grid_power": "350",
    "mmbc/status/pv_power": "2100",
    "mmbc/status/charge_total_wh": "12346",
    "mmbc/status/discharge_total_wh": "6789",
    "mmbc/status/discharge_blocked": "false",
    "mmbc/status/mode": "hold",
    "mmbc/status/control_quality": "stable",
    "mmbc/status/grid_rms_w": "43",
    "mmbc/status/fleet_state": "hold",
    "mmbc/status/meter_online": "true",
    "mmbc/status/pv_meter_online": "true",
    "mmbc/status/batteries_online": "true",
    "mmbc/battery/1/soc": "55.5",
    "mmbc/battery/1/power": "1100",
    "mmbc/battery/1/state": "charging",
    "mmbc/battery/1/online": "true",
    "mmbc/battery/1/charge_total_kwh": "1.23",
    "mmbc/battery/1/discharge_total_kwh": "0.56",
    "mmbc/battery/1/stored_energy_kwh": "2.84",
    "mmbc/battery/1/voltage": "52.35",
    "mmbc/battery/1/current": "21.00",  # + = charging, as the power
    "mmbc/battery/1/temperature": "27.4",
    "mmbc/battery/1/alarm": "true",
    "mmbc/battery/1/alarms": '{"active": ["low battery SoC warning"]}',
    "mmbc/battery/1/fault": "false",
    "mmbc/battery/1/faults": '{"active": []}',
    "mmbc/battery/2/soc": "80.0",
    "mmbc/battery/2/power": "-300",
    "mmbc/battery/2/state": "discharging",
    "mmbc/battery/2/online": "true",
}


@dataclass(frozen=True)
class Received:
    topic: str
    payload: str
    retain: bool


@dataclass
class Observer:
    """A separate MQTT client that records everything on its subscriptions."""

    client: aiomqtt.Client
    messages: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def collect(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            text = (
                payload.decode(errors="replace")
                if isinstance(payload, bytes | bytearray)
                else str(payload)
            )
            self.messages.append(Received(message.topic.value, text, message.retain))
            self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def state(self, prefix: str = "mmbc/") -> dict[str, str]:
        """Latest payload per topic, test markers and the bridge's scan marker left out."""
        return {
            m.topic: m.payload
            for m in self.messages
            if m.topic.startswith(prefix)
            and not m.topic.startswith(SYNC_ROOT)
            and "/sync/" not in m.topic
        }

    def of(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def has(self, expected: dict[str, str]) -> None:
        await self.wait_for(
            lambda: all(self.state().get(topic) == value for topic, value in expected.items())
        )

    async def send(self, topic: str, payload: str | bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    async def sync(self) -> None:
        """Barrier: everything the broker queued for us before this call has arrived."""
        topic = f"{SYNC_ROOT}{next(_sync_ids)}"
        await self.client.publish(topic, "x", qos=1)
        await self.wait_for(lambda: any(m.topic == topic for m in self.messages))


_observer_ids = itertools.count()
_sync_ids = itertools.count()


@contextlib.asynccontextmanager
async def observe(
    broker: TestBroker,
    topics: tuple[str, ...] = ("mmbc/#",),
    *,
    tls_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Observer]:
    client = aiomqtt.Client(
        HOST,
        broker.port,
        username=TEST_USERNAME,
        password=TEST_PASSWORD,
        identifier=f"observer-{os.getpid()}-{next(_observer_ids)}",
        tls_context=tls_context,
    )
    async with client:
        observer = Observer(client)
        for topic in (*topics, f"{SYNC_ROOT}#"):
            await client.subscribe(topic, qos=1)
        task = asyncio.create_task(observer.collect())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@dataclass
class Commands:
    """What the bridge handed to the runtime."""

    blocked: list[bool] = field(default_factory=list)
    modes: list[Mode] = field(default_factory=list)


def make_settings(broker: TestBroker, **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": HOST,
        "port": broker.port,
        "username": TEST_USERNAME,
        "password": TEST_PASSWORD,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    values.update(overrides)
    return MqttSettings(**values)


def make_bridge(
    settings_: MqttSettings,
    commands: Commands | None = None,
    *,
    has_pv: bool = True,
    battery_numbers: tuple[int, ...] = (1, 2),
    clock: Any = None,
) -> MqttBridge:
    commands = commands if commands is not None else Commands()
    return MqttBridge(
        settings_,
        clock=clock or LoopClock(),
        on_block_discharge=commands.blocked.append,
        on_mode=commands.modes.append,
        has_pv=has_pv,
        battery_numbers=list(battery_numbers),
    )


@contextlib.asynccontextmanager
async def running(bridge: MqttBridge) -> AsyncIterator[MqttBridge]:
    task = asyncio.create_task(bridge.run())
    try:
        yield bridge
    finally:
        await bridge.stop()
        async with asyncio.timeout(WAIT_S):
            await task


async def until(predicate: Callable[[], bool]) -> None:
    # Polls state the bridge exposes only as properties; bounded by WAIT_S.
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def until_length(items: list[Any], length: int) -> None:
    await until(lambda: len(items) >= length)


@pytest.fixture
async def broker() -> AsyncIterator[TestBroker]:
    async with start_broker() as started:
        yield started


# ---------------------------------------------------------------------------------------
# pure: payload parsing and formatting


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"true", True), (b"TRUE", True), (b" True\n", True), (b"false", False), (b"FaLsE", False)],
)
def test_parse_block_discharge_accepts_true_false_any_case(payload: bytes, expected: bool) -> None:
    assert parse_block_discharge(payload) is expected


@pytest.mark.parametrize("payload", [b"", b"1", b"on", b"yes", b"truee", b'"true"', b"\xff\xfe"])
def test_parse_block_discharge_rejects_anything_else(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"expected 'true' or 'false'|not UTF-8"):
        parse_block_discharge(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"normal", Mode.NORMAL),
        (b"HOLD", Mode.HOLD),
        (b" Charge ", Mode.CHARGE),
        (b"selfcontrol", Mode.SELFCONTROL),
        (b"1", Mode.NORMAL),
        (b"2", Mode.HOLD),
        (b"3", Mode.CHARGE),
        (b"4", Mode.SELFCONTROL),
    ],
)
def test_parse_mode_accepts_names_and_evcc_numbers(payload: bytes, expected: Mode) -> None:
    assert parse_mode(payload) is expected


@pytest.mark.parametrize("payload", [b"", b"0", b"5", b"-1", b"1.0", b"\xd9\xa1", b"auto", b"\xff"])
def test_parse_mode_rejects_anything_else(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"expected one of|not UTF-8"):
        parse_mode(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_command_parsers_raise_only_value_error(payload: bytes) -> None:
    for parse in (parse_block_discharge, parse_mode):
        with contextlib.suppress(ValueError):
            parse(payload)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["true", "false", *MODE_OPTIONS]), st.randoms())
def test_command_parsers_ignore_case(word: str, rnd: Any) -> None:
    mixed = "".join(c.upper() if rnd.random() < 0.5 else c for c in word).encode()
    if word in ("true", "false"):
        assert parse_block_discharge(mixed) is (word == "true")
    else:
        assert parse_mode(mixed) is Mode(word)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-5000, max_value=5000, allow_nan=False))
def test_battery_power_on_mqtt_is_positive_when_charging(power_w: float) -> None:
    published = int(format_battery_power(power_w))
    assert published == -round(power_w)
    if power_w < -0.5:  # engine: charging
        assert published > 0
    if power_w > 0.5:  # engine: discharging
        assert published < 0


def test_formats() -> None:
    assert format_soc(67.44) == "67.4"
    assert format_soc(100.0) == "100.0"
    assert format_unsigned(-3.0) == "0"
    assert format_unsigned(12345.6) == "12346"
    assert format_battery_power(0.2) == "0"  # never "-0"


def test_status_payloads_cover_every_topic_with_exact_format() -> None:
    payloads = {f"mmbc/{k}": v for k, v in status_payloads(sample_status(), has_pv=True).items()}
    assert payloads == {k: v for k, v in EXPECTED_STATE.items() if k != "mmbc/status/online"}


def test_status_payloads_leave_out_unknown_values_and_pv_without_meter() -> None:
    status = sample_status(
        soc_pct=None,
        grid_w=math.nan,
        quality=None,
        grid_rms_w=None,
        charge_total_wh=None,
        batteries=(BatteryStatus(1, "garage", None, None, BatteryState.UNAVAILABLE, False),),
    )
    payloads = status_payloads(status, has_pv=False)
    assert not [topic for topic in payloads if "pv_" in topic]
    for absent in ("status/soc", "status/grid_power", "status/control_quality"):
        assert absent not in payloads
    assert "status/charge_total_wh" not in payloads
    assert "battery/1/soc" not in payloads
    assert payloads["battery/1/online"] == "false"
    # Home Assistant's "unavailable" is never a state: availability says it.
    assert "battery/1/state" not in payloads
    assert payloads["status/discharge_total_wh"] == "6789"
    # Nothing knows the meter or any battery: their availability topics say so.
    assert payloads["status/meter_online"] == "false"
    assert payloads["status/batteries_online"] == "false"


def test_a_stale_meter_hides_the_grid_values_but_keeps_the_rest() -> None:
    payloads = status_payloads(sample_status(meter_fresh=False), has_pv=True)
    assert payloads["status/meter_online"] == "false"
    assert "status/grid_power" not in payloads
    assert "status/grid_rms_w" not in payloads
    assert payloads["status/soc"] == "67.4"
    no_pv_reading = status_payloads(sample_status(pv_w=None), has_pv=True)
    assert no_pv_reading["status/pv_meter_online"] == "false"
    assert "status/pv_power" not in no_pv_reading


@pytest.mark.parametrize("word", ["unavailable", "unknown"])
def test_reserved_words_are_never_published_as_a_state(word: str) -> None:
    payloads = status_payloads(sample_status(quality=word), has_pv=True)
    assert word not in payloads.values()
    assert "status/control_quality" not in payloads


def test_every_published_topic_is_a_known_topic() -> None:
    payloads = status_payloads(sample_status(), has_pv=True)
    known = published_topics([1, 2], has_pv=True)
    assert set(payloads) | {"status/online"} <= known
    assert not published_topics([1], has_pv=False) & {"status/pv_power", "battery/2/soc"}


# ---------------------------------------------------------------------------------------
# pure: the publishing schedule (rate limiting) with explicit times


def test_schedule_sends_first_value_at_once_then_rate_limits_changes() -> None:
    schedule = PublishSchedule(min_interval_s=5.0, max_interval_s=60.0)
    schedule.update({"a": "1"})
    assert schedule.due(0.0) == [("a", "1")]
    schedule.mark_sent("a", "1", 0.0)
    schedule.update({"a": "2"})
    schedule.update({"a": "3"})  # only the latest value is kept
    assert schedule.due(4.9) == []
    assert schedule.next_due_s() == 5.0
    assert schedule.due(5.0) == [("a", "3")]
    assert len(schedule) == 1


def test_schedule_refreshes_an_unchanged_value_every_max_interval() -> None:
    schedule = PublishSchedule(min_interval_s=5.0, max_interval_s=60.0)
    schedule.update({"a": "1"})
    schedule.mark_sent("a", "1", 10.0)
    schedule.update({"a": "1"})
    assert schedule.due(69.9) == []
    assert schedule.due(70.0) == [("a", "1")]


def test_schedule_reset_and_force_make_topics_due_at_once() -> None:
    schedule = PublishSchedule(min_interval_s=5.0, max_interval_s=60.0)
    schedule.update({"a": "1", "b": "2"})
    for topic, payload in schedule.due(0.0):
        schedule.mark_sent(topic, payload, 0.0)
    assert schedule.force("b")
    assert not schedule.force("unknown")
    assert schedule.due(1.0) == [("b", "2")]
    schedule.mark_sent("b", "2", 1.0)
    assert schedule.due(1.0) == []
    schedule.reset()
    assert schedule.due(1.0) == [("a", "1"), ("b", "2")]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3.0), st.sampled_from(["x", "y", "z"])),
        max_size=60,
    )
)
def test_schedule_never_sends_a_topic_twice_within_min_interval(steps: list[Any]) -> None:
    schedule = PublishSchedule(min_interval_s=5.0, max_interval_s=60.0)
    now_s = 0.0
    sent_at: list[float] = []
    for step_s, value in steps:
        now_s += step_s
        schedule.update({"t": value})
        for topic, payload in schedule.due(now_s):
            schedule.mark_sent(topic, payload, now_s)
            sent_at.append(now_s)
    assert all(b - a >= 5.0 for a, b in itertools.pairwise(sent_at))


# ---------------------------------------------------------------------------------------
# pure: settings


def test_settings_defaults_and_normalisation() -> None:
    defaults = MqttSettings(host="broker")
    assert defaults.port == 1883
    assert defaults.topic_prefix == "mmbc"
    assert defaults.discovery_prefix == "homeassistant"
    assert defaults.discovery
    assert defaults.min_interval_s == 5.0
    assert defaults.max_interval_s == 60.0
    assert defaults.reconnect_max_s <= 30.0
    assert defaults.client_id == MqttSettings(host="other").client_id == "mmbc-engine"
    virtual = MqttSettings(host="broker", topic_prefix="mmbc/virtual")
    assert virtual.topic_prefix == "mmbc/virtual"
    assert virtual.client_id == "mmbc-engine-mmbc_virtual"
    assert "hunter2" not in repr(MqttSettings(host="broker", username="u", password="hunter2"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"host": " "},
        {"port": 0},
        {"port": 70000},
        {"topic_prefix": "mmbc/#"},
        {"topic_prefix": "+"},
        {"topic_prefix": "/"},
        {"discovery_prefix": ""},
        {"min_interval_s": 10.0, "max_interval_s": 5.0},
        {"min_interval_s": -1.0},
        {"reconnect_max_s": 60.0},
        {"keepalive_s": 0},
        {"tls_ca_file": "/nonexistent/ca.pem"},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any]) -> None:
    values: dict[str, Any] = {"host": "broker", **overrides}
    with pytest.raises(ValidationError):
        MqttSettings(**values)


# ---------------------------------------------------------------------------------------
# pure: build_status


def _telemetry(name: str, **values: Any) -> BatteryTelemetry:
    defaults: dict[str, Any] = {
        "online": True,
        "soc_pct": 50.0,
        "power_w": 0.0,
        "charge_total_wh": 1000.0,
        "discharge_total_wh": 500.0,
    }
    defaults.update(values)
    return BatteryTelemetry(name=name, **defaults)


def _plan(**values: Any) -> Plan:
    defaults: dict[str, Any] = {"setpoints": {}, "fleet_state": "normal", "battery_states": {}}
    defaults.update(values)
    return Plan(**defaults)


def test_build_status_weights_soc_by_capacity_of_online_batteries() -> None:
    snapshot = Snapshot(
        now_s=0.0,
        grid_w=120.0,
        meter_updated_s=0.0,
        batteries=(
            _telemetry("a", soc_pct=20.0, power_w=-300.0),
            _telemetry("b", soc_pct=80.0, power_w=100.0),
            _telemetry(
                "c",
                online=False,
                soc_pct=None,
                power_w=None,
                charge_total_wh=None,
                discharge_total_wh=None,
            ),
            _telemetry("d", soc_pct=None, power_w=50.0),  # online, SoC invalid
        ),
        mode=Mode.CHARGE,
        discharge_blocked=True,
        pv_w=900.0,
    )
    plan = _plan(
        battery_states={"a": "charging", "b": "discharging", "d": "idle"},
        quality="oscillating",
        grid_rms_w=77.0,
    )
    status = build_status(snapshot, plan, {"a": 10000.0, "b": 5000.0, "c": 5000.0})
    assert status.soc_pct == pytest.approx((20.0 * 10000 + 80.0 * 5000) / 15000)
    assert status.battery_power_w == pytest.approx(-150.0)
    assert status.grid_w == 120.0
    assert status.pv_w == 900.0
    assert status.mode is Mode.CHARGE
    assert status.discharge_blocked
    assert status.quality == "oscillating"
    assert status.grid_rms_w == 77.0
    assert [b.index for b in status.batteries] == [1, 2, 3, 4]
    assert [b.state for b in status.batteries] == ["charging", "discharging", "unavailable", "idle"]
    assert status.batteries[2].online is False
    # One battery reported no counters (offline): a partial sum would look like a reset.
    assert status.charge_total_wh is None
    assert status.discharge_total_wh is None


def test_build_status_takes_the_ledger_totals_and_reports_safe_hold() -> None:
    snapshot = Snapshot(
        now_s=0.0,
        grid_w=None,
        meter_updated_s=None,
        batteries=(
            _telemetry("a", charge_total_wh=1000.0, discharge_total_wh=10.0),
            _telemetry("b", online=False, charge_total_wh=None, discharge_total_wh=None),
        ),
    )
    plan = _plan(safe_hold=True, quality="stable", fleet_state=FleetState.SAFE_HOLD)
    status = build_status(snapshot, plan, {}, energy=EnergyTotals(3500.5, 30.0))
    # A battery that is not read never pauses the fleet totals (the ledger keeps them).
    assert status.charge_total_wh == pytest.approx(3500.5)
    assert status.discharge_total_wh == pytest.approx(30.0)
    assert status.batteries[0].charge_total_wh == 1000.0  # the battery's own counter
    assert status.batteries[1].charge_total_wh is None
    assert status.soc_pct == pytest.approx(50.0)
    assert status.grid_w is None
    assert status.meter_fresh is False
    assert status.quality == "safe_hold"
    assert build_status(snapshot, plan, {}).charge_total_wh is None  # no ledger, no total


def test_build_status_numbers_batteries_by_configuration_not_position() -> None:
    snapshot = Snapshot(
        now_s=0.0,
        grid_w=0.0,
        meter_updated_s=0.0,
        batteries=(_telemetry("battery_2"), _telemetry("battery_5")),
    )
    status = build_status(snapshot, _plan(), {}, numbers={"battery_2": 2, "battery_5": 5})
    assert [b.index for b in status.batteries] == [2, 5]
    assert [b.index for b in build_status(snapshot, _plan(), {}).batteries] == [1, 2]


@pytest.mark.parametrize(
    ("mode", "blocked", "expected"),
    [
        (Mode.NORMAL, False, False),
        (Mode.NORMAL, True, True),
        (Mode.HOLD, False, True),  # hold blocks discharge: the status says so
        (Mode.CHARGE, False, False),
    ],
)
def test_discharge_blocked_says_what_the_engine_does(
    mode: Mode, blocked: bool, expected: bool
) -> None:
    snapshot = Snapshot(
        now_s=0.0,
        grid_w=0.0,
        meter_updated_s=0.0,
        batteries=(_telemetry("a"),),
        mode=mode,
        discharge_blocked=blocked,
    )
    assert build_status(snapshot, _plan(), {}).discharge_blocked is expected


def test_a_stale_meter_reading_is_not_fresh() -> None:
    def fresh(updated_s: float | None, state: FleetState) -> bool:
        snapshot = Snapshot(
            now_s=100.0, grid_w=11.0, meter_updated_s=updated_s, batteries=(_telemetry("a"),)
        )
        return build_status(snapshot, _plan(fleet_state=state), {}).meter_fresh

    assert fresh(99.0, FleetState.NORMAL)
    assert not fresh(99.0, FleetState.SAFE_HOLD)  # the core found it stale
    assert not fresh(99.0, FleetState.STARTING)
    assert not fresh(None, FleetState.NORMAL)
    assert not fresh(10.0, FleetState.SELFCONTROL)  # 90 s old, whatever the mode


def test_build_status_without_any_valid_soc_has_no_fleet_soc() -> None:
    snapshot = Snapshot(
        now_s=0.0,
        grid_w=0.0,
        meter_updated_s=0.0,
        batteries=(_telemetry("a", online=False), _telemetry("b", soc_pct=math.nan)),
    )
    assert build_status(snapshot, _plan(), {}).soc_pct is None


# ---------------------------------------------------------------------------------------
# pure: discovery


def test_discovery_unique_ids_are_stable_and_distinct_per_prefix() -> None:
    def ids(prefix: str) -> list[str]:
        return [
            m.payload["unique_id"]
            for m in discovery_messages(
                topic_prefix=prefix,
                discovery_prefix="homeassistant",
                batteries=[BatteryDevice(1), BatteryDevice(2)],
                has_pv=True,
            )
        ]

    first = ids("mmbc")
    assert first == ids("mmbc")
    assert len(set(first)) == len(first)
    assert "mmbc_soc" in first
    assert "mmbc_battery_2_power" in first
    assert node_id("mmbc/virtual") == "mmbc_virtual"
    assert set(first).isdisjoint(ids("mmbc/virtual"))
    custom = discovery_messages(
        topic_prefix="mmbc/virtual",
        discovery_prefix="ha",
        batteries=[],
        has_pv=False,
    )
    assert custom[0].topic == "ha/sensor/mmbc_virtual/soc/config"
    assert custom[0].payload["state_topic"] == "mmbc/virtual/status/soc"


# ---------------------------------------------------------------------------------------
# against a real broker


async def test_every_topic_is_published_retained_with_exact_payloads(broker: TestBroker) -> None:
    async with running(make_bridge(make_settings(broker))) as bridge:
        bridge.publish(sample_status())
        async with observe(broker) as live:
            await live.has(EXPECTED_STATE)
        # A late subscriber gets every value from the broker's retained store.
        async with observe(broker) as late:
            await late.has(EXPECTED_STATE)
            await late.sync()
            assert late.state() == EXPECTED_STATE  # nothing else, no control echo
            assert all(m.retain for m in late.messages if m.topic.startswith("mmbc/"))


async def test_no_pv_topic_without_pv_meter(broker: TestBroker) -> None:
    async with running(make_bridge(make_settings(broker), has_pv=False)) as bridge:
        bridge.publish(sample_status())
        expected = {k: v for k, v in EXPECTED_STATE.items() if "/pv_" not in k}
        async with observe(broker) as late:
            await late.has(expected)
            await late.sync()
            assert late.state() == expected


async def test_block_discharge_commands_are_applied_and_echoed(broker: TestBroker) -> None:
    applied: list[bool] = []
    status = sample_status()

    def apply(blocked: bool) -> None:  # what the runtime does within one cycle
        applied.append(blocked)
        bridge.publish(replace(status, discharge_blocked=blocked))

    bridge = MqttBridge(
        make_settings(broker, min_interval_s=0.0),
        clock=LoopClock(),
        on_block_discharge=apply,
        on_mode=lambda mode: None,
        has_pv=True,
        battery_numbers=[1, 2],
    )
    async with running(bridge), observe(broker) as observer:
        bridge.publish(status)
        await observer.has({"mmbc/status/discharge_blocked": "false"})
        for count, (payload, expected) in enumerate(
            (("true", "true"), ("TRUE", "true"), ("false", "false")), start=1
        ):
            await observer.send("mmbc/control/block_discharge", payload)
            await until_length(applied, count)
            await observer.has({"mmbc/status/discharge_blocked": expected})
        assert applied == [True, True, False]


async def test_mode_commands_accept_names_and_numbers(broker: TestBroker) -> None:
    commands = Commands()
    async with running(make_bridge(make_settings(broker), commands)), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
        for payload in ("charge", "NORMAL", "1", "2", "3", "4"):
            await observer.send("mmbc/control/mode", payload)
        await until(lambda: len(commands.modes) == 6)
    assert commands.modes == [
        Mode.CHARGE,
        Mode.NORMAL,
        Mode.NORMAL,
        Mode.HOLD,
        Mode.CHARGE,
        Mode.SELFCONTROL,
    ]


@pytest.mark.parametrize(
    ("topic", "payload", "status_topic", "status_payload"),
    [
        ("mmbc/control/block_discharge", b"maybe", "mmbc/status/discharge_blocked", "false"),
        ("mmbc/control/block_discharge", b"", "mmbc/status/discharge_blocked", "false"),
        ("mmbc/control/block_discharge", b"\xff\x00", "mmbc/status/discharge_blocked", "false"),
        ("mmbc/control/mode", b"turbo", "mmbc/status/mode", "hold"),
        ("mmbc/control/mode", b"5", "mmbc/status/mode", "hold"),
    ],
)
async def test_invalid_command_is_rejected_once_and_state_republished(
    broker: TestBroker,
    caplog: pytest.LogCaptureFixture,
    topic: str,
    payload: bytes,
    status_topic: str,
    status_payload: str,
) -> None:
    commands = Commands()
    # A huge min interval: the republish must not wait for the rate limiter.
    bridge = make_bridge(
        make_settings(broker, min_interval_s=1000.0, max_interval_s=1000.0), commands
    )
    async with running(bridge), observe(broker) as observer:
        bridge.publish(sample_status())
        await observer.has({status_topic: status_payload})
        before = len(observer.of(status_topic))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            await observer.send(topic, payload)
            await observer.wait_for(lambda: len(observer.of(status_topic)) == before + 1)
        assert observer.of(status_topic)[-1].payload == status_payload
    assert commands == Commands()
    assert bridge.rejected == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER_NAME]
    assert len(warnings) == 1
    assert topic in warnings[0].getMessage()
    assert repr(payload) in warnings[0].getMessage()


async def test_changes_within_min_interval_are_held_back(broker: TestBroker) -> None:
    bridge = make_bridge(make_settings(broker, min_interval_s=1000.0, max_interval_s=1000.0))
    async with running(bridge), observe(broker) as observer:
        bridge.publish(sample_status(soc_pct=50.0))
        await observer.has({"mmbc/status/soc": "50.0", "mmbc/status/mode": "hold"})
        bridge.publish(sample_status(soc_pct=60.0))
        # Barrier: an invalid mode forces status/mode out at once; the publisher has seen
        # the new SoC by then and held it back.
        mode_count = len(observer.of("mmbc/status/mode"))
        await observer.send("mmbc/control/mode", "bogus")
        await observer.wait_for(lambda: len(observer.of("mmbc/status/mode")) > mode_count)
        await observer.sync()
        assert [m.payload for m in observer.of("mmbc/status/soc")] == ["50.0"]


async def test_unchanged_values_are_refreshed_every_max_interval(broker: TestBroker) -> None:
    bridge = make_bridge(make_settings(broker, min_interval_s=0.0, max_interval_s=0.1))
    async with running(bridge), observe(broker) as observer:
        bridge.publish(sample_status())
        await observer.wait_for(lambda: len(observer.of("mmbc/status/soc")) >= 3)
        assert {m.payload for m in observer.of("mmbc/status/soc")} == {"67.4"}


async def test_broker_restart_reconnects_and_republishes_everything(broker: TestBroker) -> None:
    commands = Commands()
    bridge = make_bridge(make_settings(broker), commands)
    async with running(bridge):
        bridge.publish(sample_status())
        async with observe(broker) as observer:
            await observer.has(EXPECTED_STATE)
        await broker.stop()
        await until(lambda: not bridge.connected)
        # Control goes on while the broker is away: publish() neither blocks nor fails.
        for soc_pct in (10.0, 20.0, 30.0):
            bridge.publish(sample_status(soc_pct=soc_pct))
        await broker.start()  # same port; retained messages and sessions are gone
        await until(lambda: bridge.connections >= 2 and bridge.connected)
        async with observe(broker, ("mmbc/#", "homeassistant/#")) as late:
            await late.has({**EXPECTED_STATE, "mmbc/status/soc": "30.0"})
            await late.wait_for(
                lambda: "homeassistant/switch/mmbc/block_discharge/config" in late.state("")
            )
            # Commands work again on the new connection.
            await late.send("mmbc/control/block_discharge", "true")
            await until(lambda: commands.blocked == [True])


async def test_command_sent_while_engine_is_away_is_delivered(broker: TestBroker) -> None:
    settings_ = make_settings(broker, client_id="mmbc-persistent-test")
    async with running(make_bridge(settings_)), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
    # The engine is gone (its persistent session stays); a command arrives meanwhile.
    async with observe(broker) as sender:
        await sender.send("mmbc/control/block_discharge", "true")
        await sender.send("mmbc/control/mode", "3")
    commands = Commands()
    async with running(make_bridge(settings_, commands)):
        if broker_kind() == "amqtt":
            # amqtt delivers a queued message with the retain flag set (MQTT 3.1.1 section
            # 3.3.1.3 says 0 for an established subscription), and a retained mode is never
            # applied by design; mosquitto follows the standard.
            await until(lambda: commands.blocked == [True])
        else:
            await until(lambda: commands.blocked == [True] and commands.modes == [Mode.CHARGE])


async def test_command_sent_during_reconnect_after_broker_restart_is_delivered() -> None:
    if broker_kind() != "mosquitto":
        pytest.skip("needs a broker that keeps sessions across a restart (mosquitto)")
    clock = FakeClock(gated=True)
    commands = Commands()
    async with start_broker(persistence=True) as persistent:
        bridge = make_bridge(make_settings(persistent), commands, clock=clock)
        async with running(bridge):
            await until(lambda: bridge.connected)
            await persistent.restart()  # the session and its QoS 1 subscriptions survive
            await until(lambda: not bridge.connected)  # now held in its reconnect backoff
            async with observe(persistent) as sender:
                await sender.send("mmbc/control/block_discharge", "true")
            clock.open_gate()
            await until(lambda: commands.blocked == [True])
            assert bridge.connections == 2


async def test_graceful_stop_publishes_offline(broker: TestBroker) -> None:
    async with running(make_bridge(make_settings(broker))), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
    async with observe(broker) as late:
        await late.has({"mmbc/status/online": "offline"})
        assert late.of("mmbc/status/online")[-1].retain


async def test_cancelled_bridge_still_says_offline(broker: TestBroker) -> None:
    bridge = make_bridge(make_settings(broker))
    task = asyncio.create_task(bridge.run())
    async with observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await observer.has({"mmbc/status/online": "offline"})
    assert not bridge.connected


_DYING_ENGINE = """
import asyncio, sys
from engine.adapters.mqtt import MqttBridge, MqttSettings
from engine.ports import LoopClock

async def main():
    settings = MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), username=sys.argv[2],
                            discovery=False, client_id="mmbc-dying-engine")
    bridge = MqttBridge(settings, clock=LoopClock(), on_block_discharge=print, on_mode=print,
                        has_pv=False, battery_numbers=[])
    await bridge.run()

asyncio.run(main())
"""


async def test_last_will_reads_offline_when_engine_dies(broker: TestBroker) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    async with observe(broker) as observer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DYING_ENGINE,
            str(broker.port),
            TEST_USERNAME,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            await observer.has({"mmbc/status/online": "online"})
        finally:
            proc.kill()  # SIGKILL: no DISCONNECT, no goodbye
            await proc.wait()
        await observer.has({"mmbc/status/online": "offline"})
    async with observe(broker) as late:
        await late.has({"mmbc/status/online": "offline"})
        assert late.of("mmbc/status/online")[-1].retain


FLEET_CONFIGS = {
    "homeassistant/sensor/mmbc/soc/config",
    "homeassistant/sensor/mmbc/battery_power/config",
    "homeassistant/sensor/mmbc/battery_discharge_power/config",
    "homeassistant/sensor/mmbc/grid_power/config",
    "homeassistant/sensor/mmbc/pv_power/config",
    "homeassistant/sensor/mmbc/charge_total_wh/config",
    "homeassistant/sensor/mmbc/discharge_total_wh/config",
    "homeassistant/sensor/mmbc/fleet_state/config",
    "homeassistant/sensor/mmbc/control_quality/config",
    "homeassistant/sensor/mmbc/grid_rms_w/config",
    "homeassistant/switch/mmbc/block_discharge/config",
    "homeassistant/select/mmbc/mode/config",
    "homeassistant/binary_sensor/mmbc/meter_online/config",
}


def battery_configs(n: int) -> set[str]:
    sensors = (
        "soc",
        "power",
        "state",
        "charge_total_kwh",
        "discharge_total_kwh",
        "stored_energy_kwh",
        "voltage",
        "current",
        "temperature",
    )
    binary = ("online", "alarm", "fault")
    return {f"homeassistant/sensor/mmbc/battery_{n}_{key}/config" for key in sensors} | {
        f"homeassistant/binary_sensor/mmbc/battery_{n}_{key}/config" for key in binary
    }


def availability_of(config: dict[str, Any]) -> set[str]:
    return {entry["topic"] for entry in config["availability"]}


async def retained_configs(broker: TestBroker) -> dict[str, dict[str, Any]]:
    """What a Home Assistant starting now would find: every retained discovery config."""
    async with observe(broker, ("homeassistant/#",)) as late:
        await late.sync()
    return {
        m.topic: json.loads(m.payload)
        for m in late.messages
        if m.topic.startswith("homeassistant/") and "/mmbc/" in m.topic and m.payload and m.retain
    }


async def test_discovery_payloads(broker: TestBroker) -> None:
    expected_topics = FLEET_CONFIGS | battery_configs(1) | battery_configs(2)
    bridge = make_bridge(make_settings(broker))
    async with running(bridge):
        async with observe(broker) as live:
            await live.has({"mmbc/status/online": "online"})  # published after the configs
        configs = await retained_configs(broker)
    assert set(configs) == expected_topics

    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    published = {f"mmbc/{suffix}" for suffix in published_topics([1, 2], has_pv=True)}
    for topic, config in configs.items():
        key = topic.split("/")[3]
        assert config["unique_id"] == f"mmbc_{key}"
        assert "has_entity_name" not in config  # not an MQTT discovery option
        assert "mmbc/status/online" in availability_of(config)
        assert config["availability_mode"] == "all"
        # Every topic HA listens to is one the bridge really publishes.
        assert config["state_topic"] in published
        assert availability_of(config) <= published
        if "json_attributes_topic" in config:
            assert config["json_attributes_topic"] in published
        # Names read as words, not slugs.
        assert "_" not in config["name"]
        assert config["name"][0].isupper()

    def classes(key: str, component: str = "sensor") -> tuple[Any, ...]:
        config = configs[f"homeassistant/{component}/mmbc/{key}/config"]
        return (
            config.get("device_class"),
            config.get("state_class"),
            config.get("unit_of_measurement"),
        )

    fleet = configs["homeassistant/sensor/mmbc/soc/config"]
    assert fleet["device"]["identifiers"] == ["mmbc"]
    assert classes("soc") == ("battery", "measurement", "%")
    for key in ("battery_power", "battery_discharge_power", "grid_power", "pv_power"):
        assert classes(key) == ("power", "measurement", "W")
    for key in ("charge_total_wh", "discharge_total_wh"):
        assert classes(key) == ("energy", "total_increasing", "Wh")

    # What can become unknown is unavailable then, through its source's topic.
    assert "mmbc/status/meter_online" in availability_of(
        configs["homeassistant/sensor/mmbc/grid_power/config"]
    )
    assert "mmbc/status/meter_online" in availability_of(
        configs["homeassistant/sensor/mmbc/grid_rms_w/config"]
    )
    assert "mmbc/status/pv_meter_online" in availability_of(
        configs["homeassistant/sensor/mmbc/pv_power/config"]
    )
    assert "mmbc/status/batteries_online" in availability_of(fleet)

    # The energy dashboard's battery power: + = discharging, from the + charging topic.
    dashboard = configs["homeassistant/sensor/mmbc/battery_discharge_power/config"]
    assert dashboard["state_topic"] == "mmbc/status/battery_power"
    assert dashboard["value_template"] == "{{ -(value | int) }}"
    assert "value_template" not in configs["homeassistant/sensor/mmbc/battery_power/config"]

    switch = configs["homeassistant/switch/mmbc/block_discharge/config"]
    assert switch["command_topic"] == "mmbc/control/block_discharge"
    assert switch["state_topic"] == "mmbc/status/discharge_blocked"
    assert (switch["payload_on"], switch["payload_off"]) == ("true", "false")
    assert switch["retain"] is False
    select = configs["homeassistant/select/mmbc/mode/config"]
    assert select["command_topic"] == "mmbc/control/mode"
    assert select["state_topic"] == "mmbc/status/mode"
    assert select["options"] == ["normal", "hold", "charge", "selfcontrol"]

    battery = configs["homeassistant/sensor/mmbc/battery_2_power/config"]
    assert battery["device"]["identifiers"] == ["mmbc_battery_2"]  # no serial read yet
    assert battery["device"]["name"] == "MMBC Battery 2"
    assert battery["device"]["via_device"] == "mmbc"
    assert battery["state_topic"] == "mmbc/battery/2/power"
    assert "mmbc/battery/2/online" in availability_of(battery)
    state = configs["homeassistant/sensor/mmbc/battery_1_state/config"]
    assert state["device_class"] == "enum"
    assert "unavailable" not in state["options"]
    assert "mmbc/battery/1/online" in availability_of(state)
    assert classes("battery_1_charge_total_kwh") == ("energy", "total_increasing", "kWh")
    assert classes("battery_1_discharge_total_kwh") == ("energy", "total_increasing", "kWh")
    assert classes("battery_1_stored_energy_kwh") == ("energy_storage", "measurement", "kWh")
    assert classes("battery_1_voltage") == ("voltage", "measurement", "V")
    assert classes("battery_1_current") == ("current", "measurement", "A")
    assert classes("battery_1_temperature") == ("temperature", "measurement", "°C")
    for key in ("alarm", "fault"):
        config = configs[f"homeassistant/binary_sensor/mmbc/battery_1_{key}/config"]
        assert (config["device_class"], config["entity_category"]) == ("problem", "diagnostic")
        assert config["json_attributes_topic"] == f"mmbc/battery/1/{key}s"
    online = configs["homeassistant/binary_sensor/mmbc/battery_1_online/config"]
    assert (online["device_class"], online["payload_on"], online["payload_off"]) == (
        "connectivity",
        "true",
        "false",
    )


async def test_battery_topics_and_ids_follow_the_configured_number(broker: TestBroker) -> None:
    """Only BATTERY_2_* configured: everything says battery 2, nothing battery 1."""
    bridge = make_bridge(make_settings(broker), battery_numbers=(2,))
    status = sample_status(
        batteries=(BatteryStatus(2, "battery_2", 40.0, 0.0, BatteryState.IDLE, True),)
    )
    async with running(bridge), observe(broker) as observer:
        bridge.publish(status)
        await observer.has({"mmbc/battery/2/soc": "40.0", "mmbc/status/online": "online"})
        configs = await retained_configs(broker)
        await observer.sync()
    assert not [t for t in observer.state() if t.startswith("mmbc/battery/1/")]
    battery_keys = {t.split("/")[3] for t in configs if t.split("/")[3][8:9].isdigit()}
    assert battery_keys == {t.split("/")[3] for t in battery_configs(2)}
    names = {c["device"]["name"] for c in configs.values() if c["device"].get("via_device")}
    assert names == {"MMBC Battery 2"}


async def test_the_battery_device_gets_its_serial_number_and_firmware(broker: TestBroker) -> None:
    bridge = make_bridge(make_settings(broker))
    identity = BatteryIdentity(
        device_name="VNSE3-0",
        serial_number="VNSESIMbattery_1",
        software_version="1.53",
        ems_version=153,
        bms_version=213,
    )
    status = sample_status(
        batteries=(
            BatteryStatus(1, "battery_1", 40.0, 0.0, BatteryState.IDLE, True, identity=identity),
            BatteryStatus(2, "battery_2", 60.0, 0.0, BatteryState.IDLE, True),
        )
    )
    async with running(bridge), observe(broker, ("homeassistant/#",)) as observer:
        await observer.wait_for(
            lambda: "homeassistant/sensor/mmbc/battery_1_soc/config" in observer.state("")
        )
        bridge.publish(status)  # the identity arrives with the first reads

        def republished() -> bool:
            battery_1 = [v for t, v in observer.state("").items() if "/battery_1_" in t]
            return len(battery_1) == len(battery_configs(1)) and all(
                "serial_number" in json.loads(v)["device"] for v in battery_1
            )

        await observer.wait_for(republished)
    configs = await retained_configs(broker)
    device = configs["homeassistant/sensor/mmbc/battery_1_soc/config"]["device"]
    assert device["identifiers"] == ["mmbc_battery_1", "marstek_VNSESIMbattery_1"]
    assert device["serial_number"] == "VNSESIMbattery_1"
    assert device["sw_version"] == "1.53 (EMS 153, BMS 213)"
    assert device["model"] == "Venus E (VNSE3-0)"
    # Every entity of that battery carries the same device; the other battery has none yet.
    for topic, config in configs.items():
        if "/battery_1_" in topic:
            assert config["device"] == device
        if "/battery_2_" in topic:
            assert "serial_number" not in config["device"]


async def test_discovery_removes_pv_sensor_without_pv_meter(broker: TestBroker) -> None:
    topic = "homeassistant/sensor/mmbc/pv_power/config"
    async with observe(broker, ("homeassistant/#", "mmbc/#")) as observer:
        async with running(make_bridge(make_settings(broker), has_pv=True)):
            await observer.wait_for(lambda: bool(observer.of(topic)))
        async with running(make_bridge(make_settings(broker), has_pv=False)):
            await observer.wait_for(lambda: observer.of(topic)[-1].payload == "")
    async with observe(broker, ("homeassistant/#", "mmbc/#")) as late:
        await late.has({"mmbc/status/online": "offline"})
        await late.sync()
        assert topic not in late.state("")


async def test_discovery_can_be_disabled(broker: TestBroker) -> None:
    async with (
        running(make_bridge(make_settings(broker, discovery=False))),
        observe(broker, ("homeassistant/#", "mmbc/#")) as observer,
    ):
        await observer.has({"mmbc/status/online": "online"})
        await observer.sync()
        assert not [m for m in observer.messages if m.topic.startswith("homeassistant/")]


async def test_unreachable_broker_backs_off_to_30_s_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    with refused_port() as port, caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        bridge = make_bridge(MqttSettings(host=HOST, port=port), clock=clock)
        async with running(bridge):
            for i in range(1000):
                bridge.publish(sample_status(soc_pct=float(i % 100)))
            await until(lambda: len(clock.sleeps) >= 8)
            assert not bridge.connected
    assert clock.sleeps[:8] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(unavailable) == 1
    assert unavailable[0].levelno == logging.WARNING


async def test_tls_with_ca_file(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    if files is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    commands = Commands()
    async with start_broker(tls=files) as tls_broker:
        bridge = make_bridge(make_settings(tls_broker, tls_ca_file=files.certfile), commands)
        context = ssl.create_default_context(cafile=files.certfile)
        async with running(bridge), observe(tls_broker, tls_context=context) as observer:
            bridge.publish(sample_status())
            await observer.has(EXPECTED_STATE)
            await observer.send("mmbc/control/mode", "charge")
            await until(lambda: commands.modes == [Mode.CHARGE])


async def test_tls_refuses_an_untrusted_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = make_tls_files(tmp_path)
    if files is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    clock = FakeClock()
    async with start_broker(tls=files) as tls_broker:
        # TLS on, but the self-signed certificate is not in the system's CA store.
        bridge = make_bridge(make_settings(tls_broker, tls=True), clock=clock)
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            async with running(bridge):
                await until(lambda: len(clock.sleeps) >= 3)
    assert bridge.connections == 0
    assert any("unavailable" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_session_error_is_logged_and_the_bridge_reconnects(
    broker: TestBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = make_bridge(make_settings(broker))
    real_session = bridge._session
    failures: list[int] = []

    def session_failing_once() -> Any:
        if not failures:
            failures.append(1)

            async def broken() -> None:
                raise RuntimeError("bug in a publisher")

            return broken()
        return real_session()

    monkeypatch.setattr(bridge, "_session", session_failing_once)
    async with running(bridge), observe(broker) as observer:
        bridge.publish(sample_status())
        await observer.has({"mmbc/status/online": "online"})
    assert failures == [1]
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------
# field fixes (issue 13): stale values, cleanup, floods, retained commands, client ids


class ShiftedClock:
    """The loop's clock plus an offset the test moves (log windows without waiting)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> float:
        return asyncio.get_running_loop().time() + self.offset_s

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_a_stale_meter_becomes_unavailable_and_returns_with_a_fresh_reading(
    broker: TestBroker,
) -> None:
    bridge = make_bridge(make_settings(broker, min_interval_s=0.0, max_interval_s=0.2))
    async with running(bridge), observe(broker) as observer:
        bridge.publish(sample_status(grid_w=11.0))
        await observer.has({"mmbc/status/grid_power": "11", "mmbc/status/meter_online": "true"})
        bridge.publish(sample_status(grid_w=11.0, meter_fresh=False))
        await observer.has({"mmbc/status/meter_online": "false"})
        grid_sent = len(observer.of("mmbc/status/grid_power"))
        rms_sent = len(observer.of("mmbc/status/grid_rms_w"))
        soc_sent = len(observer.of("mmbc/status/soc"))
        # Other values are refreshed every max interval; the stale grid power is not.
        await observer.wait_for(lambda: len(observer.of("mmbc/status/soc")) >= soc_sent + 3)
        assert len(observer.of("mmbc/status/grid_power")) == grid_sent
        assert len(observer.of("mmbc/status/grid_rms_w")) == rms_sent
        # The first fresh reading comes back at once.
        bridge.publish(sample_status(grid_w=700.0))
        await observer.has({"mmbc/status/grid_power": "700", "mmbc/status/meter_online": "true"})


async def test_a_battery_going_offline_is_unavailable_not_stale(broker: TestBroker) -> None:
    bridge = make_bridge(make_settings(broker, min_interval_s=0.0, max_interval_s=0.2))
    offline = sample_status(
        batteries=(
            BatteryStatus(1, "garage", None, None, BatteryState.UNAVAILABLE, False),
            sample_status().batteries[1],
        )
    )
    async with running(bridge), observe(broker) as observer:
        bridge.publish(sample_status())
        await observer.has({"mmbc/battery/1/power": "1100", "mmbc/battery/1/online": "true"})
        bridge.publish(offline)
        await observer.has({"mmbc/battery/1/online": "false"})
        sent = {t: len(observer.of(t)) for t in ("mmbc/battery/1/power", "mmbc/battery/1/state")}
        online_sent = len(observer.of("mmbc/battery/2/online"))
        await observer.wait_for(
            lambda: len(observer.of("mmbc/battery/2/online")) >= online_sent + 3
        )
        assert {t: len(observer.of(t)) for t in sent} == sent
        assert "unavailable" not in {m.payload for m in observer.messages}


async def test_retained_topics_the_engine_no_longer_publishes_are_cleared(
    broker: TestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Two batteries and a PV meter, then battery 2 and the PV meter are removed.
    first = make_bridge(make_settings(broker), battery_numbers=(1, 2), has_pv=True)
    async with running(first), observe(broker) as observer:
        first.publish(sample_status())
        await observer.has(EXPECTED_STATE)
    async with observe(broker) as other:
        # Not ours to clear: commands, another prefix, another node's discovery config.
        for topic in (
            "mmbc/control/mode",
            "mmbc/virtual/status/soc",
            "homeassistant/sensor/other/soc/config",
            "mmbc/status/renamed_topic",  # ours, from an older version: cleared
        ):
            await other.client.publish(topic, "x", qos=1, retain=True)
    before = await retained_configs(broker)
    assert "homeassistant/sensor/mmbc/battery_2_soc/config" in before
    second = make_bridge(make_settings(broker), battery_numbers=(1,), has_pv=False)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        async with running(second), observe(broker, ("mmbc/#",)) as live:
            await live.has({"mmbc/status/online": "online"})
    async with observe(broker, ("mmbc/#", "homeassistant/#")) as late:
        await late.sync()
    retained = {m.topic for m in late.messages if m.retain and m.payload}
    assert not [t for t in retained if "battery/2/" in t or "battery_2_" in t]
    assert not [t for t in retained if "pv_" in t]
    assert "mmbc/status/renamed_topic" not in retained
    assert {
        "mmbc/control/mode",
        "mmbc/virtual/status/soc",
        "homeassistant/sensor/other/soc/config",
        "mmbc/battery/1/soc",
        "homeassistant/sensor/mmbc/battery_1_soc/config",
        "mmbc/status/charge_total_wh",
    } <= retained
    assert (
        second.cleared
        == len([t for t in before if "battery_2_" in t or "pv_power" in t])
        + len([t for t in EXPECTED_STATE if "battery/2/" in t or "/pv_" in t])
        + 1
    )
    assert any("cleared" in r.getMessage() for r in caplog.records)


async def test_a_flood_while_away_keeps_the_last_command(
    broker: TestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    if broker_kind() != "mosquitto":
        # amqtt flags queued messages as retained (MQTT 3.1.1 section 3.3.1.3 says 0).
        pytest.skip("needs a broker that delivers queued messages as live ones (mosquitto)")
    settings_ = make_settings(broker, client_id="mmbc-flood-test")
    async with running(make_bridge(settings_)), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
    # Stopped; 150 toggles queue on its persistent session, the last one says "true".
    async with observe(broker) as sender:
        for i in range(150):
            await sender.send("mmbc/control/block_discharge", "false" if i % 2 else "true")
        await sender.send("mmbc/control/block_discharge", "true")
    commands = Commands()
    bridge = make_bridge(settings_, commands)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        async with running(bridge), observe(broker) as observer:
            await observer.has({"mmbc/status/online": "online"})
            await observer.sync()
            await until(lambda: bool(commands.blocked) and commands.blocked[-1] is True)
    assert commands.blocked[-1] is True
    assert len(commands.blocked) + bridge.coalesced == 151  # every one handled or coalesced
    lines = [r.getMessage() for r in caplog.records if "MQTT command" in r.getMessage()]
    assert len(lines) <= 6  # not one line per toggle
    if bridge.coalesced:
        assert any("coalesced" in line for line in lines)


async def test_a_live_flood_ends_on_the_last_command(broker: TestBroker) -> None:
    commands = Commands()
    bridge = make_bridge(make_settings(broker), commands)
    async with running(bridge), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
        for i in range(1000):
            await observer.client.publish(
                "mmbc/control/block_discharge", "true" if i % 2 else "false", qos=0
            )
        await observer.send("mmbc/control/block_discharge", "false")
        await observer.sync()
        await until(lambda: bool(commands.blocked) and commands.blocked[-1] is False)
        await observer.sync()  # nothing older arrives after the last one
    assert commands.blocked[-1] is False


async def test_invalid_payload_floods_log_the_first_then_a_count(
    broker: TestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ShiftedClock()
    commands = Commands()
    bridge = make_bridge(make_settings(broker), commands, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        async with running(bridge), observe(broker) as observer:
            bridge.publish(sample_status())
            await observer.has({"mmbc/status/online": "online"})
            for i in range(200):
                await observer.send("mmbc/control/mode", f"garbage-{i}")
            await observer.send("mmbc/control/mode", "hold")  # the last one is valid: applied
            await until(lambda: commands.modes == [Mode.HOLD])
            clock.offset_s += 61.0  # the log window passes
            bridge.publish(sample_status(soc_pct=1.0))  # wakes the bridge, which flushes
            await observer.has({"mmbc/status/soc": "1.0"})
            await until(lambda: any("more like this" in r.getMessage() for r in caplog.records))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "garbage-0" in warnings[0]
    assert warnings[1].startswith(f"{bridge.rejected - 1} more like this")
    assert bridge.rejected + bridge.coalesced >= 200 - 1


async def test_a_retained_block_discharge_is_honoured_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if broker_kind() != "mosquitto":
        pytest.skip("needs a broker that keeps sessions across a restart (mosquitto)")
    async with start_broker(persistence=True) as persistent:
        async with observe(persistent) as user:
            await user.client.publish("mmbc/control/block_discharge", "true", qos=1, retain=True)
        commands = Commands()
        bridge = make_bridge(make_settings(persistent, client_id="mmbc-retained"), commands)
        with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
            async with running(bridge):
                await until(lambda: commands.blocked == [True])
                async with observe(persistent) as user:
                    await user.send("mmbc/control/block_discharge", "false")  # live, newer
                await until(lambda: commands.blocked == [True, False])
                # A broker restart: the engine subscribes again and the broker re-sends its
                # retained "true", which must not undo the newer live "false".
                await persistent.restart()
                await until(lambda: bridge.connections >= 2 and bridge.connected)
                async with observe(persistent) as user:
                    await user.sync()
                    await user.send("mmbc/control/mode", "normal")  # a marker behind it
                await until(lambda: commands.modes == [Mode.NORMAL])
        # The live "false" may come twice: QoS 1 is at least once, and a restart can take the
        # broker down before our acknowledgement reached it. The retained "true" never again.
        assert commands.blocked[:2] == [True, False]
        assert set(commands.blocked[2:]) <= {False}
    assert any("retained on the broker" in r.getMessage() for r in caplog.records)


async def test_a_retained_mode_is_never_applied_and_logged_once(
    broker: TestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    async with observe(broker) as user:
        await user.client.publish("mmbc/control/mode", "charge", qos=1, retain=True)
    commands = Commands()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        for _ in range(2):  # two starts: it would force-charge from the grid after each
            bridge = make_bridge(make_settings(broker), commands)
            async with running(bridge), observe(broker) as observer:
                await observer.has({"mmbc/status/online": "online"})
                await observer.send("mmbc/control/block_discharge", "true")  # a marker
                await until(lambda: bool(commands.blocked))
            commands.blocked.clear()
    assert commands.modes == []
    ignored = [r.getMessage() for r in caplog.records if "retained" in r.getMessage()]
    assert len(ignored) == 2  # once per start (each start is a new engine)
    assert "mmbc/control/mode" in ignored[0]


async def test_a_retained_command_that_also_queued_is_applied_once(broker: TestBroker) -> None:
    settings_ = make_settings(broker, client_id="mmbc-twice")
    async with running(make_bridge(settings_)), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
    # Sent retained while the engine is away: the session queues it AND the broker keeps it,
    # so it arrives twice at the next start (once queued, once retained at subscribe).
    async with observe(broker) as user:
        await user.client.publish("mmbc/control/block_discharge", "true", qos=1, retain=True)
    commands = Commands()
    async with running(make_bridge(settings_, commands)), observe(broker) as observer:
        await observer.has({"mmbc/status/online": "online"})
        await observer.send("mmbc/control/mode", "hold")  # a marker behind both copies
        await until(lambda: commands.modes == [Mode.HOLD])
    assert commands.blocked == [True]


async def test_two_engines_with_one_client_id_are_warned_about(
    broker: TestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    if broker_kind() != "mosquitto":
        pytest.skip("needs a broker that hands a client id over to its newest client")
    settings_ = make_settings(broker, client_id="mmbc-twin", reconnect_max_s=0.4)
    first, second = make_bridge(settings_), make_bridge(settings_)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        async with running(first), running(second):
            await until(
                lambda: any("client id 'mmbc-twin'" in r.getMessage() for r in caplog.records)
            )
    warnings = [r.getMessage() for r in caplog.records if "client id" in r.getMessage()]
    assert 1 <= len(warnings) <= 2  # one per engine at most, not one per kick


def _message(topic: str, payload: str, *, retain: bool = False) -> aiomqtt.Message:
    return aiomqtt.Message(topic, payload.encode(), qos=1, retain=retain, mid=0, properties=None)


async def test_the_inbox_keeps_the_latest_message_per_topic_without_a_limit() -> None:
    inbox = CommandInbox()
    for i in range(10_000):  # nobody reads meanwhile: a bounded FIFO would drop the newest
        inbox.put_nowait(_message("mmbc/control/block_discharge", f"{i % 2 == 0}".lower()))
    inbox.put_nowait(_message("mmbc/control/mode", "hold"))
    inbox.put_nowait(_message("mmbc/control/block_discharge", "old", retain=True))
    inbox.put_nowait(_message("mmbc/control/block_discharge", "false"))
    assert inbox.qsize() == 3  # memory stays bounded by the number of topics
    first = inbox.get_nowait()
    assert (first.topic.value, first.payload, first.retain) == (
        "mmbc/control/block_discharge",
        b"false",
        False,
    )
    assert inbox.coalesced(first) == 10_000
    assert inbox.coalesced(first) == 0  # asked once
    assert inbox.get_nowait().payload == b"hold"
    retained = inbox.get_nowait()
    assert (retained.payload, retained.retain) == (b"old", True)  # never hides a live one
    assert inbox.empty()
    assert inbox.coalesced_total == 10_000
