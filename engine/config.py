"""Where the engine's settings come from: environment, ``.env``, TOML and Home Assistant options.

What a valid value is, and every default, lives in ``engine.settings``; this module only finds
the values, under the names users write, and hands them over to be validated once. Sources,
highest precedence first:

1. the process environment (``docker run --env-file .env`` lands here),
2. a ``.env`` file (default: ``./.env`` if present), read with python-dotenv's parser,
3. a TOML file (``--config`` or ``MMBC_CONFIG``),
4. a Home Assistant add-on ``/data/options.json`` (if present),
5. the defaults (the models').

Each setting is taken from the highest source that sets it; batteries are matched by number, so
``BATTERY_2_PORT`` in the environment overrides the port of the second ``[[battery]]``. An empty
value means "not set". Every problem raises ``ConfigError(key, problem)`` naming the key as the
user wrote it; the value of a secret is never shown. docs/configuration.md lists every setting.
"""

from __future__ import annotations

import difflib
import io
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import EnumMeta
from pathlib import Path
from typing import Any, Final, get_args

from annotated_types import Ge, Gt, Le, Lt
from dotenv.parser import parse_stream
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from engine.core.settings import ControlSettings, WarnAbove
from engine.errors import ConfigError
from engine.settings import (
    MAX_BATTERY_NUMBER,
    BatterySettings,
    EngineSettings,
    HttpSettings,
    LogSettings,
    MeterSettings,
    MqttSettings,
    PvMeterSettings,
    meter_url_from_host,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_DOTENV_FILE",
    "DEFAULT_OPTIONS_FILE",
    "INTERNAL_FIELDS",
    "NAMES",
    "SECTIONS",
    "SettingName",
    "build_config",
    "config_error_exit_message",
    "env_names",
    "load_config",
    "load_meter_config",
    "parse_dotenv",
    "section_fields",
]

DEFAULT_DOTENV_FILE: Final = Path(".env")
DEFAULT_OPTIONS_FILE: Final = Path("/data/options.json")
HOSTS_FILE: Final = Path("/etc/hosts")
CONFIG_FILE_ENV: Final = "MMBC_CONFIG"


def config_error_exit_message(err: ConfigError) -> str:
    """The one message printed before exiting with status 2."""
    return f"invalid configuration: {err.key}: {err.problem} (see docs/configuration.md)"


# --- names ----------------------------------------------------------------------------------------

# The model behind each section; "" is the top level, "battery" one [[battery]] / BATTERY_<n>_*.
SECTIONS: Final[dict[str, type[Any]]] = {
    "meter": MeterSettings,
    "pv_meter": PvMeterSettings,
    "battery": BatterySettings,
    "mqtt": MqttSettings,
    "control": ControlSettings,
    "log": LogSettings,
    "http": HttpSettings,
    "": EngineSettings,
}
_ENV_PREFIX: Final = {
    "meter": "MMBC_P1_",
    "pv_meter": "MMBC_PV_",
    "battery": "",
    "mqtt": "MQTT_",
    "control": "MMBC_",
    "log": "MMBC_LOG_",
    "http": "HTTP_",
    "": "MMBC_",
}
_ENV_EXCEPTIONS: Final[dict[tuple[str, str], str]] = {
    ("meter", "url"): "P1_API_URL",
    ("meter", "host"): "P1_HOST",
    ("meter", "api"): "P1_API",
    ("meter", "serial"): "P1_SERIAL",
    ("meter", "token"): "P1_TOKEN",
    ("meter", "token_file"): "P1_TOKEN_FILE",
    ("meter", "ca_file"): "P1_CA_FILE",
    ("meter", "push"): "P1_PUSH",
    ("meter", "mdns_interfaces"): "P1_MDNS_INTERFACES",
    ("pv_meter", "url"): "PV_API_URL",
    ("pv_meter", "serial"): "PV_SERIAL",
    ("pv_meter", "negative_when_producing"): "PV_NEGATIVE_WHEN_PRODUCING",
    ("mqtt", "tls_ca_file"): "MQTT_CA_FILE",
    ("mqtt", "tls_cert_file"): "MQTT_CERT_FILE",
    ("mqtt", "tls_key_file"): "MQTT_KEY_FILE",
    ("battery", "host"): "IP",  # BATTERY_<n>_IP
    ("battery", "unit_id"): "ADDRESS",
}
USER_TOP_LEVEL: Final = frozenset({"dry_run", "state_file"})  # top-level fields that are settings
# Model fields that are not user settings: sections, derived values, connection tuning.
INTERNAL_FIELDS: Final = frozenset(
    {("battery", "number"), ("control", "batteries")}
    | {
        ("mqtt", name)
        for name in ("keepalive_s", "timeout_s", "reconnect_min_s", "reconnect_max_s")
    }
    | {("", name) for name in EngineSettings.model_fields if name not in USER_TOP_LEVEL}
)


