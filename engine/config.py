"""Engine configuration: environment, .env, TOML and Home Assistant options, validated once.

The only module that reads configuration. Sources, highest precedence first:

1. the process environment (``docker run --env-file .env`` lands here),
2. a ``.env`` file (default: ``./.env`` if present),
3. a TOML file (``--config`` or ``MMBC_CONFIG``),
4. a Home Assistant add-on ``/data/options.json`` (if present),
5. the defaults.

Each setting is taken from the highest source that sets it; batteries are matched by number, so
``BATTERY_2_PORT`` in the environment overrides the port of the second ``[[battery]]``. An empty
value means "not set". Every problem raises ``ConfigError(key, problem)`` naming the key as the
user wrote it. docs/configuration.md lists every setting.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import urlsplit

from engine.adapters.homewizard import normalise_p1_url
from engine.core.settings import (
    VENUS_E_CAPACITY_WH,
    VENUS_E_MAX_POWER_W,
    BatterySpec,
    ControlSettings,
)
from engine.errors import ConfigError
from engine.logs import LOG_FORMATS, LOG_LEVELS

if TYPE_CHECKING:
    from engine.adapters.mqtt import MqttSettings

__all__ = [
    "DEFAULT_DOTENV_FILE",
    "DEFAULT_OPTIONS_FILE",
    "POLICIES",
    "BatteryConfig",
    "EngineConfig",
    "HttpConfig",
    "MeterConfig",
    "MqttConfig",
    "PvMeterConfig",
    "build_config",
    "config_error_exit_message",
    "env_names",
    "load_config",
    "parse_dotenv",
]

DEFAULT_DOTENV_FILE: Final = Path(".env")
DEFAULT_OPTIONS_FILE: Final = Path("/data/options.json")
POLICIES: Final = ("mmbc", "classic")
METER_DATA_PATH: Final = "/api/v1/data"
MQTT_PORT: Final = 1883
MQTT_TLS_PORT: Final = 8883
MODBUS_PORT: Final = 502
HTTP_PORT: Final = 8099
MIN_TOKEN_CHARS: Final = 8


# --------------------------------------------------------------------------------------------
# The typed result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """The HomeWizard P1 meter: full URL of its ``/api/v1/data`` endpoint."""

    url: str
    timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class PvMeterConfig:
    """An optional HomeWizard kWh meter on the PV inverter (same ``/api/v1/data`` API)."""

    url: str
    negative_when_producing: bool = True  # most installs read negative while producing
    timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    """One Marstek Venus E reached over Modbus TCP (directly or via an RS485 gateway)."""

    name: str  # "battery_<index>"
    index: int  # the <n> of BATTERY_<n>_IP; numbering may have gaps
    host: str
    port: int = MODBUS_PORT
    unit_id: int = 1
    max_charge_w: int = VENUS_E_MAX_POWER_W
    max_discharge_w: int = VENUS_E_MAX_POWER_W
    capacity_wh: float = VENUS_E_CAPACITY_WH
    message_gap_s: float = 0.05  # pause between Modbus requests; v3 firmware wants >= 0.15
    # Firmware can stall Modbus for ~4.5 s (cloud upload); a short timeout lets one stalled
    # battery cost one cycle instead of freezing the whole fleet's control for seconds.
    timeout_s: float = 1.0

    def spec(self) -> BatterySpec:
        """What the control core needs to know about this battery."""
        return BatterySpec(
            name=self.name,
            max_charge_w=self.max_charge_w,
            max_discharge_w=self.max_discharge_w,
            capacity_wh=self.capacity_wh,
        )


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The MQTT broker and what to publish; ``password`` never appears in ``repr``."""

    host: str
    port: int = MQTT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str | None = None
    topic_prefix: str = "mmbc"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    min_interval_s: float = 5.0  # publish a changed value at most this often
    max_interval_s: float = 60.0  # republish unchanged values at least this often
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The dashboard / metrics / health server; ``token`` never appears in ``repr``."""

    host: str = ""  # "": every interface (works with docker run --network host)
    port: int = HTTP_PORT
    token: str | None = field(default=None, repr=False)  # set: the page's controls work


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs, validated. Built only by ``load_config``/``build_config``."""

    meter: MeterConfig
    pv_meter: PvMeterConfig | None
    batteries: tuple[BatteryConfig, ...]
    mqtt: MqttConfig | None
    control: ControlSettings
    http: HttpConfig | None = HttpConfig()  # None: no HTTP server
    log_level: str = "INFO"
    log_format: str = "text"
    dry_run: bool = False
    sources: tuple[str, ...] = ()  # the sources that were read, highest precedence first
    warnings: tuple[str, ...] = ()  # non-fatal remarks (ignored legacy names, ...) to log

    def control_settings(self) -> ControlSettings:
        """The control thresholds with one ``BatterySpec`` per configured battery."""
        return replace(self.control, batteries=tuple(b.spec() for b in self.batteries))

    def mqtt_settings(self) -> MqttSettings:
        """``mqtt`` as the MQTT adapter's settings; ``ConfigError`` when MQTT is off."""
        from engine.adapters.mqtt import MqttSettings  # aiomqtt is only imported when used

        if self.mqtt is None:
            raise ConfigError("MQTT_HOST", "not set, so MQTT is off")
        m = self.mqtt
        return MqttSettings(
            host=m.host,
            port=m.port,
            username=m.username,
            password=m.password,
            tls=m.tls,
            tls_ca_file=m.tls_ca_file,
            topic_prefix=m.topic_prefix,
            discovery=m.discovery,
            discovery_prefix=m.discovery_prefix,
            min_interval_s=m.min_interval_s,
            max_interval_s=m.max_interval_s,
            client_id=m.client_id or "",
        )

    def describe(self) -> str:
        """A human-readable summary (for ``--check`` and the start-up log); no secrets."""
        lines = [f"sources: {', '.join(self.sources) or 'defaults only'}"]
        lines.append(f"meter: {self.meter.url} (timeout {self.meter.timeout_s:g} s)")
        if self.pv_meter is None:
            lines.append("pv meter: none")
        else:
            sign = "negative" if self.pv_meter.negative_when_producing else "positive"
            lines.append(f"pv meter: {self.pv_meter.url} (reads {sign} while producing)")
        for b in self.batteries:
            lines.append(
                f"{b.name}: {b.host}:{b.port} unit {b.unit_id}, max charge {b.max_charge_w} W,"
                f" max discharge {b.max_discharge_w} W, capacity {_num(b.capacity_wh)} Wh,"
                f" timeout {b.timeout_s:g} s"
            )
        if self.mqtt is None:
            lines.append("mqtt: disabled")
        else:
            m = self.mqtt
            auth = f"user {m.username}" if m.username else "anonymous"
            if m.password:
                auth += ", password set"
            lines.append(
                f"mqtt: {m.host}:{m.port} ({auth}, tls {'on' if m.tls else 'off'}),"
                f" topics {m.topic_prefix}/..., discovery "
                + (m.discovery_prefix if m.discovery else "off")
            )
        defaults = ControlSettings()
        changed = [
            f"{name}={getattr(self.control, name)!r}"
            for name in sorted(ControlSettings.field_names())
            if getattr(self.control, name) != getattr(defaults, name)
        ]
        lines.append(f"control: {', '.join(changed) if changed else 'defaults'}")
        if self.http is None:
            lines.append("http: disabled")
        else:
            controls = "controls on (token set)" if self.http.token else "read-only (no token)"
            lines.append(f"http: {self.http.host or '*'}:{self.http.port}, {controls}")
        lines.append(f"log: {self.log_level} {self.log_format}; dry run: {self.dry_run}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def config_error_exit_message(err: ConfigError) -> str:
    """The one message printed before exiting with status 2."""
    return f"invalid configuration: {err.key}: {err.problem} (see docs/configuration.md)"


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

# Canonical keys are the TOML paths ("control.deadband_w"); batteries are "battery.<n>.<field>".
_GLOBAL_ENV: Final[dict[str, str]] = {
    "P1_API_URL": "meter.url",
    "P1_HOST": "meter.host",
    "MMBC_P1_TIMEOUT_S": "meter.timeout_s",
    "PV_API_URL": "pv_meter.url",
    "PV_NEGATIVE_WHEN_PRODUCING": "pv_meter.negative_when_producing",
    "MMBC_PV_TIMEOUT_S": "pv_meter.timeout_s",
    "MQTT_HOST": "mqtt.host",
    "MQTT_PORT": "mqtt.port",
    "MQTT_USERNAME": "mqtt.username",
    "MQTT_PASSWORD": "mqtt.password",
    "MQTT_TLS": "mqtt.tls",
    "MQTT_CA_FILE": "mqtt.tls_ca_file",
    "MQTT_TOPIC_PREFIX": "mqtt.topic_prefix",
    "MQTT_DISCOVERY": "mqtt.discovery",
    "MQTT_DISCOVERY_PREFIX": "mqtt.discovery_prefix",
    "MQTT_MIN_INTERVAL_S": "mqtt.min_interval_s",
    "MQTT_MAX_INTERVAL_S": "mqtt.max_interval_s",
    "MQTT_CLIENT_ID": "mqtt.client_id",
    "HTTP_ENABLED": "http.enabled",
    "HTTP_HOST": "http.host",
    "HTTP_PORT": "http.port",
    "HTTP_TOKEN": "http.token",
    "MMBC_LOG_LEVEL": "log.level",
    "MMBC_LOG_FORMAT": "log.format",
    "MMBC_DRY_RUN": "dry_run",
}
# Older names from upstream MMBC's .env, accepted when the current name is absent.
_ALIASES: Final[dict[str, str]] = {"MQTT_HA_DISCOVERY": "MQTT_DISCOVERY"}
# Upstream names that no longer mean anything: a warning, not an error, so old .env files work.
_IGNORED: Final[dict[str, str]] = {
    "INTERVAL_SECONDS": "ignored; the loop period is MMBC_LOOP_PERIOD_S",
    "SELF_CONTROL_AVAILABLE": "ignored; MMBC always returns batteries to their own mode on exit",
}
_CONFIG_FILE_ENV: Final = "MMBC_CONFIG"

_BATTERY_FIELDS: Final[dict[str, str]] = {  # env suffix -> field
    "IP": "host",
    "ADDRESS": "unit_id",
    "PORT": "port",
    "MAX_CHARGE_W": "max_charge_w",
    "MAX_DISCHARGE_W": "max_discharge_w",
    "CAPACITY_WH": "capacity_wh",
    "MESSAGE_GAP_S": "message_gap_s",
    "TIMEOUT_S": "timeout_s",
}
_BATTERY_ENV_RE: Final = re.compile(r"BATTERY_([0-9]+)_(.+)")
_BATTERY_OPTION_RE: Final = re.compile(r"battery_([0-9]+)_(.+)")
MAX_BATTERY_NUMBER: Final = 999
_OPTION_BATTERY_KEYS: Final[dict[str, str]] = {
    "ip": "host",
    "host": "host",
    "address": "unit_id",
    "unit_id": "unit_id",
    **{suffix.lower(): name for suffix, name in _BATTERY_FIELDS.items() if suffix != "IP"},
}
_TOML_BATTERY_KEYS: Final = frozenset(_BATTERY_FIELDS.values())
_TOML_SECTIONS: Final[dict[str, frozenset[str]]] = {
    "meter": frozenset({"url", "host", "timeout_s"}),
    "pv_meter": frozenset({"url", "negative_when_producing", "timeout_s"}),
    "mqtt": frozenset(f.name for f in fields(MqttConfig)),
    "control": ControlSettings.field_names(),
    "log": frozenset({"level", "format"}),
    "http": frozenset({"enabled", "host", "port", "token"}),
}
_TOML_TOP_VALUES: Final = frozenset({"dry_run"})


def _env_table() -> dict[str, str]:
    table = dict(_GLOBAL_ENV)
    for name in sorted(ControlSettings.field_names()):
        table[f"MMBC_{name.upper()}"] = f"control.{name}"
    return table


_ENV: Final[dict[str, str]] = _env_table()  # env name -> canonical key
_OPTIONS: Final[dict[str, str]] = {  # options.json key -> env name
    name.lower().removeprefix("mmbc_"): name for name in (*_ENV, *_ALIASES)
}


def env_names() -> frozenset[str]:
    """Every environment variable name MMBC reads (``BATTERY_1_*`` stands for any ``n``)."""
    battery = {f"BATTERY_1_{suffix}" for suffix in _BATTERY_FIELDS}
    return frozenset({*_ENV, *_ALIASES, _CONFIG_FILE_ENV, *battery})


# --------------------------------------------------------------------------------------------
# Raw values from the sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Raw:
    canon: str  # canonical key, e.g. "control.deadband_w"
    key: str  # the key as the user wrote it, for messages
    value: object  # str from the environment, any TOML/JSON value from files


_Layer = dict[str, _Raw]


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.75)
    return f"unknown setting (did you mean {close[0]}?)" if close else "unknown setting"


