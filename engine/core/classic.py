"""The ``classic`` policy: upstream MMBC v1.1's algorithm, reproduced as the bench baseline.

3 s loop; setpoint = P1 + measured battery power; ±30 W deadband (all idle inside it);
one battery below 2500 W chosen by SoC (charge: lowest, discharge: highest), the priority
list (one for both directions, as upstream) cached for 5 minutes unless a cached battery
becomes ineligible; above 2500 W ``power // 2500 + 1`` batteries with an equal split
(``power // count``), capped at 2500 W each.

Faithful on purpose, gaps included: it reuses the last meter value however old it is, and
has no rate limit, filter or hysteresis. Only the hold mode (discharge blocked) and the
SoC eligibility of upstream are honoured, and one safety limit it lacks: upstream knows no
per-battery power limit, but a setpoint beyond a battery's configured ``max_charge_w`` /
``max_discharge_w`` is never sent (it is cut to the limit).
"""

from __future__ import annotations

from engine.core.battery_fsm import BatteryFsm
from engine.core.events import DecisionEvent
from engine.core.fleet_fsm import FleetFsm
from engine.core.model import Mode, Plan, Snapshot
from engine.core.settings import ControlSettings
from engine.core.states import FleetState

CLASSIC_PERIOD_S = 3.0
CLASSIC_DEADBAND_W = 30
CLASSIC_CACHE_S = 300.0
CLASSIC_LIMIT_W = 2500


class ClassicPolicy:
    """Upstream MMBC v1.1, cycle for cycle."""

    name = "classic"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.period_s = CLASSIC_PERIOD_S
        self.learns_meter_phase = False  # upstream sleeps a fixed 3 s
        self.fleet = FleetFsm()
        self._fsms = {
            b.name: BatteryFsm(b.name, min_soc_pct=settings.min_soc_pct, max_soc_pct=100.0)
            for b in settings.batteries
        }
        self._limits = {b.name: (b.max_charge_w, b.max_discharge_w) for b in settings.batteries}
        self._last_grid_w = 0.0  # upstream: the last known value, reused when the meter fails
        self._cache: tuple[tuple[str, ...], float] = ((), float("-inf"))

    def decide(self, snap: Snapshot) -> Plan:
        if snap.grid_w is not None:
            self._last_grid_w = snap.grid_w
        events: list[DecisionEvent] = []
        seen = {tel.name: tel for tel in snap.batteries}
        blocked = snap.discharge_blocked or snap.mode is Mode.HOLD
        soc: dict[str, float] = {}
        measured = 0.0
        for name, fsm in self._fsms.items():
            fsm.discharge_blocked = blocked
            fsm.observe(seen.get(name), snap.now_s, events, checks=False)
            tel = fsm.telemetry
            if fsm.available and tel is not None:
                assert tel.soc_pct is not None
                assert tel.power_w is not None
                soc[name] = tel.soc_pct
                measured += tel.power_w

        # Upstream reuses the last meter value however old it is: never a fail-safe hold.
        self.fleet.tick(
            snap.mode, discharge_blocked=snap.discharge_blocked, meter_fresh=True, events=events
        )
        now = snap.now_s
        if self.fleet.state is FleetState.SELFCONTROL:
            for name in soc:
                self._fsms[name].command(0, now)
            return self._plan({}, events, release=tuple(soc))
        adjusted = self._last_grid_w + measured
        setpoints = dict.fromkeys(soc, 0)
        discharging = adjusted > 0
        if abs(adjusted) <= CLASSIC_DEADBAND_W:
            pass  # upstream checks the deadband first: all idle, in every mode (charge too)
        elif self.fleet.state is FleetState.CHARGE:
            setpoints = dict.fromkeys(soc, -CLASSIC_LIMIT_W)
        elif not (discharging and self.fleet.state is FleetState.HOLD):  # hold: all idle
            power = abs(adjusted)
            if discharging:
                eligible = [n for n, s in soc.items() if s > self.settings.min_soc_pct]
            else:
                eligible = [n for n, s in soc.items() if s < 100.0]
            order = self._priority(now, eligible, soc, discharging)
            count = min(int(power // CLASSIC_LIMIT_W) + 1, len(order))
            if count:
                share = min(power // count, CLASSIC_LIMIT_W)  # upstream: floor division
                sign = 1 if discharging else -1
                for name in order[:count]:
                    setpoints[name] = int(sign * share)
        out = {
            n: self._fsms[n].command(self._within_limits(n, p), now) for n, p in setpoints.items()
        }
        return self._plan(out, events)

    def _within_limits(self, name: str, power_w: int) -> int:
        max_charge_w, max_discharge_w = self._limits[name]
        return max(-max_charge_w, min(max_discharge_w, power_w))

    def _priority(
        self, now: float, eligible: list[str], soc: dict[str, float], discharging: bool
    ) -> tuple[str, ...]:
        # Upstream keeps one list for both directions and reuses it while it is not empty,
        # younger than 5 minutes and every battery on it is eligible now.
        cached, chosen_s = self._cache
        if cached and now - chosen_s < CLASSIC_CACHE_S and all(n in eligible for n in cached):
            return cached
        order = tuple(sorted(eligible, key=lambda n: soc[n], reverse=discharging))
        self._cache = (order, now)
        return order

    def _plan(
        self,
        setpoints: dict[str, int],
        events: list[DecisionEvent],
        release: tuple[str, ...] = (),
    ) -> Plan:
        return Plan(
            setpoints=setpoints,
            fleet_state=self.fleet.state,
            battery_states={n: f.state for n, f in self._fsms.items()},
            events=tuple(events),
            release=release,
        )
