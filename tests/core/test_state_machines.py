"""The battery and fleet state machines: their tables, guards, and the policy driving them."""

from __future__ import annotations

import importlib.util
from enum import StrEnum
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from transitions import MachineError

from engine.core.battery_fsm import BATTERY_TRANSITIONS, BatteryFsm, Rest
from engine.core.events import (
    BatteryConnected,
    CutoffCleared,
    CutoffReached,
    DecisionEvent,
    Direction,
    Excluded,
    ExclusionEnded,
    HandoverEnded,
    HandoverStarted,
    SafeHoldCause,
    SafeHoldEntered,
    SafeHoldLeft,
)
from engine.core.fleet_fsm import (
    FLEET_TRANSITIONS,
    SELECTION_TRANSITIONS,
    FleetFsm,
    SelectionFsm,
    SelectionState,
)
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.policy import MmbcPolicy
from engine.core.settings import ControlSettings
from engine.core.states import BatteryState, FleetState
from tests.core.invariants import SafetyChecker, is_stale
from tests.strategies import (
    BatteryStep,
    Kind,
    Meter,
    World,
    control_settings,
    healthy,
    soc_values,
)

ROOT = Path(__file__).resolve().parents[2]


def state_of(fsm: BatteryFsm | FleetFsm | SelectionFsm) -> StrEnum:
    """Read afresh: mypy would otherwise narrow ``fsm.state`` across the calls that move it."""
    return fsm.state


# ---------------------------------------------------------------------------- battery table
B = BatteryState
WORKING = (B.IDLE, B.CHARGING, B.DISCHARGING, B.BLOCKED, B.INELIGIBLE)
SITTING_OUT = (B.EXCLUDED, B.CUTOFF)

# The specification, written out independently of BATTERY_TRANSITIONS: trigger -> the
# destination from each state it is allowed in (guards passing). Every other (state, trigger)
# is an error. ``recover`` is listed with the plain case; its guarded variants are tested below.
BATTERY_SPEC: dict[str, dict[BatteryState, BatteryState]] = {
    "lose": dict.fromkeys((*WORKING, *SITTING_OUT), B.UNAVAILABLE),
    "recover": {B.UNAVAILABLE: B.IDLE},
    "charge": {s: B.CHARGING for s in WORKING if s is not B.CHARGING},
    "discharge": {s: B.DISCHARGING for s in WORKING if s is not B.DISCHARGING},
    "rest": {s: B.IDLE for s in WORKING if s is not B.IDLE},
    "block": {s: B.BLOCKED for s in WORKING if s is not B.BLOCKED},
    "disqualify": {s: B.INELIGIBLE for s in WORKING if s is not B.INELIGIBLE},
    "exclude": dict.fromkeys((B.CHARGING, B.DISCHARGING), B.EXCLUDED),
    "reach_cutoff": dict.fromkeys((B.CHARGING, B.DISCHARGING), B.CUTOFF),
    "leave_cutoff": {B.CUTOFF: B.IDLE},
    "expire": {B.EXCLUDED: B.IDLE},
}
# Guarded rows: from ``cutoff`` a battery may work only the other way than its cut-off.
GUARDED_ONLY = {("charge", B.CUTOFF), ("discharge", B.CUTOFF)}


def battery_in(state: BatteryState, *, soc_pct: float | None = 50.0) -> BatteryFsm:
    fsm = BatteryFsm("a", min_soc_pct=11.0, max_soc_pct=100.0)
    fsm._machine.set_state(state)
    fsm.soc_pct = soc_pct
    return fsm


def test_battery_spec_names_every_trigger_of_the_table() -> None:
    assert {t["trigger"] for t in BATTERY_TRANSITIONS} == set(BATTERY_SPEC)


def test_battery_table_has_no_self_transitions() -> None:
    for t in BATTERY_TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        assert t["dest"] not in sources, t


def test_battery_starts_unavailable() -> None:
    assert BatteryFsm("a", min_soc_pct=11.0, max_soc_pct=100.0).state is B.UNAVAILABLE