def _battery_number(key: str, digits: str) -> int:
    if digits.startswith("0") or len(digits) > len(str(MAX_BATTERY_NUMBER)):
        msg = f"battery numbers run from 1 to {MAX_BATTERY_NUMBER}, without leading zeros"
        raise ConfigError(key, msg)
    return int(digits)


def _key_name(key: object) -> str:
    """A key as written, quoted when it would otherwise be invisible or ambiguous."""
    text = str(key)
    if not text.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in text) or len(text) > 60:
        return json.dumps(text[:60])
    return text


def _is_unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _env_layer(environ: Mapping[str, str], warnings: list[str]) -> _Layer:
    layer: _Layer = {}
    aliased: list[tuple[str, str]] = []
    for key in sorted(environ):
        value = environ[key]
        if key in _IGNORED:
            warnings.append(f"{key}: {_IGNORED[key]}")
            continue
        match = _BATTERY_ENV_RE.fullmatch(key)
        if match is not None:
            n = _battery_number(key, match.group(1))
            suffix = match.group(2)
            if suffix not in _BATTERY_FIELDS:
                known = [f"BATTERY_{n}_{s}" for s in _BATTERY_FIELDS]
                raise ConfigError(key, _suggest(key, known))
            canon = f"battery.{n}.{_BATTERY_FIELDS[suffix]}"
        elif key in _ENV:
            canon = _ENV[key]
        elif key in _ALIASES:
            aliased.append((key, value))
            continue
        elif key == _CONFIG_FILE_ENV:
            continue  # a file name, handled by load_config
        elif key.startswith("MMBC_"):
            raise ConfigError(key, _suggest(key, [k for k in _ENV if k.startswith("MMBC_")]))
        else:
            continue  # PATH, HOME, HOSTNAME, ...: not ours
        if not _is_unset(value):
            layer[canon] = _Raw(canon, key, value.strip())
    for key, value in aliased:
        canon = _ENV[_ALIASES[key]]
        if canon not in layer and not _is_unset(value):
            layer[canon] = _Raw(canon, key, value.strip())
    return layer


