"""Hypothesis strategies for the decision core: settings, telemetry and snapshot scripts.

A *script* is a list of ``Step``s. ``World`` turns it into a closed loop: time advances by the
policy period, the meter updates, freezes or is lost, and each battery either follows the last
plan (fully, half or not at all), reports a given power, goes offline, reports garbage or
disappears from the snapshot. Running the same script against two policies in lockstep is how
the order-invariance property compares them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Protocol

from hypothesis import strategies as st

from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.settings import BatterySpec, ControlSettings

# Names whose sort order differs from any natural listing order, so ties broken "by name"
# are visible when the settings are permuted.
NAME_POOL = ("venus-2", "Attic", "b", "venus-1", "garage", "z9")
STRANGER = "not-configured"  # telemetry for a battery the settings do not know
FEATURES = tuple(f.name for f in fields(ControlSettings) if f.name.startswith("feature_"))


class Policy(Protocol):
    period_s: float

    def decide(self, snap: Snapshot) -> Plan: ...


# ---------------------------------------------------------------------------- settings
def battery_specs(name: str) -> st.SearchStrategy[BatterySpec]:
    """One battery with varied limits (a derated or older unit next to a full Venus E)."""
    limit_w = st.one_of(st.just(2500), st.integers(100, 2500))
    return st.builds(
        BatterySpec,
        name=st.just(name),
        max_charge_w=limit_w,
        max_discharge_w=limit_w,
        capacity_wh=st.sampled_from([5120.0, 2560.0, 10240.0]),
    )


@st.composite
def control_settings(
    draw: st.DrawFn, *, min_batteries: int = 1, max_batteries: int = 4
) -> ControlSettings:
    """Settings with 1-4 batteries and short timers, so short scripts reach every branch."""
    names = draw(
        st.lists(
            st.sampled_from(NAME_POOL),
            min_size=min_batteries,
            max_size=max_batteries,
            unique=True,
        )
    )
    specs = tuple(draw(battery_specs(n)) for n in names)
    threshold_w = draw(st.sampled_from([2500, 1000, 3000]) | st.integers(300, 5000))
    # Safety must not depend on which refinements are on: any mix of the feature switches.
    features = {name: draw(st.sampled_from([True, True, False])) for name in FEATURES}
    settings = ControlSettings(
        batteries=specs,
        loop_period_s=draw(st.sampled_from([1.0, 0.5, 2.0])),
        split_threshold_w=threshold_w,
        split_hysteresis_w=draw(st.sampled_from([300, 0]) | st.integers(0, threshold_w - 1)),
        min_soc_pct=draw(st.sampled_from([11.0, 0.0, 5.0, 20.0])),
        max_soc_pct=draw(st.sampled_from([100.0, 90.0, 98.0])),
        reselect_interval_s=draw(st.sampled_from([300.0]) | st.floats(1.0, 20.0)),
        handover_timeout_s=draw(st.sampled_from([20.0]) | st.floats(1.0, 10.0)),
        stale_after_s=draw(st.sampled_from([5.0]) | st.floats(1.0, 10.0)),
        not_following_cycles=draw(st.integers(1, 5)),
        not_following_exclude_s=draw(st.sampled_from([300.0]) | st.floats(1.0, 20.0)),
        idle_band_w=draw(st.sampled_from([15]) | st.integers(0, 40)),
        relay_hold_s=draw(st.sampled_from([300.0]) | st.floats(0.0, 10.0)),
        min_change_w=draw(st.sampled_from([5]) | st.integers(0, 20)),
        step_threshold_w=draw(st.sampled_from([150]) | st.integers(20, 400)),
        noise_alpha=draw(st.sampled_from([0.4, 1.0]) | st.floats(0.05, 1.0)),
        soc_hysteresis_pct=draw(st.sampled_from([3.0]) | st.floats(0.0, 10.0)),
        grid_target_w=draw(st.sampled_from([0]) | st.integers(-50, 50)),
        small_correction_w=draw(st.sampled_from([60]) | st.integers(0, 200)),
    )
    return settings.with_overrides(features)


# ---------------------------------------------------------------------------- telemetry
def soc_values(settings: ControlSettings | None = None) -> st.SearchStrategy[float]:
    """SoC 0..100 with the limits and the taper steps (and their neighbours) made likely."""
    edges = [0.0, 11.0, 12.0, 96.0, 97.0, 98.0, 99.0, 100.0]
    if settings is not None:
        for edge in (settings.min_soc_pct, settings.max_soc_pct):
            edges += [edge, max(0.0, edge - 1), min(100.0, edge + 1)]
    return (
        st.sampled_from(sorted(set(edges))) | st.floats(0.0, 100.0) | st.integers(0, 100).map(float)
    )


power_values = st.integers(-2600, 2600).map(float) | st.floats(-2600.0, 2600.0).map(
    lambda p: round(p, 1)
)


def battery_telemetry(
    name: str, settings: ControlSettings | None = None
) -> st.SearchStrategy[BatteryTelemetry]:
    """Healthy, offline (stale values still attached) or garbage (SoC or power unreadable)."""
    soc = soc_values(settings)
    healthy = st.builds(
        BatteryTelemetry,
        name=st.just(name),
        online=st.just(True),
        soc_pct=soc,
        power_w=power_values,
        rs485_control=st.none() | st.booleans(),
    )
    offline = st.builds(
        BatteryTelemetry,
        name=st.just(name),
        online=st.just(False),
        soc_pct=st.none() | soc,
        power_w=st.none() | power_values,
    )
    garbage = st.one_of(
        st.builds(BatteryTelemetry, st.just(name), st.just(True), st.none(), power_values),
        st.builds(BatteryTelemetry, st.just(name), st.just(True), soc, st.none()),
    )
    return st.one_of(healthy, offline, garbage)


def healthy(t: BatteryTelemetry | None) -> bool:
    """The tests' own statement of "may be commanded": online, with a SoC and a power."""
    return t is not None and t.online and t.soc_pct is not None and t.power_w is not None