@pytest.mark.parametrize("trigger", sorted(BATTERY_SPEC))
@pytest.mark.parametrize("state", list(BatteryState), ids=str)
def test_battery_trigger_from_every_state(state: BatteryState, trigger: str) -> None:
    fsm = battery_in(state)
    allowed = BATTERY_SPEC[trigger]
    if (trigger, state) in GUARDED_ONLY:
        assert getattr(fsm, trigger)() is False  # no cut-off direction set: refused
        assert fsm.state is state
    elif state in allowed:
        assert getattr(fsm, trigger)() is True
        assert fsm.state is allowed[state]
    else:
        with pytest.raises(MachineError):
            getattr(fsm, trigger)()
        assert fsm.state is state


@pytest.mark.parametrize(
    ("excluded_until_s", "cutoff", "expected"),
    [
        (float("-inf"), Direction.NONE, B.IDLE),
        (500.0, Direction.NONE, B.EXCLUDED),  # an exclusion outlives a lost connection
        (float("-inf"), Direction.DISCHARGE, B.CUTOFF),  # and so does a cut-off
    ],
)
def test_a_returning_battery_resumes_what_it_sat_out(
    excluded_until_s: float, cutoff: Direction, expected: BatteryState
) -> None:
    fsm = battery_in(B.UNAVAILABLE)
    fsm.excluded_until_s = excluded_until_s
    fsm.cutoff_direction = cutoff
    assert fsm.recover() is True
    assert fsm.state is expected


@pytest.mark.parametrize(
    ("trigger", "soc_pct", "blocked"),
    [
        ("charge", 100.0, False),  # full
        ("charge", None, False),  # unknown SoC
        ("discharge", 11.0, False),  # at min_soc_pct
        ("discharge", 5.0, False),
        ("discharge", None, False),
        ("discharge", 80.0, True),  # blocked
    ],
)
@pytest.mark.parametrize("state", WORKING, ids=str)
def test_battery_guards_refuse_and_stay(
    state: BatteryState, trigger: str, soc_pct: float | None, blocked: bool
) -> None:
    fsm = battery_in(state, soc_pct=soc_pct)
    fsm.discharge_blocked = blocked
    if BATTERY_SPEC[trigger].get(state) is None:  # already there: no self-transition exists
        with pytest.raises(MachineError):
            getattr(fsm, trigger)()
    else:
        assert getattr(fsm, trigger)() is False
    assert fsm.state is state


@pytest.mark.parametrize(
    ("soc_pct", "blocked", "power_w", "at_zero", "allowed_w", "state"),
    [
        (50.0, False, -500, Rest.IDLE, -500, B.CHARGING),
        (99.9, False, -500, Rest.IDLE, -500, B.CHARGING),
        (100.0, False, -500, Rest.IDLE, 0, B.INELIGIBLE),
        (None, False, -500, Rest.IDLE, 0, B.INELIGIBLE),
        (50.0, True, -500, Rest.IDLE, -500, B.CHARGING),  # blocking discharge never stops charge
        (50.0, False, 500, Rest.IDLE, 500, B.DISCHARGING),
        (11.1, False, 500, Rest.IDLE, 500, B.DISCHARGING),
        (11.0, False, 500, Rest.IDLE, 0, B.INELIGIBLE),
        (50.0, True, 500, Rest.IDLE, 0, B.BLOCKED),
        (5.0, True, 500, Rest.IDLE, 0, B.BLOCKED),
        (50.0, False, 1, Rest.IDLE, 1, B.DISCHARGING),  # the keep-alive is a command like any
        (100.0, False, -1, Rest.IDLE, 0, B.INELIGIBLE),
        (50.0, False, 0, Rest.IDLE, 0, B.IDLE),
        (50.0, False, 0, Rest.BLOCKED, 0, B.BLOCKED),
        (50.0, False, 0, Rest.INELIGIBLE, 0, B.INELIGIBLE),
    ],
)
def test_command_returns_only_what_the_guards_allow(
    soc_pct: float | None,
    blocked: bool,
    power_w: int,
    at_zero: Rest,
    allowed_w: int,
    state: BatteryState,
) -> None:
    fsm = battery_in(B.IDLE, soc_pct=soc_pct)
    fsm.discharge_blocked = blocked
    assert fsm.command(power_w, 0.0, at_zero=at_zero) == allowed_w
    assert fsm.state is state
    assert fsm.command_w == allowed_w


