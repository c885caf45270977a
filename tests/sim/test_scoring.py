"""Hand-computed cases and properties of the reference (oracle) and every scoring metric."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.plant.params import CHARGE_EFFICIENCY, DISCHARGE_EFFICIENCY, BatteryParams, Tariff
from sim.plant.record import RunRecord
from sim.scoring.metrics import (
    METRIC_KEYS,
    OPTIONAL_KEYS,
    Metrics,
    metric_info,
    score,
    step_responses,
    totals,
)
from sim.scoring.oracle import (
    OracleResult,
    ScoringInputError,
    interpolate_efficiency,
    oracle_for_record,
    simulate_oracle,
    validate_efficiency_curve,
)
from sim.scoring.tables import DEFAULT_TABLE_KEYS, format_side_by_side, format_table

VENUS = BatteryParams()


def make_record(
    net_w: Sequence[float],
    battery_w: Sequence[Sequence[float]] | None = None,
    *,
    dt_s: float = 1.0,
    blocked: Sequence[bool] | None = None,
    events: Sequence[tuple[float, float]] = (),
) -> RunRecord:
    """A record with equal steps; ``battery_w[step]`` lists each battery's power (default none)."""
    powers = battery_w if battery_w is not None else [[0.0] for _ in net_w]
    record = RunRecord(n_batteries=len(powers[0]) if powers else 1)
    for i, net in enumerate(net_w):
        record.append(
            i * dt_s,
            dt_s,
            net,
            list(powers[i]),
            [50.0] * len(powers[i]),
            discharge_blocked=bool(blocked[i]) if blocked else False,
        )
    record.step_events = list(events)
    return record


def record_with_grid(grid_w: Sequence[float], **kwargs: object) -> RunRecord:
    """A record whose grid is exactly ``grid_w`` (no battery, net = grid)."""
    return make_record(grid_w, **kwargs)  # type: ignore[arg-type]


def zero_oracle(n_steps: int) -> OracleResult:
    """A reference that kept the grid at 0 on every step (for metrics that only read its grid)."""
    return simulate_oracle(
        [float(i) for i in range(n_steps)],
        [1.0] * n_steps,
        [0.0] * n_steps,
        [0] * n_steps,
        [(VENUS, 50.0)],
    )


def run_oracle(
    net_w: Sequence[float],
    batteries: Sequence[tuple[BatteryParams, float]],
    *,
    dt_s: float = 1.0,
    blocked: Sequence[int] | None = None,
) -> OracleResult:
    n = len(net_w)
    return simulate_oracle(
        [i * dt_s for i in range(n)], [dt_s] * n, list(net_w), blocked or [0] * n, batteries
    )


# --- efficiency interpolation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "ac_w", "expected"),
    [
        (CHARGE_EFFICIENCY, 63.0, 0.603),
        (CHARGE_EFFICIENCY, 10.0, 0.603),  # held below the first point
        (CHARGE_EFFICIENCY, 5000.0, 0.95),  # held above the last point
        (CHARGE_EFFICIENCY, 375.0, (0.885 + 0.938) / 2),  # halfway 250..500
        (DISCHARGE_EFFICIENCY, 1000.0, 0.91),  # flat part
        (DISCHARGE_EFFICIENCY, 1875.0, (0.91 + 0.893) / 2),  # halfway 1250..2500
        (DISCHARGE_EFFICIENCY, -500.0, 0.898),  # the sign is ignored
    ],
)
def test_interpolate_efficiency(
    curve: tuple[tuple[float, float], ...], ac_w: float, expected: float
) -> None:
    assert interpolate_efficiency(curve, ac_w) == pytest.approx(expected)


@pytest.mark.parametrize(
    "curve",
    [(), ((100.0, 1.2),), ((100.0, 0.9), (50.0, 0.95)), ((100.0, 0.0),), ((math.nan, 0.9),)],
)
def test_bad_efficiency_curve_is_rejected(curve: tuple[tuple[float, float], ...]) -> None:
    with pytest.raises(ScoringInputError):
        validate_efficiency_curve(curve)