# ---------------------------------------------------------------------------- scripts
class Kind(StrEnum):
    OK = "ok"
    OFFLINE = "offline"  # read failed; the old values are still attached (must be ignored)
    NO_SOC = "no_soc"  # SoC register out of range -> None
    NO_POWER = "no_power"  # power register unreadable -> None
    MISSING = "missing"  # not in the snapshot at all


class Meter(StrEnum):
    NEW = "new"  # a new reading (meter_updated_s advances)
    FREEZE = "freeze"  # the same reading again (meter_updated_s unchanged)
    LOST = "lost"  # no valid reading (grid_w None)


@dataclass(frozen=True, slots=True)
class BatteryStep:
    kind: Kind = Kind.OK
    soc_pct: float | None = None  # None: keep the previous SoC
    power_w: float | None = None  # None: follow the last setpoint times ``follow_gain``
    follow_gain: float = 1.0


@dataclass(frozen=True, slots=True)
class Step:
    meter: Meter = Meter.NEW
    grid_w: float = 0.0
    lag_s: float = 0.0  # how long before ``now_s`` the new reading appeared
    mode: Mode | None = None  # None: keep
    discharge_blocked: bool | None = None  # None: keep
    batteries: tuple[BatteryStep, ...] = ()  # one per battery in settings order; short = OK
    stranger: bool = False  # add telemetry for an unknown battery
    repeat: int = 1  # cycles this step lasts


def grid_values(settings: ControlSettings) -> st.SearchStrategy[float]:
    """Grid readings, with the split threshold, its hysteresis and the idle band made likely."""
    t, h, band = settings.split_threshold_w, settings.split_hysteresis_w, settings.idle_band_w
    edges = {0, 10, -10, band, -band, band + 1, -band - 1, t, -t, t - h, h - t, t + 1, -t - 1}
    return (
        st.sampled_from(sorted(float(e) for e in edges))
        | st.integers(-6000, 6000).map(float)
        | st.floats(-6000.0, 6000.0).map(lambda g: round(g, 1))
    )


