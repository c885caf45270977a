"""The fleet as two state machines: its mode (with the fail-safe hold) and its selection.

The mode machine follows the user's mode and the meter: a stale meter puts it in
``safe_hold`` (every battery at 0 W) until fresh readings return; the policy dispatches each
cycle to the handler of its state. The selection machine holds which batteries carry the
demand: none (``idle``), one leader (``single``), a make-before-break hand-over between two
leaders (``handover``), or several sharing it (``split``); with it the leader order and the
5-minute reselection timer, the hand-over's timer and the last split.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from transitions import Machine

from engine.core.events import (
    DecisionEvent,
    Direction,
    HandoverEnded,
    HandoverStarted,
    SafeHoldCause,
    SafeHoldEntered,
    SafeHoldLeft,
)
from engine.core.model import Mode
from engine.core.states import FleetState
from engine.core.timers import elapsed, exceeded

F = FleetState

_MODE_STATE: Final = {
    Mode.NORMAL: F.NORMAL,
    Mode.HOLD: F.HOLD,
    Mode.CHARGE: F.CHARGE,
    Mode.SELFCONTROL: F.SELFCONTROL,
}


# Looking up an enum member on its class costs a descriptor call; the per-cycle paths compare
# against these module constants instead (the same objects).
_NORMAL: Final = F.NORMAL
_HOLD: Final = F.HOLD
_SELFCONTROL: Final = F.SELFCONTROL
_STARTING: Final = F.STARTING
_SAFE_HOLD: Final = F.SAFE_HOLD


def _all_but(state: FleetState) -> list[FleetState]:
    return [s for s in FleetState if s is not state]


# Reviewed like code, rendered in docs/state-machines.md. Nothing returns to ``starting``;
# the fail-safe hold is entered only from a state that controls the batteries.
FLEET_TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": "run_normal", "source": _all_but(F.NORMAL), "dest": F.NORMAL},
    {"trigger": "run_hold", "source": _all_but(F.HOLD), "dest": F.HOLD},
    {"trigger": "run_charge", "source": _all_but(F.CHARGE), "dest": F.CHARGE},
    {"trigger": "run_selfcontrol", "source": _all_but(F.SELFCONTROL), "dest": F.SELFCONTROL},
    {
        "trigger": "fail_safe",
        "source": [F.NORMAL, F.HOLD, F.CHARGE, F.SELFCONTROL],
        "dest": F.SAFE_HOLD,
    },
]


class FleetFsm:
    """The fleet's mode and safety state, and its selection. Triggers by ``transitions``."""

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

    def __init__(self, *, reselect_interval_s: float = 300.0, handover_timeout_s: float = 20.0):
        self.selection = SelectionFsm(
            reselect_interval_s=reselect_interval_s, handover_timeout_s=handover_timeout_s
        )
        self._machine = Machine(
            model=self,
            states=FleetState,
            transitions=FLEET_TRANSITIONS,
            initial=F.STARTING,
            auto_transitions=False,
            model_override=True,
            ignore_invalid_triggers=False,
        )
        self._run = {
            F.NORMAL: self.run_normal,
            F.HOLD: self.run_hold,
            F.CHARGE: self.run_charge,
            F.SELFCONTROL: self.run_selfcontrol,
        }

    @staticmethod
    def wanted(mode: Mode, *, discharge_blocked: bool) -> FleetState:
        """The state the user's mode asks for; a blocked discharge turns normal into hold."""
        target = _MODE_STATE[mode]
        return _HOLD if target is _NORMAL and discharge_blocked else target

    def tick(
        self,
        mode: Mode,
        *,
        discharge_blocked: bool,
        meter_fresh: bool,
        events: list[DecisionEvent],
    ) -> FleetState:
        """One cycle: follow the user's mode, or hold safe while the meter is stale."""
        target = self.wanted(mode, discharge_blocked=discharge_blocked)
        if target is not _SELFCONTROL and not meter_fresh:
            if self.state is not _STARTING and self.state is not _SAFE_HOLD:
                self.fail_safe()
                events.append(SafeHoldEntered(SafeHoldCause.METER_STALE))
            return self.state
        if self.state is not target:
            leaving_safe_hold = self.state is _SAFE_HOLD
            self._run[target]()
            if leaving_safe_hold:
                events.append(SafeHoldLeft(SafeHoldCause.METER_STALE))
        return self.state

    @property
    def holds_at_zero(self) -> bool:
        """Starting or holding safe: every battery at 0 W, no control law."""
        return self.state is _STARTING or self.state is _SAFE_HOLD