# --- oracle: hand-computed cases ---------------------------------------------------------------


def test_oracle_follows_a_load_within_its_limits() -> None:
    result = run_oracle([1000.0] * 3600, [(VENUS, 50.0), (VENUS, 50.0)])
    assert all(p == 1000.0 for p in result.battery_w)
    assert all(g == 0.0 for g in result.grid_w)
    # Equal split: each battery runs 500 W at 89.8 % for one hour.
    assert result.start_energy_wh - result.energy_wh[-1] == pytest.approx(1000.0 / 0.898)
    assert result.conversion_loss_wh == pytest.approx(1000.0 / 0.898 - 1000.0)


def test_oracle_applies_the_curve_at_an_equal_split() -> None:
    one = run_oracle([500.0] * 3600, [(VENUS, 50.0)])
    two = run_oracle([500.0] * 3600, [(VENUS, 50.0), (VENUS, 50.0)])
    assert one.conversion_loss_wh == pytest.approx(500.0 / 0.898 - 500.0)
    assert two.conversion_loss_wh == pytest.approx(500.0 / 0.856 - 500.0)  # 2 x 250 W


def test_oracle_is_capped_at_the_summed_power_limits() -> None:
    batteries = [(VENUS, 50.0), (VENUS, 50.0)]
    discharging = run_oracle([6000.0] * 60, batteries)
    assert set(discharging.battery_w) == {5000.0}
    assert set(discharging.grid_w) == {1000.0}
    charging = run_oracle([-6000.0] * 60, batteries)
    assert set(charging.battery_w) == {-5000.0}
    assert set(charging.grid_w) == {-1000.0}
    # 2 x 2500 W stored at 95 % for a minute.
    assert charging.energy_wh[-1] - charging.start_energy_wh == pytest.approx(5000 * 0.95 / 60)


def test_oracle_on_an_empty_and_a_full_battery() -> None:
    empty = run_oracle([1000.0, -1000.0], [(VENUS, 12.0)])  # at the discharge cut-off
    assert list(empty.battery_w) == [0.0, -1000.0]  # charging is still possible
    assert list(empty.grid_w) == [1000.0, 0.0]
    full = run_oracle([-1000.0, 1000.0], [(VENUS, 100.0)])
    assert list(full.battery_w) == [0.0, 1000.0]
    assert list(full.grid_w) == [-1000.0, 0.0]


def test_oracle_respects_a_lower_charge_cutoff() -> None:
    params = BatteryParams(charge_cutoff_pct=90.0)
    result = run_oracle([-1000.0] * 3, [(params, 95.0)])  # starts above the cut-off
    assert list(result.battery_w) == [0.0, 0.0, 0.0]
    assert result.max_energy_wh == pytest.approx(0.9 * 5120)


@pytest.mark.parametrize(
    "batteries",
    [
        [(VENUS, 13.0)],
        [(VENUS, 13.0), (VENUS, 12.5)],
        # Different curves: the DC->AC inversion has no closed form.
        [(VENUS, 13.0), (BatteryParams(discharge_efficiency=((100.0, 0.8), (2000.0, 0.9))), 14.0)],
    ],
)
def test_oracle_ends_the_limiting_step_exactly_at_the_floor(
    batteries: list[tuple[BatteryParams, float]],
) -> None:
    result = run_oracle([1000.0] * 600, batteries)
    headroom_wh = result.start_energy_wh - result.min_energy_wh
    assert result.energy_wh[-1] == result.min_energy_wh
    assert math.fsum(result.dc_w) / 3600.0 == pytest.approx(headroom_wh, rel=1e-12)
    partial = [i for i, p in enumerate(result.battery_w) if 0.0 < p < 1000.0]
    assert len(partial) == 1  # full power, one reduced step, then nothing
    i = partial[0]
    assert all(p == 1000.0 for p in result.battery_w[:i])
    assert all(p == 0.0 for p in result.battery_w[i + 1 :])
    # The reduced step's AC power converts to exactly the DC power that was left.
    per_battery_w = result.battery_w[i] / len(batteries)
    dc_w = sum(
        per_battery_w / interpolate_efficiency(p.discharge_efficiency, per_battery_w)
        for p, _ in batteries
    )
    assert dc_w == pytest.approx(result.dc_w[i], rel=1e-9)


