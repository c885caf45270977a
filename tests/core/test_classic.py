"""The `classic` policy reproduces upstream MMBC v1.1 cycle for cycle (the bench baseline)."""

from __future__ import annotations

import pytest

from engine.core.classic import ClassicPolicy
from engine.core.model import BatteryTelemetry, Mode, Snapshot
from engine.core.policies import make_policy
from engine.core.settings import BatterySpec, ControlSettings


def classic(*names: str) -> ClassicPolicy:
    return ClassicPolicy(
        ControlSettings(batteries=tuple(BatterySpec(n) for n in names), policy="classic")
    )


def snap(
    now_s: float,
    grid_w: float | None,
    *batteries: tuple[str, float, float],
    mode: Mode = Mode.NORMAL,
    blocked: bool = False,
) -> Snapshot:
    """``batteries`` as (name, soc_pct, power_w)."""
    return Snapshot(
        now_s=now_s,
        grid_w=grid_w,
        meter_updated_s=None,  # upstream never looks at the meter's age
        batteries=tuple(BatteryTelemetry(n, True, soc, p) for n, soc, p in batteries),
        mode=mode,
        discharge_blocked=blocked,
    )


def test_is_chosen_by_name_and_runs_every_three_seconds() -> None:
    policy = make_policy(ControlSettings(policy="classic"))
    assert isinstance(policy, ClassicPolicy)
    assert policy.period_s == 3.0
    assert policy.name == "classic"


@pytest.mark.parametrize(
    ("grid_w", "power_w", "expected"),
    [(300.0, 200.0, 500), (-100.0, -400.0, -500), (250.0, -100.0, 150), (-600.0, 0.0, -600)],
)
def test_setpoint_is_grid_plus_measured_battery_power(
    grid_w: float, power_w: float, expected: int
) -> None:
    plan = classic("a").decide(snap(0.0, grid_w, ("a", 50.0, power_w)))
    assert plan.setpoints == {"a": expected}


@pytest.mark.parametrize(
    ("adjusted_w", "expected"),
    [
        (30.0, {"a": 0, "b": 0}),
        (-30.0, {"a": 0, "b": 0}),
        (0.0, {"a": 0, "b": 0}),
        (31.0, {"a": 31, "b": 0}),  # discharging: highest SoC
        (-31.0, {"a": 0, "b": -31}),  # charging: lowest SoC
    ],
)
def test_thirty_watt_deadband_idles_every_battery(
    adjusted_w: float, expected: dict[str, int]
) -> None:
    plan = classic("a", "b").decide(
        snap(0.0, adjusted_w - 10.0, ("a", 60.0, 10.0), ("b", 50.0, 0.0))
    )
    assert plan.setpoints == expected


def test_fractional_power_is_floored_as_upstream_writes_it() -> None:
    plan = classic("a").decide(snap(0.0, 500.9, ("a", 50.0, 0.0)))
    assert plan.setpoints == {"a": 500}


@pytest.mark.parametrize(
    ("grid_w", "expected"),
    [
        (2499.0, {"a": 2499, "b": 0, "c": 0}),
        (2500.0, {"a": 1250, "b": 1250, "c": 0}),  # power // 2500 + 1 = 2
        (4999.0, {"a": 2499, "b": 2499, "c": 0}),  # power // count
        (5000.0, {"a": 1666, "b": 1666, "c": 1666}),
        (9000.0, {"a": 2500, "b": 2500, "c": 2500}),  # capped at 2500 W each
        (-2600.0, {"a": 0, "b": -1300, "c": -1300}),  # charging: lowest SoC first
    ],
)
def test_battery_count_and_equal_split(grid_w: float, expected: dict[str, int]) -> None:
    plan = classic("a", "b", "c").decide(
        snap(0.0, grid_w, ("a", 90.0, 0.0), ("b", 80.0, 0.0), ("c", 70.0, 0.0))
    )
    assert plan.setpoints == expected


def test_a_setpoint_never_exceeds_a_batterys_configured_limit() -> None:
    """Upstream knows no per-battery limit; a configured one is still never exceeded."""
    limited = BatterySpec("c", max_charge_w=1500, max_discharge_w=2000)
    policy = ClassicPolicy(ControlSettings(batteries=(BatterySpec("a"), limited), policy="classic"))
    # 4400 W over two batteries: upstream's equal split is 2200 W each.
    plan = policy.decide(snap(0.0, 4400.0, ("a", 60.0, 0.0), ("c", 50.0, 0.0)))
    assert plan.setpoints == {"a": 2200, "c": 2000}
    charge = policy.decide(snap(3.0, -4400.0, ("a", 60.0, 0.0), ("c", 50.0, 0.0)))
    assert charge.setpoints == {"a": -2200, "c": -1500}
    forced = policy.decide(snap(6.0, 600.0, ("a", 60.0, 0.0), ("c", 50.0, 0.0), mode=Mode.CHARGE))
    assert forced.setpoints == {"a": -2500, "c": -1500}


def test_count_is_capped_at_the_eligible_batteries() -> None:
    plan = classic("a", "b", "c").decide(
        snap(0.0, 9000.0, ("a", 90.0, 0.0), ("b", 11.0, 0.0), ("c", 70.0, 0.0))
    )
    assert plan.setpoints == {"a": 2500, "b": 0, "c": 2500}


