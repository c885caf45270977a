"""HomeWizard API v2: parsing real bodies, TLS and names, the client against the simulated
v2 meter (HTTPS verified with the simulator's CA), 401 handling, detection, pairing, tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import stat
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.adapters.homewizard_v2 import (
    ApiVersion,
    DeviceInfo,
    HomeWizardV2Client,
    MeterIdentityError,
    MeterUnauthorizedError,
    PairingTimeout,
    StoredToken,
    TokenFileError,
    client_ssl_context,
    detect_api_version,
    fetch_identifier,
    homewizard_ca_pem,
    https_base_url,
    load_token,
    pair,
    parse_device,
    parse_measurement,
    save_token,
    user_name_for,
    verification_hostname,
)
from engine.core.meter import MeterTracker, P1Reading
from engine.errors import DeviceResponseError, DeviceUnavailable
from sim.plant.meter import KwhMeterModel, P1MeterModel
from sim.plant.params import MeterParams
from sim.servers.homewizard import start_meter_server
from sim.servers.homewizard_v2 import Button, V2MeterServer, start_v2_meter_server
from sim.servers.tls import SimulatorCA
from tests.adapters.conftest import USER
from tests.adapters.meters import tick
from tests.fakes import FakeClock

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "homewizard" / "v2"
MEASUREMENTS = sorted(
    p.relative_to(FIXTURES).as_posix()
    for p in FIXTURES.glob("*/measurement*.json")
    if p.parent.name != "exceptions"
)
DEVICES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/device.json"))
BROKEN = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("exceptions/*.json"))


def _load(rel: str) -> dict[str, object]:
    body = json.loads((FIXTURES / rel).read_text())
    assert isinstance(body, dict)
    return body


# -- parse_measurement / parse_device ----------------------------------------------------------


def test_fixture_sets_are_present() -> None:
    assert len(MEASUREMENTS) == 5
    assert len(DEVICES) == 4
    assert len(BROKEN) == 2


@pytest.mark.parametrize("rel", MEASUREMENTS)
def test_every_real_measurement_parses(rel: str) -> None:
    body = _load(rel)
    reading = parse_measurement(body)
    assert reading.active_power_w == float(body["power_w"])  # type: ignore[arg-type]
    assert reading.total_power_import_kwh is not None
    assert reading.total_power_export_kwh is not None


def test_p1_three_phase_measurement_keeps_the_meters_sign() -> None:
    reading = parse_measurement(_load("HWE-P1/measurement_3_phase_with_gas_with_watermeter.json"))
    assert reading == P1Reading(
        active_power_w=-543.0,  # exporting: negative, as v1's active_power_w
        total_power_import_kwh=13779.338,
        total_power_export_kwh=0.0,
        active_power_l1_w=-676.0,
        active_power_l2_w=133.0,
        active_power_l3_w=0.0,
        fingerprint=reading.fingerprint,
    )


def test_single_phase_measurement_sums_the_tariff_counters() -> None:
    reading = parse_measurement(_load("HWE-P1/measurement_1_phase_no_gas.json"))
    assert reading.active_power_w == -678.0
    assert reading.active_power_l1_w == -676.0
    assert reading.active_power_l2_w is None
    assert reading.total_power_import_kwh == pytest.approx(10830.511 + 2948.827)
    assert reading.total_power_export_kwh == pytest.approx(1285.951 + 2876.51)


def test_three_phase_kwh_meter_phases_keep_their_signs() -> None:
    reading = parse_measurement(_load("HWE-KWH3/measurement.json"))
    assert (reading.active_power_w, reading.active_power_l3_w) == (123.0, -30.0)


@pytest.mark.parametrize("rel", BROKEN)
def test_bodies_without_power_are_rejected(rel: str) -> None:
    with pytest.raises(DeviceResponseError, match="power_w"):
        parse_measurement(_load(rel))


@pytest.mark.parametrize(
    "power", [None, "123", True, [1], {"w": 1}, math.nan, math.inf, -math.inf, 10**400]
)
def test_unusable_power_is_an_error_not_a_guess(power: object) -> None:
    body = {"power_w": power, "power_l1_w": 100, "power_l2_w": 50}
    with pytest.raises(DeviceResponseError) as info:
        parse_measurement(body, device="grid")
    assert info.value.device == "grid"


def test_v1_names_are_not_read_as_v2() -> None:
    with pytest.raises(DeviceResponseError, match="power_w"):
        parse_measurement({"active_power_w": 500, "total_power_import_kwh": 1.0})


@pytest.mark.parametrize("body", [None, [], [{"power_w": 1}], "x", 5])
def test_non_object_measurement_is_an_error(body: object) -> None:
    with pytest.raises(DeviceResponseError, match="not a JSON object"):
        parse_measurement(body)


def test_fingerprint_follows_the_whole_body() -> None:
    body = _load("HWE-P1/measurement_3_phase_with_gas_with_watermeter.json")
    moved = dict(body, energy_import_kwh=13779.339)
    assert parse_measurement(body).fingerprint == parse_measurement(dict(body)).fingerprint
    assert parse_measurement(moved).fingerprint != parse_measurement(body).fingerprint


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=16,
)
_keys = st.sampled_from(
    ["power_w", "power_l1_w", "energy_import_kwh", "energy_import_t1_kwh", "energy_export_kwh"]
) | st.text(max_size=6)


@settings(max_examples=300, deadline=None)
@given(_json | st.dictionaries(_keys, _json, max_size=8))
def test_parse_measurement_never_raises_anything_but_the_typed_error(body: object) -> None:
    try:
        reading = parse_measurement(body)
    except DeviceResponseError:
        return
    assert isinstance(body, dict)
    assert math.isfinite(reading.active_power_w)
    assert reading.active_power_w == body["power_w"]
    for value in (reading.active_power_l1_w, reading.total_power_import_kwh):
        assert value is None or math.isfinite(value)


@pytest.mark.parametrize("rel", DEVICES)
def test_every_real_device_body_parses_as_v2(rel: str) -> None:
    info = parse_device(_load(rel))
    assert info.serial == "5c2fafaabbcc"
    assert info.speaks_v2


@pytest.mark.parametrize(
    ("version", "v2"), [("2.0.0", True), ("2.3.0-beta", True), ("v1", False), ("", False)]
)
def test_api_version_tells_v2(version: str, v2: bool) -> None:
    assert DeviceInfo("HWE-P1", "5c2fafaabbcc", api_version=version).speaks_v2 is v2


@pytest.mark.parametrize(
    "body", [[], {"serial": "5c2fafaabbcc"}, {"product_type": "HWE-P1"}, {"product_type": 1}]
)
def test_device_body_without_type_or_serial_is_rejected(body: object) -> None:
    with pytest.raises(DeviceResponseError):
        parse_device(body)


# -- names, URLs, TLS context --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product_type", "expected"),
    [
        ("HWE-P1", "appliance/p1dongle/5c2fafaabbcc"),
        ("HWE-KWH1", "appliance/energymeter/5c2fafaabbcc"),
        ("HWE-KWH3", "appliance/energymeter/5c2fafaabbcc"),
        ("HWE-BAT", "appliance/battery/5c2fafaabbcc"),
    ],
)
def test_verification_hostname_uses_the_certificates_product_names(
    product_type: str, expected: str
) -> None:
    assert verification_hostname(product_type, "5C2FAFAABBCC") == expected


@pytest.mark.parametrize(("product_type", "serial"), [("HWE-XYZ", "aabb"), ("HWE-P1", "a/b")])
def test_verification_hostname_refuses_what_it_cannot_name(product_type: str, serial: str) -> None:
    with pytest.raises(ValueError, match=r"serial|product type"):
        verification_hostname(product_type, serial)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("192.168.1.5", None, "https://192.168.1.5"),
        ("192.168.1.5", 443, "https://192.168.1.5"),
        ("192.168.1.5", 8443, "https://192.168.1.5:8443"),
        ("192.168.1.5:9443", 8443, "https://192.168.1.5:9443"),
        ("fe80::1", None, "https://[fe80::1]"),
        ("[fe80::1]:8443", None, "https://[fe80::1]:8443"),
        ("https://p1meter-aabbcc.local/api", None, "https://p1meter-aabbcc.local"),
    ],
)
def test_https_base_url(host: str, port: int | None, expected: str) -> None:
    assert https_base_url(host, port) == expected


@pytest.mark.parametrize("bad", ["", "http://192.168.1.5", "host:notaport", "https://"])
def test_https_base_url_rejects_nonsense(bad: str) -> None:
    with pytest.raises(ValueError, match=r"host|HTTPS|port"):
        https_base_url(bad)


def test_bundled_ca_is_homewizards_and_strict_mode_is_off() -> None:
    context = client_ssl_context()
    (ca,) = context.get_ca_certs()
    rdns = cast("tuple[tuple[tuple[str, str], ...], ...]", ca["subject"])
    subject = dict(item for rdn in rdns for item in rdn)
    assert subject == {
        "countryName": "NL",
        "stateOrProvinceName": "ZH",
        "organizationName": "HomeWizard",
        "commonName": "Appliance Access CA",
    }
    assert ca["notAfter"] == "Dec 16 19:12:12 2031 GMT"
    assert "BEGIN CERTIFICATE" in homewizard_ca_pem()
    # The CA is an X.509 v1 certificate: strict verification would reject every device.
    assert cast("int", ca["version"]) == 1
    assert not context.verify_flags & ssl.VERIFY_X509_STRICT
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.hostname_checks_common_name


# -- the client against the simulated v2 meter ----------------------------------------------------


async def test_reads_the_live_value_over_verified_https(
    v2_model: P1MeterModel, manual_clock: FakeClock, v2_client: HomeWizardV2Client
) -> None:
    tick(v2_model, manual_clock, 750.0)
    reading = await v2_client.read()
    assert reading.active_power_w == 750.0
    assert reading.total_power_import_kwh is not None
    tick(v2_model, manual_clock, -320.0)
    assert (await v2_client.read()).active_power_w == -320.0


async def test_device_endpoint_answers_v2(v2_client: HomeWizardV2Client) -> None:
    info = await v2_client.device()
    assert (info.product_type, info.serial, info.api_version) == (
        "HWE-P1",
        "5c2fafaabbcc",
        "2.0.0",
    )


async def test_another_devices_name_is_refused(
    v2_server: V2MeterServer, v2_token: str, ca_file: Path
) -> None:
    async with HomeWizardV2Client(
        f"127.0.0.1:{v2_server.port}",
        identifier="appliance/p1dongle/000000000000",  # a different meter took the address
        token=v2_token,
        ca_file=ca_file,
    ) as client:
        with pytest.raises(MeterIdentityError, match="is not appliance/p1dongle/000000000000"):
            await client.read()


async def test_a_certificate_from_another_ca_is_refused(
    v2_server: V2MeterServer, v2_token: str
) -> None:
    # Without ca_file only HomeWizard's CA is trusted, which did not sign the simulator.
    async with HomeWizardV2Client(
        f"127.0.0.1:{v2_server.port}", identifier=v2_server.identifier, token=v2_token
    ) as client:
        with pytest.raises(MeterIdentityError, match="certificate"):
            await client.read()


async def test_sends_bearer_token_and_version_header(
    v2_server: V2MeterServer, v2_client: HomeWizardV2Client
) -> None:
    assert v2_client.headers() == {
        "X-Api-Version": "2",
        "Authorization": f"Bearer {v2_client.token}",
    }
    await v2_client.read()
    assert v2_server.counters.rejected_tokens == 0


async def test_401_is_one_log_line_until_the_token_works_again(
    v2_server: V2MeterServer,
    v2_client: HomeWizardV2Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="engine.adapters.homewizard_v2")
    v2_server.revoke_all()  # the user removed MMBC in the HomeWizard app
    for _ in range(5):
        with pytest.raises(MeterUnauthorizedError, match="pair again") as info:
            await v2_client.read()
        assert info.value.retryable
    lines = [r for r in caplog.records if "rejected our token" in r.getMessage()]
    assert len(lines) == 1
    assert "mmbc-engine pair-p1" in lines[0].getMessage()
    token = v2_client.token
    assert token is not None
    assert token not in caplog.text  # never a credential
    v2_client.set_token(v2_server.add_user(USER))  # paired again
    await v2_client.read()
    v2_server.revoke_all()
    with pytest.raises(MeterUnauthorizedError):
        await v2_client.read()
    assert len([r for r in caplog.records if "rejected our token" in r.getMessage()]) == 2


async def test_no_token_is_an_unauthorised_error_without_a_request(
    v2_server: V2MeterServer, ca_file: Path
) -> None:
    async with HomeWizardV2Client(
        f"127.0.0.1:{v2_server.port}", identifier=v2_server.identifier, ca_file=ca_file
    ) as client:
        with pytest.raises(MeterUnauthorizedError, match="no API v2 token"):
            await client.read()
    assert v2_server.counters.rejected_tokens == 0


async def test_api_disabled_fault_is_a_401_on_v2(
    v2_model: P1MeterModel, v2_client: HomeWizardV2Client
) -> None:
    v2_model.set_fault("api_disabled")
    with pytest.raises(MeterUnauthorizedError):
        await v2_client.read()


async def test_http_500_is_retryable(v2_model: P1MeterModel, v2_client: HomeWizardV2Client) -> None:
    v2_model.set_fault("http_error")
    with pytest.raises(DeviceResponseError, match="HTTP 500") as info:
        await v2_client.read()
    assert info.value.retryable


async def test_outage_times_out_as_unavailable(
    v2_model: P1MeterModel, v2_client: HomeWizardV2Client
) -> None:
    v2_model.set_fault("outage")
    with pytest.raises(DeviceUnavailable, match="no answer"):
        await v2_client.read()
    v2_model.clear_fault()
    assert (await v2_client.read()).active_power_w == 750.0


async def test_garbage_never_yields_a_reading(
    v2_model: P1MeterModel, manual_clock: FakeClock, v2_client: HomeWizardV2Client
) -> None:
    tick(v2_model, manual_clock, 500.0)
    v2_model.set_fault("garbage")
    with pytest.raises(DeviceResponseError, match="invalid JSON"):
        await v2_client.read()
    with pytest.raises(DeviceResponseError, match="power_w"):
        await v2_client.read()


async def test_frozen_meter_stops_advancing_updated_s(
    v2_model: P1MeterModel, manual_clock: FakeClock, v2_client: HomeWizardV2Client
) -> None:
    tracker = MeterTracker()
    for _ in range(3):
        tick(v2_model, manual_clock, 400.0)
        tracker.update(await v2_client.read(), manual_clock.t_s)
    live_s = manual_clock.t_s
    v2_model.set_fault("frozen")
    for _ in range(4):
        tick(v2_model, manual_clock, 900.0)
        tracker.update(await v2_client.read(), manual_clock.t_s)
    assert tracker.updated_s == live_s
    assert tracker.grid_w == 400.0


async def test_refused_connection_is_unavailable(simulator_ca: SimulatorCA, ca_file: Path) -> None:
    server = await start_v2_meter_server(P1MeterModel(), simulator_ca, push_check_s=None)
    port, identifier = server.port, server.identifier
    await server.stop()
    async with HomeWizardV2Client(
        f"127.0.0.1:{port}", identifier=identifier, token="A" * 32, ca_file=ca_file
    ) as client:
        with pytest.raises(DeviceUnavailable, match="cannot reach"):
            await client.read()


async def test_pv_kwh_meter_over_v2_reads_negative_while_producing(
    simulator_ca: SimulatorCA, ca_file: Path, manual_clock: FakeClock
) -> None:
    pv = KwhMeterModel(MeterParams(noise_w=0.0), serial="5c2fafddeeff")
    pv.observe_pv(0.0, 1800.0)
    manual_clock.t_s = 1.0
    server = await start_v2_meter_server(pv, simulator_ca, now=manual_clock.now, push_check_s=None)
    try:
        async with HomeWizardV2Client(
            f"127.0.0.1:{server.port}",
            identifier=verification_hostname("HWE-KWH1", "5c2fafddeeff"),
            token=server.add_user(USER),
            ca_file=ca_file,
            name="pv",
        ) as client:
            reading = await client.read()
            info = await client.device()
    finally:
        await server.stop()
    assert reading.active_power_w == -1800.0
    assert info.product_type == "HWE-KWH1"


async def test_injected_session_is_left_open(
    v2_server: V2MeterServer, v2_token: str, ca_file: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        client = HomeWizardV2Client(
            f"127.0.0.1:{v2_server.port}",
            identifier=v2_server.identifier,
            token=v2_token,
            ca_file=ca_file,
            session=session,
        )
        await client.read()
        await client.close()
        assert not session.closed
        assert (await client.read()).active_power_w == 750.0


# -- detection and the certificate's name ----------------------------------------------------


async def test_detects_v2_v1_and_nothing(v2_server: V2MeterServer) -> None:
    assert await detect_api_version("127.0.0.1", https_port=v2_server.port) is ApiVersion.V2
    v1 = await start_meter_server(P1MeterModel())
    try:
        found = await detect_api_version(
            "127.0.0.1", https_port=v1.port, http_port=v1.port, timeout_s=1.0
        )
        assert found is ApiVersion.V1
    finally:
        await v1.stop()
    assert (
        await detect_api_version("127.0.0.1", https_port=v1.port, http_port=v1.port, timeout_s=1)
        is None
    )


async def test_fetch_identifier_reads_the_certificate_name(
    v2_server: V2MeterServer, ca_file: Path
) -> None:
    name = await fetch_identifier(f"127.0.0.1:{v2_server.port}", ca_file=ca_file)
    assert name == "appliance/p1dongle/5c2fafaabbcc"
    assert name == verification_hostname("HWE-P1", "5c2fafaabbcc")


async def test_fetch_identifier_still_checks_the_ca(v2_server: V2MeterServer) -> None:
    with pytest.raises(MeterIdentityError, match="not a HomeWizard device"):
        await fetch_identifier(f"127.0.0.1:{v2_server.port}")  # HomeWizard's CA only


# -- pairing ----------------------------------------------------------------------------------


@pytest.fixture
def pairing_client(v2_server: V2MeterServer, ca_file: Path) -> HomeWizardV2Client:
    return HomeWizardV2Client(
        f"127.0.0.1:{v2_server.port}",
        identifier=v2_server.identifier,
        ca_file=ca_file,
        timeout_s=0.5,
    )


async def test_pairing_asks_for_the_button_and_gets_a_token_after_the_press(
    v2_server: V2MeterServer, pairing_client: HomeWizardV2Client, manual_clock: FakeClock
) -> None:
    asked: list[str] = []

    def prompt(text: str) -> None:
        asked.append(text)
        # The user walks over: the press comes a little later, while pair() keeps asking.
        asyncio.get_running_loop().call_later(0.15, v2_server.press_button)

    async with pairing_client:
        token = await pair(pairing_client, prompt=prompt, user_name="mmbc", retry_s=0.05)
        assert len(asked) == 1
        assert "Press the button" in asked[0]
        assert v2_server.identifier in asked[0]
        assert v2_server.users == {"local/mmbc": token}
        assert v2_server.counters.user_requests >= 2  # refused before the press, then granted
        pairing_client.set_token(token)
        assert (await pairing_client.read()).active_power_w == 750.0


async def test_pairing_within_the_window_needs_no_prompt(
    v2_server: V2MeterServer, pairing_client: HomeWizardV2Client
) -> None:
    v2_server.press_button()
    asked: list[str] = []
    async with pairing_client:
        token = await pair(pairing_client, prompt=asked.append)
    assert asked == []
    assert v2_server.users["local/mmbc"] == token


async def test_pairing_again_replaces_the_old_token(
    v2_server: V2MeterServer, pairing_client: HomeWizardV2Client
) -> None:
    v2_server.button.always_pressed = True
    async with pairing_client:
        first = await pair(pairing_client, prompt=print)
        second = await pair(pairing_client, prompt=print)
        assert first != second
        pairing_client.set_token(first)
        with pytest.raises(MeterUnauthorizedError):
            await pairing_client.read()
        pairing_client.set_token(second)
        await pairing_client.read()


async def test_button_window_closes_after_30_s(
    v2_server: V2MeterServer, pairing_client: HomeWizardV2Client, manual_clock: FakeClock
) -> None:
    v2_server.press_button()
    manual_clock.t_s += 31.0
    async with pairing_client:
        assert await pairing_client.request_token("local/mmbc") is None


async def test_pairing_gives_up_when_nobody_presses(
    pairing_client: HomeWizardV2Client, v2_server: V2MeterServer
) -> None:
    async with pairing_client:
        with pytest.raises(PairingTimeout, match="button"):
            await pair(pairing_client, prompt=lambda _: None, wait_s=0.3, retry_s=0.05)
    assert v2_server.users == {}


@pytest.mark.looptime
async def test_pairing_waits_on_the_loop_clock(simulator_ca: SimulatorCA, ca_file: Path) -> None:
    server = await start_v2_meter_server(
        P1MeterModel(), simulator_ca, push_check_s=None, button=Button()
    )
    loop = asyncio.get_running_loop()
    try:
        async with HomeWizardV2Client(
            f"127.0.0.1:{server.port}", identifier=server.identifier, ca_file=ca_file
        ) as client:
            start_s = loop.time()
            with pytest.raises(PairingTimeout):
                await pair(client, prompt=lambda _: None, wait_s=60.0, retry_s=1.0)
            assert loop.time() - start_s == pytest.approx(60.0, abs=1.5)
    finally:
        await server.stop()


async def test_pairing_an_unreachable_meter_fails_at_once(
    simulator_ca: SimulatorCA, ca_file: Path
) -> None:
    server = await start_v2_meter_server(P1MeterModel(), simulator_ca, push_check_s=None)
    await server.stop()
    asked: list[str] = []
    async with HomeWizardV2Client(
        f"127.0.0.1:{server.port}", identifier=server.identifier, ca_file=ca_file
    ) as client:
        with pytest.raises(DeviceUnavailable):
            await pair(client, prompt=asked.append)
    assert asked == []  # no button to press on a meter nobody can reach


@pytest.mark.parametrize("bad", ["", "local/", "x" * 41, "mmbc!", "local/a;b"])
def test_user_names_the_device_would_refuse_are_refused_here(bad: str) -> None:
    with pytest.raises(ValueError, match="user name"):
        user_name_for(bad)


def test_user_name_gets_the_local_prefix() -> None:
    assert user_name_for("mmbc") == "local/mmbc"
    assert user_name_for("local/mmbc #2") == "local/mmbc #2"


# -- the token file ----------------------------------------------------------------------------


def test_token_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "p1-token.json"
    stored = StoredToken(token="0123456789ABCDEF0123456789ABCDEF", serial="5c2fafaabbcc")
    save_token(path, stored)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_token(path) == stored
    assert stored.token not in repr(stored)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    replaced = StoredToken(token="F" * 32, serial="5c2fafaabbcc")
    save_token(path, replaced)
    assert load_token(path) == replaced


def test_missing_token_file_is_none(tmp_path: Path) -> None:
    assert load_token(tmp_path / "absent.json") is None


def test_a_pasted_plain_token_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("0123456789ABCDEF0123456789ABCDEF\n")
    path.chmod(0o600)
    loaded = load_token(path)
    assert loaded is not None
    assert loaded.token == "0123456789ABCDEF0123456789ABCDEF"


@pytest.mark.parametrize("content", ["{}", '{"token": "has space"}', "[1]", "a b c", "{"])
def test_an_unusable_token_file_names_itself_not_the_token(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token.json"
    path.write_text(content)
    with pytest.raises(TokenFileError) as info:
        load_token(path)
    assert info.value.path == path
    assert content not in str(info.value) or content in {"{}", "{"}


def test_a_token_file_others_can_read_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token.json"
    save_token(path, StoredToken(token="A" * 32))
    path.chmod(0o644)
    assert load_token(path) is not None
    assert f"chmod 600 {path}" in caplog.text
    assert "A" * 32 not in caplog.text


def test_refuses_to_store_a_non_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a bearer token"):
        save_token(tmp_path / "t.json", StoredToken(token="two words"))
    assert not (tmp_path / "t.json").exists()