def section_fields(section: str) -> dict[str, FieldInfo]:
    """The fields of a section's model (a pydantic model or dataclass) with defaults, bounds,
    meanings."""
    fields: dict[str, FieldInfo] = SECTIONS[section].__pydantic_fields__
    return fields


METER_HOST_HELP: Final = (
    "The meter's address or base URL: `192.168.1.50`, `http://192.168.1.50` or"
    " `http://192.168.1.50/api` all mean `http://192.168.1.50/api/v1/data` over API v1, and"
    " `https://192.168.1.50` over API v2 (a port may follow: `192.168.1.50:8443`). Used when no"
    " URL is set in the same or a higher source."
)


@dataclass(frozen=True, slots=True)
class SettingName:
    """One user setting under each of its names. For batteries: the part after ``<n>``."""

    section: str
    field: str
    env: str  # "MQTT_CA_FILE"; batteries: "IP" as in BATTERY_<n>_IP
    toml: str  # "mqtt.tls_ca_file"; batteries: the [[battery]] key "host"; top level: "dry_run"
    option: str  # "mqtt_ca_file"; batteries: "ip" as in battery_<n>_ip

    @property
    def path(self) -> tuple[str, str]:
        return (self.section, self.field)


def _setting_name(section: str, field: str) -> SettingName:
    env = _ENV_EXCEPTIONS.get((section, field)) or _ENV_PREFIX[section] + field.upper()
    if section == "battery":
        return SettingName(section, field, env, field, env.lower())
    toml = f"{section}.{field}" if section else field
    return SettingName(section, field, env, toml, env.lower().removeprefix("mmbc_"))


def _all_names() -> tuple[SettingName, ...]:
    names: list[SettingName] = []
    for section in SECTIONS:
        for field in section_fields(section):
            if (section, field) not in INTERNAL_FIELDS:
                names.append(_setting_name(section, field))
    return tuple(names)


NAMES: Final = _all_names()
_BY_ENV: Final = {n.env: n for n in NAMES if n.section != "battery"}
_BY_OPTION: Final = {n.option: n for n in NAMES if n.section != "battery"}
_BATTERY_BY_ENV: Final = {n.env: n for n in NAMES if n.section == "battery"}
_BATTERY_BY_OPTION: Final = {
    **{n.option: n for n in NAMES if n.section == "battery"},
    **{n.field: n for n in NAMES if n.section == "battery"},  # "host", "unit_id" as well
}
_BATTERY_BY_TOML: Final = {n.toml: n for n in NAMES if n.section == "battery"}
_TOML_SECTIONS: Final = {
    section: {n.field: n for n in NAMES if n.section == section}
    for section in SECTIONS
    if section not in ("", "battery")
}
_TOML_TOP: Final = {n.field: n for n in NAMES if n.section == ""}
# Older names from upstream MMBC's .env, read when the current name is absent.
_ENV_ALIASES: Final = {"MQTT_HA_DISCOVERY": "MQTT_DISCOVERY"}
# Upstream names that no longer mean anything: a warning, not an error, so old .env files work.
_IGNORED: Final = {
    "INTERVAL_SECONDS": "ignored; the loop period is MMBC_LOOP_PERIOD_S",
    "SELF_CONTROL_AVAILABLE": "ignored; MMBC always returns batteries to their own mode on exit",
    "MMBC_OFFLINE_AFTER_FAILURES": "ignored; it never had an effect",  # documented until 2.0
}
_BATTERY_ENV: Final = re.compile(r"BATTERY_([0-9]+)_(.+)")
_BATTERY_OPTION: Final = re.compile(r"battery_([0-9]+)_(.+)")


def env_names() -> frozenset[str]:
    """Every environment variable name MMBC reads (``BATTERY_1_*`` stands for any ``n``)."""
    battery = {f"BATTERY_1_{suffix}" for suffix in _BATTERY_BY_ENV}
    return frozenset({*_BY_ENV, *_ENV_ALIASES, CONFIG_FILE_ENV, *battery})


