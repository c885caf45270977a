"""Scenario files: strictly validated TOML naming a trace, batteries, meter, events and faults.

Every problem raises ``ScenarioError`` whose message names the file and the key path
(``battery[2].capacity_wh: unknown key``, ``trace.file: missing``); nothing is guessed.
The format is documented in ``scenarios/README.md``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.settings import ControlSettings
from sim.plant.params import (
    BATTERY_FAULTS,
    EVENT_KINDS,
    FAULT_KINDS,
    BatteryParams,
    Event,
    Fault,
    MeterParams,
    ScenarioBattery,
    Tariff,
)
from sim.plant.traces import EventTimeline, Trace, TraceError, load_trace

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
DEFAULT_SCENARIO = SCENARIO_DIR / "default.toml"
FAULT_SCENARIO_DIR = SCENARIO_DIR / "faults"
VARIANT_SCENARIO_DIR = SCENARIO_DIR / "variants"
LONG_SCENARIO_DIR = SCENARIO_DIR / "long"
DEFAULT_SEED = 1

# Registers 42020/42021 accept 0-2500 W: a model above that could never be commanded.
_MAX_BATTERY_POWER_W = 2500.0
# The device name lives in 10 registers of 2 ASCII characters (31000).
_MAX_BATTERY_NAME_CHARS = 20
_MAX_BATTERIES = 16
# Beyond this a number is not a plausible power, time or price; it also keeps int -> float
# conversion exact and away from OverflowError.
_MAX_ABS_NUMBER = 1e12
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_TOP_REQUIRED = ("name", "description", "trace", "battery")
_TOP_OPTIONAL = ("meter", "pv_meter", "event", "fault", "block", "control", "tariff", "seed")
_TRACE_KEYS = ("file", "pv_file", "pv_scale", "load_scale", "start_s", "duration_s")
_EVENT_REQUIRED = ("at_s", "kind", "power_w", "duration_s")
_EVENT_OPTIONAL = ("on_s", "off_s", "ramp_s", "label")
_FAULT_KEYS = ("at_s", "kind", "duration_s", "battery")


class ScenarioError(ValueError):
    """A scenario file cannot be used; ``key`` is the TOML key path of the problem."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """Where a scenario's house demand comes from (paths resolved against the scenario file)."""

    file: Path
    pv_file: Path | None = None
    load_scale: float = 1.0
    pv_scale: float = 1.0
    start_s: float | None = None
    duration_s: float | None = None

    def load(self) -> Trace:
        """A fresh ``Trace`` (own cursor) of the window; raises ``TraceError``."""
        return load_trace(
            self.file,
            pv_path=self.pv_file,
            load_scale=self.load_scale,
            pv_scale=self.pv_scale,
            start_s=self.start_s,
            duration_s=self.duration_s,
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """One validated scenario. Times are scenario seconds: 0 is the trace window's start."""

    name: str
    description: str
    path: Path
    trace: TraceSpec
    batteries: tuple[ScenarioBattery, ...]
    meter: MeterParams
    pv_meter: bool
    events: tuple[Event, ...]
    faults: tuple[Fault, ...]
    blocks: tuple[tuple[float, float], ...]  # (at_s, duration_s) windows, discharge blocked
    control: dict[str, object] = field(hash=False)  # validated ControlSettings overrides
    tariff: Tariff
    seed: int
    duration_s: float

    def load_trace(self) -> Trace:
        """A fresh ``Trace`` of this scenario's window."""
        return self.trace.load()

    def timeline(self) -> EventTimeline:
        """A fresh ``EventTimeline`` of the scripted events."""
        return EventTimeline(self.events)

    def step_events(self) -> list[tuple[float, float]]:
        """(at_s, change_w) of every ``load_step`` edge, for the settle-time metric."""
        return self.timeline().step_times()

    def control_settings(self, base: ControlSettings | None = None) -> ControlSettings:
        """``base`` (default ``ControlSettings()``) with this scenario's ``[control]`` applied."""
        return (base if base is not None else ControlSettings()).with_overrides(self.control)

    def discharge_blocked_at(self, t_s: float) -> bool:
        """Whether a ``[[block]]`` window covers scenario time ``t_s``."""
        return any(at_s <= t_s < at_s + length_s for at_s, length_s in self.blocks)


class _Parser:
    """Validates one decoded TOML document; ``fail`` raises with the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(self.path, key, problem)

    # -- structure -------------------------------------------------------------------------

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {_type_name(value)}")
        return value

    def tables(self, value: object, key: str) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"must be an array of tables ([[{key}]])")
        return value

    def keys(
        self,
        table: Mapping[str, Any],
        where: str,
        required: Iterable[str],
        optional: Iterable[str] = (),
    ) -> None:
        required = tuple(required)
        known = set(required) | set(optional)
        for key in table:
            if key not in known:
                raise self.fail(_join(where, str(key)), "unknown key")
        for key in required:
            if key not in table:
                raise self.fail(_join(where, key), "missing")

    # -- scalars ---------------------------------------------------------------------------

    def number(
        self,
        value: object,
        key: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        lt: float | None = None,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {_type_name(value)}")
        if isinstance(value, int) and abs(value) > _MAX_ABS_NUMBER:
            raise self.fail(key, f"{value} is out of range")
        number = float(value)
        if not math.isfinite(number) or abs(number) > _MAX_ABS_NUMBER:
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if gt is not None and not number > gt:
            raise self.fail(key, f"must be > {gt:g}, got {number:g}")
        if ge is not None and not number >= ge:
            raise self.fail(key, f"must be >= {ge:g}, got {number:g}")
        if le is not None and not number <= le:
            raise self.fail(key, f"must be <= {le:g}, got {number:g}")
        if lt is not None and not number < lt:
            raise self.fail(key, f"must be < {lt:g}, got {number:g}")
        return number

    def integer(self, value: object, key: str, *, ge: int, le: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {_type_name(value)}")
        if not ge <= value <= le:
            raise self.fail(key, f"must be in {ge}..{le}, got {value}")
        return value

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_type_name(value)}")
        if not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_type_name(value)}")
        return value

    def choice(self, value: object, key: str, options: Iterable[str]) -> str:
        allowed = sorted(options)
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    # -- sections --------------------------------------------------------------------------

    def parse(self, data: Mapping[str, Any]) -> Scenario:
        doc = self.table(data, "(document)")
        self.keys(doc, "", _TOP_REQUIRED, _TOP_OPTIONAL)
        name = self.string(doc["name"], "name")
        if _NAME_RE.fullmatch(name) is None:
            raise self.fail("name", "use letters, digits, '_', '.' and '-' only")
        description = self.string(doc["description"], "description")
        seed = self.integer(doc.get("seed", DEFAULT_SEED), "seed", ge=0, le=2**63 - 1)

        spec, trace = self.trace(self.table(doc["trace"], "trace"))
        duration_s = trace.duration_s
        batteries = self.batteries(doc["battery"])
        meter = self.meter(self.table(doc.get("meter", {}), "meter"), seed)
        pv_meter = self.pv_meter(self.table(doc.get("pv_meter", {"enabled": False}), "pv_meter"))
        if pv_meter and not trace.has_pv:
            raise self.fail("pv_meter.enabled", "the trace has no pv_w column and no pv_file")
        events = tuple(
            self.event(table, f"event[{i}]", duration_s)
            for i, table in enumerate(self.tables(doc.get("event", []), "event"), start=1)
        )
        faults = tuple(
            self.fault(table, f"fault[{i}]", duration_s, len(batteries))
            for i, table in enumerate(self.tables(doc.get("fault", []), "fault"), start=1)
        )
        blocks = tuple(
            sorted(
                self.block(table, f"block[{i}]", duration_s)
                for i, table in enumerate(self.tables(doc.get("block", []), "block"), start=1)
            )
        )
        control = self.control(self.table(doc.get("control", {}), "control"))
        tariff = self.tariff(self.table(doc.get("tariff", {}), "tariff"))
        return Scenario(
            name=name,
            description=description,
            path=self.path,
            trace=spec,
            batteries=batteries,
            meter=meter,
            pv_meter=pv_meter,
            events=events,
            faults=faults,
            blocks=blocks,
            control=control,
            tariff=tariff,
            seed=seed,
            duration_s=duration_s,
        )

    def trace(self, table: dict[str, Any]) -> tuple[TraceSpec, Trace]:
        self.keys(table, "trace", ("file",), _TRACE_KEYS[1:])
        base = self.path.parent
        file = base / self.path_string(table["file"], "trace.file")
        pv_file = None
        if "pv_file" in table:
            pv_file = base / self.path_string(table["pv_file"], "trace.pv_file")
        spec = TraceSpec(
            file=file,
            pv_file=pv_file,
            load_scale=self.number(table.get("load_scale", 1.0), "trace.load_scale", ge=0.0),
            pv_scale=self.number(table.get("pv_scale", 1.0), "trace.pv_scale", ge=0.0),
            start_s=(
                self.number(table["start_s"], "trace.start_s", ge=0.0)
                if "start_s" in table
                else None
            ),
            duration_s=(
                self.number(table["duration_s"], "trace.duration_s", gt=0.0)
                if "duration_s" in table
                else None
            ),
        )
        try:
            trace = spec.load()
        except TraceError as exc:
            raise self.fail(f"trace.{exc.key}", str(exc)) from None
        return spec, trace

    def path_string(self, value: object, key: str) -> str:
        text = self.string(value, key)
        if "\x00" in text:
            raise self.fail(key, "must not contain NUL characters")
        return text

    def batteries(self, value: object) -> tuple[ScenarioBattery, ...]:
        tables = self.tables(value, "battery")
        if not tables:
            raise self.fail("battery", "at least one [[battery]] is needed")
        if len(tables) > _MAX_BATTERIES:
            raise self.fail("battery", f"at most {_MAX_BATTERIES} batteries")
        return tuple(
            self.battery(table, f"battery[{i}]") for i, table in enumerate(tables, start=1)
        )

    def battery(self, table: dict[str, Any], where: str) -> ScenarioBattery:
        optional = sorted(BatteryParams.field_names())
        self.keys(table, where, ("soc_pct",), optional)
        soc_pct = self.number(table["soc_pct"], f"{where}.soc_pct", ge=0.0, le=100.0)
        values: dict[str, Any] = {}
        for key in optional:
            if key in table:
                values[key] = self.battery_value(key, table[key], f"{where}.{key}")
        params = BatteryParams(**values)
        if params.discharge_cutoff_pct >= params.charge_cutoff_pct:
            raise self.fail(
                f"{where}.discharge_cutoff_pct",
                f"must be below charge_cutoff_pct ({params.charge_cutoff_pct:g})",
            )
        return ScenarioBattery(soc_pct=soc_pct, params=params)

    def battery_value(self, name: str, value: object, key: str) -> object:
        checks: dict[str, Callable[[], object]] = {
            "capacity_wh": lambda: self.number(value, key, gt=0.0),
            "max_charge_w": lambda: self.number(value, key, gt=0.0, le=_MAX_BATTERY_POWER_W),
            "max_discharge_w": lambda: self.number(value, key, gt=0.0, le=_MAX_BATTERY_POWER_W),
            "dead_time_s": lambda: self.number(value, key, ge=0.0),
            "ramp_w_per_s": lambda: self.number(value, key, gt=0.0),
            "relay_delay_s": lambda: self.number(value, key, ge=0.0),
            "standby_w": lambda: self.number(value, key, ge=0.0),
            "charge_cutoff_pct": lambda: self.number(value, key, gt=0.0, le=100.0),
            "discharge_cutoff_pct": lambda: self.number(value, key, ge=0.0, lt=100.0),
            "charge_efficiency": lambda: self.efficiency(value, key),
            "discharge_efficiency": lambda: self.efficiency(value, key),
            "unit_id": lambda: self.integer(value, key, ge=1, le=247),
            "name": lambda: self.battery_name(value, key),
        }
        check = checks.get(name)
        if check is None:
            # A BatteryParams field added later without a check here: refuse, don't guess.
            raise self.fail(key, "no validation rule for this parameter")
        return check()

    def efficiency(self, value: object, key: str) -> tuple[tuple[float, float], ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, "must be a non-empty array of [power_w, efficiency] pairs")
        points: list[tuple[float, float]] = []
        for i, point in enumerate(value, start=1):
            where = f"{key}[{i}]"
            if not isinstance(point, list) or len(point) != 2:
                raise self.fail(where, "must be a [power_w, efficiency] pair")
            power_w = self.number(point[0], where, gt=0.0)
            efficiency = self.number(point[1], where, gt=0.0, le=1.0)
            if points and power_w <= points[-1][0]:
                raise self.fail(where, "power_w must increase from one point to the next")
            points.append((power_w, efficiency))
        return tuple(points)

    def battery_name(self, value: object, key: str) -> str:
        name = self.string(value, key)
        if not name.isascii() or not name.isprintable() or len(name) > _MAX_BATTERY_NAME_CHARS:
            raise self.fail(
                key, f"must be printable ASCII, at most {_MAX_BATTERY_NAME_CHARS} chars"
            )
        return name

    def meter(self, table: dict[str, Any], seed: int) -> MeterParams:
        self.keys(table, "meter", (), sorted(MeterParams.field_names()))
        defaults = MeterParams()
        return MeterParams(
            interval_s=self.number(
                table.get("interval_s", defaults.interval_s), "meter.interval_s", gt=0.0
            ),
            latency_s=self.number(
                table.get("latency_s", defaults.latency_s), "meter.latency_s", ge=0.0
            ),
            noise_w=self.number(table.get("noise_w", defaults.noise_w), "meter.noise_w", ge=0.0),
            seed=self.integer(table.get("seed", seed), "meter.seed", ge=0, le=2**63 - 1),
        )

    def pv_meter(self, table: dict[str, Any]) -> bool:
        self.keys(table, "pv_meter", ("enabled",))
        return self.boolean(table["enabled"], "pv_meter.enabled")

    def event(self, table: dict[str, Any], where: str, duration_s: float) -> Event:
        self.keys(table, where, _EVENT_REQUIRED, _EVENT_OPTIONAL)
        kind = self.choice(table["kind"], f"{where}.kind", EVENT_KINDS)
        shape_keys = {"pulse": ("on_s", "off_s"), "ramp": ("ramp_s",)}.get(kind, ())
        for key in ("on_s", "off_s", "ramp_s"):
            if key in table and key not in shape_keys:
                raise self.fail(f"{where}.{key}", f"not used by kind {kind!r}")
            if key not in table and key in shape_keys:
                raise self.fail(f"{where}.{key}", f"missing (required by kind {kind!r})")
        at_s = self.at(table["at_s"], f"{where}.at_s", duration_s)
        length_s = self.number(table["duration_s"], f"{where}.duration_s", gt=0.0)
        on_s = self.number(table.get("on_s", 0.0), f"{where}.on_s", ge=0.0)
        off_s = self.number(table.get("off_s", 0.0), f"{where}.off_s", ge=0.0)
        ramp_s = self.number(table.get("ramp_s", 0.0), f"{where}.ramp_s", ge=0.0)
        if kind == "pulse" and not on_s > 0.0:
            raise self.fail(f"{where}.on_s", "must be > 0 for a pulse")
        if kind == "pulse" and not off_s > 0.0:
            raise self.fail(f"{where}.off_s", "must be > 0 for a pulse")
        if kind == "ramp" and not 0.0 < 2.0 * ramp_s <= length_s:
            raise self.fail(f"{where}.ramp_s", "must be > 0 and at most half of duration_s")
        label = self.string(table["label"], f"{where}.label") if "label" in table else ""
        return Event(
            at_s=at_s,
            kind=kind,
            power_w=self.number(table["power_w"], f"{where}.power_w"),
            duration_s=length_s,
            on_s=on_s,
            off_s=off_s,
            ramp_s=ramp_s,
            label=label,
        )

    def at(self, value: object, key: str, duration_s: float) -> float:
        at_s = self.number(value, key, ge=0.0)
        if at_s >= duration_s:
            raise self.fail(key, f"{at_s:g} s is not before the scenario's end ({duration_s:g} s)")
        return at_s

    def fault(self, table: dict[str, Any], where: str, duration_s: float, n: int) -> Fault:
        self.keys(table, where, ("at_s", "kind", "duration_s"), ("battery",))
        kind = self.choice(table["kind"], f"{where}.kind", FAULT_KINDS)
        battery: int | None = None
        if kind in BATTERY_FAULTS:
            if "battery" not in table:
                raise self.fail(f"{where}.battery", f"missing (required by kind {kind!r})")
            value = table["battery"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"{where}.battery", f"must be an integer, got {_type_name(value)}")
            if not 1 <= value <= n:
                raise self.fail(
                    f"{where}.battery", f"{value} is out of range (the scenario has {n} batteries)"
                )
            battery = value
        elif "battery" in table:
            raise self.fail(f"{where}.battery", f"not used by kind {kind!r}")
        return Fault(
            at_s=self.at(table["at_s"], f"{where}.at_s", duration_s),
            kind=kind,
            duration_s=self.number(table["duration_s"], f"{where}.duration_s", gt=0.0),
            battery=battery,
        )

    def block(self, table: dict[str, Any], where: str, duration_s: float) -> tuple[float, float]:
        self.keys(table, where, ("at_s", "duration_s"))
        at_s = self.at(table["at_s"], f"{where}.at_s", duration_s)
        length_s = self.number(table["duration_s"], f"{where}.duration_s", gt=0.0)
        return (at_s, length_s)

    def control(self, table: dict[str, Any]) -> dict[str, object]:
        known = ControlSettings.field_names()
        defaults = ControlSettings()
        overrides: dict[str, object] = {}
        for key, value in table.items():
            where = f"control.{key}"
            if key not in known:
                raise self.fail(where, f"unknown key (known: {', '.join(sorted(known))})")
            current = getattr(defaults, key)
            if isinstance(current, bool):
                overrides[key] = self.boolean(value, where)
            elif isinstance(current, str):
                overrides[key] = self.string(value, where)
            elif isinstance(current, int):
                overrides[key] = self.integer(value, where, ge=-(2**31), le=2**31 - 1)
            elif isinstance(current, float):
                overrides[key] = self.number(value, where)
            else:
                raise self.fail(where, "cannot be set from a scenario")
            number = overrides[key]
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                self.control_range(key, float(number), where)
        try:
            defaults.with_overrides(overrides)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail("control", f"rejected by ControlSettings: {exc}") from None
        return overrides

    def control_range(self, key: str, number: float, where: str) -> None:
        # Only what the units in the names make certain: times and counts are not negative,
        # percentages lie in 0..100. Meanings beyond that belong to ControlSettings.
        if key.endswith("_pct") and not 0.0 <= number <= 100.0:
            raise self.fail(where, f"must be in 0..100, got {number:g}")
        if key.endswith(("_s", "_cycles", "_failures")) and number < 0.0:
            raise self.fail(where, f"must be >= 0, got {number:g}")
        if key.endswith("_period_s") and number <= 0.0:
            raise self.fail(where, f"must be > 0, got {number:g}")

    def tariff(self, table: dict[str, Any]) -> Tariff:
        self.keys(table, "tariff", (), ("import_eur_per_kwh", "export_eur_per_kwh"))
        defaults = Tariff()
        return Tariff(
            import_eur_per_kwh=self.number(
                table.get("import_eur_per_kwh", defaults.import_eur_per_kwh),
                "tariff.import_eur_per_kwh",
            ),
            export_eur_per_kwh=self.number(
                table.get("export_eur_per_kwh", defaults.export_eur_per_kwh),
                "tariff.export_eur_per_kwh",
            ),
        )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    if isinstance(value, dict):
        return "table"
    return names.get(type(value), type(value).__name__)


def parse_scenario(data: Mapping[str, Any], path: Path | str) -> Scenario:
    """Validate decoded TOML ``data``; relative trace paths resolve against ``path``'s folder."""
    return _Parser(Path(path)).parse(data)


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate one scenario file; every problem raises ``ScenarioError``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(path, "(file)", "not found") from None
    except (OSError, ValueError) as exc:
        raise ScenarioError(path, "(file)", f"cannot read: {exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ScenarioError(path, "(file)", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "(toml)", str(exc)) from None
    return parse_scenario(data, path)


def load_scenarios(paths: Path | str | Iterable[Path | str]) -> list[Scenario]:
    """Load files, and the ``*.toml`` directly inside directories (sorted); names must be unique."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    scenarios: list[Scenario] = []
    seen: dict[str, Path] = {}
    for item in items:
        item_path = Path(item)
        files = sorted(item_path.glob("*.toml")) if item_path.is_dir() else [item_path]
        if item_path.is_dir() and not files:
            raise ScenarioError(item_path, "(dir)", "no *.toml scenario files")
        for file in files:
            scenario = load_scenario(file)
            if scenario.name in seen:
                raise ScenarioError(
                    file,
                    "name",
                    f"duplicate scenario name {scenario.name!r} ({seen[scenario.name]})",
                )
            seen[scenario.name] = file
            scenarios.append(scenario)
    return scenarios


def resolve_scenario(name_or_path: Path | str) -> Path:
    """An existing file path as given, else the shipped ``<name>.toml`` anywhere in scenarios/."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    name = str(name_or_path)
    stem = name.removesuffix(".toml")
    matches = sorted(SCENARIO_DIR.rglob(f"{stem}.toml")) if _NAME_RE.fullmatch(stem) else []
    if not matches:
        raise ScenarioError(name, "(file)", f"no such file and no shipped scenario named {stem!r}")
    if len(matches) > 1:
        found = ", ".join(str(m.relative_to(SCENARIO_DIR)) for m in matches)
        raise ScenarioError(name, "(file)", f"ambiguous scenario name: {found}")
    return matches[0]
