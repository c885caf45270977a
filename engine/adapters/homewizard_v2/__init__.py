"""HomeWizard local API v2: HTTPS + token client, pairing, websocket push (docs/v2/*.mdx)."""

from __future__ import annotations

from engine.adapters.homewizard_v2.client import (
    DEFAULT_PORT,
    ApiVersion,
    HomeWizardV2Client,
    MeterIdentityError,
    MeterUnauthorizedError,
    detect_api_version,
    fetch_identifier,
    https_base_url,
)
from engine.adapters.homewizard_v2.measurement import DeviceInfo, parse_device, parse_measurement
from engine.adapters.homewizard_v2.pairing import (
    BUTTON_WINDOW_S,
    DEFAULT_USER_NAME,
    PairingTimeout,
    StoredToken,
    TokenFileError,
    load_token,
    pair,
    save_token,
    user_name_for,
)
from engine.adapters.homewizard_v2.push import MeasurementStream, PushedReading
from engine.adapters.homewizard_v2.tls import (
    client_ssl_context,
    homewizard_ca_pem,
    verification_hostname,
)

__all__ = [
    "BUTTON_WINDOW_S",
    "DEFAULT_PORT",
    "DEFAULT_USER_NAME",
    "ApiVersion",
    "DeviceInfo",
    "HomeWizardV2Client",
    "MeasurementStream",
    "MeterIdentityError",
    "MeterUnauthorizedError",
    "PairingTimeout",
    "PushedReading",
    "StoredToken",
    "TokenFileError",
    "client_ssl_context",
    "detect_api_version",
    "fetch_identifier",
    "homewizard_ca_pem",
    "https_base_url",
    "load_token",
    "pair",
    "parse_device",
    "parse_measurement",
    "save_token",
    "user_name_for",
    "verification_hostname",
]
