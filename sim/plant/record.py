"""What a replay records at every plant step, for scoring and plotting."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass
class RunRecord:
    """Per-step samples of one closed-loop run (true plant values, not what the meter showed).

    Sample i describes the interval [t_s[i], t_s[i] + dt_s[i]) with the powers held over it.
    Battery powers are AC side, + discharging (engine convention).
    """

    n_batteries: int
    t_s: array[float] = field(default_factory=lambda: array("d"))
    dt_s: array[float] = field(default_factory=lambda: array("d"))
    net_w: array[float] = field(default_factory=lambda: array("d"))  # house demand, load - pv
    grid_w: array[float] = field(default_factory=lambda: array("d"))  # net - sum(battery)
    discharge_blocked: array[int] = field(default_factory=lambda: array("b"))
    battery_w: list[array[float]] = field(default_factory=list)  # one array per battery
    soc_pct: list[array[float]] = field(default_factory=list)  # one array per battery
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
        for i, p in enumerate(battery_w):
            self.battery_w[i].append(p)
            self.soc_pct[i].append(soc_pct[i])
