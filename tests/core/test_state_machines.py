"""The battery and fleet state machines: their tables, guards, and the policy driving them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from transitions import MachineError

from engine.core.battery_fsm import BATTERY_TRANSITIONS, BatteryFsm
from engine.core.fleet_fsm import FLEET_TRANSITIONS, FleetFsm
from engine.core.model import Mode, Plan, Snapshot
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

# ---------------------------------------------------------------------------- battery table
B = BatteryState
AVAILABLE = (B.IDLE, B.CHARGING, B.DISCHARGING, B.BLOCKED, B.INELIGIBLE)

# The specification, written out independently of BATTERY_TRANSITIONS: trigger -> the
# destination from each state it is allowed in. Every other (state, trigger) is an error.
BATTERY_SPEC: dict[str, dict[BatteryState, BatteryState]] = {
    "lose": dict.fromkeys(AVAILABLE, B.UNAVAILABLE),
    "recover": {B.UNAVAILABLE: B.IDLE},
    "charge": dict.fromkeys(AVAILABLE, B.CHARGING),
    "discharge": dict.fromkeys(AVAILABLE, B.DISCHARGING),
    "rest": dict.fromkeys(AVAILABLE, B.IDLE),
    "block": dict.fromkeys(AVAILABLE, B.BLOCKED),
    "disqualify": dict.fromkeys(AVAILABLE, B.INELIGIBLE),
}


def battery_in(state: BatteryState, *, soc_pct: float | None = 50.0) -> BatteryFsm:
    fsm = BatteryFsm("a", min_soc_pct=11.0, max_soc_pct=100.0)
    fsm._machine.set_state(state)
    fsm.soc_pct = soc_pct
    return fsm


def test_battery_spec_names_every_trigger_of_the_table() -> None:
    assert {t["trigger"] for t in BATTERY_TRANSITIONS} == set(BATTERY_SPEC)


def test_battery_starts_unavailable() -> None:
    assert BatteryFsm("a", min_soc_pct=11.0, max_soc_pct=100.0).state is B.UNAVAILABLE


@pytest.mark.parametrize("trigger", sorted(BATTERY_SPEC))
@pytest.mark.parametrize("state", list(BatteryState), ids=str)
def test_battery_trigger_from_every_state(state: BatteryState, trigger: str) -> None:
    fsm = battery_in(state)
    allowed = BATTERY_SPEC[trigger]
    if state in allowed:
        assert getattr(fsm, trigger)() is True
        assert fsm.state is allowed[state]
    else:
        with pytest.raises(MachineError):
            getattr(fsm, trigger)()
        assert fsm.state is state


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
@pytest.mark.parametrize("state", AVAILABLE, ids=str)
def test_battery_guards_refuse_and_stay(
    state: BatteryState, trigger: str, soc_pct: float | None, blocked: bool
) -> None:
    fsm = battery_in(state, soc_pct=soc_pct)
    fsm.discharge_blocked = blocked
    assert getattr(fsm, trigger)() is False
    assert fsm.state is state


@pytest.mark.parametrize(
    ("soc_pct", "blocked", "power_w", "reason", "allowed_w", "state"),
    [
        (50.0, False, -500, None, -500, B.CHARGING),
        (99.9, False, -500, None, -500, B.CHARGING),
        (100.0, False, -500, None, 0, B.INELIGIBLE),
        (None, False, -500, None, 0, B.INELIGIBLE),
        (50.0, True, -500, None, -500, B.CHARGING),  # blocking discharge never stops charging
        (50.0, False, 500, None, 500, B.DISCHARGING),
        (11.1, False, 500, None, 500, B.DISCHARGING),
        (11.0, False, 500, None, 0, B.INELIGIBLE),
        (50.0, True, 500, None, 0, B.BLOCKED),
        (5.0, True, 500, None, 0, B.BLOCKED),
        (50.0, False, 1, None, 1, B.DISCHARGING),  # the keep-alive is a command like any
        (100.0, False, -1, None, 0, B.INELIGIBLE),
        (50.0, False, 0, None, 0, B.IDLE),
        (50.0, False, 0, "blocked", 0, B.BLOCKED),
        (50.0, False, 0, "ineligible", 0, B.INELIGIBLE),
    ],
)
def test_follow_returns_only_what_the_guards_allow(
    soc_pct: float | None,
    blocked: bool,
    power_w: int,
    reason: str | None,
    allowed_w: int,
    state: BatteryState,
) -> None:
    fsm = battery_in(B.IDLE, soc_pct=soc_pct)
    fsm.discharge_blocked = blocked
    assert fsm.follow(power_w, reason=reason) == allowed_w
    assert fsm.state is state


def test_follow_on_an_unavailable_battery_is_an_error_not_a_command() -> None:
    fsm = battery_in(B.UNAVAILABLE)
    for power_w in (-500, 500):
        with pytest.raises(MachineError):
            fsm.follow(power_w)
    assert fsm.state is B.UNAVAILABLE


@settings(max_examples=200, deadline=None)
@given(
    soc=st.none() | soc_values(),
    blocked=st.booleans(),
    start=st.sampled_from(AVAILABLE),
    powers=st.lists(st.integers(-2500, 2500) | st.sampled_from([-1, 0, 1]), min_size=1),
)
def test_follow_never_passes_a_forbidden_command(
    soc: float | None, blocked: bool, start: BatteryState, powers: list[int]
) -> None:
    fsm = battery_in(start, soc_pct=soc)
    fsm.discharge_blocked = blocked
    for power_w in powers:
        allowed = fsm.follow(power_w)
        assert allowed in (0, power_w)
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
            assert fsm.state in (B.IDLE, B.BLOCKED, B.INELIGIBLE)


# ---------------------------------------------------------------------------- fleet table
F = FleetState
MODES = (F.STARTING, F.NORMAL, F.HOLD, F.CHARGE, F.SELFCONTROL)
FLEET_SPEC: dict[str, dict[FleetState, FleetState]] = {
    "run_normal": dict.fromkeys(MODES, F.NORMAL),
    "run_hold": dict.fromkeys(MODES, F.HOLD),
    "run_charge": dict.fromkeys(MODES, F.CHARGE),
    "run_selfcontrol": dict.fromkeys(MODES, F.SELFCONTROL),
    "fail_safe": dict.fromkeys(MODES, F.SAFE_HOLD),
    "resume": {F.SAFE_HOLD: F.STARTING},
}


def fleet_in(state: FleetState) -> FleetFsm:
    fsm = FleetFsm()
    fsm._machine.set_state(state)
    return fsm


def test_fleet_spec_names_every_trigger_of_the_table() -> None:
    assert {t["trigger"] for t in FLEET_TRANSITIONS} == set(FLEET_SPEC)
    assert FleetFsm().state is F.STARTING


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
def test_apply_mode_reaches_the_mode_from_any_state(
    state: FleetState, mode: Mode, blocked: bool, expected: FleetState
) -> None:
    fsm = fleet_in(state)
    fsm.apply_mode(mode, discharge_blocked=blocked)
    assert fsm.state is expected


@pytest.mark.parametrize("state", list(FleetState), ids=str)
def test_enter_safe_hold_from_any_state_and_twice(state: FleetState) -> None:
    fsm = fleet_in(state)
    fsm.enter_safe_hold()
    fsm.enter_safe_hold()
    assert fsm.state is F.SAFE_HOLD


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
        assert self.plan.fleet_state == self.policy.fleet.state.value
        if self.snap.mode is Mode.SELFCONTROL:
            assert self.plan.fleet_state == "selfcontrol"
            return
        s = self.policy.settings
        stale = is_stale(self.snap, self.policy._cadence.stale_limit_s(s.stale_after_s))
        assert (self.plan.fleet_state == "safe_hold") == stale

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
    for t in FLEET_TRANSITIONS:
        for src in t["source"] if isinstance(t["source"], list) else [t["source"]]:
            assert f"    {src.value} --> {t['dest'].value}: {t['trigger']}" in text
    for state in [*BatteryState, *FleetState]:
        assert f"| `{state.value}` |" in text
