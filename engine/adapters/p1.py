"""The P1 meter as the engine reads it: where, over which API, and after it when it moves.

``locate_p1`` turns the meter settings into a ``P1Target``: ``P1_API_URL`` (API v1), or
``P1_HOST`` (API v1 or v2, ``auto`` probing as python-homewizard-energy does), or else the P1
meter found on the network by mDNS (``engine.adapters.discovery``: the one with
``P1_SERIAL``, or the one the token was paired with, or the only one; v2 when it offers it and
a token exists). ``P1Meter`` is what the controller reads: the v1 or v2 client, the v2 push
stream (``P1_PUSH``), and for a meter found by mDNS the follow: once it has not answered for
``FOLLOW_AFTER_S`` it is looked for again, and when it turns up at another address the client
and the stream move there (one log line), while the controller's stale-meter safety holds the
batteries at 0 W as for any meter that stops answering. A token the meter refuses is one log
line (the client's) saying to pair again; the token file is then read again now and then, so
pairing again while the engine runs is picked up.

A problem the user must solve (no meter found, several, API v2 without a token, a token file
that cannot be read) is a ``P1SetupError`` naming the setting; the app exits 2 with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.adapters.discovery import (
    DEFAULT_BROWSE_S,
    ApiChoice,
    DiscoveryError,
    FoundDevice,
    MeterEndpoint,
    MeterFollower,
    browse,
    choose_api,
    describe,
    select_kwh,
    select_p1,
)
from engine.adapters.homewizard import HomeWizardClient
from engine.adapters.homewizard_v2 import (
    ApiVersion,
    HomeWizardV2Client,
    MeasurementStream,
    MeterUnauthorizedError,
    StoredToken,
    TokenFileError,
    detect_api_version,
    fetch_identifier,
    https_base_url,
    load_token,
    verification_hostname,
)
from engine.core.meter import P1Reading
from engine.errors import DeviceError, DeviceUnavailable, EngineError
from engine.ports import Clock
from engine.settings import MeterApi, MeterSettings, PvMeterSettings

_LOGGER = logging.getLogger(__name__)

TOKEN_FILE_NAME = "p1-token.json"  # noqa: S105 - a file name, not a secret
DATA_DIR = Path("/data")
P1_PRODUCT = "HWE-P1"
FOLLOW_AFTER_S = 5.0  # the found meter has not answered this long: look for it again
LOOK_EVERY_S = 15.0  # and again this often while it stays lost
TOKEN_RECHECK_S = 10.0  # a refused token: read the token file again at most this often
PROBE_TIMEOUT_S = 3.0


class P1SetupError(EngineError):
    """The meter cannot be used as configured; ``key`` names the setting to change."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# -- the token ---------------------------------------------------------------------------------


def default_token_file(config_file: Path | None) -> Path:
    """``p1-token.json`` beside the TOML file, else in ``/data`` if writable, else here."""
    if config_file is not None:
        return config_file.parent / TOKEN_FILE_NAME
    if DATA_DIR.is_dir() and os.access(DATA_DIR, os.W_OK):
        return DATA_DIR / TOKEN_FILE_NAME
    return Path(TOKEN_FILE_NAME)


def token_file_of(settings: MeterSettings, config_file: Path | None) -> Path:
    return settings.token_file or default_token_file(config_file)


def stored_token(settings: MeterSettings, token_file: Path) -> StoredToken | None:
    """``P1_TOKEN``, else the token file's token (None when there is none)."""
    token = settings.token_text()
    if token:
        return StoredToken(token=token, serial=settings.serial or "")
    try:
        return load_token(token_file)
    except TokenFileError as err:
        raise P1SetupError("P1_TOKEN_FILE", str(err)) from None


# -- where and how -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class P1Target:
    """Where and how to read the meter: ``address`` is v1's data URL or v2's host[:port]."""

    api: ApiVersion
    address: str
    identifier: str | None = None  # v2: the name its certificate carries
    endpoint: MeterEndpoint | None = None  # found by mDNS: followed when it moves

    @classmethod
    def of(cls, endpoint: MeterEndpoint) -> P1Target:
        if endpoint.api is ApiVersion.V1:
            return cls(ApiVersion.V1, endpoint.url, endpoint=endpoint)
        return cls(
            ApiVersion.V2, endpoint.url, identifier=endpoint.device.tls_hostname, endpoint=endpoint
        )

    def describe(self) -> str:
        if self.endpoint is not None:
            device = self.endpoint.device
            return (
                f"{device.product_type} {device.serial} at {self.endpoint.host}:"
                f"{self.endpoint.port} over API {self.api} (found by mDNS)"
            )
        name = f" ({self.identifier})" if self.identifier else ""
        return f"{self.address}{name} over API {self.api}"


def _choice(api: MeterApi) -> ApiChoice:
    return ApiChoice(api.value)