def test_command_on_an_unavailable_battery_is_an_error_not_a_command() -> None:
    fsm = battery_in(B.UNAVAILABLE)
    for power_w in (-500, 0, 500):
        with pytest.raises(MachineError):
            fsm.command(power_w, 0.0)
    assert fsm.state is B.UNAVAILABLE


@pytest.mark.parametrize("power_w", [-500, -1, 0, 1, 500])
def test_an_excluded_battery_gets_nothing_and_stays_excluded(power_w: int) -> None:
    fsm = battery_in(B.EXCLUDED)
    assert fsm.command(power_w, 0.0) == 0
    assert fsm.state is B.EXCLUDED


@pytest.mark.parametrize(
    ("cutoff", "power_w", "allowed_w", "state"),
    [
        (Direction.DISCHARGE, 500, 0, B.CUTOFF),  # stopped at the bottom: no discharge
        (Direction.DISCHARGE, 1, 0, B.CUTOFF),  # not even the keep-alive
        (Direction.DISCHARGE, -500, -500, B.CHARGING),  # but it may charge
        (Direction.CHARGE, -500, 0, B.CUTOFF),
        (Direction.CHARGE, 500, 500, B.DISCHARGING),
    ],
)
def test_a_battery_at_its_cutoff_works_only_the_other_way(
    cutoff: Direction, power_w: int, allowed_w: int, state: BatteryState
) -> None:
    fsm = battery_in(B.CUTOFF, soc_pct=50.0)
    fsm.cutoff_direction = cutoff
    assert fsm.command(power_w, 0.0) == allowed_w
    assert fsm.state is state
    if state is not B.CUTOFF:
        assert fsm.cutoff_direction is Direction.NONE  # working the other way ends it


def _tel(power_w: float, soc_pct: float = 50.0) -> BatteryTelemetry:
    return BatteryTelemetry("a", online=True, soc_pct=soc_pct, power_w=power_w)


def test_the_exclusion_timer_runs_on_the_clock_passed_in() -> None:
    fsm = BatteryFsm("a", min_soc_pct=11.0, max_soc_pct=100.0, not_following_exclude_s=60.0)
    events: list[DecisionEvent] = []
    fsm.observe(_tel(0.0), 0.0, events)
    fsm.command(500, 0.0)
    t = 0.0
    while fsm.state is not B.EXCLUDED:
        t += 1.0
        fsm.observe(_tel(0.0), t, events)  # commanded 500 W, delivers nothing
        assert t < 30.0, "never excluded"
    excluded_at = t
    assert [type(e) for e in events] == [BatteryConnected, Excluded]
    while t < excluded_at + 59.0:
        t += 1.0
        fsm.observe(_tel(0.0), t, events)
        assert fsm.state is B.EXCLUDED
    fsm.observe(_tel(0.0), excluded_at + 60.0, events)
    assert state_of(fsm) is B.IDLE
    assert isinstance(events[-1], ExclusionEnded)


def test_a_stall_near_the_bottom_is_the_firmware_cutoff_and_ends_when_soc_moves() -> None:
    fsm = BatteryFsm("a", min_soc_pct=11.0, max_soc_pct=100.0)
    events: list[DecisionEvent] = []
    fsm.observe(_tel(0.0, soc_pct=14.0), 0.0, events)
    fsm.command(800, 0.0)
    for t in range(1, 7):
        fsm.observe(_tel(0.0, soc_pct=14.0), float(t), events)
    assert fsm.state is B.CUTOFF
    assert CutoffReached("a", Direction.DISCHARGE, 14.0) in events
    fsm.observe(_tel(0.0, soc_pct=15.0), 8.0, events)  # charged a little: try again
    assert state_of(fsm) is B.IDLE
    assert isinstance(events[-1], CutoffCleared)