def _toml_layer(data: Mapping[str, object]) -> _Layer:
    layer: _Layer = {}
    for top in sorted(data):
        value = data[top]
        if top in _TOML_TOP_VALUES:
            if not _is_unset(value):
                layer[top] = _Raw(top, top, value)
        elif top == "battery":
            if not isinstance(value, list):
                raise ConfigError(top, "expected an array of tables ([[battery]])")
            for i, entry in enumerate(value):
                where = f"battery[{i}]"
                if not isinstance(entry, dict):
                    raise ConfigError(where, "expected a table ([[battery]])")
                for name in sorted(entry):
                    if name not in _TOML_BATTERY_KEYS:
                        raise ConfigError(
                            f"{where}.{_key_name(name)}", _suggest(name, _TOML_BATTERY_KEYS)
                        )
                    if not _is_unset(entry[name]):
                        canon = f"battery.{i + 1}.{name}"
                        layer[canon] = _Raw(canon, f"{where}.{name}", entry[name])
        elif top in _TOML_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(top, f"expected a table ([{top}])")
            known = _TOML_SECTIONS[top]
            for name in sorted(value):
                canon = f"{top}.{name}"
                if name not in known:
                    raise ConfigError(f"{top}.{_key_name(name)}", _suggest(name, known))
                if not _is_unset(value[name]):
                    layer[canon] = _Raw(canon, canon, value[name])
        else:
            raise ConfigError(
                _key_name(top), _suggest(top, [*_TOML_SECTIONS, "battery", *_TOML_TOP_VALUES])
            )
    return layer


