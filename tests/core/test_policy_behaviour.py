"""Example-based behaviour of the `mmbc` policy in a small closed loop (pure, virtual time)."""

from __future__ import annotations

import pytest

from engine.core.events import (
    BatteryLost,
    BatteryReturned,
    Direction,
    Excluded,
    ExclusionEnded,
    LeaderChanged,
    SafeHoldCause,
    SafeHoldEntered,
)
from engine.core.model import Mode, Plan
from engine.core.settings import BatterySpec, ControlSettings
from engine.core.states import BatteryState
from tests.fakes import FakeBattery as Battery
from tests.fakes import IdealPlant


def make_house(
    settings: ControlSettings,
    batteries: dict[str, Battery],
    *,
    meter_period_s: float = 1.0,
    mode: Mode = Mode.NORMAL,
) -> IdealPlant:
    """A house, its meter and its batteries around one policy.

    A battery reaches its command one period after it was issued; the meter's reading shows
    the batteries as they were one period earlier (meter latency), as a real P1 meter does.
    """
    return IdealPlant(
        settings, batteries, meter_lag_cycles=1, meter_period_s=meter_period_s, mode=mode
    )


def fleet(*specs: BatterySpec, **overrides: object) -> ControlSettings:
    return ControlSettings(batteries=specs).with_overrides(dict(overrides))


def active(plan: Plan) -> dict[str, int]:
    """Batteries carrying real power (the 1 W relay keep-alive is not real power)."""
    return {n: p for n, p in plan.setpoints.items() if abs(p) > 1}


# ---------------------------------------------------------------------------- one battery
def test_single_battery_covers_a_constant_import() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(soc_pct=50.0)})
    first = house.step(net_w=600.0)
    # First reading: grid 600 W with the battery at 0 W -> the house needs 600 W.
    assert first.setpoints == {"a": 600}
    house.run(20)
    assert house.grid_w is not None
    assert abs(house.grid_w) <= 5
    assert house.plans[-1].setpoints["a"] == pytest.approx(600, abs=5)
    assert all(p.setpoints["a"] >= 0 for p in house.plans), "never charges on an import"


def test_a_load_step_is_taken_at_once_as_grid_plus_battery_power() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(soc_pct=50.0)})
    house.run(15, net_w=300.0)
    assert house.batteries["a"].power_w == pytest.approx(300, abs=3)
    plan = house.step(net_w=800.0)  # the reading shows grid 500 W with the battery at 300 W
    assert house.grid_w == pytest.approx(500, abs=3)
    assert plan.setpoints["a"] == pytest.approx(800, abs=3)


def test_an_export_is_charged_away() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(soc_pct=50.0)})
    house.run(15, net_w=-900.0)
    assert house.plans[-1].setpoints["a"] == pytest.approx(-900, abs=5)
    assert house.plans[-1].battery_states == {"a": "charging"}
    assert house.grid_w is not None
    assert abs(house.grid_w) <= 5


# ---------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    ("net_w", "leader"),
    [(700.0, "high"), (-700.0, "low")],
    ids=["discharge-highest-soc", "charge-lowest-soc"],
)
def test_one_battery_by_soc_below_the_split(net_w: float, leader: str) -> None:
    house = make_house(
        fleet(BatterySpec("mid"), BatterySpec("low"), BatterySpec("high")),
        {"mid": Battery(55.0), "low": Battery(30.0), "high": Battery(80.0)},
    )
    plan = house.run(10, net_w=net_w)
    assert set(active(plan)) == {leader}
    assert all(set(active(p)) <= {leader} for p in house.plans)


def test_equal_soc_ties_are_broken_by_name() -> None:
    house = make_house(
        fleet(BatterySpec("zeta"), BatterySpec("alpha")),
        {"zeta": Battery(60.0), "alpha": Battery(60.0)},
    )
    assert set(active(house.run(3, net_w=500.0))) == {"alpha"}


def test_reselection_waits_for_the_interval_then_hands_over() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b")),
        {"a": Battery(80.0), "b": Battery(70.0)},
    )
    house.run(5, net_w=500.0)
    assert set(active(house.plans[-1])) == {"a"}
    # b is now clearly fuller, but the choice is kept for reselect_interval_s (300 s).
    house.batteries["a"].soc_pct = 60.0
    house.batteries["b"].soc_pct = 75.0
    start = house.now_s
    while house.now_s < start + 290:
        assert set(active(house.step())) == {"a"}
    while not any(isinstance(e, LeaderChanged) for e in house.plans[-1].events):
        house.step()
        assert house.now_s <= start + 310, "no reselection after the interval"
    handover = house.plans[-1]
    assert handover.events.count(LeaderChanged("a", "b", Direction.DISCHARGE)) == 1
    # Make-before-break: a keeps carrying while b's relay is woken with 1 W ...
    assert active(handover) == {"a": pytest.approx(500, abs=5)}
    assert handover.setpoints["b"] == 1
    # ... and once b reports power the two swap in one cycle.
    swapped = house.step()
    assert active(swapped) == {"b": pytest.approx(500, abs=5)}
    assert house.events().count(LeaderChanged("a", "b", Direction.DISCHARGE)) == 1
    house.run(20)
    assert house.grid_w is not None
    assert abs(house.grid_w) <= 5