@settings(max_examples=200, deadline=None)
@given(
    soc=st.none() | soc_values(),
    blocked=st.booleans(),
    start=st.sampled_from((*WORKING, *SITTING_OUT)),
    cutoff=st.sampled_from(list(Direction)),
    powers=st.lists(st.integers(-2500, 2500) | st.sampled_from([-1, 0, 1]), min_size=1),
)
def test_command_never_passes_a_forbidden_command(
    soc: float | None,
    blocked: bool,
    start: BatteryState,
    cutoff: Direction,
    powers: list[int],
) -> None:
    fsm = battery_in(start, soc_pct=soc)
    fsm.discharge_blocked = blocked
    fsm.cutoff_direction = cutoff if start is B.CUTOFF else Direction.NONE
    for power_w in powers:
        before, before_cutoff = fsm.state, fsm.cutoff_direction
        allowed = fsm.command(power_w, 0.0)
        assert allowed in (0, power_w)
        if allowed:
            assert before is not B.EXCLUDED
            direction = Direction.DISCHARGE if allowed > 0 else Direction.CHARGE
            assert not (before is B.CUTOFF and before_cutoff is direction)
        if allowed < 0:
            assert soc is not None
            assert soc < 100.0
            assert fsm.state is B.CHARGING
        elif allowed > 0:
            assert soc is not None
            assert soc > 11.0
            assert not blocked
            assert fsm.state is B.DISCHARGING
        else:
            assert fsm.state in (B.IDLE, B.BLOCKED, B.INELIGIBLE, *SITTING_OUT)


# ---------------------------------------------------------------------------- fleet table
F = FleetState
FLEET_SPEC: dict[str, dict[FleetState, FleetState]] = {
    "run_normal": {s: F.NORMAL for s in FleetState if s is not F.NORMAL},
    "run_hold": {s: F.HOLD for s in FleetState if s is not F.HOLD},
    "run_charge": {s: F.CHARGE for s in FleetState if s is not F.CHARGE},
    "run_selfcontrol": {s: F.SELFCONTROL for s in FleetState if s is not F.SELFCONTROL},
    "fail_safe": dict.fromkeys((F.NORMAL, F.HOLD, F.CHARGE, F.SELFCONTROL), F.SAFE_HOLD),
}


def fleet_in(state: FleetState) -> FleetFsm:
    fsm = FleetFsm()
    fsm._machine.set_state(state)
    return fsm


def test_fleet_spec_names_every_trigger_of_the_table() -> None:
    assert {t["trigger"] for t in FLEET_TRANSITIONS} == set(FLEET_SPEC)
    assert FleetFsm().state is F.STARTING


def test_nothing_returns_to_starting() -> None:
    assert all(t["dest"] is not F.STARTING for t in FLEET_TRANSITIONS)


@pytest.mark.parametrize("trigger", sorted(FLEET_SPEC))
@pytest.mark.parametrize("state", list(FleetState), ids=str)
def test_fleet_trigger_from_every_state(state: FleetState, trigger: str) -> None:
    fsm = fleet_in(state)
    allowed = FLEET_SPEC[trigger]
    if state in allowed:
        assert getattr(fsm, trigger)() is True
        assert fsm.state is allowed[state]
    else:
        with pytest.raises(MachineError):
            getattr(fsm, trigger)()
        assert fsm.state is state


@pytest.mark.parametrize(
    ("mode", "blocked", "expected"),
    [
        (Mode.NORMAL, False, F.NORMAL),
        (Mode.NORMAL, True, F.HOLD),  # a blocked discharge turns normal into hold
        (Mode.HOLD, False, F.HOLD),
        (Mode.CHARGE, True, F.CHARGE),
        (Mode.SELFCONTROL, True, F.SELFCONTROL),
    ],
)
@pytest.mark.parametrize("state", list(FleetState), ids=str)
def test_a_fresh_tick_reaches_the_mode_from_any_state(
    state: FleetState, mode: Mode, blocked: bool, expected: FleetState
) -> None:
    fsm = fleet_in(state)
    events: list[DecisionEvent] = []
    fsm.tick(mode, discharge_blocked=blocked, meter_fresh=True, events=events)
    assert fsm.state is expected
    assert (SafeHoldLeft(SafeHoldCause.METER_STALE) in events) == (
        state is F.SAFE_HOLD and expected is not F.SAFE_HOLD
    )