def _options_layer(data: Mapping[str, object], warnings: list[str]) -> _Layer:
    layer: _Layer = {}
    flat_battery_key: str | None = None
    list_battery_key: str | None = None
    aliased: list[tuple[str, str, object]] = []
    for key in sorted(data):
        value = data[key]
        lower = key.lower().removeprefix("mmbc_")
        if lower.upper() in _IGNORED:
            warnings.append(f"{key}: {_IGNORED[lower.upper()]}")
            continue
        match = _BATTERY_OPTION_RE.fullmatch(lower)
        if lower == "batteries":
            if value:  # an add-on's empty default list does not clash with battery_<n>_* keys
                list_battery_key = key
            _options_battery_list(key, value, layer)
            continue
        if match is not None:
            n = _battery_number(key, match.group(1))
            suffix = match.group(2)
            if suffix not in _OPTION_BATTERY_KEYS:
                known = [f"battery_{n}_{s}" for s in _OPTION_BATTERY_KEYS]
                raise ConfigError(_key_name(key), _suggest(lower, known))
            canon = f"battery.{n}.{_OPTION_BATTERY_KEYS[suffix]}"
            flat_battery_key = key
        elif lower in _OPTIONS and _OPTIONS[lower] in _ALIASES:
            aliased.append((key, _ENV[_ALIASES[_OPTIONS[lower]]], value))
            continue
        elif lower in _OPTIONS and _OPTIONS[lower] != _CONFIG_FILE_ENV:
            canon = _ENV[_OPTIONS[lower]]
        else:
            raise ConfigError(_key_name(key), _suggest(lower, [*_OPTIONS, "batteries"]))
        if canon in layer and layer[canon].key != key:
            raise ConfigError(key, f"same setting as {layer[canon].key}; give only one")
        if not _is_unset(value):
            layer[canon] = _Raw(canon, key, value)
    if flat_battery_key is not None and list_battery_key is not None:
        raise ConfigError(
            flat_battery_key, f"give batteries either as {list_battery_key!r} or as battery_<n>_*"
        )
    for key, canon, value in aliased:
        if canon not in layer and not _is_unset(value):
            layer[canon] = _Raw(canon, key, value)
    return layer


def _options_battery_list(key: str, value: object, layer: _Layer) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ConfigError(key, "expected a list of batteries ({ip, address, port, ...})")
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "expected an object such as {ip, address, port}")
        for name in sorted(entry):
            lower = str(name).lower()
            if lower not in _OPTION_BATTERY_KEYS:
                raise ConfigError(
                    f"{where}.{_key_name(name)}", _suggest(lower, _OPTION_BATTERY_KEYS)
                )
            canon = f"battery.{i + 1}.{_OPTION_BATTERY_KEYS[lower]}"
            if canon in layer:
                raise ConfigError(f"{where}.{name}", f"same setting as {layer[canon].key}")
            if not _is_unset(entry[name]):
                layer[canon] = _Raw(canon, f"{where}.{name}", entry[name])


# --------------------------------------------------------------------------------------------
# Value parsing
# --------------------------------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def _as_int(raw: _Raw) -> int:
    value = raw.value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()) and len(value) <= 30:
        return int(value.strip())
    raise ConfigError(raw.key, f"expected an integer, got {_show(value)}")


def _as_float(raw: _Raw) -> float:
    value = raw.value
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ConfigError(raw.key, f"expected a number, got {_show(value)}")
    return number


def _as_bool(raw: _Raw) -> bool:
    value = raw.value
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ConfigError(raw.key, f"expected true or false, got {_show(value)}")


def _as_str(raw: _Raw) -> str:
    if not isinstance(raw.value, str):
        raise ConfigError(raw.key, f"expected a string, got {_show(raw.value)}")
    text = raw.value.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ConfigError(raw.key, "contains control characters")
    return text


_N = TypeVar("_N", int, float)
_T = TypeVar("_T")


def _num(number: float) -> str:
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return str(number)


