"""HomeWizard client: parsing real v1 bodies, errors, and the client against the sim meter."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.adapters.homewizard import HomeWizardClient, MeterApiDisabledError
from engine.adapters.homewizard_data import parse_data
from engine.adapters.meter_json import decode_body
from engine.core.meter import MeterTracker, P1Reading
from engine.errors import DeviceResponseError, DeviceUnavailable
from engine.settings import meter_url_from_host
from sim.plant.meter import KwhMeterModel, P1MeterModel
from sim.plant.params import MeterParams
from sim.servers.homewizard import MeterServer, start_meter_server
from tests.adapters.meters import tick
from tests.fakes import FakeClock

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "homewizard"
DATA_FIXTURES = sorted(
    p.relative_to(FIXTURES).as_posix()
    for p in FIXTURES.glob("*/data*.json")
    if p.parent.name != "exceptions"
)
BROKEN_FIXTURES = sorted(
    p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("exceptions/data*")
)


def _load(rel: str) -> object:
    return json.loads((FIXTURES / rel).read_text())


# -- parse_data -----------------------------------------------------------------------------


def test_fixture_sets_are_present() -> None:
    assert len(DATA_FIXTURES) == 7
    assert len(BROKEN_FIXTURES) == 2


@pytest.mark.parametrize("rel", DATA_FIXTURES)
def test_every_real_body_parses(rel: str) -> None:
    body = _load(rel)
    assert isinstance(body, dict)
    reading = parse_data(body)
    assert reading.active_power_w == float(body["active_power_w"])
    assert reading.active_power_l1_w == body["active_power_l1_w"]
    assert reading.total_power_import_kwh is not None
    assert reading.total_power_export_kwh is not None


def test_p1_three_phase_body() -> None:
    reading = parse_data(_load("HWE-P1/data.json"))
    assert reading == P1Reading(
        active_power_w=-543.0,
        total_power_import_kwh=13779.338,
        total_power_export_kwh=0.0,
        active_power_l1_w=-676.0,
        active_power_l2_w=133.0,
        active_power_l3_w=0.0,
        fingerprint=reading.fingerprint,
    )


def test_single_phase_nulls_become_none_and_tariffs_sum_to_the_total() -> None:
    reading = parse_data(_load("HWE-P1/data_single_phase.json"))
    assert reading.active_power_l2_w is None
    assert reading.active_power_l3_w is None
    # No total in this variant: T1 + T2 is the total register, not T1 alone.
    assert reading.total_power_import_kwh == pytest.approx(10830.511 + 2948.827)
    assert reading.total_power_export_kwh == pytest.approx(1285.951 + 2876.51)


def test_kwh_meter_on_pv_reads_negative() -> None:
    reading = parse_data(_load("HWE-KWH1/data.json"))
    assert reading.active_power_w == -45.252
    assert reading.total_power_export_kwh == 579.813


@pytest.mark.parametrize("rel", BROKEN_FIXTURES)
def test_bodies_without_active_power_raise_a_typed_error(rel: str) -> None:
    with pytest.raises(DeviceResponseError, match="active_power_w"):
        parse_data(_load(rel))


@pytest.mark.parametrize(
    "power",
    [None, "123", True, False, [1], {"w": 1}, math.nan, math.inf, -math.inf, 10**400],
)
def test_unusable_active_power_is_an_error_not_a_guess(power: object) -> None:
    body = {"active_power_w": power, "active_power_l1_w": 100, "active_power_l2_w": 50}
    with pytest.raises(DeviceResponseError) as info:
        parse_data(body, device="grid")
    assert info.value.device == "grid"


@pytest.mark.parametrize("body", [None, [], [{"active_power_w": 1}], "x", 5, 1.5])
def test_non_object_body_is_an_error(body: object) -> None:
    with pytest.raises(DeviceResponseError, match="not a JSON object"):
        parse_data(body)


def test_bad_optional_fields_are_dropped_not_fatal() -> None:
    reading = parse_data(
        {
            "active_power_w": 12,
            "active_power_l1_w": "x",
            "active_power_l2_w": math.nan,
            "total_power_import_kwh": None,
            "total_power_import_t1_kwh": 1.5,
            "total_power_export_kwh": True,
        }
    )
    assert reading.active_power_w == 12.0
    assert reading.active_power_l1_w is None
    assert reading.active_power_l2_w is None
    assert reading.total_power_import_kwh == 1.5
    assert reading.total_power_export_kwh is None


def test_fingerprint_follows_the_whole_body() -> None:
    body = _load("HWE-P1/data.json")
    assert isinstance(body, dict)
    same = parse_data(json.loads(json.dumps(body)))
    assert parse_data(body).fingerprint == same.fingerprint
    changed = dict(body, total_power_import_kwh=13779.339)  # power equal, counter moved
    assert parse_data(changed).fingerprint != same.fingerprint
    assert hash(same) == hash(parse_data(body))


def test_a_frozen_body_with_a_non_finite_field_is_still_the_same_body() -> None:
    # NaN is not JSON, yet Python's decoder reads it; as a float it would differ from itself
    # and a frozen dongle would look fresh at every poll.
    text = '{"active_power_w": 12, "active_voltage_l1_v": NaN, "total_power_import_kwh": 1.5}'
    first, second = parse_data(decode_body(text)), parse_data(decode_body(text))
    assert first.fingerprint == second.fingerprint
    assert first.active_power_w == 12.0
    tracker = MeterTracker()
    tracker.update(first, 10.0)
    tracker.update(second, 11.0)
    assert tracker.updated_s == 10.0  # the body did not change: the reading is 1 s old
    with pytest.raises(DeviceResponseError, match="active_power_w"):
        parse_data(decode_body('{"active_power_w": NaN}'))
    with pytest.raises(DeviceResponseError, match="active_power_w"):
        parse_data(decode_body('{"active_power_w": -Infinity}'))


@pytest.mark.parametrize("power", ["2000000", "-1000001", "9007199254740993", "1e300"])
def test_an_implausible_total_power_is_no_reading(power: str) -> None:
    # A garbled reply, not a house: no home connection carries a megawatt.
    with pytest.raises(DeviceResponseError, match="active_power_w implausible"):
        parse_data(decode_body('{"active_power_w": ' + power + "}"))
    assert parse_data(decode_body('{"active_power_w": -55000}')).active_power_w == -55000.0


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
_keys = st.sampled_from(
    [
        "active_power_w",
        "active_power_l1_w",
        "active_power_l2_w",
        "active_power_l3_w",
        "total_power_import_kwh",
        "total_power_import_t1_kwh",
        "total_power_export_kwh",
        "total_power_export_t2_kwh",
    ]
) | st.text(max_size=6)
_bodies = _json | st.dictionaries(_keys, _json, max_size=8)


@settings(max_examples=300, deadline=None)
@given(_bodies)
def test_parse_data_never_raises_anything_but_the_typed_error(body: object) -> None:
    try:
        reading = parse_data(body)
    except DeviceResponseError:
        return
    assert isinstance(body, dict)
    assert math.isfinite(reading.active_power_w)
    assert reading.active_power_w == body["active_power_w"]
    for value in (
        reading.active_power_l1_w,
        reading.total_power_import_kwh,
        reading.total_power_export_kwh,
    ):
        assert value is None or math.isfinite(value)


# -- client against the simulated meter ------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    """The server's notion of now, moved by the test (no real time involved)."""
    return FakeClock()


