"""Scenario files: TOML naming a trace, batteries, meter, events and faults, validated by pydantic.

Every problem raises ``ScenarioError`` whose message names the file and the key path
(``battery[2].soc_pct: must be <= 100, got 101``, ``trace.file: missing``); nothing is guessed,
and every problem of a file is listed at once. The tables are validated against the plant's own
dataclasses (``sim.plant.params``, ``sim.plant.events``: one default and one range per key);
what needs the whole scenario (an event after the trace's end, a fault's battery index) is
checked once the trace is loaded. The format is documented in ``scenarios/README.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Ge, Gt, Le, MaxLen, MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    with_config,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from engine.core.settings import ControlSettings
from sim.plant.events import EVENT_TYPES, Cycling, Event, EventKind, EventTimeline
from sim.plant.params import (
    TABLE_CONFIG,
    BatteryParams,
    Fault,
    MeterParams,
    NonNegative,
    Number,
    Percent,
    Positive,
    ScenarioBattery,
    Seed,
    Tariff,
    Text,
)
from sim.plant.traces import Trace, TraceError, load_trace

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
# What `mmbc-sim` replays without arguments: a real house at 6-s resolution, an evening's
# cooking with kettle bursts and fast cycling, two batteries: where control quality shows.
DEFAULT_SCENARIO = SCENARIO_DIR / "ukdale_cooking.toml"
FAULT_SCENARIO_DIR = SCENARIO_DIR / "faults"
VARIANT_SCENARIO_DIR = SCENARIO_DIR / "variants"
LONG_SCENARIO_DIR = SCENARIO_DIR / "long"
PUSH_SCENARIO_DIR = SCENARIO_DIR / "push"  # [meter] api = "v2" variants, not in the bench
DEFAULT_SEED = 1
# The engine's configuration numbers batteries 1..16.
MAX_BATTERIES = 16
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# The arrays of tables (``[[battery]]``), for messages.
_TABLE_ARRAYS = ("battery", "event", "fault", "block")


class ScenarioError(ValueError):
    """A scenario file cannot be used; ``key`` is the TOML key path of the (first) problem.

    ``problems`` holds every (key, problem) found; the message lists them one per line.
    """

    def __init__(
        self,
        path: Path | str,
        key: str,
        problem: str,
        *,
        more: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.problems: tuple[tuple[str, str], ...] = ((key, problem), *more)
        super().__init__("\n".join(f"{path}: {k}: {p}" for k, p in self.problems))


def _path_text(value: object) -> object:
    # A path is written as a string; anything else is refused before pydantic makes a Path.
    if not isinstance(value, str):
        raise PydanticCustomError("scenario", f"must be a string, got {_type_name(value)}")
    if not value.strip():
        raise PydanticCustomError("scenario", "must not be empty")
    if "\x00" in value:
        raise PydanticCustomError("scenario", "must not contain NUL characters")
    return value


TracePath = Annotated[Path, BeforeValidator(_path_text)]


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSpec:
    """Where a scenario's house demand comes from (paths resolved against the scenario file)."""

    file: TracePath
    pv_file: TracePath | None = None
    load_scale: NonNegative = 1.0
    pv_scale: NonNegative = 1.0
    start_s: NonNegative | None = None
    duration_s: Positive | None = None
    # The largest gap allowed between two rows inside the window (None: 3 median spacings).
    max_gap_s: Positive | None = None

    def load(self) -> Trace:
        """A fresh ``Trace`` (own cursor) of the window; raises ``TraceError``."""
        return load_trace(
            self.file,
            pv_path=self.pv_file,
            load_scale=self.load_scale,
            pv_scale=self.pv_scale,
            start_s=self.start_s,
            duration_s=self.duration_s,
            max_gap_s=self.max_gap_s,
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


# -- the tables ----------------------------------------------------------------------------


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class _BatteryTable(BatteryParams):
    """``[[battery]]``: the starting SoC and any ``BatteryParams`` field."""

    soc_pct: Percent


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class _MeterTable(MeterParams):
    """``[meter]``: ``MeterParams``, with the noise seed defaulting to the scenario's."""

    # Narrower in the file than in the plant: absent means "the scenario's seed".
    seed: Seed | None = None  # type: ignore[assignment]


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class _PvMeterTable:
    enabled: Annotated[bool, Strict()]


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class _BlockTable:
    at_s: NonNegative
    duration_s: Positive


def _control_type(name: str, default: object) -> object:
    """The type a ``[control]`` key takes: its default's, with the ranges its unit makes sure.

    Only what the units in the names make certain: times and counts are not negative,
    percentages lie in 0..100. Meanings beyond that belong to ControlSettings.
    """
    ranges: list[object] = []
    if name.endswith("_pct"):
        ranges = [Ge(0.0), Le(100.0)]
    elif name.endswith("_period_s"):
        ranges = [Gt(0.0)]
    elif name.endswith(("_s", "_cycles", "_failures")):
        ranges = [Ge(0.0)]
    if isinstance(default, bool):
        return Annotated[bool, Strict()]
    if isinstance(default, int):
        return Annotated[int, Strict(), Ge(-(2**31)), Le(2**31 - 1), *ranges]
    if isinstance(default, float):
        return Annotated[Number, *ranges] if ranges else Number
    if type(default) is str:
        return Text
    return type(default)  # an enum: one of its values


def _control_table() -> type[BaseModel]:
    defaults = ControlSettings()
    fields: dict[str, Any] = {
        name: (_control_type(name, getattr(defaults, name)), None)
        for name in sorted(ControlSettings.field_names())
    }
    model: type[BaseModel] = create_model("control", __config__=TABLE_CONFIG, **fields)
    return model


_ControlTable = _control_table()


def _scenario_name(value: str) -> str:
    if _NAME_RE.fullmatch(value) is None:
        raise PydanticCustomError("scenario", "use letters, digits, '_', '.' and '-' only")
    return value


class _Document(BaseModel):
    """A whole scenario file as written."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Annotated[Text, AfterValidator(_scenario_name)]
    description: Text
    seed: Seed = DEFAULT_SEED
    trace: TraceSpec
    battery: Annotated[list[_BatteryTable], MinLen(1), MaxLen(MAX_BATTERIES)]
    meter: _MeterTable = Field(default_factory=_MeterTable)
    pv_meter: _PvMeterTable = Field(default_factory=lambda: _PvMeterTable(enabled=False))
    event: list[Event] = Field(default_factory=list)
    fault: list[Fault] = Field(default_factory=list)
    block: list[_BlockTable] = Field(default_factory=list)
    if TYPE_CHECKING:  # built from ControlSettings at import: a model mypy cannot see
        control: BaseModel
    else:
        control: _ControlTable = Field(default_factory=_ControlTable)
    tariff: Tariff = Field(default_factory=Tariff)


# -- from the document to a Scenario ---------------------------------------------------------


def _event_seed(scenario_seed: int, index: int) -> int:
    """A seed of its own for the ``index``-th event: independent of the meter noise's."""
    digest = hashlib.sha256(f"{scenario_seed}/event[{index}]".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _seeded(events: Iterable[Event], scenario_seed: int) -> tuple[Event, ...]:
    return tuple(
        dataclasses.replace(event, seed=_event_seed(scenario_seed, i))
        if isinstance(event, Cycling) and event.seed is None
        else event
        for i, event in enumerate(events, start=1)
    )


def _build(doc: _Document, path: Path) -> Scenario:
    base = path.parent
    spec = dataclasses.replace(
        doc.trace,
        file=base / doc.trace.file,
        pv_file=None if doc.trace.pv_file is None else base / doc.trace.pv_file,
    )
    try:
        trace = spec.load()
    except TraceError as exc:
        raise ScenarioError(path, f"trace.{exc.key}", str(exc)) from None
    end_s = trace.duration_s
    problems: list[tuple[str, str]] = []

    def before_end(key: str, at_s: float) -> None:
        if at_s >= end_s:
            problems.append((key, f"{at_s:g} s is not before the scenario's end ({end_s:g} s)"))

    if doc.pv_meter.enabled and not trace.has_pv:
        problems.append(("pv_meter.enabled", "the trace has no pv_w column and no pv_file"))
    for i, event in enumerate(doc.event, start=1):
        before_end(f"event[{i}].at_s", event.at_s)
    n = len(doc.battery)
    for i, fault in enumerate(doc.fault, start=1):
        before_end(f"fault[{i}].at_s", fault.at_s)
        if fault.battery is not None and not 1 <= fault.battery <= n:
            has = f"{n} batteries" if n > 1 else "1 battery"
            problem = f"{fault.battery} is out of range (the scenario has {has})"
            problems.append((f"fault[{i}].battery", problem))
    for i, block in enumerate(doc.block, start=1):
        before_end(f"block[{i}].at_s", block.at_s)
    control = doc.control.model_dump(exclude_unset=True)
    try:
        ControlSettings().with_overrides(control)
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(("control", f"rejected by ControlSettings: {exc}"))
    if problems:
        (key, problem), *more = problems
        raise ScenarioError(path, key, problem, more=more)

    param_names = BatteryParams.field_names()
    batteries = tuple(
        ScenarioBattery(
            soc_pct=table.soc_pct,
            params=BatteryParams(**{name: getattr(table, name) for name in param_names}),
        )
        for table in doc.battery
    )
    meter = doc.meter
    return Scenario(
        name=doc.name,
        description=doc.description,
        path=path,
        trace=spec,
        batteries=batteries,
        meter=MeterParams(
            interval_s=meter.interval_s,
            latency_s=meter.latency_s,
            noise_w=meter.noise_w,
            seed=doc.seed if meter.seed is None else meter.seed,
            api=meter.api,
        ),
        pv_meter=doc.pv_meter.enabled,
        events=_seeded(doc.event, doc.seed),
        faults=tuple(doc.fault),
        blocks=tuple(sorted((b.at_s, b.duration_s) for b in doc.block)),
        control=control,
        tariff=doc.tariff,
        seed=doc.seed,
        duration_s=end_s,
    )


# -- messages --------------------------------------------------------------------------------

_EVENT_TAGS = frozenset(EventKind)
_EVENT_KEYS = frozenset(f.name for t in EVENT_TYPES.values() for f in dataclasses.fields(t))
_COMMON_EVENT_KEYS = frozenset.intersection(
    *(frozenset(f.name for f in dataclasses.fields(t)) for t in EVENT_TYPES.values())
)


def _keys_of(table: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(table))


# The keys each table knows, by the first key of its path ("" is the top level).
_TABLE_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(_Document.model_fields),
    "trace": _keys_of(TraceSpec),
    "battery": _keys_of(_BatteryTable),
    "meter": _keys_of(_MeterTable),
    "pv_meter": _keys_of(_PvMeterTable),
    "fault": _keys_of(Fault),
    "block": _keys_of(_BlockTable),
    "control": ControlSettings.field_names(),
    "tariff": _keys_of(Tariff),
}


def _did_you_mean(loc: Sequence[str | int], tag: str | None) -> str:
    """`` (did you mean 'seed'?)`` for a misspelt key, or nothing."""
    if tag is not None:
        known = _keys_of(EVENT_TYPES[EventKind(tag)])
    else:
        known = _TABLE_KEYS.get(str(loc[0]) if len(loc) > 1 else "", frozenset())
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    if isinstance(value, dict):
        return "table"
    return names.get(type(value), type(value).__name__)


def _key_path(loc: Sequence[str | int]) -> tuple[str, str | None]:
    """``('battery', 1, 'soc_pct')`` -> ``battery[2].soc_pct`` (1-based, as the file reads).

    An event's kind, which pydantic puts in the path of the union member it chose, is left out
    and returned beside the path.
    """
    key = ""
    tag: str | None = None
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part + 1}]"
        elif i == 2 and loc[0] == "event" and part in _EVENT_TAGS:
            tag = part
        else:
            key = f"{key}.{part}" if key else part
    return key or "(document)", tag