# --- raw values from the sources --------------------------------------------------------------

# ("meter", "url"), ("battery", 2, "host"), ("", "dry_run")
_Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class _Value:
    key: str  # as the user wrote it, for messages
    value: object  # str from the environment, any TOML/JSON value from files


_Layer = dict[_Path, _Value]


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.75)
    return f"unknown setting (did you mean {close[0]}?)" if close else "unknown setting"


def _shown_key(key: object) -> str:
    """A key as written, quoted when it would otherwise be invisible or ambiguous."""
    text = str(key)
    if not text.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in text) or len(text) > 60:
        return json.dumps(text[:60])
    return text


def _is_unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _battery_number(key: str, digits: str) -> int:
    if digits.startswith("0") or len(digits) > len(str(MAX_BATTERY_NUMBER)):
        msg = f"battery numbers run from 1 to {MAX_BATTERY_NUMBER}, without leading zeros"
        raise ConfigError(key, msg)
    return int(digits)


def _env_path(key: str) -> _Path | None:
    """Where an environment variable goes; ``None`` for variables that are not MMBC's."""
    match = _BATTERY_ENV.fullmatch(key)
    if match is not None:
        n = _battery_number(key, match.group(1))
        name = _BATTERY_BY_ENV.get(match.group(2))
        if name is None:
            raise ConfigError(key, _suggest(key, [f"BATTERY_{n}_{s}" for s in _BATTERY_BY_ENV]))
        return ("battery", n, name.field)
    if key in _BY_ENV:
        return _BY_ENV[key].path
    if key.startswith("MMBC_"):
        raise ConfigError(key, _suggest(key, [k for k in _BY_ENV if k.startswith("MMBC_")]))
    return None  # PATH, HOME, HOSTNAME, ...: not ours


def _env_layer(environ: Mapping[str, str], warnings: list[str]) -> _Layer:
    layer: _Layer = {}
    for key in sorted(environ):
        if key in _IGNORED:
            warnings.append(f"{key}: {_IGNORED[key]}")
        elif key not in _ENV_ALIASES and key != CONFIG_FILE_ENV:
            path = _env_path(key)
            if path is not None and not _is_unset(environ[key]):
                layer[path] = _Value(key, environ[key].strip())
    for alias, current in _ENV_ALIASES.items():
        path = _BY_ENV[current].path
        if path not in layer and not _is_unset(environ.get(alias)):
            layer[path] = _Value(alias, environ[alias].strip())
    return layer


def _toml_layer(data: Mapping[str, object]) -> _Layer:
    layer: _Layer = {}
    for top in sorted(data):
        value = data[top]
        if top in _TOML_TOP:
            if not _is_unset(value):
                layer[_TOML_TOP[top].path] = _Value(top, value)
        elif top == "battery":
            if not isinstance(value, list):
                raise ConfigError(top, "expected an array of tables ([[battery]])")
            for i, entry in enumerate(value):
                where = f"battery[{i}]"
                if not isinstance(entry, dict):
                    raise ConfigError(where, "expected a table ([[battery]])")
                for key in sorted(entry):
                    if key not in _BATTERY_BY_TOML:
                        raise ConfigError(
                            f"{where}.{_shown_key(key)}", _suggest(key, _BATTERY_BY_TOML)
                        )
                    if not _is_unset(entry[key]):
                        path = ("battery", i + 1, _BATTERY_BY_TOML[key].field)
                        layer[path] = _Value(f"{where}.{key}", entry[key])
        elif top in _TOML_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(top, f"expected a table ([{top}])")
            known = _TOML_SECTIONS[top]
            for key in sorted(value):
                if key not in known:
                    raise ConfigError(f"{top}.{_shown_key(key)}", _suggest(key, known))
                if not _is_unset(value[key]):
                    layer[known[key].path] = _Value(f"{top}.{key}", value[key])
        else:
            known_tops = [*_TOML_SECTIONS, "battery", *_TOML_TOP]
            raise ConfigError(_shown_key(top), _suggest(top, known_tops))
    return layer