@pytest.fixture
def p1(clock: FakeClock) -> P1MeterModel:
    """A quiet P1 meter reading 750 W, its first sample visible at the clock's start."""
    model = P1MeterModel(MeterParams(noise_w=0.0))
    model.observe(0.0, 750.0)
    clock.t_s = 0.5
    return model


@pytest.fixture
async def server(p1: P1MeterModel, clock: FakeClock) -> AsyncIterator[MeterServer]:
    srv = await start_meter_server(p1, now=clock.now)
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: MeterServer) -> AsyncIterator[HomeWizardClient]:
    hw = HomeWizardClient(server.url, timeout_s=0.3)
    yield hw
    await hw.close()


async def test_reads_the_live_value(
    p1: P1MeterModel, clock: FakeClock, client: HomeWizardClient
) -> None:
    tick(p1, clock, 750.0)
    reading = await client.read()
    assert reading.active_power_w == 750.0
    assert reading.active_power_l1_w is not None
    tick(p1, clock, -120.0)
    assert (await client.read()).active_power_w == -120.0


async def test_server_url_and_device_endpoint(
    server: MeterServer, client: HomeWizardClient
) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/api/v1/data"
    assert server.port > 0
    info = await client.device()
    assert info["product_type"] == "HWE-P1"
    assert info["api_version"] == "v1"


async def test_base_url_is_accepted(
    server: MeterServer, p1: P1MeterModel, clock: FakeClock
) -> None:
    tick(p1, clock, 42.0)
    url = meter_url_from_host(f"127.0.0.1:{server.port}")  # as P1_HOST=127.0.0.1:<port> gives
    async with HomeWizardClient(url, timeout_s=0.3) as hw:
        assert hw.url == server.url
        assert (await hw.read()).active_power_w == 42.0


async def test_no_sample_yet_is_a_response_error(clock: FakeClock) -> None:
    srv = await start_meter_server(P1MeterModel(), now=clock.now)
    try:
        async with HomeWizardClient(srv.url, timeout_s=0.3) as hw:
            with pytest.raises(DeviceResponseError, match="active_power_w"):
                await hw.read()
    finally:
        await srv.stop()


