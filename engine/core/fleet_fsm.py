"""The fleet state machine: the operating mode, the fail-safe hold, and the battery selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from transitions import Machine

from engine.core.model import Mode
from engine.core.states import FleetState

_MODES: Final = [
    FleetState.STARTING,
    FleetState.NORMAL,
    FleetState.HOLD,
    FleetState.CHARGE,
    FleetState.SELFCONTROL,
]

FLEET_TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": "run_normal", "source": _MODES, "dest": FleetState.NORMAL},
    {"trigger": "run_hold", "source": _MODES, "dest": FleetState.HOLD},
    {"trigger": "run_charge", "source": _MODES, "dest": FleetState.CHARGE},
    {"trigger": "run_selfcontrol", "source": _MODES, "dest": FleetState.SELFCONTROL},
    {"trigger": "fail_safe", "source": _MODES, "dest": FleetState.SAFE_HOLD},
    {"trigger": "resume", "source": FleetState.SAFE_HOLD, "dest": FleetState.STARTING},
]

_MODE_STATE: Final = {
    Mode.NORMAL: FleetState.NORMAL,
    Mode.HOLD: FleetState.HOLD,
    Mode.CHARGE: FleetState.CHARGE,
    Mode.SELFCONTROL: FleetState.SELFCONTROL,
}


@dataclass(slots=True)
class Selection:
    """Which battery leads, in which direction, since when (the 5-minute reselection cache)."""

    direction: int = 0  # +1 discharging, -1 charging, 0 none yet
    order: tuple[str, ...] = ()
    chosen_s: float = float("-inf")


class FleetFsm:
    """The fleet's mode and safety state. Triggers are attached by ``transitions``."""

    state: FleetState

    def run_normal(self) -> bool:
        raise NotImplementedError

    def run_hold(self) -> bool:
        raise NotImplementedError

    def run_charge(self) -> bool:
        raise NotImplementedError

    def run_selfcontrol(self) -> bool:
        raise NotImplementedError

    def fail_safe(self) -> bool:
        raise NotImplementedError

    def resume(self) -> bool:
        raise NotImplementedError

    def __init__(self) -> None:
        self.selection = Selection()
        self._machine = Machine(
            model=self,
            states=FleetState,
            transitions=FLEET_TRANSITIONS,
            initial=FleetState.STARTING,
            auto_transitions=False,
            model_override=True,
            ignore_invalid_triggers=False,
        )

    def apply_mode(self, mode: Mode, *, discharge_blocked: bool) -> None:
        """Follow the requested mode; a blocked discharge turns normal into hold."""
        target = _MODE_STATE[mode]
        if target is FleetState.NORMAL and discharge_blocked:
            target = FleetState.HOLD
        if self.state is FleetState.SAFE_HOLD:
            self.resume()
        if self.state is not target:
            getattr(self, f"run_{target.value}")()

    def enter_safe_hold(self) -> None:
        if self.state is not FleetState.SAFE_HOLD:
            self.fail_safe()
