"""Every user setting as a frozen pydantic model; each default and bound is written once, here.

Where the values come from (environment, ``.env``, TOML, Home Assistant options) is
``engine.config``'s business; these models only say what a valid value is. Adapters take
their settings from here. docs/configuration.md's tables are generated from these models
(``scripts/render_config_reference.py``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import ssl
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.core.settings import (
    VENUS_E_CAPACITY_WH,
    VENUS_E_MAX_POWER_W,
    VENUS_E_MESSAGE_GAP_S,
    BatterySpec,
    BoolSetting,
    ControlSettings,
    FloatSetting,
    IntSetting,
)

METER_DATA_PATH: Final = "/api/v1/data"
_METER_API_PATH: Final = "/api"
MODBUS_PORT: Final = 502
MQTT_PORT: Final = 1883
MQTT_TLS_PORT: Final = 8883
MAX_BATTERY_NUMBER: Final = 999
HTTP_PORT: Final = 8099
MIN_TOKEN_CHARS: Final = 8

# --- value types --------------------------------------------------------------------------------


def _text(value: object) -> object:
    if not isinstance(value, str):
        return value  # the str type rejects it, showing what it got
    text = value.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        msg = "contains control characters"
        raise ValueError(msg)
    return text


def _non_empty(text: str) -> str:
    if not text:
        msg = "must not be empty"
        raise ValueError(msg)
    return text


_HOST_CHARS: Final = re.compile(r"[A-Za-z0-9._\-:%]+")


def _host(text: str) -> str:
    if "://" in text or "/" in text:
        msg = f"expected a host name or IP address, not a URL: {text!r}"
        raise ValueError(msg)
    if text.count(":") == 1:  # "192.168.1.101:502"; IPv6 addresses have at least two
        msg = (
            f"expected a host name or IP address without a port, got {text!r};"
            " the port is a setting of its own"
        )
        raise ValueError(msg)
    if not _HOST_CHARS.fullmatch(text) or len(text) > 253:
        msg = f"expected a host name or IP address, got {text!r}"
        raise ValueError(msg)
    return text


def _topic_root(text: str) -> str:
    if "+" in text or "#" in text:
        msg = f"must not contain MQTT wildcards (+, #), got {text!r}"
        raise ValueError(msg)
    if text.startswith("/") or text.endswith("/") or "//" in text:
        msg = f"must not start or end with '/' or contain '//', got {text!r}"
        raise ValueError(msg)
    return text


def _http_url(text: str) -> str:
    """``text`` if it is an http(s) URL with a host and a valid port; else ``ValueError``."""
    if any(ch.isspace() for ch in text):
        msg = f"must not contain spaces, got {text!r}"
        raise ValueError(msg)
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        msg = f"expected an http:// or https:// URL, got {text!r}"
        raise ValueError(msg)
    try:
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        msg = f"has an invalid port: {text!r}"
        raise ValueError(msg) from None
    if not parts.hostname:
        msg = f"has no host: {text!r}"
        raise ValueError(msg)
    return text


def _with_data_path(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path in ("", _METER_API_PATH):
        path = METER_DATA_PATH
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, parts.query, ""))


def meter_url_from_host(value: str) -> str:
    """A meter's address or base URL as its data URL; ``ValueError`` saying what is wrong.

    ``192.168.1.5``, ``host:8080``, ``http://host`` and ``http://host/api`` all become
    ``http://<host>/api/v1/data``; a URL with another path is kept (a proxy, a full URL).
    """
    text = value.strip()
    if not text:
        msg = "empty; give the meter's IP address or its /api/v1/data URL"
        raise ValueError(msg)
    return _with_data_path(_http_url(text if "://" in text else f"http://{text}"))


def _meter_data_url(text: str) -> str:
    if urlsplit(_http_url(text)).path in ("", "/"):
        msg = (
            f"expected the full URL of the meter's {METER_DATA_PATH} endpoint"
            f" (e.g. http://192.168.1.50{METER_DATA_PATH}), got {text!r}"
        )
        raise ValueError(msg)
    return _with_data_path(text)


def _existing_file(path: Path) -> Path:
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = f"not a usable file name ({reason})"
        raise ValueError(msg) from None
    if not found:
        msg = f"file not found: {path}"
        raise ValueError(msg)
    return path


def _non_empty_path(path: Path) -> Path:
    if str(path) in ("", "."):
        msg = "must not be empty"
        raise ValueError(msg)
    return path


def _secret_text(value: object) -> object:
    # A TOML/JSON number is a valid password once written as text; its value is never shown.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        msg = "contains control characters"  # a NUL would end it early on the wire
        raise ValueError(msg)
    return value


_SERIAL: Final = re.compile(r"[0-9a-f]{12}")
# A bearer token (RFC 6750 token68); HomeWizard's are 32 of A-F0-9.
_BEARER_TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}")


def _serial(text: str) -> str:
    serial = text.lower()
    if not _SERIAL.fullmatch(serial):
        msg = (
            f"expected the device's serial, 12 hexadecimal digits (3c39e7aabbcc), got {text!r};"
            " `mmbc-engine discover` lists them"
        )
        raise ValueError(msg)
    return serial


def _bearer_token(token: SecretStr) -> SecretStr:
    if not _BEARER_TOKEN.fullmatch(token.get_secret_value()):
        msg = "not a token as the meter hands them out (letters and digits, no spaces)"
        raise ValueError(msg)
    return token


def _address_list(value: object) -> object:
    """``"127.0.0.1, 192.168.1.2"`` (the environment) or a list (TOML) -> a tuple of text."""
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[\s,]+", value.strip()) if part)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        msg = f"expected the IPv4 address of a network interface of this machine, got {text!r}"
        raise ValueError(msg) from None


def _meter_host(text: str) -> str:
    meter_url_from_host(text)  # raises ValueError saying what is wrong
    return text


def _not_a_directory(path: Path) -> Path:
    try:
        directory = path.is_dir()
    except (OSError, ValueError) as exc:
        msg = f"not a usable file name ({exc})"
        raise ValueError(msg) from None
    if directory:
        msg = f"expected a file name, got the directory {str(path)!r}"
        raise ValueError(msg)
    return path


Text = Annotated[str, BeforeValidator(_text)]
Name = Annotated[str, BeforeValidator(_text), AfterValidator(_non_empty)]
Host = Annotated[str, BeforeValidator(_text), AfterValidator(_non_empty), AfterValidator(_host)]
TopicRoot = Annotated[
    str, BeforeValidator(_text), AfterValidator(_non_empty), AfterValidator(_topic_root)
]
MeterUrl = Annotated[str, BeforeValidator(_text), AfterValidator(_meter_data_url)]
Secret = Annotated[SecretStr, BeforeValidator(_secret_text)]
# Empty: every interface.
ListenHost = Annotated[str, BeforeValidator(_text), AfterValidator(lambda t: t and _host(t))]
Port = Annotated[IntSetting, Field(ge=1, le=65535)]
SettingsFile = Annotated[Path, BeforeValidator(_text), AfterValidator(_existing_file)]
Serial = Annotated[str, BeforeValidator(_text), AfterValidator(_serial)]
BearerToken = Annotated[Secret, AfterValidator(_bearer_token)]
MeterHost = Annotated[
    str, BeforeValidator(_text), AfterValidator(_non_empty), AfterValidator(_meter_host)
]
Interfaces = Annotated[
    tuple[Annotated[str, BeforeValidator(_text), AfterValidator(_ipv4)], ...],
    BeforeValidator(_address_list),
]
TokenPath = Annotated[
    Path, BeforeValidator(_text), AfterValidator(_non_empty_path), AfterValidator(_not_a_directory)
]
# A file the engine writes: it may not exist yet (created on the first save).
StateFile = TokenPath


class _Settings(BaseModel):
    # hide_input_in_errors: a ValidationError's text never shows a value (it may be a secret).
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, hide_input_in_errors=True
    )


# --- the devices --------------------------------------------------------------------------------


class MeterApi(StrEnum):
    """Which local API the P1 meter is read with."""

    AUTO = "auto"  # v2 when the meter has it and a token exists, else v1
    V1 = "v1"
    V2 = "v2"


class MeterSettings(_Settings):
    """The HomeWizard P1 meter: at the address given, or found on the network by mDNS.

    The token is a ``SecretStr``: it never appears in ``repr``, logs or messages.
    """

    url: MeterUrl | None = None
    """API v1: full URL of the meter's data endpoint, `http://<meter>/api/v1/data`. A URL
    without a path is rejected (the host setting takes just the address). Without this and
    without `P1_HOST` the meter is found on the network (mDNS)."""
    host: MeterHost | None = None
    """The meter's address, `192.168.1.50` or `192.168.1.50:8443`, or its base URL."""
    api: MeterApi = MeterApi.AUTO
    """`auto`: API v2 when the meter offers it and MMBC has a token for it (`mmbc-engine
    pair-p1`), else v1; `v1` or `v2` force one. `P1_API_URL` is always v1."""
    serial: Serial | None = None
    """The serial of the P1 meter to use (12 hexadecimal digits; `mmbc-engine discover`
    lists them): needed when the network has several; by default the one paired with."""
    token: BearerToken | None = None
    """API v2 token, as `mmbc-engine pair-p1 --print` shows it. Never logged or shown.
    Without it the token file is read."""
    token_file: TokenPath | None = None
    """Where `mmbc-engine pair-p1` keeps the API v2 token (readable by its owner only):
    by default `p1-token.json` beside the TOML configuration file, else in `/data` (the
    Docker volume) if writable, else in the working directory."""
    ca_file: SettingsFile | None = None
    """CA certificate (PEM) the meter's HTTPS certificate must be signed by; by default
    HomeWizard's own CA, bundled with MMBC. The device's name is checked either way."""
    push: BoolSetting = True
    """API v2: receive each reading the moment the meter has it (websocket) instead of
    polling for it; polling stands in whenever the stream is down."""
    mdns_interfaces: Interfaces | None = None
    """IPv4 addresses of this machine's network interfaces to look for HomeWizard devices on
    (comma-separated); by default all."""
    timeout_s: FloatSetting = Field(2.0, gt=0.0, le=60.0)
    """Seconds to wait for the meter's answer."""

    @field_validator("ca_file")
    @classmethod
    def _ca_loads(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise _cannot_load("a CA certificate", path, exc) from None
        return path

    @field_validator("api")
    @classmethod
    def _api_fits_the_address(cls, api: MeterApi, info: ValidationInfo) -> MeterApi:
        if api is not MeterApi.V2:
            return api
        host = info.data.get("host")
        if host is None and info.data.get("url") is not None:
            message = (
                "v2, but P1_API_URL is API v1's data URL: give the meter's address as"
                " P1_HOST instead (or leave both out to find the meter by mDNS)"
            )
            raise PydanticCustomError("related", message, {"partner": "url"})
        if isinstance(host, str) and urlsplit(host).scheme.lower() == "http":
            message = f"v2 speaks HTTPS only, but P1_HOST is {host!r}"
            raise PydanticCustomError("related", message, {"partner": "host"})
        return api

    def token_text(self) -> str | None:
        """The token itself, for the one place that sends it (the meter connection)."""
        return None if self.token is None else self.token.get_secret_value()

    def describe(self) -> str:
        """Where and how the meter is read, for ``--check`` and the start-up log; no token."""
        if self.host is not None:
            where = self.host
        elif self.url is not None:
            where = self.url
        else:
            where = "found by mDNS" + (f", serial {self.serial}" if self.serial else "")
        api = "API v1" if self.url is not None and self.host is None else f"API {self.api}"
        details = [api, f"timeout {self.timeout_s:g} s"]
        if self.api is not MeterApi.V1 and not (self.url is not None and self.host is None):
            details.append("push on" if self.push else "push off")
            details.append("token set" if self.token is not None else "token from the token file")
        return f"{where} ({', '.join(details)})"


class PvMeterSettings(_Settings):
    """An optional HomeWizard kWh meter on the PV inverter (read with API v1), at its URL or
    found on the network by its serial."""

    url: MeterUrl | None = None
    """Full URL of the PV meter's `/api/v1/data`."""
    serial: Serial | None = None
    """Instead of the URL: the kWh meter's serial; it is then found on the network (mDNS)."""
    negative_when_producing: BoolSetting = True
    """`true` if the meter reads negative while the panels produce (most installs); `false`
    if it reads positive."""
    timeout_s: FloatSetting = Field(2.0, gt=0.0, le=60.0)
    """Seconds to wait for its answer."""


class BatterySettings(_Settings):
    """One Marstek Venus E reached over Modbus TCP (directly or via an RS485 gateway)."""

    number: int = Field(ge=1, le=MAX_BATTERY_NUMBER)
    """The `<n>` of `BATTERY_<n>_*`: the battery is `battery_<n>` in logs and MQTT."""
    host: Host
    """IP address or host name of the battery or of its RS485-to-Ethernet adapter."""
    port: Port = MODBUS_PORT
    """Modbus TCP port."""
    unit_id: IntSetting = Field(1, ge=0, le=247)
    """Modbus unit id (register 41100 of the battery)."""
    max_charge_w: IntSetting = Field(VENUS_E_MAX_POWER_W, ge=0, le=VENUS_E_MAX_POWER_W)
    """Highest charge power MMBC will command."""
    max_discharge_w: IntSetting = Field(VENUS_E_MAX_POWER_W, ge=0, le=VENUS_E_MAX_POWER_W)
    """Highest discharge power MMBC will command."""
    capacity_wh: FloatSetting = Field(VENUS_E_CAPACITY_WH, gt=0.0, le=1_000_000.0)
    """Usable capacity; weights the fleet SoC (`status/soc`)."""
    message_gap_s: FloatSetting = Field(VENUS_E_MESSAGE_GAP_S, ge=0.0, le=10.0)
    """Pause between two Modbus requests. Venus E v3 firmware needs at least `0.15`."""
    timeout_s: FloatSetting = Field(1.0, gt=0.0, le=60.0)
    """Seconds to wait for one Modbus answer. Real firmware stalls up to ~4.5 s now and then
    (cloud upload); the short default makes a stalled battery miss one cycle instead of
    holding up the whole fleet for seconds."""

    @property
    def name(self) -> str:
        """``battery_<number>``: the name in logs, MQTT topics and Home Assistant."""
        return f"battery_{self.number}"

    def spec(self) -> BatterySpec:
        """What the control core needs to know about this battery."""
        return BatterySpec(
            name=self.name,
            max_charge_w=self.max_charge_w,
            max_discharge_w=self.max_discharge_w,
            capacity_wh=self.capacity_wh,
        )


# --- MQTT ---------------------------------------------------------------------------------------

_CLIENT_ID_INVALID: Final = re.compile(r"[^A-Za-z0-9_-]")  # as ha_discovery.node_id


def _derived_client_id(topic_prefix: str) -> str:
    node = _CLIENT_ID_INVALID.sub("_", topic_prefix.strip("/")) or "mmbc"
    return "mmbc-engine" if node == "mmbc" else f"mmbc-engine-{node}"


def _cannot_load(
    what: str, path: Path, exc: Exception, context: dict[str, str] | None = None
) -> PydanticCustomError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    context = {
        **(context or {}),
        "what": what,
        "path": str(path),
        "reason": reason or type(exc).__name__,
    }
    return PydanticCustomError("file_unusable", "cannot load {what} from {path}: {reason}", context)


class MqttSettings(_Settings):
    """The MQTT broker and what to publish (optional: without a host MQTT is off).

    The password is a ``SecretStr``: it never appears in ``repr``, logs or messages. Files
    (CA, client certificate and key) are loaded when the settings are validated, so a file
    that is missing or unusable is a configuration error, not a crash at connect time.
    """

    host: Host
    """Broker address."""
    port: Port = MQTT_PORT
    """Broker port; `8883` when TLS is on and no port is given."""
    username: Name | None = None
    """User name."""
    password: Secret | None = None
    """Password (needs a user name). Never logged or shown."""
    tls: BoolSetting = False
    """Connect with TLS (system CAs unless a CA file is given); on by itself with a CA or
    client certificate file."""
    tls_ca_file: SettingsFile | None = None
    """CA certificate file (PEM) for the broker; must exist and load."""
    tls_cert_file: SettingsFile | None = None
    """Client certificate (PEM) for brokers that ask for one; must load (with the key)."""
    tls_key_file: SettingsFile | None = Field(None, validate_default=True)
    """Private key (PEM) of the client certificate, if it is not in the certificate file."""
    topic_prefix: TopicRoot = "mmbc"
    """Root of every topic: `mmbc/status/soc`, `mmbc/control/block_discharge`, ... With
    `mmbc/virtual`: `mmbc/virtual/status/soc`. No `+`/`#`, no leading or trailing `/`."""
    discovery: BoolSetting = True
    """Publish Home Assistant MQTT discovery."""
    discovery_prefix: TopicRoot = "homeassistant"
    """Home Assistant's discovery prefix."""
    min_interval_s: FloatSetting = Field(5.0, ge=0.0, le=3600.0)
    """A changed value is published at most this often (s)."""
    max_interval_s: FloatSetting = Field(60.0, gt=0.0, le=86_400.0, validate_default=True)
    """An unchanged value is re-published at least this often (s, at least the minimum)."""
    client_id: Name = "mmbc-engine"
    """MQTT client id; by default `mmbc-engine`, with the topic prefix appended when it is not
    `mmbc` (the persistent session that keeps commands across reconnects hangs on it)."""
    # Connection tuning: not user settings (engine.config offers no name for them).
    keepalive_s: int = Field(60, gt=0)
    timeout_s: float = Field(10.0, gt=0.0)  # per broker operation (connect, subscribe, publish)
    reconnect_min_s: float = Field(1.0, gt=0.0, le=30.0)
    reconnect_max_s: float = Field(30.0, gt=0.0, le=30.0)

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """Defaults that depend on other values: TLS, its port, the client id."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        files = ("tls_ca_file", "tls_cert_file")
        if data.get("tls") is None:
            data["tls"] = any(data.get(name) is not None for name in files)
        if data.get("port") is None:
            data["port"] = MQTT_TLS_PORT if _bool_or_none(data["tls"]) else MQTT_PORT
        prefix = data.get("topic_prefix", "mmbc")
        if data.get("client_id") is None and isinstance(prefix, str):
            data["client_id"] = _derived_client_id(prefix.strip())
        return data

    @field_validator("password")
    @classmethod
    def _password_needs_user(cls, password: SecretStr | None, info: ValidationInfo) -> Any:
        if password is not None and info.data.get("username") is None and "username" in info.data:
            raise PydanticCustomError("related", "set without a user name", {"partner": "username"})
        return password

    @field_validator("tls_ca_file")
    @classmethod
    def _ca_loads(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        if info.data.get("tls") is False:
            raise PydanticCustomError("related", "set, but TLS is off", {"partner": "tls"})
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise _cannot_load("a CA certificate", path, exc) from None
        return path

    @field_validator("tls_key_file")
    @classmethod
    def _client_cert_loads(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        # Checked here, after the certificate: the pair loads together or not at all.
        cert: Path | None = info.data.get("tls_cert_file")
        if cert is None:
            if key is not None and "tls_cert_file" in info.data:
                message = "a client key needs its certificate"
                raise PydanticCustomError("related", message, {"partner": "tls_cert_file"})
            return key
        if info.data.get("tls") is False:
            raise PydanticCustomError("related", "set, but TLS is off", {"partner": "tls"})
        try:
            ssl.create_default_context().load_cert_chain(cert, key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            what = "the client certificate" + ("" if key is None else f" with the key {key}")
            context = {"partner": "tls_cert_file"}
            raise _cannot_load(what, cert, exc, context) from None
        return key

    @field_validator("max_interval_s")
    @classmethod
    def _max_not_below_min(cls, max_interval_s: float, info: ValidationInfo) -> float:
        min_interval_s = info.data.get("min_interval_s")
        if min_interval_s is not None and max_interval_s < min_interval_s:
            message = (
                f"the maximum publish interval ({max_interval_s:g} s) is below the minimum"
                f" ({min_interval_s:g} s)"
            )
            raise PydanticCustomError("related", message, {"partner": "min_interval_s"})
        return max_interval_s

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff_range(cls, reconnect_max_s: float, info: ValidationInfo) -> float:
        reconnect_min_s = info.data.get("reconnect_min_s")
        if reconnect_min_s is not None and reconnect_max_s < reconnect_min_s:
            msg = "reconnect_max_s must not be below reconnect_min_s"
            raise ValueError(msg)
        return reconnect_max_s

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the broker (``None`` without TLS), from the validated files."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=None if self.tls_ca_file is None else str(self.tls_ca_file)
        )
        if self.tls_cert_file is not None:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def password_text(self) -> str | None:
        """The password itself, for the one place that sends it (the broker connection)."""
        return None if self.password is None else self.password.get_secret_value()


def _bool_or_none(value: object) -> bool:
    """``value`` read as a bool for deriving a default; an invalid value counts as false."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1")