async def test_outage_times_out_as_unavailable(p1: P1MeterModel, client: HomeWizardClient) -> None:
    p1.set_fault("meter_outage")
    with pytest.raises(DeviceUnavailable, match="no answer"):
        await client.read()
    p1.clear_fault()
    assert (await client.read()).active_power_w == 750.0  # the connection pool recovered


@pytest.mark.looptime
async def test_outage_timeout_runs_on_the_loop_clock() -> None:
    model = P1MeterModel(MeterParams(noise_w=0.0))
    model.observe(0.0, 10.0)
    model.set_fault("outage")
    srv = await start_meter_server(model)
    loop = asyncio.get_running_loop()
    try:
        async with HomeWizardClient(srv.url, timeout_s=30.0) as hw:
            start_s = loop.time()
            with pytest.raises(DeviceUnavailable):
                await hw.read()
            # Virtual time: 30 s of loop clock passed without 30 s of waiting.
            assert loop.time() - start_s == pytest.approx(30.0, abs=0.5)
    finally:
        await srv.stop()


async def test_refused_connection_is_unavailable() -> None:
    srv = await start_meter_server(P1MeterModel())
    url = srv.url
    await srv.stop()
    async with HomeWizardClient(url, timeout_s=0.5) as hw:
        with pytest.raises(DeviceUnavailable, match="cannot reach"):
            await hw.read()


async def test_http_500_is_a_retryable_response_error(
    p1: P1MeterModel, client: HomeWizardClient
) -> None:
    p1.set_fault("http_error")
    with pytest.raises(DeviceResponseError, match="HTTP 500") as info:
        await client.read()
    assert info.value.retryable
    assert not isinstance(info.value, MeterApiDisabledError)


async def test_api_disabled_is_its_own_error(p1: P1MeterModel, client: HomeWizardClient) -> None:
    p1.set_fault("api_disabled")
    with pytest.raises(MeterApiDisabledError, match="enable it") as info:
        await client.read()
    assert info.value.device == "p1"


async def test_wrong_path_is_a_permanent_error(server: MeterServer) -> None:
    async with HomeWizardClient(f"{server.base_url}/api/v2/nothing", timeout_s=0.3) as hw:
        with pytest.raises(DeviceResponseError, match="HTTP 404") as info:
            await hw.read()
    assert not info.value.retryable


async def test_garbage_never_yields_a_reading(
    p1: P1MeterModel, clock: FakeClock, client: HomeWizardClient
) -> None:
    tick(p1, clock, 500.0)
    p1.set_fault("garbage")
    with pytest.raises(DeviceResponseError, match="invalid JSON"):
        await client.read()
    with pytest.raises(DeviceResponseError, match="active_power_w"):
        await client.read()


async def test_frozen_meter_stops_advancing_updated_s(
    p1: P1MeterModel, clock: FakeClock, client: HomeWizardClient
) -> None:
    tracker = MeterTracker()
    for _ in range(3):
        tick(p1, clock, 400.0)  # constant power: only the live body's small changes differ
        tracker.update(await client.read(), clock.t_s)
        assert tracker.updated_s == clock.t_s
    live_s = clock.t_s
    p1.set_fault("frozen")
    for _ in range(5):
        tick(p1, clock, 900.0)
        tracker.update(await client.read(), clock.t_s)
    assert tracker.online
    assert tracker.updated_s == live_s
    assert tracker.grid_w == 400.0
    assert tracker.age_s(clock.t_s) == pytest.approx(5.0)
    p1.clear_fault()
    tick(p1, clock, 900.0)
    tracker.update(await client.read(), clock.t_s)
    assert tracker.updated_s == clock.t_s
    assert tracker.grid_w == 900.0


async def test_injected_session_is_left_open(server: MeterServer, p1: P1MeterModel) -> None:
    async with aiohttp.ClientSession() as session:
        hw = HomeWizardClient(server.url, session=session, timeout_s=0.3)
        await hw.read()
        await hw.close()
        assert not session.closed
        assert (await hw.read()).active_power_w == 750.0


async def test_pv_kwh_meter_on_its_own_port(clock: FakeClock) -> None:
    pv = KwhMeterModel(MeterParams(noise_w=0.0))
    pv.observe_pv(0.0, 1800.0)
    clock.t_s = 1.0
    srv = await start_meter_server(pv, now=clock.now)
    try:
        async with HomeWizardClient(srv.url, timeout_s=0.3, name="pv") as hw:
            reading = await hw.read()
            info = await hw.device()
    finally:
        await srv.stop()
    assert reading.active_power_w == -1800.0
    assert info["product_type"] == "HWE-KWH1"