def _check_range(raw: _Raw, number: _N, lo: _N | None, hi: _N | None, *, lo_open: bool) -> _N:
    if lo is not None and (number <= lo if lo_open else number < lo):
        if hi is not None and not lo_open:
            problem = f"must be between {_num(lo)} and {_num(hi)}"
        else:
            problem = (
                f"must be greater than {_num(lo)}" if lo_open else f"must be at least {_num(lo)}"
            )
        raise ConfigError(raw.key, f"{problem}, got {_num(number)}")
    if hi is not None and number > hi:
        if lo is not None and not lo_open:
            problem = f"must be between {_num(lo)} and {_num(hi)}"
        else:
            problem = f"must be at most {_num(hi)}"
        raise ConfigError(raw.key, f"{problem}, got {_num(number)}")
    return number


def _int_in(lo: int | None, hi: int | None) -> Callable[[_Raw], int]:
    return lambda raw: _check_range(raw, _as_int(raw), lo, hi, lo_open=False)


def _float_in(
    lo: float | None, hi: float | None, *, lo_open: bool = False
) -> Callable[[_Raw], float]:
    return lambda raw: _check_range(raw, _as_float(raw), lo, hi, lo_open=lo_open)


def _choice(options: Iterable[str]) -> Callable[[_Raw], str]:
    allowed = tuple(options)

    def parse(raw: _Raw) -> str:
        text = _as_str(raw).lower()
        if text not in allowed:
            raise ConfigError(
                raw.key, f"expected one of {', '.join(allowed)}, got {_show(raw.value)}"
            )
        return text

    return parse


_HOST_RE: Final = re.compile(r"[A-Za-z0-9._\-:%]+")


def _as_host(raw: _Raw) -> str:
    text = _as_str(raw)
    if "://" in text or "/" in text:
        raise ConfigError(raw.key, f"expected a host name or IP address, not a URL: {_show(text)}")
    if text.count(":") == 1:  # "192.168.1.101:502"; IPv6 addresses have at least two
        raise ConfigError(
            raw.key,
            f"expected a host name or IP address without a port, got {_show(text)};"
            " the port is a setting of its own",
        )
    if not _HOST_RE.fullmatch(text) or len(text) > 253:
        raise ConfigError(raw.key, f"expected a host name or IP address, got {_show(text)}")
    return text


def _check_http_url(text: str) -> tuple[str, str, str, str]:
    """(scheme, netloc, path, query) of an http(s) URL, or ``ValueError`` saying what is wrong."""
    if any(ch.isspace() for ch in text):
        msg = "must not contain spaces"
        raise ValueError(msg)
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        msg = "expected an http:// or https:// URL"
        raise ValueError(msg)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        msg = "has an invalid port"
        raise ValueError(msg) from None
    if not parts.hostname:
        msg = "has no host"
        raise ValueError(msg)
    return parts.scheme.lower(), parts.netloc, parts.path, parts.query


def _as_data_url(raw: _Raw, host_key: str) -> str:
    text = _as_str(raw)
    try:
        _scheme, _netloc, path, _query = _check_http_url(text)
    except ValueError as exc:
        raise ConfigError(raw.key, f"{exc}, got {_show(text)}") from None
    if path in ("", "/"):
        raise ConfigError(
            raw.key,
            f"expected the full URL of the meter's {METER_DATA_PATH} endpoint"
            f" (e.g. http://192.168.1.50{METER_DATA_PATH}), got {_show(text)};"
            f" {host_key} takes just the address",
        )
    return normalise_p1_url(text, key=raw.key)


def _as_meter_host(raw: _Raw) -> str:
    text = _as_str(raw)
    if any(ch.isspace() for ch in text):
        raise ConfigError(raw.key, f"must not contain spaces, got {_show(text)}")
    # One rule for host -> data URL, shared with the meter client.
    return normalise_p1_url(text, key=raw.key)


def _as_topic(raw: _Raw) -> str:
    text = _as_str(raw)
    if not text:
        raise ConfigError(raw.key, "must not be empty")
    if "+" in text or "#" in text:
        raise ConfigError(raw.key, f"must not contain MQTT wildcards (+, #), got {_show(text)}")
    if text.startswith("/") or text.endswith("/") or "//" in text:
        raise ConfigError(
            raw.key, f"must not start or end with '/' or contain '//', got {_show(text)}"
        )
    return text


def _as_name(raw: _Raw) -> str:
    text = _as_str(raw)
    if not text:
        raise ConfigError(raw.key, "must not be empty")
    return text


# --------------------------------------------------------------------------------------------
# Building the config
# --------------------------------------------------------------------------------------------

_POWER_MAX_W: Final = 100_000  # sanity bound for fleet-level powers (40 Venus E)
_PERIOD_MAX_S: Final = 86_400.0
# Periods that must be strictly positive (a zero would spin or never expire).
_LOG_LEVELS_LOWER: Final = tuple(level.lower() for level in LOG_LEVELS)
_STRICT_PERIODS: Final = frozenset(
    {"loop_period_s", "reselect_interval_s", "stale_after_s", "control_recheck_s"}
)


