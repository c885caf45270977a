"""Prometheus metrics of the engine: the latest status as gauges, counters read at scrape time.

Everything goes through ``prometheus_client`` (no hand-written exposition). Conventions: base
units (watts, seconds, joules, ratios 0..1), ``_total`` counters, ``_seconds`` histograms, a
``battery`` label with the battery's name. An enum (battery state, fleet state, mode, quality)
is one 0/1 gauge per possible value, as a Prometheus state set. A value the engine does not
know this cycle is left out of the scrape, never repeated from an older cycle.

Sign convention as inside the engine: grid + = import, battery + = discharging.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from engine.core.events import Excluded, HandoverStarted, SafeHoldCause, SafeHoldEntered
from engine.core.model import Mode
from engine.core.quality import Quality
from engine.core.states import BatteryState, FleetState
from engine.core.status import FleetStatus

_JOULES_PER_WH = 3600.0
# A cycle is a few ms of loopback work to ~1 s (a battery timeout); a stall shows beyond.
CYCLE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Metric = GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily


@dataclass(frozen=True, slots=True)
class BatteryCounters:
    """One battery's Modbus driver counters (``engine.adapters.marstek.MarstekBattery``)."""

    name: str
    reads: int
    writes: int
    errors: int
    retries: int
    connects: int
    control_lost: int


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Counters kept elsewhere in the engine, read at scrape time. ``None``: MQTT is off."""

    cycles: int
    cycle_errors: int  # cycles that raised (every battery to 0 W)
    cycle_error_runs: int  # runs of such cycles: fail-safe holds for an internal error
    meter_failures: int
    batteries: tuple[BatteryCounters, ...] = ()
    mqtt_connected: bool | None = None
    mqtt_reconnects: int | None = None
    mqtt_rejected_commands: int | None = None


CountersSource = Callable[[], EngineCounters]


def _gauge(name: str, doc: str, value: float | None) -> Iterator[GaugeMetricFamily]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


def _state_set(
    name: str, doc: str, label: str, states: Iterable[str], current: str | None, **fixed: str
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[*fixed, label])
    _add_states(family, states, current, *fixed.values())
    return family


def _add_states(
    family: GaugeMetricFamily, states: Iterable[str], current: str | None, *fixed: str
) -> None:
    for state in states:
        family.add_metric([*fixed, state], 1.0 if state == current else 0.0)


class EngineMetrics(Collector):
    """The registry ``GET /metrics`` exposes; feed it every status with :meth:`observe`."""

    def __init__(
        self,
        *,
        battery_names: Iterable[str],
        counters: CountersSource | None = None,
        now: Callable[[], float] | None = None,
        version: str = "",
        process_metrics: bool = True,
    ) -> None:
        self._battery_names = tuple(battery_names)
        self._counters = counters
        self._now = now
        self._version = version
        self._status: FleetStatus | None = None
        self._stale_holds = 0
        self._exclusions: Counter[str] = Counter()
        self._handovers = 0
        # ``_created`` samples would carry wall-clock stamps; the engine keeps to its clock.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry()
        self.cycle_duration = Histogram(
            "mmbc_cycle_duration_seconds",
            "Duration of a control cycle: read every device, decide, write.",
            buckets=CYCLE_BUCKETS_S,
            registry=self.registry,
        )
        self.cycle_latency = Histogram(
            "mmbc_cycle_latency_seconds",
            "From the meter's answer to the last battery write of a cycle.",
            buckets=CYCLE_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(self)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            self.registry.register(GC_COLLECTOR)

    def observe(self, status: FleetStatus) -> None:
        """Take one cycle's status: the gauges' values, the event counters, the histograms."""
        self._status = status
        if status.cycle_duration_s is not None:
            self.cycle_duration.observe(status.cycle_duration_s)
        if status.cycle_latency_s is not None:
            self.cycle_latency.observe(status.cycle_latency_s)
        for event in status.events:
            match event:
                case SafeHoldEntered(cause=SafeHoldCause.METER_STALE):
                    self._stale_holds += 1
                case Excluded(battery=name):
                    self._exclusions[name] += 1
                case HandoverStarted():
                    self._handovers += 1

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; the names are fixed in collect()

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("mmbc_build", "The engine's version.")
        info.add_metric([], {"version": self._version})
        yield info
        yield from self._status_metrics()
        yield from self._event_counters()
        if self._counters is not None:
            yield from self._engine_counters(self._counters())

    # -- from the latest status

    def _status_metrics(self) -> Iterator[Metric]:
        s = self._status
        if s is None:
            return
        if self._now is not None:
            yield GaugeMetricFamily(
                "mmbc_last_cycle_age_seconds",
                "Time since the last completed control cycle.",
                value=max(0.0, self._now() - s.now_s),
            )
        # A stale or missing reading is left out, never shown as a value.
        yield from _gauge(
            "mmbc_grid_power_watts",
            "Grid power at the meter: + import, - export.",
            s.grid_w if s.meter_fresh else None,
        )
        yield from _gauge("mmbc_pv_power_watts", "PV production (>= 0).", s.pv_w)
        yield from _gauge(
            "mmbc_meter_reading_age_seconds",
            "Age of the meter reading the last cycle decided on.",
            s.meter_age_s,
        )
        yield from _gauge(
            "mmbc_grid_error_rms_watts",
            "RMS grid error over the last minute.",
            s.grid_rms_w if s.meter_fresh else None,
        )
        yield from _gauge(
            "mmbc_fleet_power_watts",
            "Sum of the online batteries' AC power: + discharging, - charging.",
            s.battery_power_w,
        )
        yield from _gauge(
            "mmbc_fleet_state_of_charge_ratio",
            "Capacity-weighted state of charge of the online batteries (0..1).",
            None if s.soc_pct is None else s.soc_pct / 100.0,
        )
        yield GaugeMetricFamily(
            "mmbc_discharge_blocked",
            "1 while discharging is blocked by the user.",
            value=1.0 if s.discharge_blocked else 0.0,
        )
        yield _state_set(
            "mmbc_mode", "The operating mode set by the user.", "mode", list(Mode), s.mode
        )
        yield _state_set(
            "mmbc_fleet_state",
            "The fleet state machine's state.",
            "state",
            list(FleetState),
            s.fleet_state,
        )
        qualities = [q.value for q in Quality]
        if s.quality is not None and s.quality not in qualities:
            qualities.append(s.quality)
        yield _state_set(
            "mmbc_control_quality",
            "The control quality verdict over the last minute.",
            "quality",
            qualities,
            s.quality,
        )
        if s.charge_total_wh is not None:
            yield CounterMetricFamily(
                "mmbc_charged_energy_joules",
                "Energy charged into the fleet (the batteries' lifetime counters).",
                value=s.charge_total_wh * _JOULES_PER_WH,
            )
        if s.discharge_total_wh is not None:
            yield CounterMetricFamily(
                "mmbc_discharged_energy_joules",
                "Energy discharged from the fleet (the batteries' lifetime counters).",
                value=s.discharge_total_wh * _JOULES_PER_WH,
            )
        yield from self._battery_metrics(s)

    def _battery_metrics(self, s: FleetStatus) -> Iterator[Metric]:
        labels = ["battery"]
        power = GaugeMetricFamily(
            "mmbc_battery_power_watts",
            "Battery AC power: + discharging, - charging.",
            labels=labels,
        )
        setpoint = GaugeMetricFamily(
            "mmbc_battery_setpoint_watts",
            "The power the engine commands: + discharge, - charge.",
            labels=labels,
        )
        soc = GaugeMetricFamily(
            "mmbc_battery_state_of_charge_ratio", "Battery state of charge (0..1).", labels=labels
        )
        available = GaugeMetricFamily(
            "mmbc_battery_available", "1 while the battery gives valid readings.", labels=labels
        )
        state = GaugeMetricFamily(
            "mmbc_battery_state",
            "The battery state machine's state.",
            labels=["battery", "state"],
        )
        for b in s.batteries:
            if b.power_w is not None:
                power.add_metric([b.name], b.power_w)
            if b.setpoint_w is not None:
                setpoint.add_metric([b.name], float(b.setpoint_w))
            if b.soc_pct is not None:
                soc.add_metric([b.name], b.soc_pct / 100.0)
            available.add_metric([b.name], 1.0 if b.available else 0.0)
            _add_states(state, list(BatteryState), b.state, b.name)
        yield from (power, setpoint, soc, available, state)

    # -- counted from the statuses' events

    def _event_counters(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "mmbc_handovers",
            "Make-before-break hand-overs started between batteries.",
            value=self._handovers,
        )
        exclusions = CounterMetricFamily(
            "mmbc_exclusions",
            "Times a battery was left out for not delivering what it acknowledged.",
            labels=["battery"],
        )
        for name in self._battery_names:
            exclusions.add_metric([name], self._exclusions[name])
        yield exclusions

    # -- kept elsewhere, read now

    def _engine_counters(self, c: EngineCounters) -> Iterator[Metric]:
        yield CounterMetricFamily("mmbc_cycles", "Completed control cycles.", value=c.cycles)
        yield CounterMetricFamily(
            "mmbc_cycle_errors",
            "Control cycles that failed with an internal error (every battery to 0 W).",
            value=c.cycle_errors,
        )
        yield CounterMetricFamily(
            "mmbc_meter_failures", "Meter polls that failed.", value=c.meter_failures
        )
        holds = CounterMetricFamily(
            "mmbc_fail_safe_holds",
            "Times every battery was put at 0 W: stale meter, or internal error.",
            labels=["cause"],
        )
        holds.add_metric([SafeHoldCause.METER_STALE.value], self._stale_holds)
        holds.add_metric([SafeHoldCause.INTERNAL_ERROR.value], c.cycle_error_runs)
        yield holds
        yield from self._modbus_counters(c.batteries)
        if c.mqtt_connected is not None:
            yield GaugeMetricFamily(
                "mmbc_mqtt_connected",
                "1 while connected to the MQTT broker.",
                value=1.0 if c.mqtt_connected else 0.0,
            )
        if c.mqtt_reconnects is not None:
            yield CounterMetricFamily(
                "mmbc_mqtt_reconnects",
                "Connections to the MQTT broker after the first.",
                value=c.mqtt_reconnects,
            )
        if c.mqtt_rejected_commands is not None:
            yield CounterMetricFamily(
                "mmbc_mqtt_rejected_commands",
                "MQTT commands with an invalid payload, ignored.",
                value=c.mqtt_rejected_commands,
            )

    def _modbus_counters(self, batteries: tuple[BatteryCounters, ...]) -> Iterator[Metric]:
        kinds = (
            ("reads", "Modbus read requests sent."),
            ("writes", "Modbus write requests sent."),
            ("errors", "Modbus requests and connection attempts that failed."),
            ("retries", "Modbus requests and connection attempts right after a failed one."),
            ("connects", "Modbus TCP connection attempts."),
        )
        for kind, doc in kinds:
            family = CounterMetricFamily(f"mmbc_modbus_{kind}", doc, labels=["battery"])
            for b in batteries:
                family.add_metric([b.name], getattr(b, kind))
            yield family
        lost = CounterMetricFamily(
            "mmbc_battery_control_lost",
            "Times a battery dropped RS485 control by itself (re-applied).",
            labels=["battery"],
        )
        for b in batteries:
            lost.add_metric([b.name], b.control_lost)
        yield lost


__all__ = [
    "CYCLE_BUCKETS_S",
    "BatteryCounters",
    "CountersSource",
    "EngineCounters",
    "EngineMetrics",
]
