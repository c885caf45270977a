"""The P1 meter as the engine reads it (``engine.adapters.p1``): which meter and API the
settings lead to, against the simulator's real v1 and v2 servers; following a found meter to
its new address; a token refused, then replaced by pairing again."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.adapters.discovery import FoundDevice, MeterFollower, choose_api
from engine.adapters.homewizard_v2 import (
    ApiVersion,
    HomeWizardV2Client,
    MeterUnauthorizedError,
    StoredToken,
    save_token,
)
from engine.adapters.p1 import (
    TOKEN_FILE_NAME,
    P1Meter,
    P1SetupError,
    P1Target,
    default_token_file,
    locate_p1,
    locate_pv,
    open_p1,
    stored_token,
)
from engine.config import build_config
from engine.errors import DeviceUnavailable
from engine.settings import MeterSettings, PvMeterSettings
from sim.plant.meter import P1MeterModel
from sim.servers.homewizard import start_meter_server
from sim.servers.homewizard_v2 import V2MeterServer, start_v2_meter_server
from sim.servers.tls import SimulatorCA
from tests.adapters.conftest import USER
from tests.fakes import FakeClock

SERIAL = "5c2fafaabbcc"  # the conftest's v2 meter
OTHER = "3c39e7001122"
TOKEN = "0123456789ABCDEF0123456789ABCDEF"


def meter_settings(**env: str) -> MeterSettings:
    """The meter settings as the engine reads them from the environment."""
    return build_config(environ={**env, "BATTERY_1_IP": "127.0.0.1"}).meter


def p1(
    serial: str, *, v1: bool = True, v2: bool = True, address: str = "192.168.1.5"
) -> FoundDevice:
    return FoundDevice(
        "HWE-P1",
        serial,
        product_name="P1 Meter",
        addresses=(address,),
        v1_port=80 if v1 else None,
        v1_enabled=True if v1 else None,
        v2_port=443 if v2 else None,
        v2_api_version="2.0.0" if v2 else None,
        identifier=f"appliance/p1dongle/{serial}" if v2 else None,
    )


# -- which meter, which API ---------------------------------------------------------------------


async def test_the_v1_url_is_read_as_given() -> None:
    target = await locate_p1(meter_settings(P1_API_URL="http://192.168.1.50/api/v1/data"), None)
    assert target == P1Target(ApiVersion.V1, "http://192.168.1.50/api/v1/data")


async def test_a_host_without_a_token_is_read_over_v1() -> None:
    target = await locate_p1(meter_settings(P1_HOST="192.168.1.50"), None)
    assert target == P1Target(ApiVersion.V1, "http://192.168.1.50/api/v1/data")


async def test_v2_forced_without_a_token_says_to_pair() -> None:
    with pytest.raises(P1SetupError) as err:
        await locate_p1(meter_settings(P1_HOST="192.168.1.50", P1_API="v2"), None)
    assert err.value.key == "P1_API"
    assert "pair-p1" in err.value.problem


async def test_auto_probes_the_host_as_the_reference_client_does(
    v2_server: V2MeterServer, v2_model: P1MeterModel
) -> None:
    token = StoredToken(TOKEN, serial=SERIAL)
    at_v2 = meter_settings(P1_HOST=f"127.0.0.1:{v2_server.port}")
    target = await locate_p1(at_v2, token)  # HTTPS /api answers 401 without a token: v2
    assert (target.api, target.identifier) == (ApiVersion.V2, v2_server.identifier)
    assert target.address == f"127.0.0.1:{v2_server.port}"
    v1_server = await start_meter_server(v2_model, "127.0.0.1", 0, now=lambda: 0.5)
    try:
        at_v1 = meter_settings(P1_HOST=f"127.0.0.1:{v1_server.port}")
        target = await locate_p1(at_v1, token)  # no HTTPS there, /api answers as v1
        assert target == P1Target(ApiVersion.V1, v1_server.url)
    finally:
        await v1_server.stop()


async def test_v2_at_a_host_without_a_serial_learns_the_meter_from_its_certificate(
    v2_server: V2MeterServer, ca_file: Path
) -> None:
    settings = meter_settings(
        P1_HOST=f"127.0.0.1:{v2_server.port}", P1_API="v2", P1_CA_FILE=str(ca_file)
    )
    target = await locate_p1(settings, StoredToken(TOKEN))
    assert target.identifier == v2_server.identifier


async def test_found_by_mdns_v2_with_a_token_else_v1() -> None:
    devices = [p1(SERIAL)]
    with_token = await locate_p1(meter_settings(), StoredToken(TOKEN), devices=devices)
    assert with_token.api is ApiVersion.V2
    assert with_token.identifier == f"appliance/p1dongle/{SERIAL}"
    assert with_token.address == "https://192.168.1.5:443"
    assert with_token.endpoint is not None  # followed when it moves
    without = await locate_p1(meter_settings(), None, devices=devices)
    assert without == P1Target(
        ApiVersion.V1, "http://192.168.1.5:80/api/v1/data", endpoint=without.endpoint
    )
    assert "found by mDNS" in without.describe()


async def test_several_p1_meters_need_p1_serial_naming_them() -> None:
    devices = [p1(SERIAL), p1(OTHER, address="192.168.1.6")]
    with pytest.raises(P1SetupError) as err:
        await locate_p1(meter_settings(), None, devices=devices)
    assert err.value.key == "P1_SERIAL"
    assert SERIAL in err.value.problem
    assert OTHER in err.value.problem
    chosen = await locate_p1(meter_settings(P1_SERIAL=OTHER.upper()), None, devices=devices)
    assert chosen.endpoint is not None
    assert chosen.endpoint.device.serial == OTHER
    # The token remembers which meter it was paired with.
    paired = await locate_p1(meter_settings(), StoredToken(TOKEN, serial=OTHER), devices=devices)
    assert paired.endpoint is not None
    assert (paired.endpoint.device.serial, paired.api) == (OTHER, ApiVersion.V2)


async def test_no_meter_found_and_v2_forced_on_a_v1_meter_are_clear_errors() -> None:
    with pytest.raises(P1SetupError) as err:
        await locate_p1(meter_settings(), None, devices=[])
    assert "no P1 meter found" in err.value.problem
    with pytest.raises(P1SetupError) as err:
        await locate_p1(
            meter_settings(P1_API="v2"), StoredToken(TOKEN), devices=[p1(SERIAL, v2=False)]
        )
    assert err.value.key == "P1_API"
    assert "does not advertise API v2" in err.value.problem


async def test_the_pv_meter_by_serial_or_not_at_all(caplog: pytest.LogCaptureFixture) -> None:
    kwh = FoundDevice("HWE-KWH1", OTHER, addresses=("192.168.1.7",), v1_port=80, v1_enabled=True)
    by_serial = PvMeterSettings(serial=OTHER)
    assert await locate_pv(by_serial, MeterSettings(), [kwh]) == (
        "http://192.168.1.7:80/api/v1/data"
    )
    with caplog.at_level(logging.WARNING):
        assert await locate_pv(PvMeterSettings(serial=SERIAL), MeterSettings(), [kwh]) is None
    assert "running without it" in caplog.text


# -- the token ---------------------------------------------------------------------------------


def test_the_token_comes_from_p1_token_else_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    assert stored_token(meter_settings(), path) is None
    save_token(path, StoredToken(TOKEN, serial=SERIAL))
    assert stored_token(meter_settings(), path) == StoredToken(TOKEN, serial=SERIAL)
    given = "FEDCBA9876543210FEDCBA9876543210"
    assert stored_token(meter_settings(P1_TOKEN=given), path) == StoredToken(given)
    path.write_text(json.dumps({"token": "not a token"}), encoding="utf-8")
    with pytest.raises(P1SetupError) as err:
        stored_token(meter_settings(), path)
    assert err.value.key == "P1_TOKEN_FILE"
    assert str(path) in err.value.problem
    assert "not a token" not in str(err.value)


def test_the_token_file_lives_beside_the_config_file(tmp_path: Path) -> None:
    assert default_token_file(tmp_path / "mmbc.toml") == tmp_path / TOKEN_FILE_NAME


# -- following and the token, against the real servers ------------------------------------------


@pytest.fixture
async def moved_server(
    v2_model: P1MeterModel, simulator_ca: SimulatorCA, manual_clock: FakeClock, v2_token: str
) -> AsyncIterator[V2MeterServer]:
    """The same meter at another address (127.0.0.2), its user kept."""
    server = await start_v2_meter_server(
        v2_model,
        simulator_ca,
        host="127.0.0.2",
        now=manual_clock.now,
        push_check_s=None,
        users={USER: v2_token},
    )
    yield server
    await server.stop()


async def test_a_found_meter_that_stops_answering_is_followed_to_its_new_address(
    v2_server: V2MeterServer,
    moved_server: V2MeterServer,
    v2_token: str,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    device = FoundDevice(
        "HWE-P1", SERIAL, addresses=("127.0.0.1",), v2_port=v2_server.port, v2_api_version="2.0.0"
    )
    answers: list[FoundDevice | None] = [
        FoundDevice(
            "HWE-P1",
            SERIAL,
            addresses=("127.0.0.2",),
            v2_port=moved_server.port,
            v2_api_version="2.0.0",
        )
    ]
    looked: list[tuple[str, ApiVersion]] = []

    async def look(serial: str, api: ApiVersion) -> FoundDevice | None:
        looked.append((serial, api))
        return answers.pop(0) if answers else None

    endpoint = choose_api(device, have_token=True)
    clock = FakeClock()
    meter = P1Meter(
        P1Target.of(endpoint),
        MeterSettings(ca_file=ca_file, timeout_s=0.5),
        clock=clock,
        token=StoredToken(v2_token, serial=SERIAL),
        follower=MeterFollower(endpoint, look=look),
    )
    try:
        assert (await meter.read()).active_power_w == 750.0
        assert meter.stream is not None
        await v2_server.stop()  # the old address goes dark
        with pytest.raises(DeviceUnavailable):
            await meter.read()
        clock.t_s += 3.0
        with pytest.raises(DeviceUnavailable):
            await meter.read()
        assert looked == []  # a few seconds first: a meter rebooting comes back by itself
        clock.t_s += 3.0
        with pytest.raises(DeviceUnavailable):
            await meter.read()
        for _ in range(50):  # the look runs beside the reads
            if meter.moves:
                break
            await asyncio.sleep(0.01)
        assert looked == [(SERIAL, ApiVersion.V2)]
        assert meter.moves == 1
        assert (await meter.read()).active_power_w == 750.0  # from 127.0.0.2
        assert isinstance(meter.client, HomeWizardV2Client)
        assert meter.client.base_url == f"https://127.0.0.2:{moved_server.port}"
        assert meter.stream.client is meter.client  # the push stream moved too
        assert "127.0.0.2" in meter.describe()
    finally:
        await meter.close()
    moves = [r.getMessage() for r in caplog.records if "moved from" in r.getMessage()]
    assert moves == [
        f"P1 meter {SERIAL} moved from 127.0.0.1:{v2_server.port} to 127.0.0.2:{moved_server.port}"
    ]


async def test_pairing_again_while_running_is_picked_up_from_the_token_file(
    v2_server: V2MeterServer, v2_token: str, ca_file: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / TOKEN_FILE_NAME
    save_token(token_file, StoredToken(v2_token, serial=SERIAL))
    settings = meter_settings(
        P1_HOST=f"127.0.0.1:{v2_server.port}",
        P1_API="v2",
        P1_CA_FILE=str(ca_file),
        P1_TOKEN_FILE=str(token_file),
    )
    clock = FakeClock()
    meter = await open_p1(settings, clock=clock)
    try:
        assert (await meter.read()).active_power_w == 750.0
        v2_server.revoke_all()  # removed in the app
        with pytest.raises(MeterUnauthorizedError):
            await meter.read()
        new_token = v2_server.add_user(USER)  # `mmbc-engine pair-p1` again
        save_token(token_file, StoredToken(new_token, serial=SERIAL))
        clock.t_s += 1.0
        with pytest.raises(MeterUnauthorizedError):
            await meter.read()  # the file is not read at every refusal
        clock.t_s += 10.0
        with pytest.raises(MeterUnauthorizedError):
            await meter.read()  # this refusal reads it: the next read has the new token
        assert (await meter.read()).active_power_w == 750.0
    finally:
        await meter.close()
