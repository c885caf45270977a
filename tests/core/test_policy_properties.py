"""Property tests of the `mmbc` policy over random closed-loop snapshot scripts (issue 6)."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from engine.core.model import Mode, Plan, Snapshot
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

FAST = settings(max_examples=120, deadline=None)


def cycle(
    policy: MmbcPolicy, checker: SafetyChecker, world: World, meter: Meter, grid_w: float
) -> tuple[Snapshot, Plan]:
    """One closed-loop cycle, checked like every other."""
    snap = world.advance(meter, grid_w)
    plan = policy.decide(snap)
    world.record(plan)
    checker.check(snap, plan)
    return snap, plan


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


@settings(max_examples=80, deadline=None)
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
        assert sorted(map(repr, plan_a.events)) == sorted(map(repr, plan_b.events)), where
        assert plan_a.extra == plan_b.extra, where


@settings(max_examples=80, deadline=None)
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


@settings(max_examples=80, deadline=None)
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
    cycle(policy, checker, world, Meter.NEW, 800.0)
    assert world.meter_updated_s is not None
    frozen_at = world.meter_updated_s
    for _ in range(freeze_cycles + round(31.0 / world.period_s)):
        snap, plan = cycle(policy, checker, world, Meter.FREEZE, 0.0)
        if snap.now_s - frozen_at > 30.0:
            assert plan.safe_hold
            ok = [t.name for t in snap.batteries if healthy(t) and t.name in plan.battery_states]
            assert plan.setpoints == dict.fromkeys(ok, 0)
            assert plan.fleet_state == "safe_hold"
    _, plan = cycle(policy, checker, world, Meter.NEW, 800.0)
    assert not plan.safe_hold
    assert plan.fleet_state in ("normal", "hold", "charge")


@settings(max_examples=80, deadline=None)
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
    snap, plan = cycle(policy, checker, world, Meter.NEW, 500.0)
    assert plan.setpoints == {}
    assert sorted(plan.release) == sorted(
        t.name for t in snap.batteries if healthy(t) and t.name in world.names
    )
    world.apply(Step(mode=Mode.CHARGE))
    # The checker asserts the exact charge-mode setpoints (tapered limit, or 0 for a
    # battery at max SoC or excluded for not following).
    _, plan = cycle(policy, checker, world, Meter.NEW, 500.0)
    assert all(p <= 0 for p in plan.setpoints.values())
    if soc >= s.max_soc_pct:
        assert all(p == 0 for p in plan.setpoints.values())


@FAST
@given(data=st.data())
def test_idle_gaps_respect_limits_and_blocks(data: st.DataObject) -> None:
    """After any history and a spell of real work, with the SoCs then at their limits,
    discharge blocked or hold, and a demand near zero: the 1 W relay keep-alive never
    charges a full battery nor discharges an empty or blocked one."""
    s = data.draw(control_settings())
    script = data.draw(scripts(s, max_size=6))
    policy = MmbcPolicy(s)
    checker = SafetyChecker(policy)
    world = World(s)
    for snap, plan in run(policy, world, script):
        checker.check(snap, plan)
    # A spell of real work in one direction, every battery healthy and following.
    work_w = data.draw(st.sampled_from([1.0, -1.0])) * data.draw(st.integers(200, 3000))
    world.apply(
        Step(
            mode=Mode.NORMAL,
            discharge_blocked=False,
            batteries=tuple(BatteryStep(soc_pct=50.0) for _ in world.names),
        )
    )
    for _ in range(3):
        cycle(policy, checker, world, Meter.NEW, work_w)
    # Then the limits and blocks, with a demand near zero.
    limits = [s.min_soc_pct, s.max_soc_pct, min(100.0, s.max_soc_pct + 1), 50.0]
    world.apply(
        Step(
            mode=data.draw(st.sampled_from([Mode.HOLD, Mode.HOLD, Mode.NORMAL])),
            discharge_blocked=data.draw(st.booleans()),
            batteries=tuple(
                BatteryStep(soc_pct=data.draw(st.sampled_from(limits))) for _ in world.names
            ),
        )
    )
    band = s.idle_band_w + s.deadband_w
    for _ in range(8):
        cycle(policy, checker, world, Meter.NEW, float(data.draw(st.integers(-band, band))))