def _control_parser(name: str, default: object) -> Callable[[_Raw], object]:
    """How to read a ``ControlSettings`` field, from its name's unit suffix and default type."""
    if name == "policy":
        return _choice(POLICIES)
    if name == "grid_target_w":
        return _int_in(-_POWER_MAX_W, _POWER_MAX_W)
    if name == "noise_alpha":
        return _float_in(0.0, 1.0, lo_open=True)
    if isinstance(default, bool):
        return _as_bool
    if isinstance(default, int):
        if name.endswith("_w"):
            return _int_in(0, _POWER_MAX_W)
        return _int_in(1, None)  # counts
    if isinstance(default, float):
        if name.endswith("_pct"):
            return _float_in(0.0, 100.0)
        if name.endswith("_s"):
            return _float_in(0.0, _PERIOD_MAX_S, lo_open=name in _STRICT_PERIODS)
        if name.endswith("_w"):
            return _float_in(0.0, float(_POWER_MAX_W))
        return _float_in(None, None)
    return _as_str


class _Resolver:
    """Looks settings up through the layers, highest precedence first."""

    def __init__(self, layers: list[_Layer]) -> None:
        self._layers = layers

    def raw(self, *canons: str) -> _Raw | None:
        for layer in self._layers:
            for canon in canons:
                if canon in layer:
                    return layer[canon]
        return None

    def get(self, canon: str, parse: Callable[[_Raw], _T], default: _T) -> _T:
        raw = self.raw(canon)
        return default if raw is None else parse(raw)

    def opt(self, canon: str, parse: Callable[[_Raw], _T]) -> _T | None:
        raw = self.raw(canon)
        return None if raw is None else parse(raw)

    def under(self, prefix: str) -> list[_Raw]:
        """Every raw value whose canonical key starts with ``prefix``, highest layer first."""
        return [
            raw
            for layer in self._layers
            for canon, raw in sorted(layer.items())
            if canon.startswith(prefix)
        ]


def _build_meter(r: _Resolver) -> MeterConfig:
    raw = r.raw("meter.url", "meter.host")
    if raw is None:
        raise ConfigError(
            "P1_API_URL",
            f"not set: give the P1 meter's data URL (P1_API_URL=http://192.168.1.50"
            f"{METER_DATA_PATH}), or its address as P1_HOST, or [meter] url in the config file",
        )
    url = _as_data_url(raw, "P1_HOST") if raw.canon == "meter.url" else _as_meter_host(raw)
    timeout_s = r.get("meter.timeout_s", _float_in(0.0, 60.0, lo_open=True), 2.0)
    return MeterConfig(url=url, timeout_s=timeout_s)


def _build_pv(r: _Resolver, warnings: list[str]) -> PvMeterConfig | None:
    raw = r.raw("pv_meter.url")
    if raw is None:
        warnings.extend(
            f"{x.key}: ignored because PV_API_URL is not set" for x in r.under("pv_meter.")
        )
        return None
    return PvMeterConfig(
        url=_as_data_url(raw, "PV_API_URL"),
        negative_when_producing=r.get("pv_meter.negative_when_producing", _as_bool, True),
        timeout_s=r.get("pv_meter.timeout_s", _float_in(0.0, 60.0, lo_open=True), 2.0),
    )


def _battery_numbers(r: _Resolver) -> list[int]:
    numbers = {int(raw.canon.split(".")[1]) for raw in r.under("battery.")}
    return sorted(numbers)


