"""HomeWizard API v2 client: HTTPS with the device's certificate checked, bearer token, v2 JSON.

Errors are translated here, as in the v1 client: DeviceUnavailable (timeout, refused, the
certificate names another device), DeviceResponseError (HTTP status, bad JSON, a body without
``power_w``), MeterUnauthorizedError (401: pair again). A run of 401s is logged once, with what
to do; the next authorised answer re-arms that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import aiohttp

from engine.adapters.homewizard_v2.measurement import (
    DeviceInfo,
    parse_device,
    parse_measurement,
)
from engine.adapters.homewizard_v2.tls import client_ssl_context, common_name_of
from engine.adapters.meter_json import decode_body
from engine.core.meter import P1Reading
from engine.errors import DeviceResponseError, DeviceUnavailable

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 443
DEVICE_PATH = "/api"
MEASUREMENT_PATH = "/api/measurement"
USER_PATH = "/api/user"
WEBSOCKET_PATH = "/api/ws"
# docs/versioning.mdx: optional, but it pins the major version the answers must follow.
API_VERSION_HEADER = "X-Api-Version"
REQUESTED_API_VERSION = "2"
PAIR_AGAIN = "pair again: mmbc-engine pair-p1"
# A measurement is ~1.5 kB; anything far larger is not a meter talking.
MAX_BODY_BYTES = 256 * 1024
_IDENTIFIER = re.compile(r"^appliance/[a-z0-9]+/[0-9a-fA-F]+$")


class ApiVersion(StrEnum):
    """The local API generation a device speaks."""

    V1 = "v1"  # HTTP, port 80, no token
    V2 = "v2"  # HTTPS, port 443, bearer token


class MeterUnauthorizedError(DeviceResponseError):
    """HTTP 401: the meter does not accept our token (never paired, removed in the app, or
    replaced by pairing again under the same name). Retryable: pairing again fixes it live.
    """


class MeterIdentityError(DeviceUnavailable):
    """The TLS check failed: whoever answers at this address is not the expected device.

    Transient for us: the meter may have moved and another device taken its address, which is
    when discovery should look again.
    """


def https_base_url(host: str, port: int | None = None) -> str:
    """``192.168.1.5`` -> ``https://192.168.1.5``; a port in ``host`` wins over ``port``.

    Accepts ``host:port``, ``[v6]:port``, a bare IPv6 literal and an ``https://`` URL (its
    path is dropped: every v2 endpoint hangs off the root). Raises ValueError for junk.
    """
    text = host.strip()
    if not text:
        msg = "empty host"
        raise ValueError(msg)
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "https":
            msg = f"API v2 is HTTPS only, not {parts.scheme!r} ({host!r})"
            raise ValueError(msg)
    else:
        if text.count(":") >= 2 and not text.startswith("["):
            text = f"[{text}]"  # a bare IPv6 literal
        parts = urlsplit(f"//{text}")
    try:
        given_port = parts.port
    except ValueError as exc:
        msg = f"bad port in {host!r}"
        raise ValueError(msg) from exc
    hostname = parts.hostname
    if not hostname:
        msg = f"no host in {host!r}"
        raise ValueError(msg)
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    chosen = given_port if given_port is not None else port
    if chosen is not None and chosen != DEFAULT_PORT:
        netloc = f"{netloc}:{chosen}"
    return f"https://{netloc}"


class HomeWizardV2Client:
    """Reads one device over API v2; ``identifier`` is the name its certificate must carry."""

    def __init__(
        self,
        host: str,
        *,
        identifier: str,
        token: str | None = None,
        port: int | None = None,
        ca_file: str | Path | None = None,
        timeout_s: float = 2.0,
        session: aiohttp.ClientSession | None = None,
        name: str = "p1",
    ) -> None:
        self.base_url = https_base_url(host, port)
        self.identifier = identifier
        self.name = name
        self.ssl_context = client_ssl_context(ca_file)
        self._token = token
        self._timeout_s = timeout_s
        self._session = session
        self._own_session = session is None
        self._unauthorized_logged = False

    # -- token -----------------------------------------------------------------------------

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    @property
    def token(self) -> str | None:
        return self._token

    def set_token(self, token: str | None) -> None:
        """Use ``token`` from the next request on (after pairing again, say)."""
        self._token = token

    # -- endpoints -------------------------------------------------------------------------

    async def read(self) -> P1Reading:
        """``GET /api/measurement`` -> validated reading."""
        return parse_measurement(await self._get_json(MEASUREMENT_PATH), device=self.name)

    async def device(self) -> DeviceInfo:
        """``GET /api``: product_type, serial, firmware_version, api_version."""
        return parse_device(await self._get_json(DEVICE_PATH), device=self.name)

    async def request_token(self, user_name: str) -> str | None:
        """One ``POST /api/user``: the new token, or None while the button is not pressed.

        ``user_name`` is the full name (``local/mmbc``). Does not change this client's token.
        """
        status, raw = await self._request("POST", USER_PATH, json_body={"name": user_name})
        if status == 403:  # {"error":"user:creation-not-enabled"}: press the button first
            return None
        if status != 200:
            msg = f"{self.name}: token request refused, HTTP {status}: {_error_of(raw)}"
            raise DeviceResponseError(msg, device=self.name, retryable=status >= 500)
        body = _decode(raw, self.name, USER_PATH)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            msg = f"{self.name}: token answer has no token"
            raise DeviceResponseError(msg, device=self.name)
        return token

    # -- transport -------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Our own timeout governs; no second, longer one inside aiohttp.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    def headers(self, *, authorised: bool = True) -> dict[str, str]:
        headers = {API_VERSION_HEADER: REQUESTED_API_VERSION}
        if authorised and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _get_json(self, path: str) -> object:
        if not self._token:
            msg = f"{self.name}: no API v2 token; {PAIR_AGAIN}"
            raise MeterUnauthorizedError(msg, device=self.name)
        status, raw = await self._request("GET", path)
        if status == 401:
            raise self.rejected_token("HTTP 401")
        if status != 200:
            # 5xx is the device's trouble (retry); 4xx means a wrong request (don't).
            msg = f"{self.name}: HTTP {status} from {path}: {_error_of(raw)}"
            raise DeviceResponseError(msg, device=self.name, retryable=status >= 500)
        self.token_accepted()
        return _decode(raw, self.name, path)

    def rejected_token(self, how: str) -> MeterUnauthorizedError:
        """The error for a refused token; logs the advice once per run of refusals.

        Shared by polling and the push stream, so a refused token is one log line, not one
        per poll or per reconnect.
        """
        if not self._unauthorized_logged:
            self._unauthorized_logged = True
            _LOGGER.error(
                "%s: the meter rejected our token (%s: removed in the HomeWizard app, or"
                " replaced by pairing again); %s",
                self.name,
                how,
                PAIR_AGAIN,
            )
        msg = f"{self.name}: token rejected ({how}); {PAIR_AGAIN}"
        return MeterUnauthorizedError(msg, device=self.name)

    def token_accepted(self) -> None:
        """An authorised answer: a later refusal is news again."""
        self._unauthorized_logged = False

    async def _request(
        self, method: str, path: str, *, json_body: object = None
    ) -> tuple[int, bytes]:
        url = f"{self.base_url}{path}"
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self.session.request(
                    method,
                    url,
                    json=json_body,
                    headers=self.headers(authorised=path != USER_PATH),
                    ssl=self.ssl_context,
                    server_hostname=self.identifier,
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
        except TimeoutError as exc:
            msg = f"{self.name}: no answer from {url} within {self._timeout_s:g} s"
            raise DeviceUnavailable(msg, device=self.name) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            msg = (
                f"{self.name}: {url} is not {self.identifier} "
                f"(certificate check failed: {exc.certificate_error})"
            )
            raise MeterIdentityError(msg, device=self.name) from exc
        except (aiohttp.ClientError, OSError) as exc:
            msg = f"{self.name}: cannot reach {url}: {exc!r}"
            raise DeviceUnavailable(msg, device=self.name) from exc
        if len(raw) > MAX_BODY_BYTES:
            msg = f"{self.name}: body larger than {MAX_BODY_BYTES} bytes"
            raise DeviceResponseError(msg, device=self.name)
        return status, raw

    async def close(self) -> None:
        """Close the session if this client created it; an injected one belongs to the caller."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _decode(raw: bytes, device: str, path: str) -> object:
    try:
        return decode_body(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        msg = f"{device}: invalid JSON from {path}: {exc}"
        raise DeviceResponseError(msg, device=device) from exc


def _error_of(raw: bytes) -> str:
    """The ``error`` of a v2 error body (``{"error":"user:unauthorized"}``), else a snippet."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw[:60].decode("utf-8", "replace")
    error = body.get("error") if isinstance(body, dict) else None
    return str(error)[:60] if error is not None else str(body)[:60]


async def detect_api_version(
    host: str,
    *,
    https_port: int = DEFAULT_PORT,
    http_port: int = 80,
    timeout_s: float = 5.0,
    session: aiohttp.ClientSession | None = None,
) -> ApiVersion | None:
    """Which API answers at ``host`` (no port in it): v2, else v1, else None.

    v2 as python-homewizard-energy's ``has_v2_api`` tells it: an unauthenticated
    ``GET https://<host>/api`` answers 401. The certificate is not checked for this probe (only
    the status is used; no token is sent). v1: ``GET http://<host>/api`` answers 200 with a JSON
    object naming its ``product_type``. None: unreachable, or not a HomeWizard meter.
    """
    hostname = urlsplit(https_base_url(host)).hostname or ""
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    try:
        try:
            async with asyncio.timeout(timeout_s):
                async with http.get(f"https://{netloc}:{https_port}/api", ssl=False) as resp:
                    if resp.status == 401:
                        return ApiVersion.V2
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass  # no HTTPS here: a v1-only device, or nothing at all
        try:
            async with asyncio.timeout(timeout_s):
                async with http.get(f"http://{netloc}:{http_port}/api") as resp:
                    if resp.status != 200:
                        return None
                    body = json.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, RecursionError):
            return None
        return ApiVersion.V1 if isinstance(body, dict) and "product_type" in body else None
    finally:
        if own:
            await http.close()


async def fetch_identifier(
    host: str, *, port: int | None = None, ca_file: str | Path | None = None, timeout_s: float = 5.0
) -> str:
    """The device's certificate name (``appliance/p1dongle/<serial>``), checked against the CA.

    For pairing a meter known only by its address: the CA check still proves a HomeWizard
    device; the name it returns then pins that device for every later connection.
    """
    parts = urlsplit(https_base_url(host, port))
    context = client_ssl_context(ca_file)
    context.check_hostname = False  # the name is what we are here to learn
    address = parts.hostname or ""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(
                address, parts.port or DEFAULT_PORT, ssl=context
            )
    except TimeoutError as exc:
        msg = f"no TLS answer from {host} within {timeout_s:g} s"
        raise DeviceUnavailable(msg, device="p1") from exc
    except ssl.SSLCertVerificationError as exc:
        msg = f"{host} is not a HomeWizard device (certificate check failed: {exc.verify_message})"
        raise MeterIdentityError(msg, device="p1") from exc
    except OSError as exc:
        msg = f"cannot reach {host}: {exc!r}"
        raise DeviceUnavailable(msg, device="p1") from exc
    try:
        name = common_name_of(writer.get_extra_info("peercert"))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):  # best effort; the name is read
            await writer.wait_closed()
    if name is None or not _IDENTIFIER.match(name):
        msg = f"{host}: certificate names {name!r}, not an appliance/<product>/<serial>"
        raise DeviceResponseError(msg, device="p1", retryable=False)
    return name