def battery_steps(settings: ControlSettings) -> st.SearchStrategy[BatteryStep]:
    # Mostly healthy and following; the list order makes the common case the shrink target.
    kind = st.sampled_from([Kind.OK] * 6 + [k for k in Kind if k is not Kind.OK])
    return st.builds(
        BatteryStep,
        kind=kind,
        soc_pct=st.none() | soc_values(settings),
        power_w=st.one_of(st.none(), st.none(), power_values),
        follow_gain=st.sampled_from([1.0, 1.0, 0.0, 0.5]),
    )


def steps(settings: ControlSettings) -> st.SearchStrategy[Step]:
    n = len(settings.batteries)
    return st.builds(
        Step,
        meter=st.sampled_from([Meter.NEW] * 4 + [Meter.FREEZE, Meter.LOST]),
        grid_w=grid_values(settings),
        lag_s=st.sampled_from([0.0, 0.3]) | st.floats(0.0, 0.9 * settings.loop_period_s),
        mode=st.sampled_from([None] * 6 + [Mode.NORMAL, Mode.NORMAL, *Mode]),
        discharge_blocked=st.sampled_from([None] * 4 + [False, False, True]),
        batteries=st.lists(battery_steps(settings), max_size=n).map(tuple),
        stranger=st.booleans(),
        repeat=st.just(1) | st.integers(2, 12),
    )


def scripts(
    settings: ControlSettings, *, min_size: int = 1, max_size: int = 25
) -> st.SearchStrategy[list[Step]]:
    return st.lists(steps(settings), min_size=min_size, max_size=max_size)


def steady_scripts(
    settings: ControlSettings, *, min_size: int = 2, max_size: int = 12
) -> st.SearchStrategy[list[Step]]:
    """A steady demand in one direction below the split threshold while the SoCs drift and
    the batteries follow fully, partly or not at all: leader changes and hand-overs."""
    low = settings.idle_band_w + 50
    high = max(low, settings.split_threshold_w - settings.split_hysteresis_w)
    demand = st.integers(low, high).map(float)
    sign = st.sampled_from([1.0, -1.0])
    battery = st.builds(
        BatteryStep,
        soc_pct=st.none() | st.floats(20.0, 90.0),
        follow_gain=st.sampled_from([1.0, 0.0, 0.5]),
    )
    n = len(settings.batteries)
    return st.tuples(sign, demand).flatmap(
        lambda sd: st.lists(
            st.builds(
                Step,
                grid_w=st.just(sd[0] * sd[1]),
                mode=st.just(Mode.NORMAL),
                discharge_blocked=st.just(False),
                batteries=st.lists(battery, min_size=n, max_size=n).map(tuple),
                repeat=st.integers(1, 8),
            ),
            min_size=min_size,
            max_size=max_size,
        )
    )