def _build_batteries(r: _Resolver) -> tuple[BatteryConfig, ...]:
    batteries: list[BatteryConfig] = []
    seen: dict[tuple[str, int, int], str] = {}
    for n in _battery_numbers(r):
        p = f"battery.{n}."
        host_raw = r.raw(p + "host")
        if host_raw is None:
            other = r.under(p)[0]
            raise ConfigError(
                other.key, f"set, but battery {n} has no IP address (BATTERY_{n}_IP / host)"
            )
        power = _int_in(0, VENUS_E_MAX_POWER_W)
        battery = BatteryConfig(
            name=f"battery_{n}",
            index=n,
            host=_as_host(host_raw),
            port=r.get(p + "port", _int_in(1, 65535), MODBUS_PORT),
            unit_id=r.get(p + "unit_id", _int_in(0, 247), 1),
            max_charge_w=r.get(p + "max_charge_w", power, VENUS_E_MAX_POWER_W),
            max_discharge_w=r.get(p + "max_discharge_w", power, VENUS_E_MAX_POWER_W),
            capacity_wh=r.get(
                p + "capacity_wh", _float_in(0.0, 1_000_000.0, lo_open=True), VENUS_E_CAPACITY_WH
            ),
            message_gap_s=r.get(p + "message_gap_s", _float_in(0.0, 10.0), 0.05),
            timeout_s=r.get(p + "timeout_s", _float_in(0.0, 60.0, lo_open=True), 1.0),
        )
        device = (battery.host.lower(), battery.port, battery.unit_id)
        if device in seen:
            raise ConfigError(
                host_raw.key,
                f"{battery.name} is the same device as {seen[device]}"
                f" ({battery.host}:{battery.port} unit {battery.unit_id})",
            )
        seen[device] = battery.name
        batteries.append(battery)
    if not batteries:
        raise ConfigError(
            "BATTERY_1_IP",
            "no battery configured: set BATTERY_1_IP (and BATTERY_2_IP, ... for more),"
            " or add a [[battery]] to the config file",
        )
    return tuple(batteries)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _build_mqtt(r: _Resolver, warnings: list[str]) -> MqttConfig | None:
    host_raw = r.raw("mqtt.host")
    if host_raw is None:
        warnings.extend(
            f"{x.key}: ignored because MQTT_HOST is not set (MQTT is off)" for x in r.under("mqtt.")
        )
        return None
    ca_file = r.opt("mqtt.tls_ca_file", _as_name)
    tls_raw = r.raw("mqtt.tls")
    tls = _as_bool(tls_raw) if tls_raw is not None else ca_file is not None
    if ca_file is not None:
        ca_raw = r.raw("mqtt.tls_ca_file")
        assert ca_raw is not None
        if not tls:
            raise ConfigError(ca_raw.key, "set, but TLS is off (MQTT_TLS=false)")
        if not _is_file(Path(ca_file)):
            raise ConfigError(ca_raw.key, f"file not found: {ca_file}")
    username = r.opt("mqtt.username", _as_name)
    password_raw = r.raw("mqtt.password")
    password: str | None = None
    if password_raw is not None:
        if not isinstance(password_raw.value, (str, int)) or isinstance(password_raw.value, bool):
            raise ConfigError(password_raw.key, "expected a string")
        password = str(password_raw.value)
        if username is None:
            raise ConfigError(password_raw.key, "set without a user name (MQTT_USERNAME)")
    min_interval_s = r.get("mqtt.min_interval_s", _float_in(0.0, 3600.0), 5.0)
    max_interval_s = r.get("mqtt.max_interval_s", _float_in(0.0, 86_400.0, lo_open=True), 60.0)
    if max_interval_s < min_interval_s:
        raw = r.raw("mqtt.max_interval_s") or r.raw("mqtt.min_interval_s")
        assert raw is not None
        raise ConfigError(
            raw.key,
            f"the maximum publish interval ({max_interval_s:g} s) is below the minimum"
            f" ({min_interval_s:g} s)",
        )
    return MqttConfig(
        host=_as_host(host_raw),
        port=r.get("mqtt.port", _int_in(1, 65535), MQTT_TLS_PORT if tls else MQTT_PORT),
        username=username,
        password=password,
        tls=tls,
        tls_ca_file=ca_file,
        topic_prefix=r.get("mqtt.topic_prefix", _as_topic, "mmbc"),
        discovery=r.get("mqtt.discovery", _as_bool, True),
        discovery_prefix=r.get("mqtt.discovery_prefix", _as_topic, "homeassistant"),
        min_interval_s=min_interval_s,
        max_interval_s=max_interval_s,
        client_id=r.opt("mqtt.client_id", _as_name),
    )


def _build_http(r: _Resolver, warnings: list[str]) -> HttpConfig | None:
    port = r.get("http.port", _int_in(0, 65535), HTTP_PORT)
    if not r.get("http.enabled", _as_bool, True) or port == 0:
        warnings.extend(
            f"{x.key}: ignored because the HTTP server is off"
            for x in r.under("http.")
            if x.canon not in {"http.enabled", "http.port"}
        )
        return None
    host_raw = r.raw("http.host")
    token_raw = r.raw("http.token")
    token: str | None = None
    if token_raw is not None:
        if not isinstance(token_raw.value, str | int) or isinstance(token_raw.value, bool):
            raise ConfigError(token_raw.key, "expected a string")
        token = str(token_raw.value)
        if len(token) < MIN_TOKEN_CHARS:  # a guessable token is worse than none
            raise ConfigError(
                token_raw.key, f"too short: use at least {MIN_TOKEN_CHARS} characters"
            )
    return HttpConfig(
        host="" if host_raw is None else _as_host(host_raw),
        port=port,
        token=token,
    )


def _build_control(r: _Resolver) -> dict[str, object]:
    defaults = ControlSettings()
    overrides: dict[str, object] = {}
    for name in sorted(ControlSettings.field_names()):
        raw = r.raw(f"control.{name}")
        if raw is not None:
            overrides[name] = _control_parser(name, getattr(defaults, name))(raw)
    min_soc = overrides.get("min_soc_pct", defaults.min_soc_pct)
    max_soc = overrides.get("max_soc_pct", defaults.max_soc_pct)
    numbers = (int, float)
    if isinstance(min_soc, numbers) and isinstance(max_soc, numbers) and min_soc >= max_soc:
        raw = r.raw("control.min_soc_pct") or r.raw("control.max_soc_pct")
        assert raw is not None
        raise ConfigError(
            raw.key,
            f"the discharge floor min_soc_pct ({min_soc:g} %) must be below the charge ceiling"
            f" max_soc_pct ({max_soc:g} %)",
        )
    return overrides


def _build(layers: list[_Layer], sources: tuple[str, ...], warnings: list[str]) -> EngineConfig:
    r = _Resolver(layers)
    for layer in layers:
        if "meter.url" in layer and "meter.host" in layer:
            warnings.append(
                f"{layer['meter.host'].key}: ignored because {layer['meter.url'].key} is set"
            )
    meter = _build_meter(r)
    pv_meter = _build_pv(r, warnings)
    batteries = _build_batteries(r)
    mqtt = _build_mqtt(r, warnings)
    http = _build_http(r, warnings)
    overrides = _build_control(r)
    try:
        control = ControlSettings().with_overrides(overrides)
    except (KeyError, TypeError) as exc:  # our parsers produce the right types; belt and braces
        raise ConfigError("control", str(exc)) from None
    control = replace(control, batteries=tuple(b.spec() for b in batteries))
    return EngineConfig(
        meter=meter,
        pv_meter=pv_meter,
        batteries=batteries,
        mqtt=mqtt,
        control=control,
        http=http,
        log_level=r.get("log.level", _choice(_LOG_LEVELS_LOWER), "info").upper(),
        log_format=r.get("log.format", _choice(LOG_FORMATS), "text"),
        dry_run=r.get("dry_run", _as_bool, False),
        sources=sources,
        warnings=tuple(warnings),
    )


