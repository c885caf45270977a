"""The plant: the house (trace + scripted events), the batteries, the meters, and faults.

Time is exact, not stepped. ``World.advance_to(t)`` integrates the plant up to ``t``, crossing
every instant at which something shared happens on its own: a meter sample (the meter then
sees the true grid power of that instant), a change of the trace, a fault starting or ending,
a discharge block, and the record's grid of ``RECORD_STEP_S`` (the scoring's samples). Each
battery is integrated on its own up to the instant it is read or written
(``World.battery_at``), so a command takes effect at the very instant it was written and a
read sees the power of that instant. The control cycle can therefore fall at any phase
against the meter's refresh, with the daemon's real gaps between Modbus requests, and the
in-process replay, ``--wire`` and ``mmbc-sim serve`` all run this same world.
"""

from __future__ import annotations

import math
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

RECORD_STEP_S = 0.5  # the record's grid: the scoring's samples are means over these cells
_EPS_S = 1e-9  # instants closer than this are the same (float sums of whole steps)


def battery_name(index: int) -> str:
    """1-based battery index to the name used by the engine's configuration."""
    return f"battery_{index}"


@dataclass(slots=True)
class ActiveFault:
    fault: Fault
    until_s: float


class World:
    """Everything outside the controller, on exact time (see the module docstring).

    ``horizon_s`` ends the record: interactions later than it (the controller's shutdown
    after the scenario's end) see the plant as it was then, and nothing more is scored.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        with_pv_meter: bool = True,
        horizon_s: float | None = None,
    ) -> None:
        self.scenario = scenario
        self.trace: Trace = scenario.load_trace()
        self.events = EventTimeline(scenario.events)
        self.duration_s = scenario.duration_s
        self.horizon_s = scenario.duration_s if horizon_s is None else horizon_s
        self.firmwares: list[VenusFirmware] = []
        for i, b in enumerate(scenario.batteries, start=1):
            model = VenusE(b.params, b.soc_pct, battery_name(i))
            self.firmwares.append(VenusFirmware(model))
        self._batteries = [fw.battery for fw in self.firmwares]  # a firmware keeps its battery
        # The noise seed is [meter] seed, which defaults to the scenario's seed.
        self.meter = P1MeterModel(scenario.meter)
        self.pv_meter: KwhMeterModel | None = (
            KwhMeterModel(scenario.meter, scenario.meter.seed + 1)
            if scenario.pv_meter and with_pv_meter
            else None
        )
        self._names = [battery_name(i) for i in range(1, len(self.firmwares) + 1)]
        self.record = RunRecord(n_batteries=len(self.firmwares), names=list(self._names))
        self.record.step_events = list(self.events.step_times())
        self._faults = sorted(scenario.faults, key=lambda f: f.at_s)
        self._next_fault = 0
        self._next_fault_s = self._faults[0].at_s if self._faults else math.inf
        self.active_faults: list[ActiveFault] = []
        self.fault_log: list[tuple[float, str, str]] = []  # (t, "start"/"end", kind)
        self._frozen_sample_s: float | None = None  # what a frozen dongle keeps serving
        # Time: the latest instant the world was brought to, the last shared instant crossed,
        # and how far each battery is integrated (between the two).
        self.now_s = 0.0
        self._crossed_s = 0.0
        self._battery_s = [0.0] * len(self.firmwares)
        # The record cell being filled: its start, and the energy in it so far (W*s).
        self._cell_s = 0.0
        self._cell_net_ws = 0.0
        self._cell_battery_ws = [0.0] * len(self.firmwares)
        self._net_w = 0.0  # the house's demand held since the last instant crossed
        # The shared instants still to come, by kind (each list sorted, consumed in order, and
        # ended by inf, so the next one is always there to compare with).
        self._fixed = [
            *sorted(
                {
                    *(f.at_s for f in self._faults),
                    *(f.at_s + f.duration_s for f in self._faults),
                    *(s for block in scenario.blocks for s in (block[0], block[0] + block[1])),
                    self.horizon_s if math.isfinite(self.horizon_s) else 0.0,
                }
            ),
            math.inf,
        ]
        self._fixed_next = sum(1 for s in self._fixed if s <= 0.0)
        self._trace_times = (*self.trace.times_s, math.inf)  # (the trace is loaded once)
        self._trace_next = 1  # index of the next trace row (row 0 starts at 0)
        self._grid_s = 0.0  # the next instant of the record's grid (see _next_instant)
        self._open(0.0)
        self._next_s = self._next_instant()

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> list[str]:
        return self._names

    def discharge_blocked_at(self, t_s: float) -> bool:
        blocks = self.scenario.blocks
        return bool(blocks) and any(start <= t_s < start + length for start, length in blocks)

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
    def advance_to(self, t_s: float) -> None:
        """Integrate the shared plant up to ``t_s`` (at most ``horizon_s``); never backwards.

        Batteries are integrated as far as the last shared instant crossed; ``battery_at``
        and ``settle`` bring them the rest of the way.
        """
        if self.now_s <= t_s < self._next_s - _EPS_S and t_s <= self.horizon_s:
            # The common case: nothing shared happens before t_s.
            self.now_s = t_s
            return
        t_s = min(t_s, self.horizon_s)
        if t_s < self.now_s - _EPS_S:
            msg = f"the world is at {self.now_s} s; it cannot go back to {t_s} s"
            raise ValueError(msg)
        while self._next_s <= t_s + _EPS_S:
            self._cross(self._next_s)
        self.now_s = max(self.now_s, t_s)

    def battery_at(self, index: int, t_s: float) -> VenusFirmware:
        """The firmware of battery ``index`` (1-based) as it is at ``t_s``: read or write it."""
        if self.now_s <= t_s < self._next_s - _EPS_S and t_s <= self.horizon_s:
            self.now_s = t_s  # advance_to's common case (a request between shared instants)
        else:
            self.advance_to(t_s)
        # _integrate_battery(index - 1, now_s), inline: this runs at every Modbus request.
        i = index - 1
        from_s = self._battery_s[i]
        dt_s = self.now_s - from_s
        if dt_s > _EPS_S:
            mean_w = self._batteries[i].advance(from_s, dt_s)
            self._cell_battery_ws[i] += mean_w * dt_s
            self._battery_s[i] = self.now_s
        return self.firmwares[i]

    def settle(self) -> None:
        """Every battery integrated up to ``now_s`` (the ground truth of this instant)."""
        for i in range(len(self.firmwares)):
            self._integrate_battery(i, self.now_s)

    def finish(self) -> RunRecord:
        """The record up to ``horizon_s`` (the run's end), with the batteries' totals."""
        if math.isfinite(self.horizon_s):
            self.advance_to(self.horizon_s)
        rec = self.record
        rec.conversion_loss_wh = sum(fw.battery.conversion_loss_wh for fw in self.firmwares)
        rec.direction_changes = sum(fw.battery.direction_changes for fw in self.firmwares)
        return rec

    def _next_instant(self) -> float:
        after_s = self._crossed_s
        grid_s = self._grid_s = (math.floor(after_s / RECORD_STEP_S + _EPS_S) + 1) * RECORD_STEP_S
        interval_s = self.meter.params.interval_s
        sample_s = (math.floor(after_s / interval_s + _EPS_S) + 1) * interval_s
        trace_s = self._trace_times[self._trace_next]
        fixed_s = self._fixed[self._fixed_next]
        return min(grid_s, sample_s, trace_s, fixed_s)

    def _cross(self, t_s: float) -> None:
        """Everything shared that happens at ``t_s``: the batteries and the house get there,
        a full record cell is written, then faults, the house and the meters at ``t_s``."""
        # _integrate_battery(i, t_s) for each battery, inline (as in battery_at)
        battery_s = self._battery_s
        cell_battery_ws = self._cell_battery_ws
        for i, battery in enumerate(self._batteries):
            from_s = battery_s[i]
            dt_s = t_s - from_s
            if dt_s > _EPS_S:
                mean_w = battery.advance(from_s, dt_s)
                cell_battery_ws[i] += mean_w * dt_s
                battery_s[i] = t_s
        self._cell_net_ws += self._net_w * (t_s - self._crossed_s)
        self._crossed_s = t_s
        # On the grid: the grid instant _next_instant aimed at (the common case), or any other
        # instant that falls on the grid.
        on_grid = (
            t_s == self._grid_s or abs(t_s / RECORD_STEP_S - round(t_s / RECORD_STEP_S)) < 1e-6
        )
        if on_grid or t_s >= self.horizon_s:
            self._flush_cell(t_s)
        limit_s = t_s + _EPS_S
        times = self._trace_times
        while times[self._trace_next] <= limit_s:
            self._trace_next += 1
        while self._fixed[self._fixed_next] <= limit_s:
            self._fixed_next += 1
        if t_s < self.horizon_s:
            self._open(t_s)
            self._next_s = self._next_instant()
        else:
            self._next_s = math.inf

    def _open(self, t_s: float) -> None:
        """The plant from ``t_s`` on: due faults, the house's demand, the meters' view."""
        if self.active_faults or self._next_fault_s <= t_s:  # (else nothing to update)
            self._update_faults(t_s)
        self._net_w = self.trace.net_at(t_s) + self.events.extra_w_at(t_s)  # net_at(t_s)
        # The meter samples the instantaneous grid power at its sample instants.
        inst_w = 0.0  # sum() of the batteries' powers: the same additions, in the same order
        for battery in self._batteries:
            inst_w += battery.ac_power_w
        self.meter.observe(t_s, self._net_w - inst_w)
        if self.pv_meter is not None:
            self.pv_meter.observe_pv(t_s, max(0.0, self.trace.pv_at(t_s)))

    def _integrate_battery(self, i: int, t_s: float) -> None:
        from_s = self._battery_s[i]
        dt_s = t_s - from_s
        if dt_s <= _EPS_S:
            return
        mean_w = self._batteries[i].advance(from_s, dt_s)
        self._cell_battery_ws[i] += mean_w * dt_s
        self._battery_s[i] = t_s

    def _flush_cell(self, end_s: float) -> None:
        start_s = self._cell_s
        dt_s = end_s - start_s
        if dt_s <= _EPS_S:
            return
        self.record.append(
            start_s,
            dt_s,
            self._cell_net_ws / dt_s,
            [ws / dt_s for ws in self._cell_battery_ws],
            [battery.soc_pct for battery in self._batteries],
            # (no call without blocks: most scenarios have none)
            discharge_blocked=bool(self.scenario.blocks) and self.discharge_blocked_at(start_s),
        )
        self._cell_s = end_s
        self._cell_net_ws = 0.0
        self._cell_battery_ws = [0.0] * len(self.firmwares)

    # ------------------------------------------------------------------ faults
    def _update_faults(self, t: float) -> None:
        if not self.active_faults and self._next_fault_s > t:
            return  # none active, none due (the common case)
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
            self._next_fault_s = (
                self._faults[self._next_fault].at_s
                if self._next_fault < len(self._faults)
                else math.inf
            )
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
        self.learns_meter_phase = policy.learns_meter_phase

    def decide(self, snap: Snapshot) -> Plan:
        if self.world.fault_active(FaultKind.ENGINE_ERROR):
            msg = f"injected engine error at {snap.now_s:.1f} s"
            raise InjectedEngineError(msg)
        return self.policy.decide(snap)