def test_oracle_ends_the_limiting_charge_step_exactly_at_the_ceiling() -> None:
    result = run_oracle([-1500.0] * 600, [(VENUS, 99.0)])
    assert result.energy_wh[-1] == result.max_energy_wh
    partial = [p for p in result.battery_w if -1500.0 < p < 0.0]
    assert len(partial) == 1
    dc_w = -partial[0] * interpolate_efficiency(CHARGE_EFFICIENCY, partial[0])
    i = list(result.battery_w).index(partial[0])
    assert dc_w == pytest.approx(-result.dc_w[i], rel=1e-9)


def test_oracle_honours_the_discharge_block() -> None:
    result = run_oracle([800.0, 800.0, -800.0, 800.0], [(VENUS, 50.0)], blocked=[0, 1, 1, 0])
    assert list(result.battery_w) == [800.0, 0.0, -800.0, 800.0]
    assert list(result.grid_w) == [0.0, 800.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"net_w": [1.0]}, "net_w"),
        ({"dt_s": [1.0, 0.0]}, "dt_s"),
        ({"net_w": [1.0, math.nan]}, "non-finite"),
        ({"batteries": []}, "at least one"),
        ({"batteries": [(VENUS, 101.0)]}, "soc_pct"),
        (
            {"batteries": [(BatteryParams(discharge_cutoff_pct=90, charge_cutoff_pct=80), 85)]},
            "cut",
        ),
        ({"batteries": [(BatteryParams(charge_efficiency=((100.0, 1.5),)), 50.0)]}, "(0, 1]"),
        ({"discharge_blocked": [0]}, "discharge_blocked"),
    ],
)
def test_oracle_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "t_s": [0.0, 1.0],
        "dt_s": [1.0, 1.0],
        "net_w": [100.0, 100.0],
        "discharge_blocked": [0, 0],
        "batteries": [(VENUS, 50.0)],
    }
    args.update(kwargs)
    with pytest.raises(ScoringInputError, match=message.replace("(", r"\(").replace("]", r"\]")):
        simulate_oracle(**args)  # type: ignore[arg-type]


# --- scoring: hand-computed cases --------------------------------------------------------------


def test_constant_import_and_no_battery() -> None:
    record = make_record([500.0] * 3600)
    oracle = oracle_for_record(record, [(VENUS, 50.0)])
    metrics = score(record, oracle, Tariff())
    assert metrics.import_wh == pytest.approx(500.0)
    assert metrics.export_wh == 0.0
    assert metrics.none_import_wh == pytest.approx(500.0)
    assert metrics.oracle_import_wh == 0.0
    assert metrics.excess_wh == pytest.approx(500.0)
    assert metrics.tracking_score == pytest.approx(0.0)  # as bad as no battery
    assert metrics.mean_abs_grid_w == pytest.approx(500.0)
    assert metrics.steady_rms_w == pytest.approx(500.0)  # the oracle held 0 all along
    assert metrics.sim_seconds == 3600.0
    assert metrics.cost_eur == pytest.approx(0.5 * 0.30)
    assert metrics.oracle_cost_eur == 0.0
    assert metrics.cost_regret_eur == pytest.approx(0.15)
    assert metrics.band_crossings_per_h == 0.0
    assert metrics.battery_throughput_wh == 0.0