@pytest.mark.parametrize("state", list(FleetState), ids=str)
def test_a_stale_tick_holds_safe_once_except_in_selfcontrol(state: FleetState) -> None:
    fsm = fleet_in(state)
    events: list[DecisionEvent] = []
    for _ in range(2):
        fsm.tick(Mode.NORMAL, discharge_blocked=False, meter_fresh=False, events=events)
    if state is F.STARTING:
        assert fsm.state is F.STARTING  # never had a reading: still starting, at 0 W
        assert events == []
    else:
        assert fsm.state is F.SAFE_HOLD
        entered = events.count(SafeHoldEntered(SafeHoldCause.METER_STALE))
        assert entered == (0 if state is F.SAFE_HOLD else 1)
    assert fsm.holds_at_zero
    fsm.tick(Mode.SELFCONTROL, discharge_blocked=False, meter_fresh=False, events=events)
    assert state_of(fsm) is F.SELFCONTROL  # released batteries need no meter


# ---------------------------------------------------------------------------- selection table
S = SelectionState
SELECTION_SPEC: dict[str, dict[SelectionState, SelectionState]] = {
    "lead": dict.fromkeys((S.IDLE, S.SPLIT), S.SINGLE),
    "share": dict.fromkeys((S.IDLE, S.SINGLE, S.HANDOVER), S.SPLIT),
    "stop": dict.fromkeys((S.SINGLE, S.HANDOVER, S.SPLIT), S.IDLE),
    "hand_over": {S.SINGLE: S.HANDOVER},
    "finish_handover": {S.HANDOVER: S.SINGLE},
}


def selection_in(state: SelectionState) -> SelectionFsm:
    fsm = SelectionFsm(reselect_interval_s=300.0, handover_timeout_s=20.0)
    fsm._machine.set_state(state)
    return fsm


def test_selection_spec_names_every_trigger_of_the_table() -> None:
    assert {t["trigger"] for t in SELECTION_TRANSITIONS} == set(SELECTION_SPEC)


@pytest.mark.parametrize("trigger", sorted(SELECTION_SPEC))
@pytest.mark.parametrize("state", list(SelectionState), ids=str)
def test_selection_trigger_from_every_state(state: SelectionState, trigger: str) -> None:
    fsm = selection_in(state)
    allowed = SELECTION_SPEC[trigger]
    if state in allowed:
        assert getattr(fsm, trigger)() is True
        assert fsm.state is allowed[state]
    else:
        with pytest.raises(MachineError):
            getattr(fsm, trigger)()
        assert fsm.state is state


def test_the_reselection_and_handover_timers_run_on_the_clock_passed_in() -> None:
    sel = selection_in(S.IDLE)
    events: list[DecisionEvent] = []
    sel.choose(("a", "b"), Direction.DISCHARGE, 100.0)
    names = {"a", "b"}
    assert not sel.reselection_due(399.9, Direction.DISCHARGE, names)
    assert sel.reselection_due(400.0, Direction.DISCHARGE, names)  # the 5-minute rule
    assert sel.reselection_due(101.0, Direction.CHARGE, names)  # the direction changed
    assert sel.reselection_due(101.0, Direction.DISCHARGE, {"b"})  # the leader dropped out
    sel.go_single(events)
    sel.begin_handover("a", "b", 100.0, events)
    assert state_of(sel) is S.HANDOVER
    assert not sel.handover_over(120.0)
    assert sel.handover_over(120.1)
    sel.go_split(events)  # several share: the hand-over is moot
    assert state_of(sel) is S.SPLIT
    assert events == [HandoverStarted("a", "b"), HandoverEnded("a", "b", completed=False)]
    sel.go_idle(events)
    assert state_of(sel) is S.IDLE
    assert sel.order == ("a", "b")  # the order and its timer outlive an idle gap