class World:
    """The closed loop a script runs in. Pure bookkeeping: no clock but ``now_s``."""

    def __init__(self, settings: ControlSettings, *, t0_s: float = 1000.0) -> None:
        self.settings = settings
        self.period_s = settings.loop_period_s
        self.names = tuple(b.name for b in settings.batteries)
        self.now_s = t0_s
        self.grid_w: float | None = None
        self.meter_updated_s: float | None = None
        self.mode = Mode.NORMAL
        self.discharge_blocked = False
        self.soc_pct = dict.fromkeys(self.names, 50.0)
        self.battery = {n: BatteryStep() for n in self.names}
        self.setpoints: dict[str, int] = {}
        self.stranger = False

    def apply(self, step: Step) -> None:
        """Take over the step's conditions (mode, block, battery health) before its cycles."""
        if step.mode is not None:
            self.mode = step.mode
        if step.discharge_blocked is not None:
            self.discharge_blocked = step.discharge_blocked
        for name, b in zip(self.names, step.batteries, strict=False):
            self.battery[name] = b
            if b.soc_pct is not None:
                self.soc_pct[name] = b.soc_pct
        self.stranger = step.stranger

    def advance(self, meter: Meter, grid_w: float, lag_s: float = 0.0) -> Snapshot:
        """One period later: the meter as told, the batteries as they are."""
        self.now_s += self.period_s
        if meter is Meter.NEW:
            updated = self.now_s - lag_s
            if self.meter_updated_s is not None:
                updated = max(updated, self.meter_updated_s + 1e-3)
            self.meter_updated_s = min(updated, self.now_s)
            self.grid_w = grid_w
        elif meter is Meter.LOST:
            self.grid_w = None
        return self.snapshot()

    def telemetry(self, name: str) -> BatteryTelemetry | None:
        b = self.battery[name]
        soc = self.soc_pct[name]
        if b.power_w is not None:
            power = b.power_w
        else:
            power = float(round(b.follow_gain * self.setpoints.get(name, 0)))
        match b.kind:
            case Kind.MISSING:
                return None
            case Kind.OFFLINE:
                return BatteryTelemetry(name, online=False, soc_pct=soc, power_w=power)
            case Kind.NO_SOC:
                return BatteryTelemetry(name, online=True, soc_pct=None, power_w=power)
            case Kind.NO_POWER:
                return BatteryTelemetry(name, online=True, soc_pct=soc, power_w=None)
            case _:
                return BatteryTelemetry(
                    name, online=True, soc_pct=soc, power_w=power, rs485_control=True
                )

    def snapshot(self) -> Snapshot:
        batteries = [t for n in self.names if (t := self.telemetry(n)) is not None]
        if self.stranger:
            batteries.append(BatteryTelemetry(STRANGER, online=True, soc_pct=50.0, power_w=0.0))
        return Snapshot(
            now_s=self.now_s,
            grid_w=self.grid_w,
            meter_updated_s=self.meter_updated_s,
            batteries=tuple(batteries),
            mode=self.mode,
            discharge_blocked=self.discharge_blocked,
        )

    def record(self, plan: Plan) -> None:
        """The batteries now hold the plan's setpoints (those not commanded keep theirs)."""
        self.setpoints.update(plan.setpoints)
        for name in plan.release:
            self.setpoints[name] = 0


def expand(script: Sequence[Step], world: World) -> Iterator[Snapshot]:
    """The script's snapshots, cycle by cycle; call ``world.record`` between them to close
    the loop (open loop otherwise: following batteries then report 0 W)."""
    for step in script:
        world.apply(step)
        for _ in range(step.repeat):
            yield world.advance(step.meter, step.grid_w, step.lag_s)


def run(policy: Policy, world: World, script: Sequence[Step]) -> Iterator[tuple[Snapshot, Plan]]:
    """Run ``script`` in closed loop against ``policy``; yields every cycle's input and plan."""
    for snap in expand(script, world):
        plan = policy.decide(snap)
        world.record(plan)
        yield snap, plan


@st.composite
def snapshot_sequences(
    draw: st.DrawFn, settings: ControlSettings, *, max_steps: int = 25
) -> list[Snapshot]:
    """Open-loop snapshot sequences: monotonic ``now_s`` stepping by the period, the meter
    advancing, freezing or lost, SoC incl. the limits, offline and garbage batteries, modes."""
    script = draw(scripts(settings, max_size=max_steps))
    return list(expand(script, World(settings, t0_s=draw(st.sampled_from([0.0, 1000.0])))))


def permuted(settings: ControlSettings, order: Sequence[int]) -> ControlSettings:
    """The same settings with the batteries listed in another order."""
    return replace(settings, batteries=tuple(settings.batteries[i] for i in order))


def permute_snapshot(snap: Snapshot, order_names: Sequence[str]) -> Snapshot:
    """The same snapshot with its telemetry listed in ``order_names`` order (others last)."""
    rank = {n: i for i, n in enumerate(order_names)}
    batteries = sorted(snap.batteries, key=lambda t: rank.get(t.name, len(rank)))
    return snap._replace(batteries=tuple(batteries))
