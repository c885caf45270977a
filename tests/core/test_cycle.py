"""The cycle both the daemon and the simulator run: snapshot, fail-safe decision, write jobs."""

from __future__ import annotations

from engine.adapters.homewizard_data import parse_data
from engine.core.cycle import Command, ControlCycle, Release, UserInputs
from engine.core.events import SafeHoldCause, SafeHoldEntered
from engine.core.meter import MeterTracker
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.states import FleetState

NAMES = ("battery_1", "battery_2")


class Scripted:
    """A policy that returns the plans it is given, or raises."""

    name = "scripted"
    period_s = 1.0
    learns_meter_phase = False

    def __init__(self, *plans: Plan | Exception) -> None:
        self.plans = list(plans)
        self.seen: list[Snapshot] = []

    def decide(self, snap: Snapshot) -> Plan:
        self.seen.append(snap)
        plan = self.plans.pop(0)
        if isinstance(plan, Exception):
            raise plan
        return plan


def plan(setpoints: dict[str, int], release: tuple[str, ...] = ()) -> Plan:
    return Plan(setpoints, FleetState.NORMAL, {}, release=release)


def snap(now_s: float = 0.0) -> Snapshot:
    return Snapshot(now_s=now_s, grid_w=0.0, meter_updated_s=now_s, batteries=())


def test_setpoints_become_commands_in_configured_order() -> None:
    core = ControlCycle(Scripted(plan({"battery_2": -300, "battery_1": 500})), NAMES)
    result = core.run(snap())
    assert result.jobs == (Command("battery_1", 500), Command("battery_2", -300))
    assert result.failure is None


def test_a_battery_without_a_setpoint_gets_no_write() -> None:
    core = ControlCycle(Scripted(plan({"battery_1": 0})), NAMES)
    assert core.run(snap()).jobs == (Command("battery_1", 0),)


def test_release_goes_out_once_until_the_battery_is_commanded_again() -> None:
    released = plan({}, release=NAMES)
    core = ControlCycle(Scripted(released, released, plan({"battery_1": 100}), released), NAMES)
    assert core.run(snap(0.0)).jobs == (Release("battery_1"), Release("battery_2"))
    assert core.run(snap(1.0)).jobs == ()
    assert core.run(snap(2.0)).jobs == (Command("battery_1", 100),)
    assert core.run(snap(3.0)).jobs == (Release("battery_1"),)  # battery_2 is still released


def test_a_decision_that_raises_puts_every_battery_at_zero_and_says_why() -> None:
    core = ControlCycle(Scripted(ZeroDivisionError("policy bug")), NAMES)
    result = core.run(snap())
    assert result.jobs == (Command("battery_1", 0), Command("battery_2", 0))
    assert result.plan.safe_hold
    assert result.plan.events == (SafeHoldEntered(SafeHoldCause.INTERNAL_ERROR),)
    assert result.failure is not None
    assert "ZeroDivisionError: policy bug" in result.failure
    assert isinstance(result.error, ZeroDivisionError)


def test_the_snapshot_carries_a_reading_only_while_the_meter_answers() -> None:
    tracker = MeterTracker()
    tracker.update(parse_data({"active_power_w": 420}), 3.0)
    tel = (BatteryTelemetry("battery_1", online=True, soc_pct=50.0, power_w=0.0),)
    inputs = UserInputs(mode=Mode.HOLD, discharge_blocked=True)
    fresh = ControlCycle.snapshot(4.0, tracker, tel, inputs, pv_w=1200.0)
    assert (fresh.grid_w, fresh.meter_updated_s, fresh.now_s) == (420.0, 3.0, 4.0)
    assert (fresh.mode, fresh.discharge_blocked, fresh.pv_w) == (Mode.HOLD, True, 1200.0)
    assert fresh.batteries == tel
    tracker.failed(5.0)
    lost = ControlCycle.snapshot(5.0, tracker, tel, inputs)
    assert lost.grid_w is None  # kept by the tracker, but not handed to the decision
    assert lost.meter_updated_s == 3.0