def test_constant_export_at_half_second_steps() -> None:
    record = make_record([-300.0] * 3600, dt_s=0.5)
    metrics = score(record, zero_oracle(3600), Tariff())
    assert metrics.export_wh == pytest.approx(150.0)
    assert metrics.import_wh == 0.0
    assert metrics.none_export_wh == pytest.approx(150.0)
    assert metrics.cost_eur == pytest.approx(-0.15 * 0.05)
    assert metrics.sim_seconds == 1800.0


def test_tracking_score_is_one_when_the_controller_equals_the_oracle() -> None:
    net_w = [300.0 * math.sin(i / 50.0) + 200.0 for i in range(2000)]
    probe = make_record(net_w)
    oracle = oracle_for_record(probe, [(VENUS, 12.5)])  # runs empty part of the way
    record = make_record(net_w, [[p] for p in oracle.battery_w])
    metrics = score(record, oracle, Tariff())
    assert metrics.tracking_score == pytest.approx(1.0)
    assert metrics.excess_wh == pytest.approx(0.0, abs=1e-9)
    assert metrics.import_wh == pytest.approx(metrics.oracle_import_wh)
    assert metrics.cost_regret_eur == pytest.approx(0.0, abs=1e-12)
    assert metrics.oracle_import_wh > 0.0  # the floor was reached: not a trivial case


def test_tracking_score_is_one_when_nothing_was_avoidable() -> None:
    record = make_record([400.0] * 100)
    oracle = oracle_for_record(record, [(VENUS, 12.0)])  # empty: the oracle cannot help either
    metrics = score(record, oracle, Tariff())
    assert metrics.none_import_wh == pytest.approx(metrics.oracle_import_wh)
    assert metrics.tracking_score == 1.0


def test_half_way_tracking_score_and_excess() -> None:
    record = make_record([400.0] * 3600, [[200.0]] * 3600)
    oracle = oracle_for_record(record, [(VENUS, 50.0)])
    metrics = score(record, oracle, Tariff())
    assert metrics.tracking_score == pytest.approx(0.5)
    assert metrics.excess_wh == pytest.approx(200.0)
    assert metrics.battery_throughput_wh == pytest.approx(200.0)


def test_steady_rms_uses_only_samples_where_the_oracle_held_zero() -> None:
    # The oracle can give 2500 W: step 4 (net 3000 W) is saturated, so it is left out.
    net_w = [500.0, 500.0, 500.0, 500.0, 3000.0]
    battery_w = [[490.0], [510.0], [480.0], [500.0], [0.0]]
    record = make_record(net_w, battery_w)
    oracle = oracle_for_record(record, [(VENUS, 50.0)])
    metrics = score(record, oracle, Tariff())
    assert metrics.steady_rms_w == pytest.approx(math.sqrt((100 + 100 + 400 + 0) / 4))
    assert metrics.mean_abs_grid_w == pytest.approx((10 + 10 + 20 + 0 + 3000) / 5)


def test_steady_rms_is_zero_when_the_oracle_never_held_zero() -> None:
    record = make_record([400.0] * 10)
    metrics = score(record, oracle_for_record(record, [(VENUS, 12.0)]), Tariff())
    assert metrics.steady_rms_w == 0.0


def test_band_crossings_of_an_oscillation() -> None:
    grid_w = [50.0 if i % 2 == 0 else -50.0 for i in range(100)]
    metrics = score(record_with_grid(grid_w), zero_oracle(100), Tariff())
    # 99 sign changes in 100 s.
    assert metrics.band_crossings_per_h == pytest.approx(99 * 3600 / 100)


@pytest.mark.parametrize(
    ("grid_w", "crossings"),
    [
        ([50.0, 0.0, 0.0, -50.0, 0.0, 50.0], 2),  # through the band counts
        ([50.0, 10.0, 50.0, -10.0, 30.0], 0),  # back to the same side does not
        ([15.0, -15.0, 19.0, -19.0, 20.0, -20.0], 0),  # jitter inside the band
        ([-25.0, 25.0, 21.0, -21.0], 2),
    ],
)
def test_band_crossings_track_the_last_side(grid_w: list[float], crossings: int) -> None:
    n = len(grid_w)
    metrics = score(record_with_grid(grid_w), zero_oracle(n), Tariff())
    assert metrics.band_crossings_per_h == pytest.approx(crossings * 3600 / n)


