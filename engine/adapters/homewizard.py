"""HomeWizard P1 / kWh meter client for the local API v1 (``GET /api/v1/data``)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from engine.adapters.homewizard_data import parse_data
from engine.adapters.meter_json import decode_body
from engine.core.meter import P1Reading
from engine.errors import DeviceResponseError, DeviceUnavailable

DEVICE_PATH = "/api"
# A P1 body is ~1 kB; anything far larger is not a meter talking.
_MAX_BODY_BYTES = 256 * 1024


class MeterApiDisabledError(DeviceResponseError):
    """HTTP 403: the local API is switched off in the HomeWizard app (error id 202).

    Retryable: the user can switch it back on without restarting us.
    """


class HomeWizardClient:
    """Reads one meter. Errors are translated here: DeviceUnavailable / DeviceResponseError."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        session: aiohttp.ClientSession | None = None,
        name: str = "p1",
    ) -> None:
        self.url = url  # a ready data URL (engine.settings builds it from what the user wrote)
        self.name = name
        self._timeout_s = timeout_s
        self._session = session
        self._own_session = session is None

    async def read(self) -> P1Reading:
        """``GET /api/v1/data`` -> validated reading."""
        return parse_data(await self._get_json(self.url), device=self.name)

    async def device(self) -> dict[str, object]:
        """``GET /api``: product_type, serial, firmware_version, api_version."""
        parts = urlsplit(self.url)
        body = await self._get_json(urlunsplit((parts.scheme, parts.netloc, DEVICE_PATH, "", "")))
        if not isinstance(body, dict):
            msg = f"{self.name}: /api body is not a JSON object"
            raise DeviceResponseError(msg, device=self.name)
        return body

    async def _get_json(self, url: str) -> object:
        if self._session is None:
            # Our own timeout below governs; no second, longer one inside aiohttp.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.get(url) as resp:
                    status = resp.status
                    raw = await resp.read()
        except TimeoutError as exc:
            msg = f"{self.name}: no answer from {url} within {self._timeout_s:g} s"
            raise DeviceUnavailable(msg, device=self.name) from exc
        except (aiohttp.ClientError, OSError) as exc:
            msg = f"{self.name}: cannot reach {url}: {exc!r}"
            raise DeviceUnavailable(msg, device=self.name) from exc
        if status == 403:
            msg = f"{self.name}: local API disabled; enable it in the HomeWizard Energy app"
            raise MeterApiDisabledError(msg, device=self.name)
        if status != 200:
            # 5xx is the device's trouble (retry); 4xx means a wrong URL (don't).
            msg = f"{self.name}: HTTP {status} from {url}"
            raise DeviceResponseError(msg, device=self.name, retryable=status >= 500)
        if len(raw) > _MAX_BODY_BYTES:
            msg = f"{self.name}: body larger than {_MAX_BODY_BYTES} bytes"
            raise DeviceResponseError(msg, device=self.name)
        try:
            return decode_body(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
            msg = f"{self.name}: invalid JSON from {url}: {exc}"
            raise DeviceResponseError(msg, device=self.name) from exc

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