# ---------------------------------------------------------------- the policy driving both
class PolicyMachine(RuleBasedStateMachine):
    """Random snapshots, mode changes, block toggles, meter freezes and battery losses."""

    def __init__(self) -> None:
        super().__init__()
        self.snap: Snapshot | None = None
        self.plan: Plan | None = None

    @initialize(s=control_settings(), grid_w=st.integers(-3000, 3000))
    def start(self, s: ControlSettings, grid_w: int) -> None:
        self.policy = MmbcPolicy(s)
        self.world = World(s)
        self.checker = SafetyChecker(self.policy)
        self.grid_w = float(grid_w)
        self._cycle(Meter.NEW)

    def _cycle(self, meter: Meter) -> None:
        snap = self.world.advance(meter, self.grid_w)
        plan = self.policy.decide(snap)
        self.world.record(plan)
        self.checker.check(snap, plan)
        self.snap, self.plan = snap, plan

    @rule(grid_w=st.integers(-6000, 6000), lag_s=st.sampled_from([0.0, 0.4]))
    def new_reading(self, grid_w: int, lag_s: float) -> None:
        self.grid_w = float(grid_w)
        snap = self.world.advance(Meter.NEW, self.grid_w, lag_s)
        plan = self.policy.decide(snap)
        self.world.record(plan)
        self.checker.check(snap, plan)
        self.snap, self.plan = snap, plan

    @rule(cycles=st.integers(1, 40))
    def meter_freezes(self, cycles: int) -> None:
        for _ in range(cycles):
            self._cycle(Meter.FREEZE)

    @rule()
    def meter_lost(self) -> None:
        self._cycle(Meter.LOST)

    @rule(mode=st.sampled_from(list(Mode)))
    def mode_changes(self, mode: Mode) -> None:
        self.world.mode = mode
        self._cycle(Meter.NEW)

    @rule()
    def block_toggles(self) -> None:
        self.world.discharge_blocked = not self.world.discharge_blocked
        self._cycle(Meter.NEW)

    @rule(data=st.data())
    def battery_health_changes(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.world.names))
        kind = data.draw(st.sampled_from(list(Kind)))
        self.world.battery[name] = BatteryStep(kind=kind)
        self._cycle(Meter.NEW)

    @rule(data=st.data())
    def soc_changes(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.world.names))
        self.world.soc_pct[name] = data.draw(soc_values(self.policy.settings))
        self._cycle(Meter.NEW)

    @rule(data=st.data())
    def battery_stops_following(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.world.names))
        gain = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
        self.world.battery[name] = BatteryStep(follow_gain=gain)
        self._cycle(Meter.NEW)

    @invariant()
    def safe_hold_iff_stale(self) -> None:
        if self.snap is None or self.plan is None:
            return
        assert self.plan.fleet_state is self.policy.fleet.state
        if self.snap.mode is Mode.SELFCONTROL:
            assert self.plan.fleet_state == "selfcontrol"
            return
        s = self.policy.settings
        stale = is_stale(self.snap, self.policy.demand.cadence.stale_limit_s(s.stale_after_s))
        assert self.policy.fleet.holds_at_zero == stale

    @invariant()
    def unavailable_iff_unhealthy(self) -> None:
        if self.snap is None or self.plan is None:
            return
        tel = {t.name: t for t in self.snap.batteries}
        for name in self.world.names:
            unavailable = self.plan.battery_states[name] == "unavailable"
            assert unavailable == (not healthy(tel.get(name))), name


PolicyMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPolicyMachine = PolicyMachine.TestCase


# ---------------------------------------------------------------------------- the generated doc
def _renderer() -> ModuleType:
    path = ROOT / "scripts" / "render_state_machines.py"
    spec = importlib.util.spec_from_file_location("render_state_machines", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_state_machine_doc_matches_the_tables() -> None:
    """docs/state-machines.md is generated; regenerate it with the script when this fails."""
    expected = _renderer().render()
    committed = (ROOT / "docs" / "state-machines.md").read_text(encoding="utf-8")
    assert committed == expected, "run: python scripts/render_state_machines.py"


def test_doc_shows_every_transition_and_state() -> None:
    text = _renderer().render()
    for t in BATTERY_TRANSITIONS:
        for src in t["source"] if isinstance(t["source"], list) else [t["source"]]:
            assert f"    {src.value} --> {t['dest'].value}: {t['trigger']}" in text
    for t in [*FLEET_TRANSITIONS, *SELECTION_TRANSITIONS]:
        for src in t["source"] if isinstance(t["source"], list) else [t["source"]]:
            assert f"    {src.value} --> {t['dest'].value}: {t['trigger']}" in text
    for state in [*BatteryState, *FleetState, *SelectionState]:
        assert f"| `{state.value}` |" in text