# --- the engine ---------------------------------------------------------------------------------


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _upper_text(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


def _lower_text(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class LogSettings(_Settings):
    """How the engine logs."""

    level: Annotated[LogLevel, BeforeValidator(_upper_text)] = LogLevel.INFO
    """`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL` (any case). Library chatter
    (pymodbus, aiomqtt, transitions) is shown from `WARNING` up."""
    format: Annotated[LogFormat, BeforeValidator(_lower_text)] = LogFormat.TEXT
    """`text` for people, `json` for one JSON object per line (`ts`, `level`, `logger`, `msg`,
    `exc`)."""


class HttpSettings(_Settings):
    """The engine's HTTP server: the live dashboard, `/metrics` and `/healthz` (docs/metrics.md).

    The token is a ``SecretStr``: it never appears in ``repr``, logs or messages.
    """

    enabled: BoolSetting = True
    """`false` turns the server off."""
    host: ListenHost = ""
    """Address to listen on; empty: every interface (works with `docker run --network host`);
    `127.0.0.1`: this machine only."""
    port: IntSetting = Field(HTTP_PORT, ge=0, le=65535)
    """Port to listen on; `0` turns the server off."""
    token: Secret | None = None
    """With a token (at least 8 characters) the dashboard's controls (mode, block discharge)
    work for whoever enters it; without one the page is read-only and every write answers 403.
    Never logged or shown."""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_CHARS:
            msg = f"too short: use at least {MIN_TOKEN_CHARS} characters"
            raise ValueError(msg)
        return token

    @property
    def serves(self) -> bool:
        """Whether the server runs at all."""
        return self.enabled and self.port != 0


class EngineSettings(_Settings):
    """Everything the engine needs, validated. ``engine.config.load_config`` builds it."""

    meter: MeterSettings = Field(default_factory=MeterSettings)
    pv_meter: PvMeterSettings | None = None
    batteries: tuple[BatterySettings, ...] = Field(min_length=1)
    mqtt: MqttSettings | None = None
    control: ControlSettings = ControlSettings()  # frozen: one shared default is safe
    log: LogSettings = Field(default_factory=LogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    dry_run: BoolSetting = False
    """Read and decide, but write nothing to the batteries (same as `--dry-run`)."""
    state_file: StateFile | None = None
    """Where the energy totals are kept across restarts (same as `--state-file`; default
    `/data/mmbc-state.json` when `/data` is writable, else `./mmbc-state.json`)."""
    # What was read, not settings: the sources (highest precedence first) and the non-fatal
    # remarks (ignored legacy names, values that weaken a safety) to log at start-up.
    sources: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    config_file: Path | None = None  # the TOML file read, if any (the token file goes beside)

    @field_validator("batteries")
    @classmethod
    def _distinct_numbers(cls, batteries: tuple[BatterySettings, ...]) -> Any:
        numbers = [b.number for b in batteries]
        if len(set(numbers)) != len(numbers):
            msg = f"battery numbers must be distinct, got {numbers}"
            raise ValueError(msg)
        return tuple(sorted(batteries, key=lambda b: b.number))

    def control_settings(self) -> ControlSettings:
        """The control thresholds with one ``BatterySpec`` per configured battery."""
        return dataclasses.replace(self.control, batteries=tuple(b.spec() for b in self.batteries))

    def describe(self) -> str:
        """A human-readable summary (for ``--check`` and the start-up log); no secrets."""
        lines = [f"sources: {', '.join(self.sources) or 'defaults only'}"]
        lines.append(f"meter: {self.meter.describe()}")
        if self.pv_meter is None:
            lines.append("pv meter: none")
        else:
            sign = "negative" if self.pv_meter.negative_when_producing else "positive"
            where = self.pv_meter.url or f"serial {self.pv_meter.serial}, found by mDNS"
            lines.append(f"pv meter: {where} (reads {sign} while producing)")
        lines.extend(
            f"{b.name}: {b.host}:{b.port} unit {b.unit_id}, max charge {b.max_charge_w} W,"
            f" max discharge {b.max_discharge_w} W, capacity {b.capacity_wh:.10g} Wh,"
            f" timeout {b.timeout_s:g} s"
            for b in self.batteries
        )
        if self.mqtt is None:
            lines.append("mqtt: disabled")
        else:
            m = self.mqtt
            auth = f"user {m.username}" if m.username else "anonymous"
            if m.password is not None:
                auth += ", password set"
            if m.tls_cert_file is not None:
                auth += ", client certificate"
            lines.append(
                f"mqtt: {m.host}:{m.port} ({auth}, tls {'on' if m.tls else 'off'}),"
                f" topics {m.topic_prefix}/..., discovery "
                + (m.discovery_prefix if m.discovery else "off")
            )
        defaults = ControlSettings()
        changed = [
            f"{name}={getattr(self.control, name)}"
            for name in sorted(ControlSettings.field_names())
            if getattr(self.control, name) != getattr(defaults, name)
        ]
        lines.append(f"control: {', '.join(changed) if changed else 'defaults'}")
        if self.http.serves:
            controls = "controls on (token set)" if self.http.token else "read-only (no token)"
            lines.append(f"http: {self.http.host or '*'}:{self.http.port}, {controls}")
        else:
            lines.append("http: disabled")
        lines.append(f"log: {self.log.level} {self.log.format}; dry run: {self.dry_run}")
        lines.append(f"state file: {self.state_file or 'default'}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


__all__ = [
    "MAX_BATTERY_NUMBER",
    "METER_DATA_PATH",
    "BatterySettings",
    "EngineSettings",
    "HttpSettings",
    "LogFormat",
    "LogLevel",
    "LogSettings",
    "MeterApi",
    "MeterSettings",
    "MqttSettings",
    "PvMeterSettings",
    "meter_url_from_host",
]
