"""Discovery: merging mDNS records, choosing the meter and API (pure), and the real thing:
the simulator's advertisements found on the loopback interface, a moved meter followed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from engine.adapters.discovery import (
    SERVICE_V1,
    SERVICE_V2,
    ApiChoice,
    DiscoveryError,
    FoundDevice,
    MeterEndpoint,
    MeterFollower,
    ServiceRecord,
    browse,
    choose_api,
    describe,
    find_device,
    merge_records,
    select_kwh,
    select_p1,
)
from engine.adapters.homewizard_v2 import ApiVersion, HomeWizardV2Client
from sim.plant.meter import P1MeterModel
from sim.plant.params import MeterParams
from sim.servers.homewizard_v2 import start_v2_meter_server
from sim.servers.mdns import AdvertisedDevice, MdnsAdvertiser
from sim.servers.tls import SimulatorCA
from tests.adapters.conftest import USER
from tests.mdns import LOOPBACK, fresh_serial


def p1(serial: str = "3c39e7aabbcc", **fields: object) -> FoundDevice:
    base: dict[str, object] = {
        "product_type": "HWE-P1",
        "serial": serial,
        "product_name": "P1 Meter",
        "addresses": ("192.168.1.5",),
        "v1_port": 80,
        "v1_enabled": True,
    }
    base.update(fields)
    return FoundDevice(**base)  # type: ignore[arg-type]


def kwh(serial: str, product_type: str = "HWE-KWH1") -> FoundDevice:
    return FoundDevice(product_type, serial, addresses=("192.168.1.7",), v2_port=443)


# -- merge_records -----------------------------------------------------------------------------


def v1_record(serial: str, address: str = "192.168.1.5", enabled: str = "1") -> ServiceRecord:
    return ServiceRecord(
        SERVICE_V1,
        f"p1meter-{serial[-6:].upper()}",
        (address,),
        80,
        {
            "api_enabled": enabled,
            "path": "/api/v1",
            "serial": serial,
            "product_name": "P1 Meter",
            "product_type": "HWE-P1",
        },
    )


def v2_record(serial: str, address: str = "192.168.1.5") -> ServiceRecord:
    return ServiceRecord(
        SERVICE_V2,
        f"p1meter-{serial[-6:].upper()}",
        (address,),
        443,
        {
            "api_version": "2.0.0",
            "id": f"appliance/p1dongle/{serial}",
            "serial": serial,
            "product_name": "P1 Meter",
            "product_type": "HWE-P1",
        },
    )


def test_both_services_of_one_device_merge_into_one() -> None:
    (device,) = merge_records([v1_record("3c39e7aabbcc"), v2_record("3c39e7aabbcc")])
    assert device == FoundDevice(
        product_type="HWE-P1",
        serial="3c39e7aabbcc",
        product_name="P1 Meter",
        addresses=("192.168.1.5",),
        v1_port=80,
        v1_enabled=True,
        v2_port=443,
        v2_api_version="2.0.0",
        identifier="appliance/p1dongle/3c39e7aabbcc",
    )
    assert device.api_versions == (ApiVersion.V1, ApiVersion.V2)
    assert device.tls_hostname == "appliance/p1dongle/3c39e7aabbcc"


def test_records_without_serial_or_type_are_skipped_and_serials_normalised() -> None:
    nameless = ServiceRecord(SERVICE_V1, "x", ("192.168.1.9",), 80, {"product_type": "HWE-P1"})
    upper = v1_record("3C39E7AABBCC")
    devices = merge_records([nameless, upper])
    assert [d.serial for d in devices] == ["3c39e7aabbcc"]


def test_an_id_for_another_serial_is_not_trusted_as_the_tls_name() -> None:
    record = v2_record("3c39e7aabbcc")
    forged = ServiceRecord(
        record.service_type,
        record.instance,
        record.addresses,
        record.port,
        {**record.txt, "id": "appliance/p1dongle/000000000000"},
    )
    (device,) = merge_records([forged])
    assert device.identifier is None
    assert device.tls_hostname == "appliance/p1dongle/3c39e7aabbcc"


def test_v1_switched_off_in_the_app_is_known() -> None:
    (device,) = merge_records([v1_record("3c39e7aabbcc", enabled="0")])
    assert device.v1_enabled is False
    assert "v1 disabled" in describe(device)


def test_describe_names_type_serial_address_and_apis() -> None:
    (device,) = merge_records([v1_record("3c39e7aabbcc"), v2_record("3c39e7aabbcc")])
    assert describe(device) == (
        "HWE-P1 (P1 Meter) 3c39e7aabbcc at 192.168.1.5 [v1 :80, v2 2.0.0 :443]"
    )


# -- select_p1 / select_kwh ----------------------------------------------------------------------


def test_the_single_p1_meter_is_chosen_among_other_devices() -> None:
    devices = [kwh("5c2fafddeeff"), p1(), FoundDevice("HWE-SKT", "3c39e7001122")]
    assert select_p1(devices).serial == "3c39e7aabbcc"


def test_several_p1_meters_need_a_serial_and_the_error_names_them() -> None:
    devices = [p1("3c39e7aabbcc"), p1("3c39e7ddeeff", addresses=("192.168.1.6",))]
    with pytest.raises(DiscoveryError) as info:
        select_p1(devices)
    message = str(info.value)
    assert "2 P1 meters" in message
    assert "P1_SERIAL" in message
    assert "3c39e7aabbcc at 192.168.1.5" in message
    assert "3c39e7ddeeff at 192.168.1.6" in message
    assert info.value.seen == tuple(devices)
    assert select_p1(devices, serial="3C39E7DDEEFF").serial == "3c39e7ddeeff"


def test_no_p1_meter_says_what_was_seen() -> None:
    with pytest.raises(DiscoveryError, match=r"no P1 meter found.*HWE-KWH1 5c2fafddeeff"):
        select_p1([kwh("5c2fafddeeff")])
    with pytest.raises(DiscoveryError, match="no HomeWizard device answered"):
        select_p1([])


def test_a_serial_that_is_not_there_or_not_a_p1_is_an_error() -> None:
    with pytest.raises(DiscoveryError, match="no P1 meter with serial 3c39e7000000"):
        select_p1([p1()], serial="3c39e7000000")
    with pytest.raises(DiscoveryError, match="is a HWE-KWH1, not a P1 meter"):
        select_p1([p1(), kwh("5c2fafddeeff")], serial="5c2fafddeeff", serial_setting="P1_SERIAL")


def test_a_kwh_meter_is_chosen_by_serial_only() -> None:
    devices = [p1(), kwh("5c2fafddeeff"), kwh("5c2faf001122", "HWE-KWH3")]
    assert select_kwh(devices, serial="5c2faf001122").product_type == "HWE-KWH3"
    with pytest.raises(DiscoveryError, match="PV_SERIAL is needed"):
        select_kwh([kwh("5c2fafddeeff")], serial="")
    with pytest.raises(DiscoveryError, match="is a HWE-P1, not a kWh meter"):
        select_kwh(devices, serial="3c39e7aabbcc")


# -- choose_api ----------------------------------------------------------------------------------


BOTH = p1(v2_port=443, v2_api_version="2.0.0")
V2_ONLY = p1(v1_port=None, v1_enabled=None, v2_port=443, v2_api_version="2.0.0")
V1_OFF = p1(v1_enabled=False, v2_port=443, v2_api_version="2.0.0")
V1_ONLY = p1()


@pytest.mark.parametrize(
    ("device", "api", "have_token", "expected"),
    [
        (BOTH, ApiChoice.AUTO, True, ApiVersion.V2),  # prefer v2 when a token exists
        (BOTH, ApiChoice.AUTO, False, ApiVersion.V1),
        (BOTH, ApiChoice.V1, True, ApiVersion.V1),
        (V1_ONLY, ApiChoice.AUTO, True, ApiVersion.V1),
        (V2_ONLY, ApiChoice.V2, True, ApiVersion.V2),
        (V1_OFF, ApiChoice.AUTO, True, ApiVersion.V2),
    ],
)
def test_choose_api(
    device: FoundDevice, api: ApiChoice, have_token: bool, expected: ApiVersion
) -> None:
    endpoint = choose_api(device, api=api, have_token=have_token)
    assert endpoint.api is expected
    assert endpoint.host == "192.168.1.5"
    assert endpoint.port == (443 if expected is ApiVersion.V2 else 80)


@pytest.mark.parametrize(
    ("device", "api", "have_token", "advice"),
    [
        (V2_ONLY, ApiChoice.AUTO, False, "pair first"),
        (V1_OFF, ApiChoice.AUTO, False, "pair first"),
        (BOTH, ApiChoice.V2, False, "needs a token"),
        (V1_ONLY, ApiChoice.V2, True, "firmware 6.00"),
        (V1_OFF, ApiChoice.V1, True, "switched off in the HomeWizard app"),
        (V2_ONLY, ApiChoice.V1, True, "v1 is absent"),
        (p1(v1_enabled=False), ApiChoice.AUTO, True, "switched off"),
    ],
)
def test_an_unusable_api_says_what_to_do(
    device: FoundDevice, api: ApiChoice, have_token: bool, advice: str
) -> None:
    with pytest.raises(DiscoveryError, match=advice):
        choose_api(device, api=api, have_token=have_token)


def test_endpoint_urls() -> None:
    assert choose_api(BOTH).url == "http://192.168.1.5:80/api/v1/data"
    assert choose_api(BOTH, have_token=True).url == "https://192.168.1.5:443"


# -- the follower, with an injected look-up (pure timing, no network) ----------------------------


async def test_follower_reports_a_move_once_and_keeps_the_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="engine.adapters.discovery")
    answers: list[FoundDevice | None] = [BOTH, None, None, p1(addresses=("192.168.1.9",))]
    asked: list[tuple[str, ApiVersion]] = []

    async def look(serial: str, api: ApiVersion) -> FoundDevice | None:
        asked.append((serial, api))
        return answers.pop(0)

    follower = MeterFollower(choose_api(BOTH, have_token=True), look=look)
    assert await follower.look_again() is None  # same place
    assert await follower.look_again() is None  # gone
    assert await follower.look_again() is None  # still gone: no second line
    moved = await follower.look_again()
    assert moved is not None
    assert (moved.host, moved.port, moved.api) == ("192.168.1.9", 443, ApiVersion.V2)
    assert follower.current == moved
    assert asked == [("3c39e7aabbcc", ApiVersion.V2)] * 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is not on the network" in m for m in messages) == 1
    assert messages[-1] == "P1 meter 3c39e7aabbcc moved from 192.168.1.5:443 to 192.168.1.9:443"


# -- real mDNS on the loopback interface ------------------------------------------------------


async def test_browse_finds_the_simulated_devices_on_loopback(advertiser: MdnsAdvertiser) -> None:
    meter_serial, pv_serial = fresh_serial(), fresh_serial()
    await asyncio.gather(
        advertiser.advertise(
            AdvertisedDevice(
                "HWE-P1",
                "P1 Meter",
                meter_serial,
                v1_port=8080,
                v2_port=8443,
                identifier=f"appliance/p1dongle/{meter_serial}",
            )
        ),
        advertiser.advertise(
            AdvertisedDevice("HWE-KWH1", "kWh Meter 1-Phase", pv_serial, v2_port=9443)
        ),
    )

    def complete(devices: list[FoundDevice]) -> bool:
        ours = {d.serial: d for d in devices}
        meter = ours.get(meter_serial)
        return pv_serial in ours and meter is not None and len(meter.api_versions) == 2

    devices = await browse(10.0, interfaces=LOOPBACK, enough=complete)
    ours = [d for d in devices if d.serial in {meter_serial, pv_serial}]
    meter = select_p1(ours)
    assert meter == FoundDevice(
        product_type="HWE-P1",
        serial=meter_serial,
        product_name="P1 Meter",
        addresses=("127.0.0.1",),
        v1_port=8080,
        v1_enabled=True,
        v2_port=8443,
        v2_api_version="2.0.0",
        identifier=f"appliance/p1dongle/{meter_serial}",
    )
    pv = select_kwh(ours, serial=pv_serial)
    assert (pv.v2_port, pv.v1_port, pv.api_versions) == (9443, None, (ApiVersion.V2,))
    assert choose_api(meter, have_token=True).url == "https://127.0.0.1:8443"


async def test_a_withdrawn_device_is_not_found(advertiser: MdnsAdvertiser) -> None:
    serial = fresh_serial()
    await advertiser.advertise(AdvertisedDevice("HWE-P1", "P1 Meter", serial, v1_port=8080))
    assert await find_device(serial, 10.0, interfaces=LOOPBACK) is not None
    await advertiser.withdraw(serial)
    assert await find_device(serial, 1.5, interfaces=LOOPBACK) is None


async def test_the_follower_finds_the_meter_at_its_new_address_and_reads_it(
    advertiser: MdnsAdvertiser,
    simulator_ca: SimulatorCA,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="engine.adapters.discovery")
    serial = fresh_serial()
    model = P1MeterModel(MeterParams(noise_w=0.0), serial=serial)
    loop = asyncio.get_running_loop()
    model.observe(loop.time() - 2.0, 420.0)
    first = await start_v2_meter_server(model, simulator_ca, host="127.0.0.1", push_check_s=None)
    token = first.add_user(USER)
    await advertiser.advertise(
        AdvertisedDevice("HWE-P1", "P1 Meter", serial, address="127.0.0.1", v2_port=first.port)
    )
    try:
        device = await find_device(serial, 10.0, api=ApiVersion.V2, interfaces=LOOPBACK)
        assert device is not None
        follower = MeterFollower(
            choose_api(device, have_token=True), timeout_s=10.0, interfaces=LOOPBACK
        )
        assert await follower.look_again() is None  # still where it was
        # The router hands the meter a new address: same device (same certificate name),
        # elsewhere. The old address stops answering.
        await first.stop()
        second = await start_v2_meter_server(
            model, simulator_ca, host="127.0.0.2", push_check_s=None, users={USER: token}
        )
        try:
            await advertiser.move(serial, "127.0.0.2", v2_port=second.port)
            moved = None
            for _ in range(5):  # the announcement of the change may take a moment to land
                moved = await follower.look_again()
                if moved is not None:
                    break
            assert isinstance(moved, MeterEndpoint)
            assert (moved.host, moved.port, moved.api) == ("127.0.0.2", second.port, ApiVersion.V2)
            async with HomeWizardV2Client(
                moved.host,
                port=moved.port,
                identifier=moved.device.tls_hostname,
                token=token,
                ca_file=ca_file,
            ) as client:
                assert (await client.read()).active_power_w == 420.0
        finally:
            await second.stop()
    finally:
        await first.stop()
    moves = [r for r in caplog.records if "moved from" in r.getMessage()]
    assert [m.getMessage() for m in moves] == [
        f"P1 meter {serial} moved from 127.0.0.1:{first.port} to 127.0.0.2:{second.port}"
    ]