def build_config(
    *,
    environ: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str] | None = None,
    toml: Mapping[str, object] | None = None,
    options: Mapping[str, object] | None = None,
    sources: tuple[str, ...] = (),
) -> EngineConfig:
    """Validate already-read sources (highest precedence first) into an ``EngineConfig``.

    ``environ`` and ``dotenv`` map variable names to strings; ``toml`` is a parsed TOML
    document; ``options`` a parsed Home Assistant ``options.json``. Raises ``ConfigError``.
    """
    warnings: list[str] = []
    layers: list[_Layer] = []
    if environ is not None:
        layers.append(_env_layer(environ, warnings))
    if dotenv is not None:
        layers.append(_env_layer(dotenv, warnings))
    if toml is not None:
        layers.append(_toml_layer(toml))
    if options is not None:
        layers.append(_options_layer(options, warnings))
    return _build(layers, sources, warnings)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DQ_ESCAPES: Final = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "$": "$"}


def _dotenv_value(text: str, where: str) -> str:
    """The value part of a ``.env`` line (already stripped of surrounding blanks)."""
    if text[:1] == "'":
        end = text.find("'", 1)
        if end < 0:
            raise ConfigError(where, "unterminated single quote")
        value, rest = text[1:end], text[end + 1 :]
    elif text[:1] == '"':
        chars: list[str] = []
        i = 1
        while True:
            if i >= len(text):
                raise ConfigError(where, "unterminated double quote")
            ch = text[i]
            if ch == '"':
                break
            if ch == "\\" and i + 1 < len(text) and text[i + 1] in _DQ_ESCAPES:
                chars.append(_DQ_ESCAPES[text[i + 1]])
                i += 2
                continue
            chars.append(ch)
            i += 1
        value, rest = "".join(chars), text[i + 1 :]
    else:
        # An unquoted value ends at " #" (an inline comment), as in python-dotenv.
        match = re.search(r"\s#", text)
        return (text[: match.start()] if match else text).strip()
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise ConfigError(where, f"unexpected text after the closing quote: {_show(rest)}")
    return value


def parse_dotenv(text: str, *, source: str = ".env") -> dict[str, str]:
    """``KEY=VALUE`` lines with ``#`` comments, optional quotes and an optional ``export``."""
    result: dict[str, str] = {}
    for lineno, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        if stripped.startswith(("export ", "export\t")):
            stripped = stripped[len("export") :].lstrip()
        key, sep, rest = stripped.partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY_RE.fullmatch(key):
            raise ConfigError(where, f"expected KEY=VALUE, got {_show(line.strip())}")
        result[key] = _dotenv_value(rest.strip(), f"{where} ({key})")
    return result


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not a UTF-8 text file") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(str(path), f"cannot read: {reason}") from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None


def _read_options(path: Path) -> dict[str, object]:
    try:
        data = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(str(path), f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "expected a JSON object")
    return data


def _pick_file(explicit: Path | None, default: Path, discover: bool) -> Path | None:
    if explicit is not None:
        return explicit
    return default if discover and _is_file(default) else None


def load_config(
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    dotenv_file: Path | None = None,
    options_file: Path | None = None,
    discover_files: bool = True,
) -> EngineConfig:
    """Read and validate every source; raises ``ConfigError(key, problem)``.

    ``environ`` defaults to ``os.environ``. ``config_file`` is the TOML file (``--config``); if
    ``None``, ``MMBC_CONFIG`` from the environment or ``.env`` names it. ``dotenv_file`` and
    ``options_file`` default to ``./.env`` and ``/data/options.json`` when those exist (and
    ``discover_files`` is true). An explicitly named file that is missing is an error.
    """
    env = dict(os.environ if environ is None else environ)
    sources: list[str] = ["environment"]
    dotenv_path = _pick_file(dotenv_file, DEFAULT_DOTENV_FILE, discover_files)
    dotenv: dict[str, str] | None = None
    if dotenv_path is not None:
        dotenv = parse_dotenv(_read_text(dotenv_path), source=str(dotenv_path))
        sources.append(str(dotenv_path))
    toml_path = config_file
    if toml_path is None:
        named = env.get(_CONFIG_FILE_ENV, "").strip() or (dotenv or {}).get(_CONFIG_FILE_ENV, "")
        toml_path = Path(named.strip()) if named.strip() else None
    toml: dict[str, object] | None = None
    if toml_path is not None:
        toml = _read_toml(toml_path)
        sources.append(str(toml_path))
    options_path = _pick_file(options_file, DEFAULT_OPTIONS_FILE, discover_files)
    options: dict[str, object] | None = None
    if options_path is not None:
        options = _read_options(options_path)
        sources.append(str(options_path))
    return build_config(
        environ=env, dotenv=dotenv, toml=toml, options=options, sources=tuple(sources)
    )
