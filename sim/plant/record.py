"""What a replay records at every plant step, for scoring, plotting and ``--series``."""

from __future__ import annotations

import math
from array import array
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class RunRecord:
    """Per-step samples of one closed-loop run (true plant values, not what the meter showed).

    Sample i describes the interval [t_s[i], t_s[i] + dt_s[i]) with the powers held over it.
    Battery powers are AC side, + discharging (engine convention).

    What the controller saw and did is noted at each control cycle (``note_cycle``, after the
    cycle's writes) and held forward: ``meter_w[i]`` is the grid reading of the last cycle
    noted before sample i was written (when its interval ended), ``command_w[b][i]`` the last
    setpoint sent to battery b by then; NaN where there was none (no cycle yet, no valid
    reading, a battery released to its own logic).
    """

    n_batteries: int
    t_s: array[float] = field(default_factory=lambda: array("d"))
    dt_s: array[float] = field(default_factory=lambda: array("d"))
    net_w: array[float] = field(default_factory=lambda: array("d"))  # house demand, load - pv
    grid_w: array[float] = field(default_factory=lambda: array("d"))  # net - sum(battery)
    discharge_blocked: array[int] = field(default_factory=lambda: array("b"))
    battery_w: list[array[float]] = field(default_factory=list)  # one array per battery
    soc_pct: list[array[float]] = field(default_factory=list)  # one array per battery
    names: list[str] = field(default_factory=list)  # battery names, as the engine's settings
    meter_w: array[float] = field(default_factory=lambda: array("d"))  # reading, + import
    command_w: list[array[float]] = field(default_factory=list)  # one array per battery
    cycle_t_s: array[float] = field(default_factory=lambda: array("d"))  # when cycles ran
    # The reference's grid per step, once the run is scored (for the plot's worst minute).
    oracle_grid_w: Sequence[float] | None = None
    # Set once at the end of the run from the battery models:
    conversion_loss_wh: float = 0.0
    direction_changes: int = 0
    modbus_reads: int = 0
    modbus_writes: int = 0
    wall_seconds: float = 0.0
    # Scripted step events: (at_s, power_w) of each load step to score settling on.
    step_events: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.battery_w:
            self.battery_w = [array("d") for _ in range(self.n_batteries)]
        if not self.soc_pct:
            self.soc_pct = [array("d") for _ in range(self.n_batteries)]
        if not self.command_w:
            self.command_w = [array("d") for _ in range(self.n_batteries)]
        if not self.names:
            self.names = [f"battery_{i}" for i in range(1, self.n_batteries + 1)]
        self._index = {name: i for i, name in enumerate(self.names)}
        self._meter_now_w = math.nan
        self._command_now_w = [math.nan] * self.n_batteries

    def note_cycle(
        self,
        t_s: float,
        meter_w: float | None,
        commands: Mapping[str, float],
        released: Collection[str] = (),
    ) -> None:
        """A control cycle at ``t_s`` saw ``meter_w`` (None: no valid reading), sent
        ``commands`` (battery name to W, + discharging) and released ``released``; batteries
        in neither keep their last command. Held until the next cycle."""
        self.cycle_t_s.append(t_s)
        self._meter_now_w = math.nan if meter_w is None else float(meter_w)
        for name, power_w in commands.items():
            self._command_now_w[self._index[name]] = float(power_w)
        for name in released:
            self._command_now_w[self._index[name]] = math.nan

    def append(
        self,
        t_s: float,
        dt_s: float,
        net_w: float,
        battery_w: list[float],
        soc_pct: list[float],
        *,
        discharge_blocked: bool,
    ) -> None:
        self.t_s.append(t_s)
        self.dt_s.append(dt_s)
        self.net_w.append(net_w)
        self.grid_w.append(net_w - sum(battery_w))
        self.discharge_blocked.append(1 if discharge_blocked else 0)
        self.meter_w.append(self._meter_now_w)
        for i, p in enumerate(battery_w):
            self.battery_w[i].append(p)
            self.soc_pct[i].append(soc_pct[i])
            self.command_w[i].append(self._command_now_w[i])