def test_step_event_settle_time_and_overshoot() -> None:
    # Load step of +1000 W at t = 10 s: import for 4 s, a -200 W overshoot, -30 W, then settled.
    grid_w = [0.0] * 10 + [1000.0] * 4 + [-200.0] * 2 + [-30.0] * 2 + [5.0] * 22
    record = record_with_grid(grid_w, events=[(10.0, 1000.0)])
    (response,) = step_responses(record)
    assert response.settled
    assert response.settle_s == 8.0  # |grid| < 25 W from t = 18 s, held 10 s
    assert response.overshoot_w == 200.0
    metrics = score(record, zero_oracle(len(grid_w)), Tariff())
    assert metrics.settle_mean_s == 8.0
    assert metrics.overshoot_mean_w == 200.0


def test_step_down_overshoot_is_the_largest_import() -> None:
    grid_w = [0.0] * 5 + [-800.0] * 3 + [120.0, 60.0] + [0.0] * 20
    (response,) = step_responses(record_with_grid(grid_w, events=[(5.0, -800.0)]))
    assert response.overshoot_w == 120.0
    assert response.settle_s == 5.0


def test_interrupted_hold_restarts_the_settle_clock() -> None:
    # In band 5 s, out once, then in band for good.
    grid_w = [600.0] * 2 + [0.0] * 5 + [40.0] + [0.0] * 20
    (response,) = step_responses(record_with_grid(grid_w, events=[(0.0, 600.0)]))
    assert response.settle_s == 8.0
    assert response.overshoot_w == 0.0  # never went negative


def test_unsettled_event_counts_its_whole_window() -> None:
    # Never settles before the next event at 30 s; the second one settles at once.
    grid_w = [300.0] * 30 + [0.0] * 20
    record = record_with_grid(grid_w, events=[(30.0, -300.0), (0.0, 300.0)])
    first, second = step_responses(record)
    assert (first.settled, first.settle_s, first.window_s) == (False, 30.0, 30.0)
    assert (second.settled, second.settle_s) == (True, 0.0)
    metrics = score(record, zero_oracle(50), Tariff())
    assert metrics.settle_mean_s == 15.0


def test_hold_cut_short_by_the_run_end_is_unsettled() -> None:
    grid_w = [500.0] * 5 + [0.0] * 6
    (response,) = step_responses(record_with_grid(grid_w, events=[(0.0, 500.0)]))
    assert not response.settled
    assert response.settle_s == 11.0


def test_no_events_report_zero() -> None:
    metrics = score(record_with_grid([100.0] * 10), zero_oracle(10), Tariff())
    assert metrics.settle_mean_s == 0.0
    assert metrics.overshoot_mean_w == 0.0


def test_record_fields_pass_through() -> None:
    record = make_record([0.0] * 4, [[100.0, -100.0]] * 4)
    record.direction_changes = 7
    record.conversion_loss_wh = 1.25
    record.modbus_reads = 40
    record.modbus_writes = 12
    record.wall_seconds = 0.5
    metrics = score(record, zero_oracle(4), Tariff())
    assert metrics.direction_changes == 7.0
    assert metrics.conversion_loss_wh == 1.25
    assert metrics.modbus_reads == 40.0
    assert metrics.modbus_writes == 12.0
    assert metrics.wall_seconds == 0.5
    assert metrics.battery_throughput_wh == pytest.approx(2 * 100.0 * 4 / 3600)


def test_cost_uses_the_tariff() -> None:
    record = make_record([1000.0] * 3600 + [-2000.0] * 3600)
    metrics = score(record, zero_oracle(7200), Tariff(0.25, 0.10))
    assert metrics.cost_eur == pytest.approx(1.0 * 0.25 - 2.0 * 0.10)


