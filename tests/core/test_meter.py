"""MeterTracker: freshness from the body's changes, availability changes reported once."""

from __future__ import annotations

from engine.adapters.homewizard_data import parse_data
from engine.core.meter import Availability, MeterTracker, P1Reading


def _reading(power_w: float, counter: float = 1.0) -> P1Reading:
    return parse_data({"active_power_w": power_w, "total_power_import_kwh": counter})


def test_tracker_starts_empty() -> None:
    tracker = MeterTracker()
    assert not tracker.online
    assert tracker.grid_w is None
    assert tracker.updated_s is None
    assert tracker.age_s(10.0) is None


def test_tracker_keeps_updated_s_for_an_identical_body() -> None:
    tracker = MeterTracker()
    tracker.update(_reading(100.0), 1.0)
    tracker.update(_reading(100.0), 2.0)
    assert tracker.updated_s == 1.0
    assert tracker.polled_s == 2.0
    tracker.update(_reading(100.0, counter=1.001), 3.0)  # same power, new body: alive
    assert tracker.updated_s == 3.0


def test_tracker_reports_each_availability_change_once() -> None:
    tracker = MeterTracker("grid")
    assert tracker.update(_reading(100.0), 1.0) is Availability.CONNECTED
    changes = [tracker.failed(float(t)) for t in range(2, 7)]
    assert changes == [Availability.LOST, None, None, None, None]
    assert not tracker.online
    assert tracker.grid_w == 100.0  # last valid value kept; staleness via updated_s/online
    changes = [tracker.update(_reading(float(t)), float(t)) for t in range(7, 10)]
    assert changes == [Availability.RETURNED, None, None]
    assert tracker.online


def test_tracker_reports_lost_when_never_reached() -> None:
    tracker = MeterTracker()
    assert tracker.failed(0.0) is Availability.LOST
    assert tracker.failed(1.0) is None
    assert not tracker.online
