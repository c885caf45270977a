"""The plant: the house (trace + scripted events), the batteries, the meters, and faults.

``World.advance`` moves simulated time by one step. The same world runs under the fast
in-process replay and behind the real sockets (``mmbc-sim serve``, ``--wire``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.core.model import Plan, Snapshot
from engine.core.policies import Policy
from sim.plant.battery import VenusE
from sim.plant.events import EventTimeline
from sim.plant.firmware import VenusFirmware
from sim.plant.meter import KwhMeterModel, P1MeterModel
from sim.plant.params import BATTERY_FAULTS, METER_FAULTS, TRANSPORT_FAULTS, Fault, FaultKind
from sim.plant.record import RunRecord
from sim.plant.traces import Trace

# a scenario describes the plant; it is read, never imported back
if TYPE_CHECKING:
    from sim.scenario import Scenario

PLANT_STEP_S = 0.5


def battery_name(index: int) -> str:
    """1-based battery index to the name used by the engine's configuration."""
    return f"battery_{index}"


@dataclass(slots=True)
class ActiveFault:
    fault: Fault
    until_s: float


class World:
    """Everything outside the controller, advanced in fixed plant steps."""

    def __init__(self, scenario: Scenario, *, with_pv_meter: bool = True) -> None:
        self.scenario = scenario
        self.trace: Trace = scenario.load_trace()
        self.events = EventTimeline(scenario.events)
        self.duration_s = scenario.duration_s
        self.firmwares: list[VenusFirmware] = []
        for i, b in enumerate(scenario.batteries, start=1):
            model = VenusE(b.params, b.soc_pct, battery_name(i))
            self.firmwares.append(VenusFirmware(model))
        # The noise seed is [meter] seed, which defaults to the scenario's seed.
        self.meter = P1MeterModel(scenario.meter)
        self.pv_meter: KwhMeterModel | None = (
            KwhMeterModel(scenario.meter, scenario.meter.seed + 1)
            if scenario.pv_meter and with_pv_meter
            else None
        )
        self._names = [battery_name(i) for i in range(1, len(self.firmwares) + 1)]
        self.record = RunRecord(n_batteries=len(self.firmwares))
        self.record.step_events = list(self.events.step_times())
        self._faults = sorted(scenario.faults, key=lambda f: f.at_s)
        self._next_fault = 0
        self.active_faults: list[ActiveFault] = []
        self.fault_log: list[tuple[float, str, str]] = []  # (t, "start"/"end", kind)
        self._frozen_sample_s: float | None = None  # what a frozen dongle keeps serving
        self.now_s = 0.0

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> list[str]:
        return self._names

    def discharge_blocked_at(self, t_s: float) -> bool:
        return any(start <= t_s < start + length for start, length in self.scenario.blocks)

    def net_at(self, t_s: float) -> float:
        return self.trace.net_at(t_s) + self.events.extra_w_at(t_s)

    def fault_active(self, kind: FaultKind, battery: int | None = None) -> bool:
        return any(
            a.fault.kind == kind and (battery is None or a.fault.battery == battery)
            for a in self.active_faults
        )

    def meter_fault(self) -> FaultKind | None:
        for a in self.active_faults:
            if a.fault.kind in METER_FAULTS:
                return a.fault.kind
        return None

    def meter_sample_s(self, now_s: float) -> float | None:
        """Ground truth of a P1 poll at ``now_s``: the instant its reading describes.

        None when the meter serves no valid reading (outage, HTTP error, garbage, API
        disabled, or no sample yet); a frozen dongle keeps describing the same instant.
        """
        fault = self.meter.fault
        if fault == "frozen":
            return self._frozen_sample_s
        if fault is not None:
            return None
        sample = self.meter.latest(now_s)
        return None if sample is None else sample.at_s

    # ------------------------------------------------------------------ time
    def advance(self, dt_s: float) -> None:
        """Apply due faults, then move the plant from ``now_s`` to ``now_s + dt_s``."""
        t = self.now_s
        self._update_faults(t)
        net = self.net_at(t)
        # The meter samples the instantaneous grid power at the start of the step.
        inst = [fw.battery.ac_power_w for fw in self.firmwares]
        self.meter.observe(t, net - sum(inst))
        if self.pv_meter is not None:
            self.pv_meter.observe_pv(t, max(0.0, self.trace.pv_at(t)))
        means = [fw.battery.advance(t, dt_s) for fw in self.firmwares]
        socs = [fw.battery.soc_pct for fw in self.firmwares]
        self.record.append(
            t, dt_s, net, means, socs, discharge_blocked=self.discharge_blocked_at(t)
        )
        self.now_s = t + dt_s

    def finish(self) -> RunRecord:
        rec = self.record
        rec.conversion_loss_wh = sum(fw.battery.conversion_loss_wh for fw in self.firmwares)
        rec.direction_changes = sum(fw.battery.direction_changes for fw in self.firmwares)
        return rec

    # ------------------------------------------------------------------ faults
    def _update_faults(self, t: float) -> None:
        still: list[ActiveFault] = []
        for a in self.active_faults:
            if t >= a.until_s:
                self._end_fault(a.fault, t)
            else:
                still.append(a)
        self.active_faults = still
        while self._next_fault < len(self._faults) and self._faults[self._next_fault].at_s <= t:
            fault = self._faults[self._next_fault]
            self._next_fault += 1
            self.active_faults.append(ActiveFault(fault, fault.at_s + fault.duration_s))
            self._start_fault(fault, t)

    def _firmware(self, fault: Fault) -> VenusFirmware | None:
        if fault.battery is None or not 1 <= fault.battery <= len(self.firmwares):
            return None
        return self.firmwares[fault.battery - 1]

    def _start_fault(self, fault: Fault, t: float) -> None:
        self.fault_log.append((t, "start", fault.kind))
        fw = self._firmware(fault)
        if fault.kind in METER_FAULTS:
            self.meter.respond_data(t)  # a frozen dongle keeps serving its latest body
            sample = self.meter.latest(t)
            self._frozen_sample_s = None if sample is None else sample.at_s
            self.meter.set_fault(fault.kind)
        elif fault.kind in BATTERY_FAULTS and fw is not None:
            if fault.kind == FaultKind.CONTROL_MODE_LOST:
                fw.lose_control_mode()
            elif fault.kind == FaultKind.BATTERY_REBOOT:
                fw.reboot(t, fault.duration_s)  # silent while it boots, then registers reset
            elif fault.kind == FaultKind.BATTERY_NOT_FOLLOWING:
                fw.set_not_following(True)
            elif fault.kind == FaultKind.SOC_GARBAGE:
                fw.set_soc_garbage(True)
            # offline / stall / exception act at the transport (see links and servers)

    def _end_fault(self, fault: Fault, t: float) -> None:
        self.fault_log.append((t, "end", fault.kind))
        fw = self._firmware(fault)
        if fault.kind in METER_FAULTS:
            self.meter.set_fault(None)
        elif fw is not None:
            if fault.kind == FaultKind.BATTERY_NOT_FOLLOWING:
                fw.set_not_following(False)
            elif fault.kind == FaultKind.SOC_GARBAGE:
                fw.set_soc_garbage(False)

    def transport_fault(self, battery_index: int) -> FaultKind | None:
        """The transport-level fault of a battery (1-based), if any: offline, stall, exception."""
        for a in self.active_faults:
            if a.fault.battery == battery_index and a.fault.kind in TRANSPORT_FAULTS:
                return a.fault.kind
        fw = self.firmwares[battery_index - 1]
        if fw.offline_until_s > self.now_s:
            return FaultKind.BATTERY_OFFLINE
        return None


class InjectedEngineError(RuntimeError):
    """What an ``engine_error`` fault raises in the control cycle (an unexpected bug)."""


class ErrorInjectingPolicy:
    """A policy that raises ``InjectedEngineError`` while an ``engine_error`` fault is active.

    The error is raised before the wrapped policy sees the snapshot, as a cycle that fails
    early would; the engine's runtime must then put every battery at 0 W and run on.
    """

    def __init__(self, policy: Policy, world: World) -> None:
        self.policy = policy
        self.world = world
        self.name = policy.name
        self.period_s = policy.period_s

    def decide(self, snap: Snapshot) -> Plan:
        if self.world.fault_active(FaultKind.ENGINE_ERROR):
            msg = f"injected engine error at {snap.now_s:.1f} s"
            raise InjectedEngineError(msg)
        return self.policy.decide(snap)