async def _api_at(host: str, api: MeterApi, *, have_token: bool) -> ApiVersion:
    """Which API to use at ``P1_HOST``: as forced, as its scheme says, else probed."""
    if api is MeterApi.V1:
        return ApiVersion.V1
    if api is MeterApi.V2:
        return ApiVersion.V2
    scheme = urlsplit(host).scheme.lower() if "://" in host else ""
    if scheme == "http" or not have_token:
        return ApiVersion.V1
    if scheme == "https":
        return ApiVersion.V2
    parts = urlsplit(https_base_url(host))
    hostname = parts.hostname or host
    found = await detect_api_version(
        hostname,
        https_port=parts.port or 443,
        http_port=parts.port or 80,
        timeout_s=PROBE_TIMEOUT_S,
    )
    # Unreachable for now: with a token, the user paired for v2.
    return ApiVersion.V1 if found is ApiVersion.V1 else ApiVersion.V2


def _wants_v2(api: MeterApi, *, have_token: bool) -> bool:
    return api is MeterApi.V2 or (api is MeterApi.AUTO and have_token)


async def find_devices(
    settings: MeterSettings,
    *,
    serial: str | None = None,
    want_v2: bool = False,
    timeout_s: float = DEFAULT_BROWSE_S,
) -> list[FoundDevice]:
    """Browse on ``P1_MDNS_INTERFACES``; ends early once ``serial`` is seen with the API
    wanted (without a serial every P1 meter must have had its chance to answer)."""

    def enough(devices: list[FoundDevice]) -> bool:
        if not serial:
            return False
        for device in devices:
            if device.serial == serial:
                return device.v2_port is not None if want_v2 else device.v1_port is not None
        return False

    interfaces: Sequence[str] | None = settings.mdns_interfaces
    try:
        return await browse(timeout_s, interfaces=interfaces, enough=enough)
    except OSError as err:  # no usable interface (a container without the host's network)
        msg = f"cannot look for the meter on the network (mDNS): {err}"
        raise P1SetupError("P1_MDNS_INTERFACES" if interfaces else "P1_API_URL", msg) from None


async def locate_p1(
    settings: MeterSettings,
    token: StoredToken | None,
    *,
    devices: Sequence[FoundDevice] | None = None,
    browse_s: float = DEFAULT_BROWSE_S,
) -> P1Target:
    """Where and how to read the meter (see the module docstring); ``devices``: a browse
    already made. Raises ``P1SetupError``."""
    have_token = token is not None
    serial = settings.serial or (token.serial if token is not None else "") or None
    if settings.host is None and settings.url is not None:
        return P1Target(ApiVersion.V1, settings.url)
    if settings.host is not None:
        version = await _api_at(settings.host, settings.api, have_token=have_token)
        if version is ApiVersion.V1:
            assert settings.url is not None  # derived from the host (engine.config)
            return P1Target(ApiVersion.V1, settings.url)
        if not have_token:
            msg = "API v2 needs a token: run `mmbc-engine pair-p1` (or set P1_TOKEN)"
            raise P1SetupError("P1_API", msg)
        return P1Target(
            ApiVersion.V2, settings.host, identifier=await identifier_at(settings, serial)
        )
    if devices is None:
        devices = await find_devices(
            settings,
            serial=serial,
            want_v2=_wants_v2(settings.api, have_token=have_token),
            timeout_s=browse_s,
        )
    from_token = not settings.serial and serial is not None
    try:
        device = select_p1(
            devices,
            serial=serial,
            serial_setting="the serial in the token file" if from_token else "P1_SERIAL",
        )
        endpoint = choose_api(device, api=_choice(settings.api), have_token=have_token)
    except DiscoveryError as err:
        key = "P1_API" if settings.api is not MeterApi.AUTO else "P1_SERIAL"
        raise P1SetupError(key, str(err)) from None
    return P1Target.of(endpoint)


async def identifier_at(settings: MeterSettings, serial: str | None) -> str:
    """The certificate name of the v2 meter at ``P1_HOST``: from its serial, else asked
    (its certificate still has to be signed by the CA)."""
    if serial:
        return verification_hostname(P1_PRODUCT, serial)
    assert settings.host is not None
    try:
        return await fetch_identifier(settings.host, ca_file=settings.ca_file)
    except DeviceError as err:
        msg = f"cannot learn which meter answers at {settings.host} ({err}); set P1_SERIAL"
        raise P1SetupError("P1_SERIAL", msg) from None


async def locate_pv(
    settings: PvMeterSettings, meter: MeterSettings, devices: Sequence[FoundDevice] | None
) -> str | None:
    """The PV meter's data URL: ``PV_API_URL``, else the kWh meter with ``PV_SERIAL`` found by
    mDNS (over API v1). None, with a warning, when it cannot be found: it only reports."""
    if settings.url is not None:
        return settings.url
    assert settings.serial is not None
    if devices is None:
        try:
            devices = await find_devices(meter, serial=settings.serial)
        except P1SetupError as err:
            _LOGGER.warning("PV meter: %s; running without it", err.problem)
            return None
    try:
        device = select_kwh(devices, serial=settings.serial)
        endpoint = choose_api(device, api=ApiChoice.V1)
    except DiscoveryError as err:
        _LOGGER.warning("PV meter: %s; running without it", err)
        return None
    _LOGGER.info("PV meter: %s", describe(device))
    return endpoint.url