def _options_layer(data: Mapping[str, object], warnings: list[str]) -> _Layer:
    layer: _Layer = {}
    flat_battery_key: str | None = None
    list_battery_key: str | None = None
    aliased: list[tuple[str, _Path, object]] = []
    for key in sorted(data):
        value = data[key]
        lower = key.lower().removeprefix("mmbc_")
        match = _BATTERY_OPTION.fullmatch(lower)
        path: _Path
        ignored = _IGNORED.get(lower.upper()) or _IGNORED.get(f"MMBC_{lower.upper()}")
        if ignored is not None:
            warnings.append(f"{key}: {ignored}")
            continue
        if lower == "batteries":
            if value:  # an add-on's empty default list does not clash with battery_<n>_* keys
                list_battery_key = key
            _options_battery_list(key, value, layer)
            continue
        if match is not None:
            n = _battery_number(key, match.group(1))
            name = _BATTERY_BY_OPTION.get(match.group(2))
            if name is None:
                known = [f"battery_{n}_{s}" for s in _BATTERY_BY_OPTION]
                raise ConfigError(_shown_key(key), _suggest(lower, known))
            path = ("battery", n, name.field)
            flat_battery_key = key
        elif lower.upper() in _ENV_ALIASES:
            aliased.append((key, _BY_ENV[_ENV_ALIASES[lower.upper()]].path, value))
            continue
        elif lower in _BY_OPTION:
            path = _BY_OPTION[lower].path
        else:
            raise ConfigError(_shown_key(key), _suggest(lower, [*_BY_OPTION, "batteries"]))
        if path in layer and layer[path].key != key:
            raise ConfigError(key, f"same setting as {layer[path].key}; give only one")
        if not _is_unset(value):
            layer[path] = _Value(key, value)
    if flat_battery_key is not None and list_battery_key is not None:
        raise ConfigError(
            flat_battery_key, f"give batteries either as {list_battery_key!r} or as battery_<n>_*"
        )
    for key, path, value in aliased:
        if path not in layer and not _is_unset(value):
            layer[path] = _Value(key, value)
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
            setting = _BATTERY_BY_OPTION.get(str(name).lower())
            if setting is None:
                problem = _suggest(str(name).lower(), _BATTERY_BY_OPTION)
                raise ConfigError(f"{where}.{_shown_key(name)}", problem)
            path = ("battery", i + 1, setting.field)
            if path in layer:
                raise ConfigError(f"{where}.{name}", f"same setting as {layer[path].key}")
            if not _is_unset(entry[name]):
                layer[path] = _Value(f"{where}.{name}", entry[name])


# --- from raw values to validated settings --------------------------------------------------

_METER_URL: Final = ("meter", "url")
_METER_HOST: Final = ("meter", "host")


def _merge(layers: list[_Layer], warnings: list[str]) -> _Layer:
    """Highest precedence first; the meter's URL and host are one setting."""
    merged: _Layer = {}
    for layer in layers:
        if _METER_URL in layer and _METER_HOST in layer:
            url, host = layer[_METER_URL], layer.pop(_METER_HOST)
            warnings.append(f"{host.key}: ignored because {url.key} is set")
        meter_taken = _METER_URL in merged or _METER_HOST in merged
        for path, value in layer.items():
            if not (meter_taken and path in (_METER_URL, _METER_HOST)):
                merged.setdefault(path, value)
    given = merged.get(_METER_HOST)
    if given is not None:
        if not isinstance(given.value, str):
            raise ConfigError(given.key, f"expected a string, got {_show(given.value)}")
        try:
            # The API v1 URL it means; over API v2 the host itself is used.
            merged[_METER_URL] = _Value(given.key, meter_url_from_host(given.value))
        except ValueError as exc:
            raise ConfigError(given.key, str(exc)) from None
    return merged


def _drop_switched_off(merged: _Layer, warnings: list[str]) -> None:
    """A PV meter without URL or serial, or MQTT without host, is off: their other settings
    are ignored."""
    for section, needed, why in (
        ("pv_meter", ("url", "serial"), "neither PV_API_URL nor PV_SERIAL is set"),
        ("mqtt", ("host",), "MQTT_HOST is not set (MQTT is off)"),
    ):
        if not any((section, name) in merged for name in needed):
            for path in sorted(p for p in merged if p[0] == section):
                warnings.append(f"{merged.pop(path).key}: ignored because {why}")