def test_empty_record_scores_zero() -> None:
    record = RunRecord(n_batteries=1)
    oracle = oracle_for_record(record, [(VENUS, 50.0)])
    metrics = score(record, oracle, Tariff())
    assert metrics.tracking_score == 1.0
    assert all(v == 0.0 for k, v in metrics.items() if k != "tracking_score")


def test_mismatched_oracle_is_rejected() -> None:
    with pytest.raises(ScoringInputError, match="oracle grid_w"):
        score(make_record([1.0] * 5), zero_oracle(4), Tariff())


def test_non_finite_record_is_rejected() -> None:
    record = make_record([1.0, math.inf])
    with pytest.raises(ScoringInputError, match="non-finite"):
        score(record, zero_oracle(2), Tariff())


# --- tables ------------------------------------------------------------------------------------


def _rows() -> list[tuple[str, str, Metrics]]:
    record = make_record([400.0] * 3600, [[200.0]] * 3600)
    oracle = oracle_for_record(record, [(VENUS, 50.0)])
    half = score(record, oracle, Tariff())
    none = score(make_record([400.0] * 3600), oracle, Tariff())
    return [("day", "mmbc", half), ("day", "classic", none), ("night", "mmbc", half)]


def _body(text: str) -> list[list[str]]:
    """The cells of every body line of a plain-text table (after the header rule)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    return [line.replace("│", " ").split() for line in lines[rule + 1 :] if line.strip("─ ")]


def test_format_table_adds_reference_rows() -> None:
    text = format_table(_rows(), ["import_wh", "cost_eur", "band_crossings_per_h"])
    header = " ".join(text.split("─")[0].split())
    assert header == "import cost crossings scenario policy Wh € per h"  # two header lines
    body = _body(text)
    assert [row[:2] for row in body] == [
        ["day", "mmbc"],
        ["day", "classic"],
        ["day", "reference"],
        ["night", "mmbc"],
        ["night", "reference"],
    ]
    assert body[0][2:] == ["200.0", "0.060", "0.00"]
    assert body[1][2] == "400.0"
    assert body[2][2:] == ["0.0", "0.000", "-"]  # the oracle's import and cost
    assert "\x1b" not in text  # plain text: no terminal codes
    assert all(line == line.rstrip() for line in text.splitlines())


def test_format_table_defaults_and_errors() -> None:
    text = format_table(_rows())
    header = " ".join(text.split("─")[0].split())
    for key in DEFAULT_TABLE_KEYS:
        first_line = metric_info(key).header.split("\n")[0]
        assert first_line in header, key
    assert len(_body(text)[0]) == 2 + len(DEFAULT_TABLE_KEYS)
    with pytest.raises(ScoringInputError, match="bogus"):
        format_table(_rows(), ["bogus"])


def test_format_side_by_side_totals_and_missing_cells() -> None:
    text = format_side_by_side(_rows())
    lines = text.splitlines()
    assert all(len(line) <= 150 for line in lines)
    assert lines[0].split("│")[1].strip() == "mmbc"
    assert lines[0].split("│")[2].strip() == "classic"
    body = _body(text)
    day, night, total = body
    # scenario, none Wh, ref Wh | mmbc: excess, track, X/h, dirs, loss | classic: ...
    assert day == [
        "day", "400", "0", "200", "0.500", "0.0", "0", "0", "400", "0.000", "0.0", "0", "0"
    ]  # fmt: skip
    assert night[0] == "night"
    assert night[-5:] == ["-"] * 5  # classic did not run at night
    assert total == [
        "TOTAL", "800", "0", "400", "0.500", "0.0", "0", "0", "400", "0.000", "0.0", "0", "0"
    ]  # fmt: skip


def test_format_side_by_side_splits_many_policies_into_blocks() -> None:
    (_, _, metrics) = _rows()[0]
    rows = [("s", f"policy-{i}", metrics) for i in range(6)]
    text = format_side_by_side(rows)
    assert all(len(line) <= 150 for line in text.splitlines())
    assert all(f"policy-{i}" in text for i in range(6))
    assert text.count("TOTAL") >= 2


def test_names_are_shown_literally_not_as_markup() -> None:
    (_, _, metrics) = _rows()[0]
    text = format_table([("[bold]day[/bold]", "[red]x", metrics)], ["import_wh"])
    assert "[bold]day[/bold]" in text
    assert "[red]x" in text


def test_totals_add_energies_and_counts_and_recompute_the_ratios() -> None:
    (_, _, half), (_, _, none), _ = _rows()
    total = totals([half, none.replace(direction_changes=3, fault_cost_wh=12.0)])
    assert total.import_wh == pytest.approx(half.import_wh + none.import_wh)
    assert total.direction_changes == 3
    assert total.fault_cost_wh == 12.0  # over the runs that have one
    # avoided (800 - 600) over avoidable (800 - 0), not the mean of 0.5 and 0.0
    assert total.tracking_score == pytest.approx(0.25)
    assert total.cycle_latency_median_ms is None  # latencies do not add up
    assert totals([half]).fault_cost_wh is None


def test_metrics_json_lists_every_metric_in_order_and_optional_ones_only_when_set() -> None:
    (_, _, metrics) = _rows()[0]
    as_json = metrics.as_json()
    assert tuple(as_json) == METRIC_KEYS
    assert all(type(v) is float for v in as_json.values())  # counts too, as before
    assert as_json == {k: float(getattr(metrics, k)) for k in METRIC_KEYS}
    wire = metrics.replace(cycles=7, cycle_latency_median_ms=1.5, cycle_latency_p99_ms=2.5)
    assert list(wire.as_json())[-3:] == [
        "cycles",
        "cycle_latency_median_ms",
        "cycle_latency_p99_ms",
    ]
    assert wire.as_json()["cycles"] == 7.0
    assert Metrics.from_json(wire.as_json()) == wire
    with pytest.raises(ScoringInputError, match="missing keys"):
        Metrics.from_json({"import_wh": 1.0})
    assert metrics.get("fault_cost_wh") is None
    with pytest.raises(ScoringInputError, match="bogus"):
        metrics.get("bogus")


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scoring.md").read_text("utf-8")
    table = doc.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = {
        key
        for line in table.splitlines()
        if line.startswith("| `")
        for key in re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])
    }
    assert documented == set(METRIC_KEYS) | set(OPTIONAL_KEYS)


# --- properties --------------------------------------------------------------------------------

_powers = st.floats(min_value=-8000.0, max_value=8000.0, allow_nan=False)
_battery = st.builds(
    lambda cap, lo, hi, soc, chg, dis, flat: (
        BatteryParams(
            capacity_wh=cap,
            discharge_cutoff_pct=min(lo, hi),
            charge_cutoff_pct=max(lo, hi),
            max_charge_w=chg,
            max_discharge_w=dis,
            discharge_efficiency=((100.0, 0.85), (3000.0, 0.93)) if flat else DISCHARGE_EFFICIENCY,
        ),
        soc,
    ),
    st.floats(min_value=1.0, max_value=20000.0),
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.0, max_value=3000.0),
    st.floats(min_value=0.0, max_value=3000.0),
    st.booleans(),
)


@st.composite
def _plant(
    draw: st.DrawFn,
) -> tuple[list[float], list[float], list[int], list[tuple[BatteryParams, float]]]:
    net_w = draw(st.lists(_powers, min_size=1, max_size=60))
    dt_s = draw(st.lists(st.floats(0.05, 900.0), min_size=len(net_w), max_size=len(net_w)))
    blocked = draw(st.lists(st.integers(0, 1), min_size=len(net_w), max_size=len(net_w)))
    batteries = draw(st.lists(_battery, min_size=1, max_size=3))
    return net_w, dt_s, blocked, batteries


def _dc_of(batteries: list[tuple[BatteryParams, float]], ac_w: float) -> float:
    """Total DC power (+ out of the store) of an equal split of ``ac_w`` (+ discharging)."""
    per_w = abs(ac_w) / len(batteries)
    if ac_w > 0.0:
        return sum(
            per_w / interpolate_efficiency(p.discharge_efficiency, per_w) for p, _ in batteries
        )
    return -sum(per_w * interpolate_efficiency(p.charge_efficiency, per_w) for p, _ in batteries)


@settings(max_examples=150, deadline=None)
@given(_plant())
def test_oracle_conserves_energy_and_never_worsens_the_grid(
    plant: tuple[list[float], list[float], list[int], list[tuple[BatteryParams, float]]],
) -> None:
    net_w, dt_s, blocked, batteries = plant
    t_s = [math.fsum(dt_s[:i]) for i in range(len(dt_s))]
    result = simulate_oracle(t_s, dt_s, net_w, blocked, batteries)
    max_charge_w = sum(p.max_charge_w for p, _ in batteries)
    max_discharge_w = sum(p.max_discharge_w for p, _ in batteries)
    scale_wh = result.capacity_wh
    energy_wh = result.start_energy_wh
    lo_wh = min(result.min_energy_wh, result.start_energy_wh) - 1e-9 * scale_wh
    hi_wh = max(result.max_energy_wh, result.start_energy_wh) + 1e-9 * scale_wh
    for i, (net, step_s) in enumerate(zip(net_w, dt_s, strict=True)):
        ac_w = result.battery_w[i]
        energy_wh -= result.dc_w[i] * step_s / 3600.0
        # Energy conservation: the stored energy changes by exactly the DC energy.
        assert result.energy_wh[i] == pytest.approx(energy_wh, rel=1e-9, abs=1e-9 * scale_wh)
        assert lo_wh <= result.energy_wh[i] <= hi_wh
        # AC and DC agree with the curves at an equal split.
        assert result.dc_w[i] == pytest.approx(_dc_of(batteries, ac_w), rel=1e-7, abs=1e-9)
        # Never more than asked, never against the demand, within the limits and the block.
        assert abs(result.grid_w[i]) <= abs(net) + 1e-9
        assert ac_w * net >= 0.0
        assert -max_charge_w - 1e-9 <= ac_w <= max_discharge_w + 1e-9
        if blocked[i]:
            assert ac_w <= 0.0
    assert result.conversion_loss_wh >= -1e-9


@settings(max_examples=100, deadline=None)
@given(_plant(), st.data())
def test_every_metric_is_finite_and_the_oracle_beats_no_battery(
    plant: tuple[list[float], list[float], list[int], list[tuple[BatteryParams, float]]],
    data: st.DataObject,
) -> None:
    net_w, dt_s, blocked, batteries = plant
    n = len(net_w)
    powers = data.draw(st.lists(st.lists(_powers, min_size=2, max_size=2), min_size=n, max_size=n))
    events = data.draw(
        st.lists(st.tuples(st.floats(-100.0, 20000.0), _powers), max_size=4), label="events"
    )
    record = RunRecord(n_batteries=2)
    t = 0.0
    for i in range(n):
        record.append(
            t, dt_s[i], net_w[i], powers[i], [50.0, 50.0], discharge_blocked=bool(blocked[i])
        )
        t += dt_s[i]
    record.step_events = events
    oracle = oracle_for_record(record, batteries)
    metrics = score(record, oracle, Tariff())
    assert tuple(metrics.as_json()) == METRIC_KEYS
    assert all(math.isfinite(v) for v in metrics.as_json().values())
    none_wh = metrics.none_import_wh + metrics.none_export_wh
    oracle_wh = metrics.oracle_import_wh + metrics.oracle_export_wh
    assert oracle_wh <= none_wh * (1 + 1e-12) + 1e-9
    assert metrics.settle_mean_s >= 0.0
    assert metrics.overshoot_mean_w >= 0.0