# -- the meter the controller reads ------------------------------------------------------------

MeterClient = HomeWizardClient | HomeWizardV2Client


class P1Meter:
    """The P1 meter the controller reads (``MeterSource``), its push stream, the follow."""

    def __init__(
        self,
        target: P1Target,
        settings: MeterSettings,
        *,
        clock: Clock,
        token: StoredToken | None = None,
        token_file: Path | None = None,
        follower: MeterFollower | None = None,
    ) -> None:
        self.target = target
        self.settings = settings
        self.clock = clock
        self._token = token.token if token is not None else None
        # Read again after a refusal only if the token came from the file.
        self._token_file = token_file if settings.token is None else None
        self.follower = follower
        self.client: MeterClient = self._client(target)
        self.stream = (
            MeasurementStream(self.client)
            if isinstance(self.client, HomeWizardV2Client) and settings.push
            else None
        )
        self.moves = 0
        self._unavailable_since_s: float | None = None
        self._looked_s: float | None = None
        self._look: asyncio.Task[None] | None = None
        self._token_checked_s: float | None = None

    def describe(self) -> str:
        push = ""
        if self.target.api is ApiVersion.V2:
            push = ", push on" if self.stream is not None else ", push off"
        return f"{self.target.describe()}{push}"

    def _client(self, target: P1Target) -> MeterClient:
        s = self.settings
        if target.api is ApiVersion.V1:
            return HomeWizardClient(target.address, timeout_s=s.timeout_s)
        assert target.identifier is not None
        return HomeWizardV2Client(
            target.address,
            identifier=target.identifier,
            token=self._token,
            ca_file=s.ca_file,
            timeout_s=s.timeout_s,
        )

    async def read(self) -> P1Reading:
        try:
            reading = await self.client.read()
        except MeterUnauthorizedError:
            self._read_token_again()
            raise
        except DeviceUnavailable:
            self._not_answering()
            raise
        self._unavailable_since_s = None
        return reading

    # -- following -----------------------------------------------------------------------

    def _not_answering(self) -> None:
        if self.follower is None:
            return
        now_s = self.clock.now()
        if self._unavailable_since_s is None:
            self._unavailable_since_s = now_s
        due = self._looked_s is None or now_s - self._looked_s >= LOOK_EVERY_S
        if (
            now_s - self._unavailable_since_s >= FOLLOW_AFTER_S
            and due
            and (self._look is None or self._look.done())
        ):
            self._looked_s = now_s
            self._look = asyncio.create_task(self._look_again())

    async def _look_again(self) -> None:
        """Browse for the meter; when it is elsewhere, move the client and the stream."""
        assert self.follower is not None
        try:
            endpoint = await self.follower.look_again()  # logs a move, or that it is missing
        except Exception:  # a bug in browsing must not stop the reads: try again later
            _LOGGER.exception("looking for the P1 meter again failed")
            return
        if endpoint is None:
            return
        old, self.target = self.client, P1Target.of(endpoint)
        self.client = self._client(self.target)
        self.moves += 1
        if self.stream is not None and isinstance(self.client, HomeWizardV2Client):
            self.stream.use(self.client)
        with contextlib.suppress(Exception):  # the old address is gone anyway
            await old.close()

    # -- the token -----------------------------------------------------------------------

    def _read_token_again(self) -> None:
        """The meter refused the token: perhaps it was paired again meanwhile."""
        client = self.client
        if self._token_file is None or not isinstance(client, HomeWizardV2Client):
            return
        now_s = self.clock.now()
        if self._token_checked_s is not None and now_s - self._token_checked_s < TOKEN_RECHECK_S:
            return
        self._token_checked_s = now_s
        try:
            stored = load_token(self._token_file)
        except TokenFileError as err:
            _LOGGER.warning("cannot read the token file again: %s", err)
            return
        if stored is None or stored.token == client.token:
            return
        self._token = stored.token
        client.set_token(stored.token)
        _LOGGER.info("%s: using the new token from %s", client.name, self._token_file)
        if self.stream is not None:
            self.stream.use(client)  # reconnect now, with the new token

    async def close(self) -> None:
        if self._look is not None:
            self._look.cancel()
            await asyncio.gather(self._look, return_exceptions=True)
        await self.client.close()


async def open_p1(
    settings: MeterSettings,
    *,
    clock: Clock,
    config_file: Path | None = None,
    browse_s: float = DEFAULT_BROWSE_S,
    devices: Sequence[FoundDevice] | None = None,
) -> P1Meter:
    """The P1 meter to read, as the settings say (see the module docstring). Raises
    ``P1SetupError``. ``describe`` says which meter it is, for the start-up line."""
    token_file = token_file_of(settings, config_file)
    token = None if settings.api is MeterApi.V1 else stored_token(settings, token_file)
    target = await locate_p1(settings, token, devices=devices, browse_s=browse_s)
    follower = None
    if target.endpoint is not None:
        follower = MeterFollower(
            target.endpoint, interfaces=settings.mdns_interfaces, label="P1 meter"
        )
    return P1Meter(
        target, settings, clock=clock, token=token, token_file=token_file, follower=follower
    )