def _check_presence(merged: _Layer) -> list[int]:
    """The settings without a default: at least one battery with its IP (without an address
    the P1 meter is found on the network)."""
    numbers = sorted({int(p[1]) for p in merged if p[0] == "battery"})
    for n in numbers:
        if ("battery", n, "host") not in merged:
            key = min(v.key for p, v in merged.items() if p[:2] == ("battery", n))
            raise ConfigError(
                key, f"set, but battery {n} has no IP address (BATTERY_{n}_IP / host)"
            )
    if not numbers:
        raise ConfigError(
            "BATTERY_1_IP",
            "no battery configured: set BATTERY_1_IP (and BATTERY_2_IP, ... for more),"
            " or add a [[battery]] to the config file",
        )
    return numbers


def _nested(merged: _Layer, numbers: list[int]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    batteries: dict[int, dict[str, object]] = {n: {"number": n} for n in numbers}
    for path, raw in merged.items():
        if path[0] == "battery":
            batteries[int(path[1])][str(path[2])] = raw.value
        elif path[0] == "":
            data[str(path[1])] = raw.value
        else:
            data.setdefault(str(path[0]), {})[str(path[1])] = raw.value
    data["batteries"] = [batteries[n] for n in numbers]
    return data


def _build(layers: list[_Layer], sources: tuple[str, ...], warnings: list[str]) -> EngineSettings:
    merged = _merge(layers, warnings)
    _drop_switched_off(merged, warnings)
    numbers = _check_presence(merged)
    try:
        settings = EngineSettings.model_validate({**_nested(merged, numbers), "sources": sources})
    except ValidationError as exc:
        raise _config_error(exc.errors()[0], merged, numbers) from None
    _check_distinct_devices(settings, merged)
    warnings.extend(_risky_values(settings, merged))
    return settings.model_copy(update={"warnings": tuple(warnings)})


def build_config(
    *,
    environ: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str] | None = None,
    toml: Mapping[str, object] | None = None,
    options: Mapping[str, object] | None = None,
    sources: tuple[str, ...] = (),
) -> EngineSettings:
    """Validate already-read sources (highest precedence first) into ``EngineSettings``.

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


# --- checks that need more than one value or the host ---------------------------------------------


def _hosts_table(path: Path) -> dict[str, frozenset[str]]:
    """Names to addresses from the hosts file (local and instant; DNS is never asked)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(words[0].split("%", 1)[0]))
        except ValueError:
            continue
        for name in words[1:]:
            table.setdefault(name.lower().rstrip("."), set()).add(address)
    return {name: frozenset(addresses) for name, addresses in table.items()}


def _addresses(host: str, hosts: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """What a battery's host resolves to locally; the name itself when it does not resolve."""
    name = host.strip().lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name.removeprefix("[").removesuffix("]").split("%", 1)[0])
    except ValueError:
        pass
    else:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return frozenset({str(mapped or ip)})
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always the loopback
        return frozenset({"127.0.0.1", "::1"})
    return hosts.get(name) or frozenset({name})


def _check_distinct_devices(settings: EngineSettings, merged: _Layer) -> None:
    """Two batteries at the same address, port and unit id are one device configured twice."""
    hosts = _hosts_table(HOSTS_FILE)
    seen: list[tuple[frozenset[str], BatterySettings]] = []
    for battery in settings.batteries:
        addresses = _addresses(battery.host, hosts)
        for other_addresses, other in seen:
            same_link = (battery.port, battery.unit_id) == (other.port, other.unit_id)
            if same_link and addresses & other_addresses:
                alias = "" if battery.host == other.host else f", as {other.host}"
                raise ConfigError(
                    merged[("battery", battery.number, "host")].key,
                    f"{battery.name} is the same device as {other.name}"
                    f" ({battery.host}:{battery.port} unit {battery.unit_id}{alias})",
                )
        seen.append((addresses, battery))


def _risky_values(settings: EngineSettings, merged: _Layer) -> list[str]:
    """Warnings for accepted values that weaken a safety (``WarnAbove`` in the models)."""
    remarks: list[str] = []
    for path, raw in sorted(merged.items(), key=lambda item: item[1].key):
        if path[0] in ("battery", ""):
            continue
        field = _field_info(path)
        section: object = getattr(settings, str(path[0]))
        value = getattr(section, str(path[1]), None)
        for mark in field.metadata if field is not None else ():
            if (
                isinstance(mark, WarnAbove)
                and isinstance(value, int | float)
                and value > mark.limit
            ):
                remarks.append(
                    f"{raw.key}: {_num(value)} is above {_num(mark.limit)}; {mark.reason}"
                )
    return remarks


