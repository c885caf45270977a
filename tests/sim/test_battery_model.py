"""Physics of the simulated Venus E: conservation, limits, response shape, cut-offs, standby."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sim.plant.battery import CHARGE_RESUME_HYSTERESIS_PCT, VenusE, interpolate_efficiency
from sim.plant.params import CHARGE_EFFICIENCY, DISCHARGE_EFFICIENCY, BatteryParams

DEFAULT = BatteryParams()
# No standby draw and an instant response isolate the efficiency curve in steady-state tests.
INSTANT = BatteryParams(dead_time_s=0.0, relay_delay_s=0.0, ramp_w_per_s=math.inf, standby_w=0.0)

commands = st.lists(
    st.tuples(
        st.floats(min_value=-3000.0, max_value=3000.0, allow_nan=False),
        st.floats(min_value=0.0, max_value=15.0, allow_nan=False),
    ),
    min_size=1,
    max_size=8,
)
params_strategy = st.builds(
    BatteryParams,
    capacity_wh=st.sampled_from([200.0, 1000.0, 5120.0]),
    dead_time_s=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    ramp_w_per_s=st.sampled_from([200.0, 1000.0, math.inf]),
    relay_delay_s=st.sampled_from([0.0, 2.0]),
    standby_w=st.sampled_from([0.0, 10.0]),
    charge_cutoff_pct=st.sampled_from([90.0, 100.0]),
    discharge_cutoff_pct=st.sampled_from([0.0, 12.0]),
)


def run(
    battery: VenusE, cmds: list[tuple[float, float]], dt_s: float, t_s: float = 0.0
) -> tuple[float, list[float]]:
    """Apply each (target, hold) command at a step boundary; returns (end time, step means)."""
    means: list[float] = []
    for target_w, hold_s in cmds:
        battery.set_target(target_w, t_s)
        steps = max(1, round(hold_s / dt_s))
        for _ in range(steps):
            means.append(battery.advance(t_s, dt_s))
            t_s += dt_s
    return t_s, means


def dc_stored_wh(params: BatteryParams, ac_w: float, seconds: float) -> float:
    """Energy into (+) or out of (-) the cells at constant AC power, by the efficiency curve."""
    if ac_w < 0:
        return -ac_w * interpolate_efficiency(params.charge_efficiency, -ac_w) * seconds / 3600
    return -ac_w / interpolate_efficiency(params.discharge_efficiency, ac_w) * seconds / 3600


# ------------------------------------------------------------------ efficiency curve


@pytest.mark.parametrize(
    ("curve", "power_w", "expected"),
    [
        (CHARGE_EFFICIENCY, 0.0, 0.603),  # held below the first point
        (CHARGE_EFFICIENCY, 63.0, 0.603),
        (CHARGE_EFFICIENCY, 94.0, 0.603 + (0.772 - 0.603) * 31 / 62),
        (CHARGE_EFFICIENCY, 500.0, 0.938),
        (CHARGE_EFFICIENCY, 2500.0, 0.95),  # held above the last point
        (DISCHARGE_EFFICIENCY, 1000.0, 0.91),
        (DISCHARGE_EFFICIENCY, 1875.0, 0.91 + (0.893 - 0.91) * 0.5),
        (DISCHARGE_EFFICIENCY, 2500.0, 0.893),
    ],
)
def test_efficiency_interpolates_linearly_and_holds_at_the_ends(
    curve: tuple[tuple[float, float], ...], power_w: float, expected: float
) -> None:
    assert interpolate_efficiency(curve, power_w) == pytest.approx(expected)


@pytest.mark.parametrize("ac_w", [-2500.0, -800.0, -100.0, -40.0, 40.0, 300.0, 1000.0, 2500.0])
def test_steady_state_energy_follows_the_efficiency_curve(ac_w: float) -> None:
    battery = VenusE(INSTANT, 50.0)
    battery.set_target(ac_w, 0.0)
    before_wh = battery.stored_wh
    mean_w = sum(battery.advance(i * 1.0, 1.0) for i in range(600)) / 600
    assert mean_w == pytest.approx(ac_w)
    assert battery.stored_wh - before_wh == pytest.approx(dc_stored_wh(INSTANT, ac_w, 600.0))
    if ac_w < 0:
        assert battery.charged_wh == pytest.approx(-ac_w * 600 / 3600)
    else:
        assert battery.discharged_wh == pytest.approx(ac_w * 600 / 3600)


# ------------------------------------------------------------------ properties


@settings(max_examples=150, deadline=None)
@given(
    params=params_strategy,
    soc_pct=st.floats(min_value=0.0, max_value=100.0),
    cmds=commands,
    dt_s=st.sampled_from([0.1, 0.5, 1.0]),
)
def test_energy_is_conserved_and_state_stays_in_bounds(
    params: BatteryParams, soc_pct: float, cmds: list[tuple[float, float]], dt_s: float
) -> None:
    battery = VenusE(params, soc_pct)
    start_wh = battery.stored_wh
    t_s = 0.0
    ac_out_wh = 0.0
    for target_w, hold_s in cmds:
        battery.set_target(target_w, t_s)
        for _ in range(max(1, round(hold_s / dt_s))):
            mean_w = battery.advance(t_s, dt_s)
            t_s += dt_s
            ac_out_wh += mean_w * dt_s / 3600
            # Power within the limits, instantaneous and mean.
            assert -params.max_charge_w - 1e-9 <= mean_w <= params.max_discharge_w + 1e-9
            assert -params.max_charge_w <= battery.ac_power_w <= params.max_discharge_w
            # SoC within 0..100 and never charged above the cut-off.
            assert 0.0 <= battery.soc_pct <= 100.0
            assert (
                battery.stored_wh
                <= max(start_wh, params.capacity_wh * params.charge_cutoff_pct / 100) + 1e-9
            )
    # Balance: what the cells lost is what went out on the AC side plus the losses.
    delta_wh = battery.stored_wh - start_wh
    assert delta_wh == pytest.approx(
        battery.charged_wh - battery.discharged_wh - battery.conversion_loss_wh, abs=1e-6
    )
    # The returned means integrate to the AC counters.
    assert ac_out_wh == pytest.approx(battery.discharged_wh - battery.charged_wh, abs=1e-6)
    assert battery.throughput_wh == pytest.approx(
        battery.discharged_wh + battery.charged_wh, abs=1e-9
    )
    # Losses are never negative and never more than the worst point of the curves allows.
    worst_charge = min(eta for _, eta in params.charge_efficiency)
    worst_discharge = min(eta for _, eta in params.discharge_efficiency)
    max_loss_wh = (
        battery.charged_wh * (1 - worst_charge)
        + battery.discharged_wh * (1 / worst_discharge - 1)
        + battery.standby_loss_wh
    )
    assert -1e-9 <= battery.conversion_loss_wh <= max_loss_wh + 1e-6
    assert battery.standby_loss_wh <= params.standby_w * t_s / 3600 + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    params=params_strategy.filter(lambda p: p.ramp_w_per_s < math.inf),
    soc_pct=st.floats(min_value=5.0, max_value=95.0),
    cmds=commands,
)
@example(  # runs empty mid-step (found by hypothesis)
    params=BatteryParams(
        capacity_wh=200.0,
        dead_time_s=0.0,
        ramp_w_per_s=200.0,
        relay_delay_s=0.0,
        standby_w=0.0,
        charge_cutoff_pct=90.0,
        discharge_cutoff_pct=0.0,
    ),
    soc_pct=5.0,
    cmds=[(779.0, 2.0), (74.0, 12.0), (3000.0, 9.0), (893.0, 15.0), (101.0, 15.0), (1818.0, 15.0)],
)
def test_stored_energy_is_the_integral_of_dc_power_whatever_the_step(
    params: BatteryParams, soc_pct: float, cmds: list[tuple[float, float]]
) -> None:
    # The same command sequence integrated at 1 s and at 0.05 s must end in the same state.
    fine = VenusE(params, soc_pct)
    coarse = VenusE(params, soc_pct)
    total_s = 0.0
    for target_w, raw_hold_s in cmds:
        hold_s = max(1.0, round(raw_hold_s))
        fine.set_target(target_w, total_s)
        coarse.set_target(target_w, total_s)
        for i in range(round(hold_s / 0.05)):
            fine.advance(total_s + i * 0.05, 0.05)
        for i in range(round(hold_s)):
            coarse.advance(total_s + i, 1.0)
        total_s += hold_s
    assert coarse.stored_wh == pytest.approx(fine.stored_wh, abs=1e-3)
    # A battery that runs empty within a step reaches its floor along a ramp cut at a slightly
    # different instant: a part per million of the energy moved (1.7e-6 of 8.9 Wh seen).
    assert coarse.charged_wh == pytest.approx(fine.charged_wh, rel=1e-6, abs=1e-6)
    assert coarse.discharged_wh == pytest.approx(fine.discharged_wh, rel=1e-6, abs=1e-6)


@settings(max_examples=80, deadline=None)
@given(
    params=params_strategy,
    low_w=st.floats(min_value=-3000.0, max_value=3000.0),
    extra_w=st.floats(min_value=0.0, max_value=3000.0),
    running_w=st.sampled_from([0.0, -500.0, 800.0]),
)
def test_a_larger_setpoint_never_yields_less_output(
    params: BatteryParams, low_w: float, extra_w: float, running_w: float
) -> None:
    # Mid SoC and a short horizon: no cut-off is reached, only the dynamics matter.
    params = BatteryParams(
        capacity_wh=5120.0,
        dead_time_s=params.dead_time_s,
        ramp_w_per_s=params.ramp_w_per_s,
        relay_delay_s=params.relay_delay_s,
        standby_w=params.standby_w,
    )
    low = VenusE(params, 50.0)
    high = VenusE(params, 50.0)
    _, _ = run(low, [(running_w, 5.0)], 0.5)
    t_s, _ = run(high, [(running_w, 5.0)], 0.5)
    _, low_means = run(low, [(low_w, 10.0)], 0.5, t_s)
    _, high_means = run(high, [(low_w + extra_w, 10.0)], 0.5, t_s)
    for low_mean, high_mean in zip(low_means, high_means, strict=True):
        assert high_mean >= low_mean - 1e-9


# ------------------------------------------------------------------ response shape


@pytest.mark.parametrize(
    "params",
    [DEFAULT, BatteryParams(dead_time_s=2.0, ramp_w_per_s=250.0, relay_delay_s=3.0)],
    ids=["default", "slow"],
)
def test_start_from_standby_waits_dead_time_and_relay_then_ramps(params: BatteryParams) -> None:
    battery = VenusE(params, 50.0)
    battery.set_target(2000.0, 0.0)
    delay_s = params.dead_time_s + params.relay_delay_s
    dt_s = 0.25
    for i in range(round((delay_s + 2000.0 / params.ramp_w_per_s + 2.0) / dt_s)):
        t_s = i * dt_s
        battery.advance(t_s, dt_s)
        expected_w = min(2000.0, max(0.0, (t_s + dt_s - delay_s) * params.ramp_w_per_s))
        assert battery.ac_power_w == pytest.approx(expected_w), t_s + dt_s


def test_change_while_running_waits_only_the_dead_time() -> None:
    battery = VenusE(DEFAULT, 50.0)
    t_s, _ = run(battery, [(-1000.0, 10.0)], 0.5)
    assert battery.ac_power_w == -1000.0
    battery.set_target(500.0, t_s)
    outputs = []
    for i in range(8):
        battery.advance(t_s + i * 0.5, 0.5)
        outputs.append(battery.ac_power_w)
    # 1 s dead time, then 1000 W/s straight through zero without a relay pause.
    assert outputs == pytest.approx([-1000.0, -1000.0, -500.0, 0.0, 500.0, 500.0, 500.0, 500.0])
    assert battery.direction_changes == 1


def test_mean_power_over_a_ramp_step_is_its_average() -> None:
    battery = VenusE(BatteryParams(dead_time_s=0.0, relay_delay_s=0.0), 50.0)
    battery.set_target(1000.0, 0.0)
    assert battery.advance(0.0, 0.5) == pytest.approx(250.0)  # 0 -> 500 W
    assert battery.advance(0.5, 1.0) == pytest.approx(875.0)  # 500 -> 1000 W, then held


def test_stop_opens_the_relay_and_the_next_start_pays_the_relay_delay() -> None:
    battery = VenusE(DEFAULT, 50.0)
    t_s, _ = run(battery, [(600.0, 8.0), (0.0, 5.0)], 0.5)
    assert battery.ac_power_w == 0.0
    assert battery.is_standby
    battery.set_target(600.0, t_s)
    outputs = []
    for i in range(8):
        battery.advance(t_s + i * 0.5, 0.5)
        outputs.append(battery.ac_power_w)
    assert outputs[:6] == [0.0] * 6  # dead time 1 s + relay 2 s
    assert outputs[6] == pytest.approx(500.0)


def test_one_watt_keeps_the_relay_engaged() -> None:
    battery = VenusE(DEFAULT, 50.0)
    t_s, _ = run(battery, [(600.0, 8.0), (1.0, 5.0)], 0.5)
    assert not battery.is_standby
    battery.set_target(600.0, t_s)
    battery.advance(t_s, 0.5)
    battery.advance(t_s + 0.5, 0.5)
    battery.advance(t_s + 1.0, 0.5)
    assert battery.ac_power_w == pytest.approx(501.0)  # dead time only, then ramping


def test_a_command_between_steps_acts_from_its_own_instant() -> None:
    battery = VenusE(BatteryParams(relay_delay_s=0.0), 50.0)
    battery.advance(0.0, 1.0)
    battery.set_target(1000.0, 1.25)  # effective at 2.25 s
    battery.advance(1.0, 1.0)
    assert battery.ac_power_w == 0.0
    battery.advance(2.0, 0.5)
    assert battery.ac_power_w == pytest.approx(250.0)


def test_clamped_to_the_power_limits() -> None:
    battery = VenusE(BatteryParams(max_charge_w=800.0, max_discharge_w=1200.0), 50.0)
    t_s, _ = run(battery, [(-5000.0, 10.0)], 0.5)
    assert battery.ac_power_w == -800.0
    run(battery, [(5000.0, 10.0)], 0.5, t_s)
    assert battery.ac_power_w == 1200.0


# ------------------------------------------------------------------ cut-offs and limits


def test_discharge_stops_exactly_at_the_discharge_cutoff() -> None:
    params = BatteryParams(capacity_wh=1000.0, standby_w=0.0)
    battery = VenusE(params, 13.0)  # 10 Wh above the 12 % floor
    t_s, means = run(battery, [(2500.0, 40.0)], 0.5)
    assert battery.stored_wh == pytest.approx(120.0, abs=1e-6)
    assert battery.ac_power_w == 0.0
    assert battery.discharge_blocked
    # It delivered what the 10 Wh allow through the curve, no more.
    assert battery.discharged_wh < 10.0
    assert battery.discharged_wh == pytest.approx(sum(means) * 0.5 / 3600)
    # A further discharge command delivers nothing; a charge command is obeyed.
    _, means = run(battery, [(1000.0, 5.0)], 0.5, t_s)
    assert means == [0.0] * len(means)
    assert battery.ac_power_w == 0.0


def test_charge_stops_exactly_at_the_cutoff_and_resumes_below_the_hysteresis() -> None:
    params = BatteryParams(capacity_wh=1000.0, charge_cutoff_pct=90.0, standby_w=10.0)
    battery = VenusE(params, 89.0)
    battery.set_target(-2500.0, 0.0)
    peak_wh = 0.0
    for i in range(60):
        battery.advance(i * 0.5, 0.5)
        peak_wh = max(peak_wh, battery.stored_wh)
    t_s = 30.0
    assert peak_wh == pytest.approx(900.0, abs=0.002)  # the rest of that step was standby
    assert peak_wh <= 900.0 + 1e-9
    assert battery.ac_power_w == 0.0
    assert battery.charge_blocked
    # The standby draw alone does not restart charging right below the cut-off ...
    t_s, means = run(battery, [(-2500.0, 60.0)], 0.5, t_s)
    assert max(abs(m) for m in means) == 0.0
    # ... only once the SoC has fallen below cut-off minus the hysteresis.
    battery.stored_wh = 900.0 - CHARGE_RESUME_HYSTERESIS_PCT * 10.0 - 1.0
    _, means = run(battery, [(-2500.0, 10.0)], 0.5, t_s)
    assert min(means) < -100.0


def test_charging_never_overfills_even_mid_ramp() -> None:
    params = BatteryParams(capacity_wh=100.0, standby_w=0.0, dead_time_s=0.0, relay_delay_s=0.0)
    battery = VenusE(params, 99.99)
    battery.set_target(-2500.0, 0.0)
    mean_w = battery.advance(0.0, 1.0)
    assert battery.stored_wh == pytest.approx(100.0, abs=1e-6)
    assert battery.stored_wh <= 100.0 + 1e-9
    assert battery.soc_pct <= 100.0 + 1e-9
    # The AC energy taken is what the curve needs to store those 0.01 Wh, no more.
    assert -mean_w / 3600 == pytest.approx(battery.charged_wh)
    assert battery.charged_wh - battery.conversion_loss_wh == pytest.approx(0.01, abs=1e-9)
    assert 0.603 * battery.charged_wh <= 0.01 <= 0.95 * battery.charged_wh


def test_standby_draw_while_idle_stops_at_empty() -> None:
    battery = VenusE(BatteryParams(capacity_wh=1000.0, discharge_cutoff_pct=0.0), 0.5)
    t_s = 0.0
    for _ in range(3600):
        assert battery.advance(t_s, 1.0) == 0.0
        t_s += 1.0
    assert battery.stored_wh == pytest.approx(0.0, abs=1e-9)
    assert battery.standby_loss_wh == pytest.approx(5.0)
    assert battery.conversion_loss_wh == pytest.approx(5.0)
    assert battery.soc_pct >= 0.0


def test_standby_draw_is_ten_watts_by_default_and_none_while_running() -> None:
    idle = VenusE(DEFAULT, 50.0)
    run(idle, [(0.0, 360.0)], 1.0)
    assert idle.standby_loss_wh == pytest.approx(1.0)
    running = VenusE(DEFAULT, 50.0)
    t_s, _ = run(running, [(500.0, 5.0)], 1.0)
    before_wh = running.standby_loss_wh
    run(running, [(500.0, 360.0)], 1.0, t_s)
    assert running.standby_loss_wh == before_wh


def test_not_following_acknowledges_but_delivers_nothing() -> None:
    battery = VenusE(DEFAULT, 50.0)
    t_s, _ = run(battery, [(800.0, 8.0)], 0.5)
    battery.not_following = True
    t_s, _ = run(battery, [(1200.0, 5.0)], 0.5, t_s)
    assert battery.ac_power_w == 0.0
    assert battery.target_w == 1200.0
    battery.not_following = False
    run(battery, [(1200.0, 8.0)], 0.5, t_s)
    assert battery.ac_power_w == 1200.0


def test_switch_off_stops_the_output_at_once() -> None:
    battery = VenusE(DEFAULT, 50.0)
    t_s, _ = run(battery, [(800.0, 8.0)], 0.5)
    battery.switch_off(t_s)
    assert battery.ac_power_w == 0.0
    assert battery.target_w == 0.0
    assert battery.advance(t_s, 0.5) == 0.0


def test_direction_changes_count_reversals_of_the_actual_output() -> None:
    battery = VenusE(DEFAULT, 50.0)
    # discharge -> idle -> discharge is no reversal; then charge, discharge: two reversals.
    run(battery, [(500.0, 6.0), (0.0, 4.0), (500.0, 6.0), (-500.0, 6.0), (500.0, 6.0)], 0.5)
    assert battery.direction_changes == 2


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("soc_pct", [-1.0, 100.5, math.nan, math.inf])
def test_rejects_an_impossible_soc(soc_pct: float) -> None:
    with pytest.raises(ValueError, match="soc_pct"):
        VenusE(DEFAULT, soc_pct)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="capacity"):
        VenusE(BatteryParams(capacity_wh=0.0), 50.0)
    with pytest.raises(ValueError, match="efficiency"):
        VenusE(BatteryParams(charge_efficiency=((100.0, 1.5),)), 50.0)


def test_rejects_a_non_finite_target_and_a_step_back_in_time() -> None:
    battery = VenusE(DEFAULT, 50.0)
    with pytest.raises(ValueError, match="target"):
        battery.set_target(math.nan, 0.0)
    battery.advance(0.0, 1.0)
    with pytest.raises(ValueError, match="already at"):
        battery.advance(0.5, 1.0)
    with pytest.raises(ValueError, match="dt_s"):
        battery.advance(1.0, -1.0)


def test_switch_off_ahead_of_the_model_acts_at_its_own_instant() -> None:
    battery = VenusE(INSTANT, 50.0)
    battery.set_target(1000.0, 0.0)
    battery.advance(0.0, 1.0)
    battery.switch_off(1.5)  # the replay has only integrated up to 1.0 s
    assert battery.advance(1.0, 1.0) == pytest.approx(500.0)
    assert battery.ac_power_w == 0.0
    assert battery.is_standby
