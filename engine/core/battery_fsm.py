"""Per-battery state machine: what one battery is doing and why, as data.

The continuous setpoint is computed elsewhere (``allocate``); this machine records the
battery's discrete state and its guards refuse what must never happen (charging a full
battery, discharging an empty or blocked one), so a bug upstream cannot become a command.
"""

from __future__ import annotations

from typing import Any, Final

from transitions import Machine

from engine.core.states import BatteryState

_ANY_AVAILABLE: Final = [
    BatteryState.IDLE,
    BatteryState.CHARGING,
    BatteryState.DISCHARGING,
    BatteryState.BLOCKED,
    BatteryState.INELIGIBLE,
]

# The transition table is reviewed like code and rendered in docs/state-machines.md.
BATTERY_TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": "lose", "source": _ANY_AVAILABLE, "dest": BatteryState.UNAVAILABLE},
    {"trigger": "recover", "source": BatteryState.UNAVAILABLE, "dest": BatteryState.IDLE},
    {
        "trigger": "charge",
        "source": _ANY_AVAILABLE,
        "dest": BatteryState.CHARGING,
        "conditions": "charge_allowed",
    },
    {
        "trigger": "discharge",
        "source": _ANY_AVAILABLE,
        "dest": BatteryState.DISCHARGING,
        "conditions": "discharge_allowed",
    },
    {"trigger": "rest", "source": _ANY_AVAILABLE, "dest": BatteryState.IDLE},
    {"trigger": "block", "source": _ANY_AVAILABLE, "dest": BatteryState.BLOCKED},
    {"trigger": "disqualify", "source": _ANY_AVAILABLE, "dest": BatteryState.INELIGIBLE},
]


class BatteryFsm:
    """One battery's discrete state. Triggers are attached by ``transitions``."""

    state: BatteryState

    # Declared so mypy sees exactly what exists; ``transitions`` replaces them.
    def lose(self) -> bool:
        raise NotImplementedError

    def recover(self) -> bool:
        raise NotImplementedError

    def charge(self) -> bool:
        raise NotImplementedError

    def discharge(self) -> bool:
        raise NotImplementedError

    def rest(self) -> bool:
        raise NotImplementedError

    def block(self) -> bool:
        raise NotImplementedError

    def disqualify(self) -> bool:
        raise NotImplementedError

    def __init__(self, name: str, *, min_soc_pct: float, max_soc_pct: float) -> None:
        self.name = name
        self.min_soc_pct = min_soc_pct
        self.max_soc_pct = max_soc_pct
        self.soc_pct: float | None = None
        self.discharge_blocked = False
        self._machine = Machine(
            model=self,
            states=BatteryState,
            transitions=BATTERY_TRANSITIONS,
            initial=BatteryState.UNAVAILABLE,
            auto_transitions=False,
            model_override=True,
            ignore_invalid_triggers=False,
        )

    # Not ``may_charge``: ``transitions`` binds ``may_<trigger>`` itself and, with
    # model_override, replaces a model method of that name; the guard then calls itself.
    def charge_allowed(self) -> bool:
        """Guard: charging only below the max SoC."""
        return self.soc_pct is not None and self.soc_pct < self.max_soc_pct

    def discharge_allowed(self) -> bool:
        """Guard: discharging only above the min SoC and never while blocked."""
        return (
            self.soc_pct is not None
            and self.soc_pct > self.min_soc_pct
            and not self.discharge_blocked
        )

    @property
    def available(self) -> bool:
        return self.state is not BatteryState.UNAVAILABLE

    def follow(self, power_w: int, *, reason: str | None = None) -> int:
        """Move to the state matching ``power_w`` (+ discharge); return the power allowed.

        A direction the guards refuse yields 0 W: the battery rests, is blocked or is
        ineligible, never commanded against its limits.
        """
        if power_w < 0:
            if self.charge_allowed():
                self._enter(BatteryState.CHARGING, self.charge)
                return power_w
            self._enter(BatteryState.INELIGIBLE, self.disqualify)
            return 0
        if power_w > 0:
            if self.discharge_allowed():
                self._enter(BatteryState.DISCHARGING, self.discharge)
                return power_w
            if self.discharge_blocked:
                self._enter(BatteryState.BLOCKED, self.block)
            else:
                self._enter(BatteryState.INELIGIBLE, self.disqualify)
            return 0
        if reason == "blocked":
            self._enter(BatteryState.BLOCKED, self.block)
        elif reason == "ineligible":
            self._enter(BatteryState.INELIGIBLE, self.disqualify)
        else:
            self._enter(BatteryState.IDLE, self.rest)
        return 0

    def _enter(self, state: BatteryState, trigger: Any) -> None:
        if self.state is not state:
            trigger()
