"""Unit tests of the fail-safe invariant checker: hand-made cycles that break each invariant."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from engine.core.events import DecisionEvent, Excluded
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.settings import BatterySpec, ControlSettings
from engine.core.states import BatteryState, FleetState
from sim.replay.invariants import (
    INVARIANTS,
    REJOIN_BOUND_S,
    InvariantChecker,
    Truth,
)

NAMES = ["battery_1", "battery_2"]
EXCLUDED = Excluded("battery_1", until_s=300.0, delivered_w=0.0, commanded_w=1500)
SETTINGS = ControlSettings(
    batteries=(BatterySpec("battery_1"), BatterySpec("battery_2", max_discharge_w=2000)),
)
PERIOD_S = 1.0


def tel(name: str, soc_pct: float | None = 50.0, power_w: float = 0.0) -> BatteryTelemetry:
    return BatteryTelemetry(name, online=soc_pct is not None, soc_pct=soc_pct, power_w=power_w)


def offline(name: str) -> BatteryTelemetry:
    return BatteryTelemetry(name, online=False)


class Run:
    """Feeds one cycle a second to a checker; every argument defaults to "all is well"."""

    def __init__(self, *, meter_interval_s: float = 1.0) -> None:
        self.checker = InvariantChecker(
            SETTINGS, NAMES, meter_interval_s=meter_interval_s, period_s=PERIOD_S
        )
        self.now_s = 0.0

    def cycle(
        self,
        setpoints: Mapping[str, int] | None = None,
        *,
        batteries: tuple[BatteryTelemetry, ...] | None = None,
        fresh: bool = True,
        failed: frozenset[str] = frozenset(),
        out_of_control: frozenset[str] = frozenset(),
        not_delivering: frozenset[str] = frozenset(),
        net_w: float = 0.0,
        battery_w: Mapping[str, float] | None = None,
        firmware_w: Mapping[str, float] | None = None,
        events: tuple[DecisionEvent, ...] = (),
        states: Mapping[str, BatteryState] | None = None,
        blocked: bool = False,
        mode: Mode = Mode.NORMAL,
        safe_hold: bool = False,
    ) -> None:
        sp = dict(setpoints) if setpoints is not None else dict.fromkeys(NAMES, 0)
        snap = Snapshot(
            now_s=self.now_s,
            grid_w=0.0,
            meter_updated_s=self.now_s,
            batteries=batteries if batteries is not None else tuple(tel(n) for n in NAMES),
            mode=mode,
            discharge_blocked=blocked,
        )
        plan = Plan(
            setpoints=sp,
            fleet_state=FleetState.NORMAL,
            battery_states=dict(states) if states is not None else {},
            events=events,
            safe_hold=safe_hold,
        )
        truth = Truth(
            meter_sample_s=self.now_s if fresh else self._frozen(),
            failed=failed,
            out_of_control=out_of_control,
            not_delivering=not_delivering,
            net_w=net_w,
            battery_w=dict(battery_w) if battery_w is not None else dict.fromkeys(NAMES, 0.0),
            firmware_w=dict(firmware_w) if firmware_w is not None else dict(sp),
        )
        if fresh:
            self._sample_s = self.now_s
        self.checker.cycle(snap, plan, truth, PERIOD_S)
        self.now_s += PERIOD_S

    def _frozen(self) -> float:
        return self._sample_s

    def failed_at(self, name: str) -> float | None:
        return self.checker.report.first_violation_s[name]

    def only_failures(self) -> set[str]:
        return {k for k, ok in self.checker.report.passed().items() if not ok}


def test_a_clean_run_passes_everything() -> None:
    run = Run()
    for _ in range(100):
        run.cycle({"battery_1": 800, "battery_2": 0})
    run.checker.finish(run.now_s)
    run.checker.shutdown(run.now_s, all_idle=True, released=True)
    assert run.checker.report.passed() == dict.fromkeys(INVARIANTS, True)


# ------------------------------------------------------------------ 1. stale meter
def test_stale_meter_with_a_setpoint_fails_in_the_first_cycle_past_the_limit() -> None:
    run = Run()
    run.cycle({"battery_1": 800, "battery_2": 0})  # fresh at 0 s
    for _ in range(5):  # 1..5 s: the reading is at most 5 s old, still allowed
        run.cycle({"battery_1": 800, "battery_2": 0}, fresh=False)
    assert run.only_failures() == set()
    run.cycle({"battery_1": 800, "battery_2": 0}, fresh=False)  # 6 s old
    assert run.failed_at("meter_stale_idles_all") == 6.0
    assert run.only_failures() == {"meter_stale_idles_all"}


def test_stale_meter_idled_in_time_passes_and_fresh_readings_end_it() -> None:
    run = Run()
    run.cycle({"battery_1": 800, "battery_2": 0})
    for _ in range(5):
        run.cycle({"battery_1": 800, "battery_2": 0}, fresh=False)
    for _ in range(60):  # frozen for a minute: every battery at 0 W
        run.cycle({"battery_1": 0, "battery_2": 0}, fresh=False)
    run.cycle({"battery_1": 900, "battery_2": 0})  # a fresh reading: steering is allowed again
    run.cycle({"battery_1": 900, "battery_2": 0})
    assert run.only_failures() == set()


def test_stale_meter_must_command_every_healthy_battery() -> None:
    """Leaving a battery out is not "0 W": it keeps whatever it ran before."""
    run = Run()
    run.cycle()
    for _ in range(6):
        run.cycle({"battery_2": 0}, fresh=False)
    assert run.only_failures() == {"meter_stale_idles_all"}


def test_no_valid_reading_counts_as_stale() -> None:
    run = Run()
    run.cycle()
    checker = run.checker
    for i in range(1, 8):
        snap = Snapshot(float(i), None, 0.0, tuple(tel(n) for n in NAMES))
        plan = Plan({"battery_1": -500, "battery_2": 0}, FleetState.NORMAL, {})
        checker.cycle(snap, plan, Truth(meter_sample_s=None), PERIOD_S)
    assert checker.report.first_violation_s["meter_stale_idles_all"] == 6.0


def test_a_slow_meter_may_be_older_before_it_is_stale() -> None:
    run = Run(meter_interval_s=10.0)  # 2.5 intervals: 25 s
    assert run.checker.stale_limit_s == 25.0
    run.cycle({"battery_1": 800, "battery_2": 0})
    for _ in range(25):
        run.cycle({"battery_1": 800, "battery_2": 0}, fresh=False)
    assert run.only_failures() == set()
    run.cycle({"battery_1": 800, "battery_2": 0}, fresh=False)
    assert run.only_failures() == {"meter_stale_idles_all"}


# ------------------------------------------------------------------ 2. unavailable
def test_command_to_an_unreachable_battery_fails() -> None:
    run = Run()
    run.cycle({"battery_1": 0, "battery_2": 0}, failed=frozenset({"battery_2"}))
    assert run.only_failures() == {"unavailable_gets_no_command"}


def test_an_unreachable_battery_must_show_as_unavailable() -> None:
    run = Run()
    run.cycle(
        {"battery_1": 0},
        batteries=(tel("battery_1"), offline("battery_2")),
        failed=frozenset({"battery_2"}),
        states={"battery_1": BatteryState.IDLE, "battery_2": BatteryState.IDLE},
    )
    assert run.only_failures() == {"unavailable_gets_no_command"}


def test_an_unreachable_battery_left_alone_passes() -> None:
    run = Run()
    for _ in range(30):
        run.cycle(
            {"battery_1": 0},
            batteries=(tel("battery_1"), offline("battery_2")),
            failed=frozenset({"battery_2"}),
            states={"battery_1": BatteryState.IDLE, "battery_2": BatteryState.UNAVAILABLE},
        )
    run.cycle()
    assert run.only_failures() == set()


@pytest.mark.parametrize(
    ("silent_s", "ok"), [(REJOIN_BOUND_S - 1, True), (REJOIN_BOUND_S + 2, False)]
)
def test_a_recovered_battery_must_be_commanded_again_within_the_bound(
    silent_s: float, ok: bool
) -> None:
    run = Run()
    run.cycle({"battery_1": 0}, failed=frozenset({"battery_2"}))
    for _ in range(round(silent_s)):  # healthy, but the engine still ignores it
        run.cycle({"battery_1": 0})
    run.cycle()
    assert (run.only_failures() == set()) is ok


def _offline_leader_run(b2_setpoint_w: int, *, stuck_w: float = 0.0, cycles: int = 6) -> Run:
    """Battery 1 unreachable (delivering ``stuck_w``) while the house needs 1500 W."""
    run = Run()
    run.cycle({"battery_1": 1500, "battery_2": 0}, net_w=1500.0, battery_w={"battery_1": 1500.0})
    for _ in range(cycles):
        run.cycle(
            {"battery_2": b2_setpoint_w},
            batteries=(offline("battery_1"), tel("battery_2")),
            failed=frozenset({"battery_1"}),
            net_w=1500.0,
            battery_w={"battery_1": stuck_w, "battery_2": 0.0},
        )
    return run


def test_the_others_must_take_over_from_an_unreachable_battery() -> None:
    assert _offline_leader_run(1500).only_failures() == set()
    lazy = _offline_leader_run(0)
    assert lazy.only_failures() == {"unavailable_gets_no_command"}
    # settled after 2 cycles (t = 3 s), then 3 cycles of too little: the 3rd fails
    assert lazy.failed_at("unavailable_gets_no_command") == 5.0


def test_the_others_must_not_double_up_on_a_battery_that_keeps_running() -> None:
    """An unreachable Venus E keeps its last setpoint: the others cover only the rest."""
    assert _offline_leader_run(0, stuck_w=1500.0).only_failures() == set()
    # Doubling up is tolerated only as long as a make-before-break hand-over may last.
    brief = _offline_leader_run(1500, stuck_w=1500.0, cycles=20)
    assert brief.only_failures() == set()
    long = _offline_leader_run(1500, stuck_w=1500.0, cycles=30)
    assert long.only_failures() == {"unavailable_gets_no_command"}


def test_take_over_is_bounded_by_what_the_others_may_do() -> None:
    """Battery 2 may discharge 2000 W: it must give that, not the whole 3000 W."""
    run = Run()
    for _ in range(8):
        run.cycle(
            {"battery_2": 2000},
            batteries=(offline("battery_1"), tel("battery_2")),
            failed=frozenset({"battery_1"}),
            net_w=3000.0,
        )
    assert run.only_failures() == set()
    blocked = Run()
    for _ in range(8):
        blocked.cycle(
            {"battery_2": 0},
            batteries=(offline("battery_1"), tel("battery_2")),
            failed=frozenset({"battery_1"}),
            net_w=3000.0,
            blocked=True,
        )
    assert blocked.only_failures() == set()


# ------------------------------------------------------------------ 3. RS485 control
def test_control_must_be_back_within_the_recheck_interval() -> None:
    limit_s = SETTINGS.control_recheck_s + PERIOD_S
    late = Run()
    late.cycle()
    for _ in range(round(limit_s) + 2):  # lost from 1 s on
        late.cycle({"battery_1": 0, "battery_2": 0}, out_of_control=frozenset({"battery_1"}))
    assert late.only_failures() == {"control_reapplied"}
    assert late.failed_at("control_reapplied") == 2.0 + round(limit_s)

    in_time = Run()
    in_time.cycle()
    for _ in range(round(limit_s) + 1):
        in_time.cycle({"battery_1": 0, "battery_2": 0}, out_of_control=frozenset({"battery_1"}))
    in_time.cycle()
    assert in_time.only_failures() == set()


def test_the_firmware_must_hold_the_engines_command() -> None:
    """After a reboot the setpoints read 0: a commander that believes otherwise fails."""
    run = Run()
    run.cycle({"battery_1": 1200, "battery_2": 0}, firmware_w={"battery_1": 0.0, "battery_2": 0.0})
    assert run.only_failures() == {"control_reapplied"}


def test_an_unreachable_battery_is_not_asked_to_hold_anything() -> None:
    run = Run()
    for _ in range(100):
        run.cycle(
            {"battery_2": 0},
            batteries=(offline("battery_1"), tel("battery_2")),
            failed=frozenset({"battery_1"}),
            out_of_control=frozenset(),
            firmware_w={"battery_1": 900.0, "battery_2": 0.0},
            battery_w={"battery_1": 0.0},
        )
    assert run.only_failures() == set()


# ------------------------------------------------------------------ 4. not following
def test_a_battery_that_delivers_nothing_must_be_excluded_in_time() -> None:
    bound_s = Run().checker.not_following_bound_s
    stubborn = Run()
    for _ in range(round(bound_s) + 2):
        stubborn.cycle(
            {"battery_1": 1500, "battery_2": 0},
            not_delivering=frozenset({"battery_1"}),
            net_w=1500.0,
        )
    assert "not_following_excluded" in stubborn.only_failures()

    sensible = Run()
    for _ in range(8):
        sensible.cycle(
            {"battery_1": 1500, "battery_2": 0},
            not_delivering=frozenset({"battery_1"}),
            net_w=1500.0,
        )
    sensible.cycle(
        {"battery_1": 0, "battery_2": 1500},
        not_delivering=frozenset({"battery_1"}),
        net_w=1500.0,
        events=(EXCLUDED,),
    )
    for _ in range(30):
        sensible.cycle(
            {"battery_1": 0, "battery_2": 1500},
            not_delivering=frozenset({"battery_1"}),
            net_w=1500.0,
        )
    assert sensible.only_failures() == set()


def test_a_new_direction_gives_a_battery_the_bound_anew() -> None:
    run = Run()
    nd = frozenset({"battery_1"})
    for _ in range(8):
        run.cycle({"battery_1": 300, "battery_2": 0}, not_delivering=nd, net_w=300.0)
    for _ in range(8):
        run.cycle({"battery_1": -300, "battery_2": 0}, not_delivering=nd, net_w=-300.0)
    assert run.only_failures() == set()
    small = Run()  # commands too small to tell from meter noise do not count
    for _ in range(40):
        small.cycle({"battery_1": 60, "battery_2": 0}, not_delivering=nd, net_w=60.0)
    assert small.only_failures() == set()


def test_excluding_without_redistributing_fails() -> None:
    run = Run()
    for _ in range(40):
        run.cycle(
            {"battery_1": 0, "battery_2": 0},
            not_delivering=frozenset({"battery_1"}),
            net_w=1500.0,
        )
    assert run.only_failures() == {"not_following_excluded"}


def test_exclusion_is_logged_once_and_only_for_a_battery_that_does_not_deliver() -> None:
    line = (EXCLUDED,)
    twice = Run()
    twice.cycle(
        {"battery_1": 0, "battery_2": 0}, not_delivering=frozenset({"battery_1"}), events=line
    )
    twice.cycle(
        {"battery_1": 0, "battery_2": 0}, not_delivering=frozenset({"battery_1"}), events=line
    )
    assert twice.only_failures() == {"not_following_excluded"}

    wrongly = Run()
    wrongly.cycle(events=line)
    assert wrongly.only_failures() == {"not_following_excluded"}


# ------------------------------------------------------------------ 5. limits
@pytest.mark.parametrize(
    ("setpoints", "batteries", "blocked", "mode"),
    [
        ({"battery_1": 300}, (tel("battery_1", 50.0),), True, Mode.NORMAL),
        ({"battery_1": 300}, (tel("battery_1", 50.0),), False, Mode.HOLD),
        ({"battery_1": -300}, (tel("battery_1", 100.0),), False, Mode.NORMAL),
        ({"battery_1": 1}, (tel("battery_1", 11.0),), False, Mode.NORMAL),
        ({"battery_1": 2501}, (tel("battery_1", 50.0),), False, Mode.NORMAL),
        ({"battery_2": 2100}, (tel("battery_2", 50.0),), False, Mode.NORMAL),
        ({"battery_1": -2600}, (tel("battery_1", 50.0),), False, Mode.NORMAL),
        ({"battery_3": 0}, (tel("battery_1", 50.0),), False, Mode.NORMAL),
    ],
)
def test_each_limit_violation_fails(
    setpoints: dict[str, int],
    batteries: tuple[BatteryTelemetry, ...],
    blocked: bool,
    mode: Mode,
) -> None:
    run = Run()
    run.cycle(setpoints, batteries=batteries, blocked=blocked, mode=mode)
    assert "limits_respected" in run.only_failures()


def test_commands_inside_the_limits_pass() -> None:
    run = Run()
    run.cycle(
        {"battery_1": 2500, "battery_2": -2500},
        batteries=(tel("battery_1", 12.0), tel("battery_2", 99.0)),
    )
    run.cycle({"battery_1": 0, "battery_2": -10}, blocked=True)
    assert run.only_failures() == set()


# ------------------------------------------------------------------ 6. no crash
def test_an_unexpected_exception_fails() -> None:
    run = Run()
    run.cycle()
    run.checker.crashed(run.now_s, "Traceback ...\nZeroDivisionError: division by zero")
    run.now_s += PERIOD_S
    run.cycle()
    assert run.only_failures() == {"no_crash"}
    assert "ZeroDivisionError" in run.checker.report.details["no_crash"]


def test_an_injected_error_failing_safe_and_running_on_passes() -> None:
    run = Run()
    run.cycle()
    for _ in range(5):
        truth = Truth(meter_sample_s=run.now_s, engine_error=True, firmware_w={"battery_1": 0.0})
        run.checker.crashed(run.now_s, "InjectedEngineError: boom", truth)
        run.now_s += PERIOD_S
    run.cycle()
    run.checker.finish(run.now_s)
    assert run.only_failures() == set()


def test_an_error_that_leaves_a_battery_running_fails() -> None:
    run = Run()
    run.cycle()
    truth = Truth(meter_sample_s=0.0, engine_error=True, firmware_w={"battery_1": 900.0})
    run.checker.crashed(run.now_s, "InjectedEngineError: boom", truth)
    assert run.only_failures() == {"no_crash"}


def test_an_error_must_be_followed_by_the_next_cycle() -> None:
    run = Run()
    run.cycle()
    run.checker.crashed(run.now_s, "InjectedEngineError: boom", Truth(None, engine_error=True))
    run.checker.finish(run.now_s + 10 * PERIOD_S)
    assert run.only_failures() == {"no_crash"}


# ------------------------------------------------------------------ 7. shutdown
@pytest.mark.parametrize(("idle", "released"), [(False, True), (True, False), (False, False)])
def test_shutdown_leaving_a_battery_running_or_held_fails(idle: bool, released: bool) -> None:
    run = Run()
    run.checker.shutdown(3.0, all_idle=idle, released=released, detail="battery_1")
    assert run.only_failures() == {"shutdown_safe"}
    assert run.failed_at("shutdown_safe") == 3.0
