"""Finding HomeWizard devices by mDNS, choosing the meter and API to use, following it around.

HomeWizard devices advertise ``_hwenergy._tcp`` for API v1 (HTTP; TXT ``api_enabled``,
``path``, ``serial``, ``product_name``, ``product_type``) and, from firmware 6 on,
``_homewizard._tcp`` for API v2 (HTTPS; TXT ``api_version``, ``id``, ``serial``,
``product_name``, ``product_type``) (docs/discovery.mdx). ``browse`` collects both with
python-zeroconf's asyncio API and merges them per serial into ``FoundDevice``; the choice of
meter (``select_p1``/``select_kwh``) and of API (``choose_api``) are pure functions; the
``MeterFollower`` looks again when a meter stops answering and follows it to its new address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from engine.adapters.homewizard_v2.client import DEFAULT_PORT as V2_DEFAULT_PORT
from engine.adapters.homewizard_v2.client import ApiVersion
from engine.adapters.homewizard_v2.tls import verification_hostname
from engine.errors import EngineError

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncZeroconf

_LOGGER = logging.getLogger(__name__)

SERVICE_V1 = "_hwenergy._tcp.local."
SERVICE_V2 = "_homewizard._tcp.local."
SERVICES = (SERVICE_V1, SERVICE_V2)
P1_PRODUCT = "HWE-P1"
KWH_PRODUCTS = frozenset({"HWE-KWH1", "HWE-KWH3", "SDM230-wifi", "SDM630-wifi"})
V1_DEFAULT_PORT = 80
DEFAULT_BROWSE_S = 3.0
_RESOLVE_MS = 2000
_IDENTIFIER = re.compile(r"^appliance/[a-z0-9]+/([0-9a-zA-Z]+)$")


class ApiChoice(StrEnum):
    """Which API to use: the best one available (``auto``) or one forced by the user."""

    AUTO = "auto"
    V1 = "v1"
    V2 = "v2"


class DiscoveryError(EngineError):
    """No usable device, or no single one; ``seen`` lists what was found (for the message)."""

    def __init__(self, message: str, *, seen: Sequence[FoundDevice] = ()) -> None:
        super().__init__(message)
        self.seen = tuple(seen)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One resolved mDNS service instance, TXT keys lower-cased and values decoded."""

    service_type: str
    instance: str
    addresses: tuple[str, ...]
    port: int
    txt: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class FoundDevice:
    """A HomeWizard device as mDNS describes it, both services merged by serial."""

    product_type: str
    serial: str
    product_name: str = ""
    addresses: tuple[str, ...] = ()
    v1_port: int | None = None  # _hwenergy._tcp advertised
    v1_enabled: bool | None = None  # its TXT api_enabled (the app's "Local API" switch)
    v2_port: int | None = None  # _homewizard._tcp advertised
    v2_api_version: str | None = None
    identifier: str | None = None  # TXT id of the v2 service: the certificate's name

    @property
    def address(self) -> str:
        return self.addresses[0] if self.addresses else ""

    @property
    def api_versions(self) -> tuple[ApiVersion, ...]:
        """The APIs advertised (v1 even when switched off in the app; see ``v1_enabled``)."""
        versions = []
        if self.v1_port is not None:
            versions.append(ApiVersion.V1)
        if self.v2_port is not None:
            versions.append(ApiVersion.V2)
        return tuple(versions)

    @property
    def tls_hostname(self) -> str:
        """The name to verify the v2 certificate against: TXT ``id``, else derived."""
        if self.identifier is not None:
            return self.identifier
        return verification_hostname(self.product_type, self.serial)


def describe(device: FoundDevice) -> str:
    """One line for logs and listings: type, serial, address, APIs."""
    apis = []
    if device.v1_port is not None:
        state = "" if device.v1_enabled is not False else " disabled"
        apis.append(f"v1{state} :{device.v1_port}")
    if device.v2_port is not None:
        apis.append(f"v2 {device.v2_api_version or '?'} :{device.v2_port}")
    name = f" ({device.product_name})" if device.product_name else ""
    return (
        f"{device.product_type}{name} {device.serial} at {device.address or '?'}"
        f" [{', '.join(apis) or 'no API'}]"
    )


