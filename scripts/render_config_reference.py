"""Render docs/configuration.md's setting tables from the settings models and their names.

Usage: ``python scripts/render_config_reference.py`` rewrites the generated tables in place;
``--check`` only compares (exit 1 when the committed file is out of date). A test runs the
check, so the tables cannot drift from ``engine.settings`` (defaults, bounds, meanings) and
``engine.config`` (names).
"""

from __future__ import annotations

import argparse
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from engine.config import CONFIG_FILE_ENV, METER_HOST_HELP, NAMES, SettingName, section_fields
from engine.core.settings import WarnAbove

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
_BLOCK = re.compile(
    r"(<!-- generated: (?P<section>[a-z_]+) -->\n).*?(<!-- end generated -->)", re.DOTALL
)
# Defaults that depend on other settings, as words.
_DERIVED_DEFAULTS = {
    ("mqtt", "port"): "`1883` (`8883` with TLS)",
    ("mqtt", "tls"): "`false` (`true` with a CA or client certificate file)",
    ("mqtt", "client_id"): "`mmbc-engine` (derived from the topic prefix)",
    ("http", "host"): "every interface",
    ("meter", "token_file"): "`p1-token.json` (see below)",
    ("meter", "ca_file"): "HomeWizard's CA",
    ("meter", "mdns_interfaces"): "every interface",
}
_KINDS = {"int": "integer", "float": "number", "bool": "boolean", "str": "text"}
_FILE_FIELDS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "ca_file", "token_file")


def _num(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _field(name: SettingName) -> FieldInfo | None:
    return section_fields(name.section).get(name.field)


def _default(name: SettingName, info: FieldInfo | None) -> str:
    if name.path in _DERIVED_DEFAULTS:
        return _DERIVED_DEFAULTS[name.path]
    if info is None or info.is_required():
        return "—"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    return f"`{_num(value)}`"


def _kind(name: SettingName, info: FieldInfo) -> str:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in get_args(annotation))
    if name.field in _FILE_FIELDS:
        return "file"
    if name.path in (("mqtt", "password"), ("meter", "token"), ("http", "token")):
        return "text (secret)"
    text = str(annotation)
    for python, words in _KINDS.items():
        if isinstance(annotation, type) and annotation.__name__ == python:
            return words
        if f"[{python}" in text or text == python:
            return words
    return "text"


def _value(name: SettingName, info: FieldInfo | None) -> str:
    if info is None:
        return "text"
    kind = _kind(name, info)
    low: object = None
    high: object = None
    low_open = False
    warn = ""
    for mark in info.metadata:
        if isinstance(mark, Ge):
            low = mark.ge
        elif isinstance(mark, Gt):
            low, low_open = mark.gt, True
        elif isinstance(mark, Le):
            high = mark.le
        elif isinstance(mark, Lt):
            high = mark.lt
        elif isinstance(mark, WarnAbove):
            warn = f"; warns above {_num(mark.limit)}"
    if low is not None and high is not None:
        if low_open:
            bounds = f"> {_num(low)}, ≤ {_num(high)}"
        elif isinstance(low, int | float) and low < 0:
            bounds = f"{_num(low)} to {_num(high)}"
        else:
            bounds = f"{_num(low)}\N{EN DASH}{_num(high)}"
    elif low is not None:
        bounds = f"> {_num(low)}" if low_open else f"≥ {_num(low)}"
    elif high is not None:
        bounds = f"≤ {_num(high)}"
    else:
        bounds = ""
    return f"{kind} {bounds}".strip() + warn


def _meaning(name: SettingName, info: FieldInfo | None) -> str:
    if name.path == ("meter", "host"):
        return METER_HOST_HELP
    text = " ".join((info.description or "").split()) if info is not None else ""
    if name.section == "mqtt" and name.field == "discovery":
        text += " `MQTT_HA_DISCOVERY` (upstream's name) is accepted too."
    return text.replace("|", "\\|")


def _names(name: SettingName) -> tuple[str, str, str]:
    if name.section == "battery":
        options = f"`battery_<n>_{name.option}`"
        if name.option != name.field:
            options += f" / `{name.option}`"
        return f"`BATTERY_<n>_{name.env}`", f"`{name.toml}`", options
    return f"`{name.env}`", f"`{name.toml}`", f"`{name.option}`"


def table(section: str) -> str:
    """The markdown table of one section ("engine" is logging and the top level)."""
    wanted = ("log", "") if section == "engine" else (section,)
    rows = [
        "| environment | TOML | options.json | default | value | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name in NAMES:
        if name.section in wanted:
            info = _field(name) if name.path != ("meter", "host") else None
            env, toml, options = _names(name)
            cells = (env, toml, options, _default(name, info), _value(name, info))
            rows.append("| " + " | ".join((*cells, _meaning(name, info))) + " |")
    if section == "engine":
        rows.append(
            f"| `{CONFIG_FILE_ENV}` | — | — | — | file | Path of a TOML file to read (same as"
            " `--config`, which wins). |"
        )
    return "\n".join(rows) + "\n"


def render(document: str) -> str:
    """``document`` with every generated block replaced by its current table."""
    return _BLOCK.sub(lambda m: m.group(1) + table(m.group("section")) + m.group(3), document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    current = DOC_PATH.read_text(encoding="utf-8")
    expected = render(current)
    if args.check:
        if current != expected:
            print(f"{DOC_PATH} is out of date: run python scripts/render_config_reference.py")
            return 1
        return 0
    DOC_PATH.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
