"""The energy ledger: fleet totals that never fall, whatever the batteries' counters do."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.energy import (
    COUNTER_RESOLUTION_WH,
    DEFAULT_MAX_POWER_W,
    CounterReading,
    EnergyLedger,
    EnergyTotals,
)


def reading(
    number: int, charge_wh: float | None, discharge_wh: float | None, serial: str | None = None
) -> CounterReading:
    return CounterReading(number, serial, charge_wh, discharge_wh)


def test_the_first_readings_start_at_the_sum_of_the_lifetime_counters() -> None:
    ledger = EnergyLedger()
    totals = ledger.observe(0.0, [reading(1, 100_000.0, 80_000.0), reading(2, 170.0, 90.0)])
    assert totals == EnergyTotals(100_170.0, 80_090.0)


def test_only_rises_are_added() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 500.0), reading(2, 170.0, 0.0)])
    totals = ledger.observe(60.0, [reading(1, 1010.0, 520.0), reading(2, 190.0, 10.0)])
    assert totals == EnergyTotals(1170.0 + 30.0, 500.0 + 30.0)


def test_an_unreachable_battery_never_pauses_the_others() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 500.0), reading(2, 170.0, 0.0)])
    # Battery 2 is not read (offline): battery 1's rise still counts, at once.
    totals = ledger.observe(60.0, [reading(1, 1000.0, 530.0)])
    assert totals.discharge_wh == 530.0
    # When it is back, what it did meanwhile counts once.
    totals = ledger.observe(600.0, [reading(1, 1000.0, 530.0), reading(2, 170.0, 40.0)])
    assert totals.discharge_wh == 570.0


def test_removing_and_re_adding_a_battery_counts_nothing_twice() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 0.0), reading(2, 170.0, 0.0)])
    # Battery 2 removed from the configuration: the totals stay.
    totals = ledger.observe(60.0, [reading(1, 1010.0, 0.0)])
    assert totals.charge_wh == 1180.0
    # Re-added with its counter 40 Wh higher: 40 Wh, not 170 + 40.
    totals = ledger.observe(120.0, [reading(1, 1010.0, 0.0), reading(2, 210.0, 0.0)])
    assert totals.charge_wh == 1220.0


def test_a_battery_added_later_only_sets_its_baseline() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 0.0)])
    totals = ledger.observe(10.0, [reading(1, 1000.0, 0.0), reading(3, 50_000.0, 0.0)])
    assert totals.charge_wh == 1000.0  # its earlier lifetime is not new energy
    totals = ledger.observe(20.0, [reading(1, 1000.0, 0.0), reading(3, 50_010.0, 0.0)])
    assert totals.charge_wh == 1010.0


def test_a_counter_that_falls_moves_the_baseline_without_subtracting() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 5000.0, 5000.0)])
    totals = ledger.observe(10.0, [reading(1, 0.0, 0.0)])  # reset (or another battery)
    assert totals == EnergyTotals(5000.0, 5000.0)
    totals = ledger.observe(100.0, [reading(1, 20.0, 10.0)])
    assert totals == EnergyTotals(5020.0, 5010.0)


def test_a_jump_no_battery_can_make_is_not_energy() -> None:
    """A counter that reads 0 while booting, then its lifetime value, counts nothing."""
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 500_000.0, 400_000.0)])
    ledger.observe(10.0, [reading(1, 0.0, 0.0)])
    totals = ledger.observe(20.0, [reading(1, 500_010.0, 400_000.0)])
    assert totals == EnergyTotals(500_000.0, 400_000.0)
    assert ledger.discontinuities == 2  # the charge and the discharge counter
    # Real rises after that count again.
    totals = ledger.observe(30.0, [reading(1, 500_020.0, 400_000.0)])
    assert totals.charge_wh == 500_010.0


def test_a_rise_within_what_a_battery_can_do_is_energy() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 0.0, 0.0)])
    one_hour_wh = DEFAULT_MAX_POWER_W  # the bound over one hour, in Wh
    totals = ledger.observe(3600.0, [reading(1, one_hour_wh, 0.0)])
    assert totals.charge_wh == one_hour_wh
    assert ledger.discontinuities == 0


def test_a_serial_number_follows_the_battery_across_numbers() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 0.0, "A"), reading(2, 2000.0, 0.0, "B")])
    # Renumbered: A is now battery 2, B battery 1, each 10 Wh further.
    totals = ledger.observe(60.0, [reading(2, 1010.0, 0.0, "A"), reading(1, 2010.0, 0.0, "B")])
    assert totals.charge_wh == 3020.0
    # Another physical battery under number 1: a new baseline, nothing added.
    totals = ledger.observe(120.0, [reading(1, 9000.0, 0.0, "C")])
    assert totals.charge_wh == 3020.0


def test_a_serial_read_later_is_adopted() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 0.0)])
    totals = ledger.observe(60.0, [reading(1, 1010.0, 0.0, "A")])
    assert totals.charge_wh == 1010.0
    assert ledger.to_json()["batteries"] == [
        {"number": 1, "serial_number": "A", "charge_wh": 1010.0, "discharge_wh": 0.0}
    ]


def test_the_state_round_trips_and_a_restart_counts_the_time_away() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 500.0, "A"), reading(2, 170.0, 0.0)])
    ledger.observe(60.0, [reading(1, 1010.0, 510.0, "A")])
    saved = json.loads(json.dumps(ledger.to_json()))
    restored = EnergyLedger.from_json(saved)
    assert restored.totals == ledger.totals
    # The engine was away for a day; the battery kept charging under its own logic. A rise
    # that no battery could make in 10 s is fine here: the time away is unknown.
    totals = restored.observe(5.0, [reading(1, 9010.0, 510.0, "A"), reading(2, 170.0, 0.0)])
    assert totals.charge_wh == ledger.totals.charge_wh + 8000.0  # type: ignore[operator]


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"version": 2},
        {"version": 1, "charge_total_wh": "12"},
        {"version": 1, "charge_total_wh": -1},
        {"version": 1, "charge_total_wh": float("nan")},
        {"version": 1, "batteries": [{"number": "x"}]},
        {"version": 1, "batteries": [{"number": 0}]},
        {"version": 1, "batteries": [{"number": 1, "charge_wh": True}]},
        {"version": 1, "batteries": [{"number": 1, "serial_number": 5}]},
        {"version": 1, "batteries": [{"number": 1}, {"number": 1}]},
        {"version": 1, "batteries": {}},
        {"version": 1, "batteries": ["x"]},
    ],
)
def test_an_invalid_state_is_refused(state: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # the message varies by problem
        EnergyLedger.from_json(state)


def test_unchanged_readings_do_not_change_the_revision() -> None:
    ledger = EnergyLedger()
    ledger.observe(0.0, [reading(1, 1000.0, 0.0)])
    revision = ledger.revision
    ledger.observe(1.0, [reading(1, 1000.0, 0.0)])
    assert ledger.revision == revision
    ledger.observe(2.0, [reading(1, 1010.0, 0.0)])
    assert ledger.revision > revision


counters = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e7, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=3600.0),
            st.lists(
                st.tuples(st.integers(1, 4), st.sampled_from([None, "A", "B"]), counters, counters),
                max_size=4,
            ),
        ),
        max_size=30,
    )
)
def test_the_totals_never_fall(
    cycles: list[tuple[float, list[tuple[int, str | None, float | None, float | None]]]],
) -> None:
    ledger = EnergyLedger()
    now_s = 0.0
    last = EnergyTotals(None, None)
    for step_s, readings in cycles:
        now_s += step_s
        totals = ledger.observe(now_s, [CounterReading(*r) for r in readings])
        for before, after in (
            (last.charge_wh, totals.charge_wh),
            (last.discharge_wh, totals.discharge_wh),
        ):
            if before is not None:
                assert after is not None
                assert after >= before
        last = totals


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(min_value=1.0, max_value=600.0), st.integers(0, 2)), max_size=40),
    st.sets(st.integers(0, 39), max_size=10),
)
def test_a_fleet_that_comes_and_goes_totals_exactly_its_counters_rises(
    steps: list[tuple[float, int]], absent: set[int]
) -> None:
    """Steady charging, batteries missing from some cycles: every rise counted exactly once."""
    ledger = EnergyLedger()
    now_s = 0.0
    charged = [1000.0, 2000.0, 3000.0]
    ledger.observe(now_s, [reading(i + 1, charged[i], 0.0) for i in range(3)])
    start = sum(charged)
    for index, (dt_s, who) in enumerate(steps):
        now_s += dt_s
        # Battery ``who`` charged at 1 kW, in whole counter steps.
        charged[who] += COUNTER_RESOLUTION_WH * int(dt_s * 1000.0 / 3600.0 / COUNTER_RESOLUTION_WH)
        seen = [i for i in range(3) if not (index in absent and i == who)]
        ledger.observe(now_s, [reading(i + 1, charged[i], 0.0) for i in seen])
    now_s += 1.0
    totals = ledger.observe(now_s, [reading(i + 1, charged[i], 0.0) for i in range(3)])
    assert totals.charge_wh == pytest.approx(sum(charged))
    assert totals.charge_wh is not None
    assert totals.charge_wh >= start