# --- messages -----------------------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(number: object) -> str:
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return str(number).strip() if isinstance(number, str) else str(number)


def _field_info(path: _Path) -> FieldInfo | None:
    section = str(path[0])
    return section_fields(section).get(str(path[-1])) if section in SECTIONS else None


def _is_secret(field: FieldInfo | None) -> bool:
    def mentions(annotation: object) -> bool:
        return annotation is SecretStr or any(mentions(arg) for arg in get_args(annotation))

    return field is not None and mentions(field.annotation)


def _range_problem(field: FieldInfo | None, kind: str) -> str:
    low: float | None = None
    low_open = False
    high: float | None = None
    for mark in field.metadata if field is not None else ():
        if isinstance(mark, Ge):
            low = float(mark.ge)  # type: ignore[arg-type]
        elif isinstance(mark, Gt):
            low, low_open = float(mark.gt), True  # type: ignore[arg-type]
        elif isinstance(mark, Le):
            high = float(mark.le)  # type: ignore[arg-type]
        elif isinstance(mark, Lt):
            high = float(mark.lt)  # type: ignore[arg-type]
    if low is not None and high is not None and not low_open:
        return f"must be between {_num(low)} and {_num(high)}"
    if kind.startswith("greater") and low is not None:
        return f"must be greater than {_num(low)}" if low_open else f"must be at least {_num(low)}"
    if high is not None:
        return f"must be at most {_num(high)}"
    return "out of range"


def _problem(error: ErrorDetails, field: FieldInfo | None) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    got = "" if _is_secret(field) else f", got {_show(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer{got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"expected a number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false{got}"
    if kind in ("string_type", "path_type"):
        return f"expected a string{got}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{_range_problem(field, kind)}, got {_num(value)}"
    if kind in ("enum", "literal_error") and field is not None:
        choices = field.annotation if isinstance(field.annotation, EnumMeta) else ()
        names = [str(c) for c in choices] or [str(a) for a in get_args(field.annotation)]
        return f"expected one of {', '.join(names)}{got}"
    if kind == "missing":
        return "not set"
    if kind == "value_error":
        return str(ctx["error"])
    return error["msg"]


def _config_error(error: ErrorDetails, merged: _Layer, numbers: list[int]) -> ConfigError:
    """A pydantic error as a ``ConfigError`` naming the key the user wrote."""
    loc = error["loc"]
    path: _Path
    if loc[0] == "batteries" and len(loc) >= 3 and isinstance(loc[1], int):
        path = ("battery", numbers[loc[1]], loc[2])
    elif len(loc) >= 2 and str(loc[0]) in SECTIONS:
        path = (str(loc[0]), loc[1])
    else:
        path = ("", loc[0])
    raw = merged.get(path)
    partner = (error.get("ctx") or {}).get("partner")
    if raw is None and partner is not None:
        raw = merged.get((*path[:-1], partner))
    field = _field_info(path)
    if raw is not None:
        key = raw.key
    else:  # a default the user did not write: name the setting in the environment's words
        name = next((n for n in NAMES if n.path == (path[0], path[-1])), None)
        key = name.env if name is not None else ".".join(str(p) for p in path if p != "")
    return ConfigError(key, _problem(error, field))


# --- files --------------------------------------------------------------------------------------

_ENV_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE_START: Final = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(=?)\s*")


def _dotenv_problem(statement: str, where: str) -> ConfigError:
    """Why a ``.env`` statement does not parse, without showing any of its value."""
    text = statement.strip()
    start = _LINE_START.match(text)
    if start is not None and start.group(2) == "=":
        key, rest = start.group(1), text[start.end() :]
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            closed = re.match(rf"{quote}(?:\\.|[^{quote}\\])*{quote}", rest, re.DOTALL)
            if closed is None:
                kind = "single" if quote == "'" else "double"
                return ConfigError(f"{where} ({key})", f"unterminated {kind} quote")
            return ConfigError(f"{where} ({key})", "unexpected text after the closing quote")
        return ConfigError(f"{where} ({key})", "cannot read the value")
    named = start.group(1) if start is not None else None
    known = named is not None and (
        named in env_names() or _BATTERY_ENV.fullmatch(named) is not None or named in _IGNORED
    )
    hint = f" (the line starts with {named}; its value is not shown)" if known else ""
    return ConfigError(where, f"expected KEY=VALUE{hint}")


