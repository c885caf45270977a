"""Property tests of the `mmbc` policy over random closed-loop snapshot scripts (issue 6)."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from engine.core.model import Mode, Snapshot
from engine.core.policy import MmbcPolicy
from engine.core.settings import ControlSettings
from tests.core.invariants import SafetyChecker
from tests.strategies import (
    BatteryStep,
    Meter,
    Step,
    World,
    control_settings,
    expand,
    healthy,
    permute_snapshot,
    permuted,
    run,
    scripts,
    snapshot_sequences,
    steady_scripts,
)

FAST = settings(max_examples=80, deadline=None)


@st.composite
def settings_and_script(draw: st.DrawFn, max_steps: int = 25) -> tuple[ControlSettings, list[Step]]:
    s = draw(control_settings())
    return s, draw(scripts(s, max_size=max_steps))


@FAST
@given(case=settings_and_script())
def test_every_cycle_is_safe(case: tuple[ControlSettings, list[Step]]) -> None:
    """Limits, SoC eligibility, discharge block, unhealthy batteries, stale meter, modes and
    one-battery concentration hold after every cycle of a closed loop."""
    s, script = case
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    for snap, plan in run(policy, World(s), script):
        checker.check(snap, plan)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_cycle_is_safe_open_loop(data: st.DataObject) -> None:
    """The same properties when telemetry does not follow the commands at all."""
    s = data.draw(control_settings())
    snaps: list[Snapshot] = data.draw(snapshot_sequences(s))
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    for snap in snaps:
        checker.check(snap, policy.decide(snap))


@FAST
@given(case=settings_and_script(), data=st.data())
def test_invariant_under_battery_order(
    case: tuple[ControlSettings, list[Step]], data: st.DataObject
) -> None:
    """Listing the batteries (settings and telemetry) in another order changes nothing."""
    s, script = case
    order = data.draw(st.permutations(range(len(s.batteries))))
    s2 = permuted(s, order)
    names2 = [b.name for b in s2.batteries]
    a, b = MmbcPolicy(s), MmbcPolicy(s2)
    world = World(s)
    for cycle, snap in enumerate(expand(script, world)):
        plan_a = a.decide(snap)
        plan_b = b.decide(permute_snapshot(snap, names2))
        world.record(plan_a)
        where = f"cycle {cycle}, order {names2}"
        assert plan_a.setpoints == plan_b.setpoints, where
        assert plan_a.battery_states == plan_b.battery_states, where
        assert plan_a.fleet_state == plan_b.fleet_state, where
        assert plan_a.safe_hold == plan_b.safe_hold, where
        assert sorted(plan_a.release) == sorted(plan_b.release), where
        assert sorted(plan_a.reasons) == sorted(plan_b.reasons), where
        assert plan_a.extra == plan_b.extra, where


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_leader_changes_keep_one_battery_active(data: st.DataObject) -> None:
    """A steady demand below the split while the SoCs drift and batteries follow or not:
    the leader changes, yet one battery carries the demand (make-before-break wakes the
    incoming leader with 1 W; it never doubles the power)."""
    s = data.draw(control_settings(min_batteries=2))
    script = data.draw(steady_scripts(s))
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    for snap, plan in run(policy, World(s), script):
        checker.check(snap, plan)
    event(f"leader changes: {min(checker.leader_changes, 3)}")


@settings(max_examples=40, deadline=None)
@given(case=settings_and_script(max_steps=10), freeze_cycles=st.integers(0, 40))
def test_frozen_meter_means_safe_hold(
    case: tuple[ControlSettings, list[Step]], freeze_cycles: int
) -> None:
    """Whatever came before, a meter frozen past the stale limit (30 s at most, however slow
    the learnt cadence) puts every available battery at 0 W, until a new reading arrives."""
    s, script = case
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    world = World(s)
    for snap, plan in run(policy, world, script):
        checker.check(snap, plan)
    if world.mode is Mode.SELFCONTROL:
        world.mode = Mode.NORMAL
    world.apply(Step(meter=Meter.NEW, grid_w=800.0))
    plan = policy.decide(world.advance(Meter.NEW, 800.0))
    world.record(plan)
    assert world.meter_updated_s is not None
    frozen_at = world.meter_updated_s
    for _ in range(freeze_cycles + round(31.0 / world.period_s)):
        snap = world.advance(Meter.FREEZE, 0.0)
        plan = policy.decide(snap)
        world.record(plan)
        checker.check(snap, plan)
        if snap.now_s - frozen_at > 30.0:
            assert plan.safe_hold
            ok = [t.name for t in snap.batteries if healthy(t) and t.name in plan.battery_states]
            assert plan.setpoints == dict.fromkeys(ok, 0)
            assert plan.fleet_state == "safe_hold"
    plan = policy.decide(world.advance(Meter.NEW, 800.0))
    assert not plan.safe_hold
    assert plan.fleet_state in ("normal", "hold", "charge")


@settings(max_examples=40, deadline=None)
@given(case=settings_and_script(max_steps=10), soc=st.floats(0.0, 100.0))
def test_selfcontrol_releases_and_charge_mode_charges_below_max(
    case: tuple[ControlSettings, list[Step]], soc: float
) -> None:
    """After any history: selfcontrol releases the healthy batteries with no setpoint;
    charge mode charges exactly the batteries below max SoC, at their tapered limit."""
    s, script = case
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    world = World(s)
    for snap, plan in run(policy, world, script):
        checker.check(snap, plan)
    for name in world.names:
        world.soc_pct[name] = soc
    world.apply(Step(mode=Mode.SELFCONTROL))
    snap = world.advance(Meter.NEW, 500.0)
    plan = policy.decide(snap)
    assert plan.setpoints == {}
    assert sorted(plan.release) == sorted(t.name for t in snap.batteries if healthy(t) and
                                          t.name in world.names)
    checker.check(snap, plan)
    world.record(plan)
    world.apply(Step(mode=Mode.CHARGE))
    snap = world.advance(Meter.NEW, 500.0)
    plan = policy.decide(snap)
    checker.check(snap, plan)  # includes the exact charge-mode setpoints
    assert all(p <= 0 for p in plan.setpoints.values())
    if soc >= s.max_soc_pct:
        assert all(p == 0 for p in plan.setpoints.values())


@FAST
@given(data=st.data())
def test_idle_gaps_respect_limits_and_blocks(data: st.DataObject) -> None:
    """After any history, with the SoCs at their limits, discharge blocked or hold, and a
    demand near zero: the 1 W relay keep-alive never charges a full battery nor discharges
    an empty or blocked one (the battery guards hold even when the allocation would not)."""
    s = data.draw(control_settings())
    script = data.draw(scripts(s, max_size=8))
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    world = World(s)
    for snap, plan in run(policy, world, script):
        checker.check(snap, plan)
    limits = [s.min_soc_pct, s.max_soc_pct, min(100.0, s.max_soc_pct + 1), 50.0]
    for name in world.names:
        world.soc_pct[name] = data.draw(st.sampled_from(limits))
    world.apply(
        Step(
            mode=data.draw(st.sampled_from([Mode.HOLD, Mode.NORMAL])),
            discharge_blocked=data.draw(st.booleans()),
            batteries=tuple(BatteryStep() for _ in world.names),
        )
    )
    band = s.idle_band_w + s.deadband_w
    for _ in range(data.draw(st.integers(1, 6))):
        grid = float(data.draw(st.integers(-band, band)))
        snap = world.advance(Meter.NEW, grid)
        plan = policy.decide(snap)
        world.record(plan)
        checker.check(snap, plan)