def test_a_leader_that_becomes_ineligible_is_replaced_at_once() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b")),
        {"a": Battery(80.0), "b": Battery(70.0)},
    )
    house.run(5, net_w=500.0)
    house.batteries["a"].soc_pct = 11.0  # at min_soc_pct: may no longer discharge
    plan = house.step()
    assert active(plan) == {"b": pytest.approx(500, abs=5)}
    assert plan.setpoints["a"] == 0
    assert plan.battery_states["a"] == "ineligible"


def test_small_soc_advantage_does_not_change_the_leader() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b"), reselect_interval_s=10.0),
        {"a": Battery(80.0), "b": Battery(70.0)},
    )
    house.run(5, net_w=500.0)
    house.batteries["b"].soc_pct = 81.0  # better, but within soc_hysteresis_pct (3 %)
    house.run(40)
    assert not any(isinstance(e, LeaderChanged) for e in house.events())
    assert set(active(house.plans[-1])) == {"a"}


# ---------------------------------------------------------------------------- split
def test_split_above_threshold_is_proportional_to_limits_with_hysteresis() -> None:
    house = make_house(
        fleet(BatterySpec("big"), BatterySpec("small", max_discharge_w=1000)),
        {"big": Battery(80.0), "small": Battery(70.0)},
    )
    plan = house.run(10, net_w=3000.0)
    assert plan.setpoints["big"] + plan.setpoints["small"] == pytest.approx(3000, abs=3)
    assert plan.setpoints["big"] / plan.setpoints["small"] == pytest.approx(2.5, rel=0.01)
    # 2400 W is below the threshold (2500 W) but not by the hysteresis (300 W): still split.
    plan = house.run(10, net_w=2400.0)
    assert plan.setpoints["big"] == pytest.approx(2400 * 2500 / 3500, abs=3)
    assert plan.setpoints["small"] == pytest.approx(2400 * 1000 / 3500, abs=3)
    # Below 2200 W one battery carries it ...
    plan = house.run(10, net_w=2100.0)
    assert active(plan) == {"big": pytest.approx(2100, abs=3)}
    # ... and it stays one up to the threshold itself.
    plan = house.run(10, net_w=2450.0)
    assert active(plan) == {"big": pytest.approx(2450, abs=3)}


def test_demand_beyond_the_leaders_limit_fills_the_next_battery() -> None:
    house = make_house(
        fleet(BatterySpec("a", max_discharge_w=800), BatterySpec("b")),
        {"a": Battery(90.0), "b": Battery(50.0)},
    )
    plan = house.run(10, net_w=1500.0)
    assert active(plan) == {"a": 800, "b": pytest.approx(700, abs=3)}


# ---------------------------------------------------------------------------- faults
def test_a_battery_that_does_not_follow_is_excluded_once_then_returns() -> None:
    house = make_house(
        fleet(
            BatterySpec("a"),
            BatterySpec("b"),
            not_following_cycles=5,
            not_following_exclude_s=60.0,
        ),
        {"a": Battery(80.0, follows=False), "b": Battery(60.0)},
    )
    house.run(30, net_w=500.0)
    exclusions = [e for e in house.events() if isinstance(e, Excluded) and e.battery == "a"]
    assert len(exclusions) == 1, "reported once, not per cycle"
    assert exclusions[0].commanded_w == 500
    at = next(
        i for i, p in enumerate(house.plans) if any(isinstance(e, Excluded) for e in p.events)
    )
    # It takes the settle time (8 s) plus not_following_cycles misses, not fewer.
    assert at >= 8 + 5 - 1
    plan = house.plans[-1]
    assert active(plan) == {"b": pytest.approx(500, abs=5)}
    assert plan.setpoints["a"] == 0
    assert plan.battery_states["a"] is BatteryState.EXCLUDED
    # While excluded it is not used even when it is the only battery left.
    house.batteries["b"].online = False
    plan = house.step()
    assert plan.setpoints == {"a": 0}
    # Once the exclusion has expired it may lead again.
    house.batteries["a"].follows = True
    excluded_at = house.now_s - (len(house.plans) - 1 - at) * house.settings.loop_period_s
    while house.now_s + house.settings.loop_period_s < excluded_at + 60.0:
        assert house.step().setpoints.get("a", 0) <= 1
    plan = house.run(10)
    assert active(plan) == {"a": pytest.approx(500, abs=5)}
    assert [e for e in house.events() if isinstance(e, Excluded)] == exclusions
    assert ExclusionEnded("a") in house.events()