def test_soc_priority_is_cached_for_five_minutes() -> None:
    policy = classic("a", "b")
    assert policy.decide(snap(0.0, 500.0, ("a", 90.0, 0.0), ("b", 80.0, 0.0))).setpoints == {
        "a": 500,
        "b": 0,
    }
    # b is now fuller, but the cached order (a first) is kept for 300 s.
    plan = policy.decide(snap(297.0, 0.0, ("a", 70.0, 500.0), ("b", 85.0, 0.0)))
    assert plan.setpoints == {"a": 500, "b": 0}
    plan = policy.decide(snap(300.0, 0.0, ("a", 70.0, 500.0), ("b", 85.0, 0.0)))
    assert plan.setpoints == {"a": 0, "b": 500}


def test_cache_is_dropped_when_a_cached_battery_becomes_ineligible() -> None:
    policy = classic("a", "b")
    policy.decide(snap(0.0, 500.0, ("a", 90.0, 0.0), ("b", 80.0, 0.0)))
    plan = policy.decide(snap(3.0, 0.0, ("a", 11.0, 500.0), ("b", 80.0, 0.0)))
    assert plan.setpoints == {"a": 0, "b": 500}


def test_one_cached_list_serves_both_directions_as_upstream() -> None:
    """Upstream's quirk: within 5 minutes a reversal reuses the other direction's order."""
    policy = classic("a", "b")
    policy.decide(snap(0.0, 500.0, ("a", 90.0, 0.0), ("b", 80.0, 0.0)))
    plan = policy.decide(snap(3.0, -1000.0, ("a", 90.0, 500.0), ("b", 80.0, 0.0)))
    assert plan.setpoints == {"a": -500, "b": 0}  # a (highest SoC) charges, not b
    plan = policy.decide(snap(303.0, 0.0, ("a", 90.0, -500.0), ("b", 80.0, 0.0)))
    assert plan.setpoints == {"a": 0, "b": -500}  # re-sorted for charging


def test_an_empty_list_is_not_reused() -> None:
    policy = classic("a")
    assert policy.decide(snap(0.0, -500.0, ("a", 100.0, 0.0))).setpoints == {"a": 0}
    assert policy.decide(snap(3.0, -500.0, ("a", 99.0, 0.0))).setpoints == {"a": -500}


def test_a_lost_reading_reuses_the_last_value_as_upstream_does() -> None:
    """Upstream's gap, kept on purpose: a frozen import winds the batteries up to the cap."""
    policy = classic("a")
    assert policy.decide(snap(0.0, 500.0, ("a", 50.0, 0.0))).setpoints == {"a": 500}
    plan = policy.decide(snap(3.0, None, ("a", 50.0, 500.0)))
    assert plan.setpoints == {"a": 1000}
    assert not plan.safe_hold
    assert policy.decide(snap(6.0, None, ("a", 50.0, 1000.0))).setpoints == {"a": 1500}
    assert policy.decide(snap(9.0, None, ("a", 50.0, 2400.0))).setpoints == {"a": 2500}


def test_soc_limits_of_upstream() -> None:
    policy = classic("a")
    assert policy.decide(snap(0.0, 500.0, ("a", 11.0, 0.0))).setpoints == {"a": 0}
    assert policy.decide(snap(3.0, -500.0, ("a", 100.0, 0.0))).setpoints == {"a": 0}
    assert policy.decide(snap(6.0, -500.0, ("a", 99.0, 0.0))).setpoints == {"a": -500}
    assert policy.decide(snap(9.0, 500.0, ("a", 12.0, -500.0))).setpoints == {"a": 0}


def test_hold_blocks_discharge_only() -> None:
    policy = classic("a")
    plan = policy.decide(snap(0.0, 500.0, ("a", 50.0, 0.0), mode=Mode.HOLD))
    assert plan.setpoints == {"a": 0}
    assert plan.fleet_state == "hold"
    plan = policy.decide(snap(3.0, 500.0, ("a", 50.0, 0.0), blocked=True))
    assert plan.setpoints == {"a": 0}
    plan = policy.decide(snap(6.0, -500.0, ("a", 50.0, 0.0), blocked=True))
    assert plan.setpoints == {"a": -500}


def test_charge_mode_charges_at_full_power_regardless_of_the_grid() -> None:
    policy = classic("a", "b")
    plan = policy.decide(snap(0.0, 3000.0, ("a", 50.0, 0.0), ("b", 100.0, 0.0), mode=Mode.CHARGE))
    # b is full: the battery guard refuses (upstream would write the command anyway).
    assert plan.setpoints == {"a": -2500, "b": 0}
    assert plan.fleet_state == "charge"
    # Upstream checks the deadband before the mode: inside it, charge mode idles too.
    plan = policy.decide(
        snap(3.0, 2520.0, ("a", 50.0, -2500.0), ("b", 100.0, 0.0), mode=Mode.CHARGE)
    )
    assert plan.setpoints == {"a": 0, "b": 0}


def test_selfcontrol_releases_and_unhealthy_batteries_get_nothing() -> None:
    policy = classic("a", "b")
    offline_b = Snapshot(
        now_s=0.0,
        grid_w=500.0,
        meter_updated_s=None,
        batteries=(BatteryTelemetry("a", True, 50.0, 0.0), BatteryTelemetry("b", False)),
        mode=Mode.SELFCONTROL,
    )
    plan = policy.decide(offline_b)
    assert plan.setpoints == {}
    assert plan.release == ("a",)
    plan = policy.decide(
        Snapshot(
            now_s=3.0,
            grid_w=500.0,
            meter_updated_s=None,
            batteries=(BatteryTelemetry("a", True, 50.0, 0.0), BatteryTelemetry("b", False)),
        )
    )
    assert plan.setpoints == {"a": 500}
    assert plan.battery_states["b"] == "unavailable"
