"""Fakes the tests share: a clock the test moves, and an ideal plant around a policy.

Both stand in for what the pure core and the adapters are given (``engine.ports.Clock``; the
snapshots a controller builds). Tests of the real loop use the simulator's plant instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from engine.core.events import DecisionEvent
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.policy import MmbcPolicy
from engine.core.settings import ControlSettings


class FakeClock:
    """A clock that moves only when the test moves it (sets ``t_s``) or when slept on.

    ``sleep`` records the delay, moves the clock by it and yields to the loop once: a
    schedule of sleeps runs at once, in virtual time. Made ``gated``, every sleep first waits
    until the test calls ``open_gate`` (to hold a component in its backoff, say).
    """

    def __init__(self, start_s: float = 0.0, *, gated: bool = False) -> None:
        self.t_s = start_s
        self.sleeps: list[float] = []
        self.gate: asyncio.Event | None = asyncio.Event() if gated else None

    def now(self) -> float:
        return self.t_s

    def open_gate(self) -> None:
        """Let every sleep through, the waiting ones and those to come."""
        assert self.gate is not None, "not a gated clock"
        self.gate.set()

    async def sleep(self, seconds: float) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sleeps.append(seconds)
        self.t_s += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class FakeBattery:
    """One battery of ``IdealPlant``: it delivers exactly what it was told, some cycles late."""

    soc_pct: float
    power_w: float = 0.0  # what it delivers now (+ discharging)
    follows: bool = True  # False: acknowledges commands but delivers nothing
    online: bool = True  # False: its reads fail and the grid does not see it


@dataclass
class IdealPlant:
    """A house, its meter and ideal batteries around one policy, one cycle per ``step``.

    Each cycle: time moves by the policy's period; each battery delivers the command it was
    given ``dead_cycles`` cycles earlier (nothing when it does not follow); the meter, when a
    new reading is due (every ``meter_period_s``) and it is not frozen, shows the house's
    demand now less what the online batteries delivered ``meter_lag_cycles`` cycles earlier
    (plus ``noise_w``); the policy decides on that snapshot. A released battery is told 0 W.
    """

    settings: ControlSettings
    batteries: dict[str, FakeBattery]
    net_w: float = 0.0  # the house's demand, load - pv
    now_s: float = 1000.0
    dead_cycles: int = 1
    meter_lag_cycles: int = 0
    meter_period_s: float = 0.0  # 0: a new reading every cycle
    meter_frozen: bool = False
    mode: Mode = Mode.NORMAL
    discharge_blocked: bool = False
    grid_w: float | None = None  # the meter's reading (+ import)
    meter_updated_s: float | None = None
    plans: list[Plan] = field(default_factory=list)
    policy: MmbcPolicy = field(init=False)
    command_w: dict[str, int] = field(init=False)  # the last command each battery holds

    def __post_init__(self) -> None:
        self.policy = MmbcPolicy(self.settings)
        self.command_w = dict.fromkeys(self.batteries, 0)
        self._sent: deque[dict[str, int]] = deque(
            [dict(self.command_w)] * self.dead_cycles, maxlen=self.dead_cycles + 1
        )
        self._delivered_w: deque[float] = deque(
            [0.0] * self.meter_lag_cycles, maxlen=self.meter_lag_cycles + 1
        )

    def true_grid_w(self) -> float:
        """The grid power right now: demand less what the online batteries deliver."""
        return self.net_w - sum(b.power_w for b in self.batteries.values() if b.online)

    def step(self, net_w: float | None = None, *, noise_w: float = 0.0) -> Plan:
        """One cycle (with the house's demand set to ``net_w`` first, if given)."""
        self.now_s += self.settings.loop_period_s
        if net_w is not None:
            self.net_w = net_w
        due = self._sent.popleft() if self.dead_cycles else self.command_w
        for name, battery in self.batteries.items():
            battery.power_w = float(due[name]) if battery.follows else 0.0
        self._delivered_w.append(sum(b.power_w for b in self.batteries.values() if b.online))
        seen_w = self._delivered_w.popleft()
        new_reading = self.meter_updated_s is None or (
            self.now_s - self.meter_updated_s >= self.meter_period_s - 1e-9
        )
        if new_reading and not self.meter_frozen:
            self.grid_w = self.net_w - seen_w + noise_w
            self.meter_updated_s = self.now_s
        plan = self.policy.decide(self.snapshot())
        self.plans.append(plan)
        self.command_w.update(plan.setpoints)
        for name in plan.release:
            self.command_w[name] = 0
        self._sent.append(dict(self.command_w))
        return plan

    def run(self, cycles: int, net_w: float | None = None) -> Plan:
        """``cycles`` cycles, the first with the demand set to ``net_w``; the last plan."""
        plan = self.step(net_w)
        for _ in range(cycles - 1):
            plan = self.step()
        return plan

    def snapshot(self) -> Snapshot:
        return Snapshot(
            now_s=self.now_s,
            grid_w=self.grid_w,
            meter_updated_s=self.meter_updated_s,
            batteries=tuple(
                BatteryTelemetry(n, online=b.online, soc_pct=b.soc_pct, power_w=b.power_w)
                for n, b in self.batteries.items()
            ),
            mode=self.mode,
            discharge_blocked=self.discharge_blocked,
        )

    def events(self) -> list[DecisionEvent]:
        return [e for p in self.plans for e in p.events]