# -- pure: records -> devices ----------------------------------------------------------------


def _identifier_of(txt: Mapping[str, str], serial: str) -> str | None:
    """TXT ``id`` when it is a certificate name for this very serial."""
    match = _IDENTIFIER.match(txt.get("id", ""))
    if match is None or match.group(1).lower() != serial.lower():
        return None
    return txt["id"]


def merge_records(records: Iterable[ServiceRecord]) -> list[FoundDevice]:
    """Merge v1 and v2 services per serial; records without product_type or serial are
    skipped (a device we cannot name we cannot choose). Sorted by type, then serial.
    """
    devices: dict[str, FoundDevice] = {}
    for record in records:
        serial = record.txt.get("serial", "").strip().lower()
        product_type = record.txt.get("product_type", "").strip()
        if not serial or not product_type:
            continue
        device = devices.get(serial) or FoundDevice(product_type=product_type, serial=serial)
        addresses = tuple(dict.fromkeys((*device.addresses, *record.addresses)))
        device = replace(
            device,
            product_name=device.product_name or record.txt.get("product_name", ""),
            addresses=addresses,
        )
        if record.service_type == SERVICE_V1:
            enabled = record.txt.get("api_enabled")
            device = replace(
                device,
                v1_port=record.port,
                v1_enabled=None if enabled is None else enabled.strip() == "1",
            )
        elif record.service_type == SERVICE_V2:
            device = replace(
                device,
                v2_port=record.port,
                v2_api_version=record.txt.get("api_version") or None,
                identifier=_identifier_of(record.txt, serial),
            )
        devices[serial] = device
    return sorted(devices.values(), key=lambda d: (d.product_type, d.serial))