# ---------------------------------------------------------------------------- selection
class SelectionState(StrEnum):
    IDLE = "idle"  # no battery works: the demand is inside the idle band, or nothing can
    SINGLE = "single"  # one battery, the leader, carries the demand
    HANDOVER = "handover"  # make-before-break: the new leader is woken, the old one carries
    SPLIT = "split"  # several batteries share a demand above the split threshold


S = SelectionState
_IDLE: Final = S.IDLE
_HANDOVER: Final = S.HANDOVER
_SPLIT: Final = S.SPLIT

SELECTION_TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": "lead", "source": [S.IDLE, S.SPLIT], "dest": S.SINGLE},
    {"trigger": "share", "source": [S.IDLE, S.SINGLE, S.HANDOVER], "dest": S.SPLIT},
    {"trigger": "stop", "source": [S.SINGLE, S.HANDOVER, S.SPLIT], "dest": S.IDLE},
    {"trigger": "hand_over", "source": S.SINGLE, "dest": S.HANDOVER},
    {"trigger": "finish_handover", "source": S.HANDOVER, "dest": S.SINGLE},
]


@dataclass(frozen=True, slots=True)
class Handover:
    outgoing: str
    incoming: str
    since_s: float


class SelectionFsm:
    """Which batteries carry the demand, and the timers that govern changing them."""

    state: SelectionState

    def lead(self) -> bool:
        raise NotImplementedError

    def share(self) -> bool:
        raise NotImplementedError

    def stop(self) -> bool:
        raise NotImplementedError

    def hand_over(self) -> bool:
        raise NotImplementedError

    def finish_handover(self) -> bool:
        raise NotImplementedError

    def __init__(self, *, reselect_interval_s: float, handover_timeout_s: float) -> None:
        self.reselect_interval_s = reselect_interval_s
        self.handover_timeout_s = handover_timeout_s
        # The leader order and the direction it was chosen for; chosen_s starts the
        # reselection timer (the product rule: re-evaluated every reselect_interval_s).
        self.direction = Direction.NONE
        self.order: tuple[str, ...] = ()
        self.chosen_s = float("-inf")
        self.handover: Handover | None = None
        # While split: how many batteries share, and the last split (magnitudes, W).
        self.active_n = 0
        self.split_w: dict[str, float] = {}
        self.split_direction = Direction.NONE
        self._machine = Machine(
            model=self,
            states=SelectionState,
            transitions=SELECTION_TRANSITIONS,
            initial=S.IDLE,
            auto_transitions=False,
            model_override=True,
            ignore_invalid_triggers=False,
        )

    # ------------------------------------------------------------------ timers
    def reselection_due(self, now_s: float, direction: Direction, names: AbstractSet[str]) -> bool:
        """The 5-minute timer ran out, the direction changed, or the leader dropped out."""
        return (
            self.direction is not direction
            or elapsed(now_s, self.chosen_s, self.reselect_interval_s)
            or not self.order
            or self.order[0] not in names
        )

    def handover_over(self, now_s: float) -> bool:
        """The hand-over's timer: past ``handover_timeout_s`` it ends whatever happened."""
        ho = self.handover
        return ho is not None and exceeded(now_s, ho.since_s, self.handover_timeout_s)

    # ------------------------------------------------------------------ moves
    def choose(self, order: tuple[str, ...], direction: Direction, now_s: float) -> None:
        """A new leader order for ``direction``; restarts the reselection timer."""
        self.direction = direction
        self.order = order
        self.chosen_s = now_s

    def begin_handover(
        self, outgoing: str, incoming: str, now_s: float, events: list[DecisionEvent]
    ) -> None:
        self.end_handover(events, completed=False)
        if self.state is S.IDLE or self.state is S.SPLIT:
            self.lead()
        self.handover = Handover(outgoing, incoming, now_s)
        self.hand_over()
        events.append(HandoverStarted(outgoing, incoming))

    def end_handover(self, events: list[DecisionEvent], *, completed: bool) -> None:
        ho = self.handover
        if ho is None:
            return
        self.handover = None
        if self.state is _HANDOVER:
            self.finish_handover()
        events.append(HandoverEnded(ho.outgoing, ho.incoming, completed=completed))

    def go_single(self, events: list[DecisionEvent]) -> None:
        """One battery leads (a hand-over in progress carries on)."""
        self.active_n = 1
        self.split_w = {}
        if self.state is _IDLE or self.state is _SPLIT:
            self.lead()

    def go_split(self, events: list[DecisionEvent]) -> None:
        """Several share: a hand-over in progress is moot."""
        self.end_handover(events, completed=False)
        if self.state is not _SPLIT:
            self.share()

    def go_idle(self, events: list[DecisionEvent]) -> None:
        """Nothing to carry. The leader order and its timer are kept for the next demand."""
        self.split_w = {}
        self.end_handover(events, completed=False)
        if self.state is not _IDLE:
            self.stop()