def test_no_flip_between_charge_and_discharge_on_meter_noise() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(50.0)})
    house.run(10, net_w=400.0)
    house.step(net_w=0.0)
    for i in range(60):
        house.step(noise_w=10.0 if i % 2 else -10.0)
    tail = house.plans[-60:]
    assert all(p.setpoints["a"] in (0, 1) for p in tail), [p.setpoints["a"] for p in tail]
    assert all(p.battery_states["a"] != "charging" for p in tail)
    # A real surplus is still charged away.
    assert house.run(10, net_w=-300.0).setpoints["a"] == pytest.approx(-300, abs=5)


def test_a_frozen_meter_means_safe_hold_until_it_changes_again() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b")), {"a": Battery(70.0), "b": Battery(60.0)}
    )
    house.run(10, net_w=500.0)
    house.meter_frozen = True
    frozen_since = house.meter_updated_s
    assert frozen_since is not None
    for _ in range(12):
        plan = house.step()
        stale = house.now_s - frozen_since > house.settings.stale_after_s
        assert plan.safe_hold == stale
        if stale:
            assert plan.setpoints == {"a": 0, "b": 0}
            assert plan.fleet_state == "safe_hold"
            assert plan.quality == "safe_hold"
        else:
            assert active(plan) == {"a": pytest.approx(500, abs=5)}
    assert house.events().count(SafeHoldEntered(SafeHoldCause.METER_STALE)) == 1
    house.meter_frozen = False
    plan = house.run(5)
    assert not plan.safe_hold
    assert plan.fleet_state == "normal"
    assert active(plan) == {"a": pytest.approx(500, abs=5)}


def test_a_lost_reading_means_safe_hold() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(50.0)})
    house.run(5, net_w=500.0)
    house.grid_w = None
    house.meter_frozen = True
    plan = house.step()
    assert plan.safe_hold
    assert plan.setpoints == {"a": 0}


def test_dsmr4_ten_second_cadence_is_not_stale_once_learnt() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(50.0)}, meter_period_s=10.0)
    house.run(45, net_w=500.0)  # readings at 0, 10, 20, 30, 40 s: cadence learnt
    learnt = house.plans[-15:]
    assert not any(p.safe_hold for p in learnt)
    assert all(p.setpoints["a"] == pytest.approx(500, abs=5) for p in learnt[-5:])
    # A meter that stops is still caught: 2.5 readings' worth (25 s) later, not before.
    house.meter_frozen = True
    last = house.meter_updated_s
    assert last is not None
    for _ in range(30):
        plan = house.step()
        assert plan.safe_hold == (house.now_s - last > 25.0), house.now_s - last


def test_an_unhealthy_battery_gets_no_command_and_its_share_moves() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b")), {"a": Battery(80.0), "b": Battery(60.0)}
    )
    house.run(10, net_w=500.0)
    house.batteries["a"].online = False
    plan = house.step()
    assert "a" not in plan.setpoints
    assert plan.battery_states["a"] == "unavailable"
    assert BatteryLost("a") in plan.events
    plan = house.run(10)
    assert active(plan) == {"b": pytest.approx(500, abs=5)}
    house.batteries["a"].online = True
    plan = house.step()
    assert BatteryReturned("a") in plan.events
    assert plan.battery_states["a"] != "unavailable"


# ---------------------------------------------------------------------------- modes
def test_hold_mode_charges_but_never_discharges() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(50.0)}, mode=Mode.HOLD)
    plan = house.run(10, net_w=800.0)
    assert plan.setpoints == {"a": 0}
    assert plan.battery_states == {"a": "blocked"}
    assert plan.fleet_state == "hold"
    plan = house.run(10, net_w=-800.0)
    assert plan.setpoints["a"] == pytest.approx(-800, abs=5)


def test_block_discharge_turns_normal_into_hold() -> None:
    house = make_house(fleet(BatterySpec("a")), {"a": Battery(50.0)})
    house.run(10, net_w=800.0)
    house.discharge_blocked = True
    plan = house.step()
    assert plan.setpoints == {"a": 0}
    assert plan.fleet_state == "hold"
    house.discharge_blocked = False
    plan = house.run(5)
    assert plan.fleet_state == "normal"
    assert plan.setpoints["a"] == pytest.approx(800, abs=5)


def test_charge_mode_charges_every_battery_below_max_with_taper() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b"), BatterySpec("c")),
        {"a": Battery(50.0), "b": Battery(98.0), "c": Battery(100.0)},
        mode=Mode.CHARGE,
    )
    plan = house.run(3, net_w=300.0)
    assert plan.setpoints == {"a": -2500, "b": -1500, "c": 0}
    assert plan.fleet_state == "charge"


def test_selfcontrol_releases_every_healthy_battery() -> None:
    house = make_house(
        fleet(BatterySpec("a"), BatterySpec("b")),
        {"a": Battery(50.0), "b": Battery(50.0, online=False)},
        mode=Mode.SELFCONTROL,
    )
    plan = house.run(3, net_w=300.0)
    assert plan.setpoints == {}
    assert plan.release == ("a",)
    assert plan.fleet_state == "selfcontrol"