# -- pure: which device, which API -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterEndpoint:
    """Where and how to read a chosen device."""

    device: FoundDevice
    api: ApiVersion
    host: str
    port: int

    @property
    def url(self) -> str:
        """v1: the ``/api/v1/data`` URL; v2: the HTTPS base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.api is ApiVersion.V1:
            return f"http://{host}:{self.port}/api/v1/data"
        return f"https://{host}:{self.port}"


def _seen(devices: Sequence[FoundDevice]) -> str:
    return "; ".join(describe(d) for d in devices) if devices else "no HomeWizard device answered"


def _select(
    devices: Sequence[FoundDevice],
    *,
    products: frozenset[str],
    kind: str,
    serial: str | None,
    serial_setting: str,
) -> FoundDevice:
    candidates = [d for d in devices if d.product_type in products]
    if serial:
        wanted = serial.strip().lower()
        same = [d for d in devices if d.serial == wanted]
        matches = [d for d in same if d.product_type in products]
        if matches:
            return matches[0]
        if same:
            msg = f"{serial_setting}={serial} is a {same[0].product_type}, not a {kind}"
            raise DiscoveryError(msg, seen=devices)
        msg = f"no {kind} with serial {serial} found ({serial_setting}); seen: {_seen(devices)}"
        raise DiscoveryError(msg, seen=devices)
    if not candidates:
        msg = f"no {kind} found on the network; seen: {_seen(devices)}"
        raise DiscoveryError(msg, seen=devices)
    if len(candidates) > 1:
        msg = (
            f"{len(candidates)} {kind}s found: {_seen(candidates)}; set {serial_setting} to"
            " the serial of the one to use"
        )
        raise DiscoveryError(msg, seen=devices)
    return candidates[0]


def select_p1(
    devices: Sequence[FoundDevice], *, serial: str | None = None, serial_setting: str = "P1_SERIAL"
) -> FoundDevice:
    """The P1 meter to use: the one with ``serial``, else the only HWE-P1 found.

    DiscoveryError (naming every device seen) when there is none, several without a serial, or
    the serial names something else.
    """
    return _select(
        devices,
        products=frozenset({P1_PRODUCT}),
        kind="P1 meter",
        serial=serial,
        serial_setting=serial_setting,
    )


def select_kwh(
    devices: Sequence[FoundDevice], *, serial: str, serial_setting: str = "PV_SERIAL"
) -> FoundDevice:
    """The kWh meter (HWE-KWH1/3, SDM230/630-wifi) with ``serial``.

    Always by serial: a house may have several (heat pump, charger), and reading the wrong
    one as PV would be wrong without looking wrong.
    """
    if not serial or not serial.strip():
        msg = f"{serial_setting} is needed to pick a kWh meter; seen: {_seen(devices)}"
        raise DiscoveryError(msg, seen=devices)
    return _select(
        devices,
        products=KWH_PRODUCTS,
        kind="kWh meter",
        serial=serial,
        serial_setting=serial_setting,
    )


def choose_api(
    device: FoundDevice, *, api: ApiChoice = ApiChoice.AUTO, have_token: bool = False
) -> MeterEndpoint:
    """How to read ``device``: v2 when it speaks v2 and a token exists, else v1; or as forced.

    DiscoveryError says what to do when the wanted API is not available: switch v1 on in the
    app, pair for v2, or update the firmware.
    """
    who = f"{device.product_type} {device.serial}"
    v1_usable = device.v1_port is not None and device.v1_enabled is not False
    v2_offered = device.v2_port is not None
    pair_first = "pair first (mmbc-engine pair-p1)"
    if api is ApiChoice.V2 or (api is ApiChoice.AUTO and v2_offered and have_token):
        if not v2_offered:
            msg = f"{who} does not advertise API v2 (_homewizard._tcp; firmware 6.00 or later)"
            raise DiscoveryError(msg, seen=(device,))
        if not have_token:
            msg = f"{who}: API v2 needs a token; {pair_first}"
            raise DiscoveryError(msg, seen=(device,))
        port = device.v2_port or V2_DEFAULT_PORT
        return MeterEndpoint(device, ApiVersion.V2, device.address, port)
    if v1_usable:
        assert device.v1_port is not None
        return MeterEndpoint(device, ApiVersion.V1, device.address, device.v1_port)
    if api is ApiChoice.V1:
        why = "switched off in the HomeWizard app" if device.v1_port is not None else "absent"
        msg = f"{who}: API v1 is {why}"
        raise DiscoveryError(msg, seen=(device,))
    if v2_offered:
        msg = f"{who} offers only API v2 here (v1 off or absent); {pair_first}"
        raise DiscoveryError(msg, seen=(device,))
    msg = f"{who}: its local API is switched off in the HomeWizard app"
    raise DiscoveryError(msg, seen=(device,))


# -- I/O: browsing -----------------------------------------------------------------------------


def _decode_txt(properties: Mapping[bytes, bytes | None]) -> dict[str, str]:
    txt = {}
    for key, value in properties.items():
        name = key.decode("utf-8", "replace").strip().lower()
        txt[name] = "" if value is None else value.decode("utf-8", "replace")
    return txt


async def browse(
    timeout_s: float = DEFAULT_BROWSE_S,
    *,
    interfaces: Sequence[str] | None = None,
    zeroconf: AsyncZeroconf | None = None,
    enough: Callable[[list[FoundDevice]], bool] | None = None,
) -> list[FoundDevice]:
    """Browse both HomeWizard services for ``timeout_s`` (loop clock), or until ``enough``.

    ``interfaces``: addresses to use (None: all); the tests pass ``["127.0.0.1"]``.
    ``zeroconf``: a running instance to share (left open); otherwise one is made and closed.
    """
    # zeroconf (some 15 MB of compiled modules) is imported only when a meter is looked for.
    from zeroconf import IPVersion, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    own = zeroconf is None
    if zeroconf is None:
        chosen = list(interfaces) if interfaces is not None else None
        zeroconf = (
            AsyncZeroconf(ip_version=IPVersion.V4Only)
            if chosen is None
            else AsyncZeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)
        )
    records: dict[tuple[str, str], ServiceRecord] = {}
    pending: set[asyncio.Task[None]] = set()
    changed = asyncio.Event()

    async def resolve(service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf.zeroconf, _RESOLVE_MS):
            return
        addresses = tuple(info.parsed_addresses(IPVersion.V4Only)) or tuple(info.parsed_addresses())
        if not addresses or info.port is None:
            return
        records[(service_type, name)] = ServiceRecord(
            service_type=service_type,
            instance=name.removesuffix(f".{service_type}"),
            addresses=addresses,
            port=info.port,
            txt=_decode_txt(info.properties),
        )
        changed.set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            records.pop((service_type, name), None)
            return
        task = asyncio.ensure_future(resolve(service_type, name))
        pending.add(task)
        task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(zeroconf.zeroconf, list(SERVICES), handlers=[on_change])
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + timeout_s
    try:
        while (remaining_s := deadline_s - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining_s):
                    await changed.wait()
            changed.clear()
            if enough is not None and enough(merge_records(records.values())):
                break
    finally:
        await browser.async_cancel()
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if own:
            await zeroconf.async_close()
    return merge_records(records.values())


async def find_device(
    serial: str,
    timeout_s: float = DEFAULT_BROWSE_S,
    *,
    api: ApiVersion | None = None,
    interfaces: Sequence[str] | None = None,
    zeroconf: AsyncZeroconf | None = None,
) -> FoundDevice | None:
    """The device with ``serial`` (with ``api``'s service, if given), as soon as it is seen."""
    wanted = serial.strip().lower()

    def found(devices: list[FoundDevice]) -> FoundDevice | None:
        for device in devices:
            if device.serial == wanted and (api is None or api in device.api_versions):
                return device
        return None

    devices = await browse(
        timeout_s,
        interfaces=interfaces,
        zeroconf=zeroconf,
        enough=lambda ds: found(ds) is not None,
    )
    return found(devices)


BrowseForSerial = Callable[[str, ApiVersion], Awaitable[FoundDevice | None]]


class MeterFollower:
    """Keeps hold of one meter by its serial and finds it again when its address changed.

    Call ``look_again`` when the meter has stopped answering (the fail-safe holds the
    batteries meanwhile, as for any stale meter): it returns the new endpoint when the meter
    moved, None otherwise. One log line when it moved, one when it cannot be found (until it
    is found again).
    """

    def __init__(
        self,
        endpoint: MeterEndpoint,
        *,
        timeout_s: float = DEFAULT_BROWSE_S,
        interfaces: Sequence[str] | None = None,
        zeroconf: AsyncZeroconf | None = None,
        look: BrowseForSerial | None = None,
        label: str = "P1 meter",
    ) -> None:
        self.current = endpoint
        self.label = label
        self._missing_logged = False

        async def default_look(serial: str, api: ApiVersion) -> FoundDevice | None:
            return await find_device(
                serial, timeout_s, api=api, interfaces=interfaces, zeroconf=zeroconf
            )

        self._look = look or default_look

    async def look_again(self) -> MeterEndpoint | None:
        from zeroconf import BadTypeInNameException

        current = self.current
        serial = current.device.serial
        try:
            device = await self._look(serial, current.api)
        except (OSError, BadTypeInNameException) as err:  # no usable interface right now
            device = None
            _LOGGER.debug("looking for %s %s failed: %r", self.label, serial, err)
        if device is None:
            if not self._missing_logged:
                self._missing_logged = True
                _LOGGER.warning(
                    "%s %s is not on the network (mDNS); still looking", self.label, serial
                )
            return None
        self._missing_logged = False
        port = device.v2_port if current.api is ApiVersion.V2 else device.v1_port
        moved = replace(current, device=device, host=device.address, port=port or current.port)
        if (moved.host, moved.port) == (current.host, current.port):
            self.current = moved
            return None
        _LOGGER.info(
            "%s %s moved from %s:%d to %s:%d",
            self.label,
            serial,
            current.host,
            current.port,
            moved.host,
            moved.port,
        )
        self.current = moved
        return moved
