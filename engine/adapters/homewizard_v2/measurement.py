"""Parsing API v2 bodies: ``/api/measurement`` into a ``P1Reading``, ``/api`` into ``DeviceInfo``.

The same rules as v1's ``parse_data``: ``power_w`` (+ import, "sum of all phases",
docs/v2/measurement.mdx) must be a finite number or the body is rejected with
DeviceResponseError, never guessed from the phases; optional fields that are missing or not
finite numbers become None; the fingerprint is the canonical text of the whole body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.adapters.meter_json import checked_body, counter_keys, energy_counter_kwh, finite_number
from engine.core.meter import P1Reading
from engine.errors import DeviceResponseError

POWER_KEY = "power_w"
_MAJOR_VERSION = re.compile(r"^(\d+)(?:\.|$)")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """``GET /api`` (v1 and v2 alike): what the device says it is."""

    product_type: str
    serial: str
    product_name: str = ""
    firmware_version: str = ""
    api_version: str = ""

    @property
    def speaks_v2(self) -> bool:
        """v2 devices report a semantic version ("2.0.0"); v1 devices report "v1"."""
        major = _MAJOR_VERSION.match(self.api_version)
        return major is not None and int(major.group(1)) >= 2


_IMPORT_KEYS = counter_keys("energy_", "import")
_EXPORT_KEYS = counter_keys("energy_", "export")


def parse_measurement(body: object, *, device: str = "p1") -> P1Reading:
    """Validate a decoded ``/api/measurement`` body (or a pushed ``measurement``'s data)."""
    body, power_w, fingerprint = checked_body(body, POWER_KEY, device=device)
    return P1Reading(
        active_power_w=power_w,
        total_power_import_kwh=energy_counter_kwh(body, *_IMPORT_KEYS),
        total_power_export_kwh=energy_counter_kwh(body, *_EXPORT_KEYS),
        active_power_l1_w=finite_number(body.get("power_l1_w")),
        active_power_l2_w=finite_number(body.get("power_l2_w")),
        active_power_l3_w=finite_number(body.get("power_l3_w")),
        fingerprint=fingerprint,
    )


def _text(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def parse_device(body: object, *, device: str = "p1") -> DeviceInfo:
    """Validate a decoded ``GET /api`` body: product_type and serial are required strings."""
    if not isinstance(body, dict):
        msg = f"{device}: /api body is {type(body).__name__}, not a JSON object"
        raise DeviceResponseError(msg, device=device)
    product_type = _text(body, "product_type")
    serial = _text(body, "serial")
    if not product_type or not serial:
        msg = f"{device}: /api body lacks product_type or serial"
        raise DeviceResponseError(msg, device=device)
    return DeviceInfo(
        product_type=product_type,
        serial=serial,
        product_name=_text(body, "product_name"),
        firmware_version=_text(body, "firmware_version"),
        api_version=_text(body, "api_version"),
    )