# pydantic's comparison errors: (how the message reads, which bound its context holds)
_COMPARISONS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _bound(ctx: Mapping[str, Any], name: str) -> str:
    value = ctx.get(name)
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _got(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """(key path, problem) of one pydantic error, worded for someone editing the TOML."""
    loc = error["loc"]
    key, tag = _key_path(loc)
    kind = error["type"]
    value = error["input"]
    ctx = error.get("ctx", {})
    last = loc[-1] if loc else ""
    got = _got(value)
    if kind in _COMPARISONS:
        symbol, bound = _COMPARISONS[kind]
        return key, f"must be {symbol} {_bound(ctx, bound)}" + (f", got {got}" if got else "")
    if kind in {"missing", "missing_keyword_only_argument", "missing_argument"}:
        if tag is not None and last not in _COMMON_EVENT_KEYS:
            return key, f"missing (required by kind {tag!r})"
        return key, "missing"
    if kind in {"extra_forbidden", "unexpected_keyword_argument"}:
        if tag is not None and last in _EVENT_KEYS:
            return key, f"not used by kind {tag!r}"
        return key, "unknown key" + _did_you_mean(loc, tag)
    if kind == "union_tag_invalid":
        kinds = ", ".join(sorted(_EVENT_TAGS))
        return f"{key}.kind", f"must be one of {kinds}; got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        if not isinstance(value, dict):
            return key, f"must be a table, got {_type_name(value)}"
        return f"{key}.kind", "missing"
    if kind == "enum":
        choices = ", ".join(sorted(re.findall(r"'([^']*)'", str(ctx.get("expected", "")))))
        return key, f"must be one of {choices}; got {value!r}"
    simple = {
        "float_type": f"must be a number, got {_type_name(value)}",
        "int_type": f"must be an integer, got {_type_name(value)}",
        "string_type": f"must be a string, got {_type_name(value)}",
        "bool_type": f"must be true or false, got {_type_name(value)}",
        "finite_number": f"must be a finite number, got {value!r}",
        "dict_type": f"must be a table, got {_type_name(value)}",
        "model_type": f"must be a table, got {_type_name(value)}",
        "model_attributes_type": f"must be a table, got {_type_name(value)}",
        "dataclass_type": f"must be a table, got {_type_name(value)}",
        "tuple_type": f"must be an array, got {_type_name(value)}",
    }
    if kind in simple:
        return key, simple[kind]
    if kind == "list_type":
        if len(loc) == 1 and last in _TABLE_ARRAYS:
            return key, f"must be an array of tables ([[{last}]]), got {_type_name(value)}"
        return key, f"must be an array, got {_type_name(value)}"
    if kind == "too_short":
        if len(loc) == 1 and last in _TABLE_ARRAYS:
            return key, f"at least {ctx['min_length']} [[{last}]] needed"
        return key, f"needs at least {ctx['min_length']} items"
    if kind == "too_long":
        return key, f"at most {_bound(ctx, 'max_length')} items, got {ctx.get('actual_length')}"
    return key, error["msg"]


def _scenario_error(path: Path, exc: ValidationError) -> ScenarioError:
    problems = [_describe(error) for error in exc.errors(include_url=False)]
    (key, problem), *more = problems
    return ScenarioError(path, key, problem, more=more)


# -- loading ---------------------------------------------------------------------------------


def parse_scenario(data: Mapping[str, Any], path: Path | str) -> Scenario:
    """Validate decoded TOML ``data``; relative trace paths resolve against ``path``'s folder."""
    path = Path(path)
    try:
        doc = _Document.model_validate(data)
    except ValidationError as exc:
        raise _scenario_error(path, exc) from None
    return _build(doc, path)


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