def parse_dotenv(text: str, *, source: str = ".env") -> dict[str, str]:
    """``KEY=VALUE`` lines with ``#`` comments, optional quotes and ``export``: python-dotenv's
    syntax, except that a line it cannot read is an error naming the file and line."""
    result: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text.removeprefix("\ufeff"))):
        statement = binding.original.string
        if binding.key is None and not binding.error:
            continue  # blank lines and comments
        # A statement starts with the blank lines before it; its line is the first with text.
        blank = len(statement) - len(statement.lstrip())
        line = binding.original.line + statement[:blank].count("\n")
        where = f"{source}:{line}"
        if binding.error or binding.value is None or not _ENV_KEY.fullmatch(binding.key or ""):
            raise _dotenv_problem(statement, where)
        result[str(binding.key)] = binding.value
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


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _pick_file(explicit: Path | None, default: Path, discover: bool) -> Path | None:
    if explicit is not None:
        return explicit
    return default if discover and _is_file(default) else None


@dataclass(frozen=True, slots=True)
class _Sources:
    """Every source, read: what ``build_config`` validates."""

    environ: dict[str, str]
    dotenv: dict[str, str] | None
    toml: dict[str, object] | None
    options: dict[str, object] | None
    names: tuple[str, ...]
    toml_path: Path | None


def _read_sources(
    environ: Mapping[str, str] | None,
    config_file: Path | None,
    dotenv_file: Path | None,
    options_file: Path | None,
    discover_files: bool,
) -> _Sources:
    env = dict(os.environ if environ is None else environ)
    sources: list[str] = ["environment"]
    dotenv_path = _pick_file(dotenv_file, DEFAULT_DOTENV_FILE, discover_files)
    dotenv: dict[str, str] | None = None
    if dotenv_path is not None:
        dotenv = parse_dotenv(_read_text(dotenv_path), source=str(dotenv_path))
        sources.append(str(dotenv_path))
    toml_path = config_file
    if toml_path is None:
        named = env.get(CONFIG_FILE_ENV, "").strip() or (dotenv or {}).get(CONFIG_FILE_ENV, "")
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
    return _Sources(env, dotenv, toml, options, tuple(sources), toml_path)


def load_config(
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    dotenv_file: Path | None = None,
    options_file: Path | None = None,
    discover_files: bool = True,
) -> EngineSettings:
    """Read and validate every source; raises ``ConfigError(key, problem)``.

    ``environ`` defaults to ``os.environ``. ``config_file`` is the TOML file (``--config``); if
    ``None``, ``MMBC_CONFIG`` from the environment or ``.env`` names it. ``dotenv_file`` and
    ``options_file`` default to ``./.env`` and ``/data/options.json`` when those exist (and
    ``discover_files`` is true). An explicitly named file that is missing is an error.
    """
    read = _read_sources(environ, config_file, dotenv_file, options_file, discover_files)
    settings = build_config(
        environ=read.environ,
        dotenv=read.dotenv,
        toml=read.toml,
        options=read.options,
        sources=read.names,
    )
    return settings.model_copy(update={"config_file": read.toml_path})


def load_meter_config(
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    dotenv_file: Path | None = None,
    options_file: Path | None = None,
    discover_files: bool = True,
) -> tuple[MeterSettings, Path | None]:
    """Only the P1 meter's settings, from the same sources as ``load_config``, and the TOML
    file read (if any): for ``mmbc-engine discover`` and ``pair-p1``, which need no battery.
    Raises ``ConfigError`` for a bad name anywhere or a bad meter value."""
    read = _read_sources(environ, config_file, dotenv_file, options_file, discover_files)
    warnings: list[str] = []
    layers: list[_Layer] = [_env_layer(read.environ, warnings)]
    if read.dotenv is not None:
        layers.append(_env_layer(read.dotenv, warnings))
    if read.toml is not None:
        layers.append(_toml_layer(read.toml))
    if read.options is not None:
        layers.append(_options_layer(read.options, warnings))
    merged = {path: value for path, value in _merge(layers, warnings).items() if path[0] == "meter"}
    try:
        meter = MeterSettings.model_validate({str(p[1]): v.value for p, v in merged.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        located: ErrorDetails = {**error, "loc": ("meter", *error["loc"])}
        raise _config_error(located, merged, []) from None
    return meter, read.toml_path
