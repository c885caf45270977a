"""One battery as a state machine that carries everything the policy knows about it.

The machine is the battery's whole memory between cycles: its state, the last command and
since when, the follow check (a battery that acknowledges but does not deliver is excluded
for a while) and the cut-off check (near a SoC limit a battery that stops delivering has
reached its firmware's own cut-off and sits that direction out). Triggers come from the
cycle: ``observe`` (a new reading: availability, the checks), ``tick`` (the exclusion's
timer on the injected clock) and ``command`` (the fleet's decision for it).

The transition table lists only what can happen; the guards refuse what must never happen
(charging a full battery, discharging an empty or blocked one, commanding a battery that is
unavailable, excluded or, in that direction, at its cut-off), so a bug upstream cannot
become a command: a refused direction yields 0 W.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from transitions import Machine

from engine.core.events import (
    BatteryConnected,
    BatteryLost,
    BatteryReturned,
    CutoffCleared,
    CutoffReached,
    DecisionEvent,
    Direction,
    Excluded,
    ExclusionEnded,
)
from engine.core.model import BatteryTelemetry
from engine.core.states import BatteryState
from engine.core.timers import elapsed, reached

B = BatteryState

KEEPALIVE_W: Final = 1  # "1 W keeps the battery idle with its relay engaged" (HBC, peer survey)
FOLLOW_SETTLE_S: Final = 8.0  # dead time + relay delay + ramp, with margin
FOLLOW_MIN_W: Final = 100  # below this a miss is noise, not a fault
FOLLOW_FRACTION: Final = 0.1  # delivering less than 10 % of the command counts as a miss
FOLLOW_LIMIT_MARGIN_PCT: Final = 2.0  # the firmware may stop this close to a SoC limit
CUTOFF_MARGIN_PCT: Final = 10.0  # firmware cut-offs may sit this far inside the limits
CUTOFF_CYCLES: Final = 5  # cycles without delivery (relay, dead time and ramp have passed)
CUTOFF_RELEASE_PCT: Final = 1.0  # the cut-off is over once the SoC has moved this far

# Commandable: the states a cycle may move between by its decision.
_WORKING: Final = [B.IDLE, B.CHARGING, B.DISCHARGING, B.BLOCKED, B.INELIGIBLE]
_ACTIVE: Final = [B.CHARGING, B.DISCHARGING]
_SITTING_OUT: Final = [B.EXCLUDED, B.CUTOFF]
# Looking up an enum member on its class costs a descriptor call; the per-cycle paths compare
# against these module constants instead (the same objects).
_UNAVAILABLE: Final = B.UNAVAILABLE
_EXCLUDED: Final = B.EXCLUDED
_CUTOFF: Final = B.CUTOFF
_CHARGING: Final = B.CHARGING
_DISCHARGING: Final = B.DISCHARGING
_NEVER: Final = float("-inf")  # no exclusion pending; never active
_NONE: Final = Direction.NONE
_CHARGE: Final = Direction.CHARGE
_DISCHARGE: Final = Direction.DISCHARGE


def _working_except(state: BatteryState) -> list[BatteryState]:
    return [s for s in _WORKING if s is not state]


# Reviewed like code, rendered in docs/state-machines.md. No self-transitions: a trigger is
# fired only when the state changes. A battery that sits out (excluded, at its cut-off) leaves
# only by its timer, its SoC, or working the other way; a 0 W decision keeps it where it is.
BATTERY_TRANSITIONS: Final[list[dict[str, Any]]] = [
    # availability (observe)
    {"trigger": "lose", "source": [*_WORKING, *_SITTING_OUT], "dest": B.UNAVAILABLE},
    {
        "trigger": "recover",
        "source": B.UNAVAILABLE,
        "dest": B.EXCLUDED,
        "conditions": "exclusion_pending",
    },
    {"trigger": "recover", "source": B.UNAVAILABLE, "dest": B.CUTOFF, "conditions": "cutoff_set"},
    {"trigger": "recover", "source": B.UNAVAILABLE, "dest": B.IDLE},
    # the fleet's decision (command)
    {
        "trigger": "charge",
        "source": _working_except(B.CHARGING),
        "dest": B.CHARGING,
        "conditions": "charge_allowed",
    },
    {
        "trigger": "charge",
        "source": B.CUTOFF,
        "dest": B.CHARGING,
        "conditions": ["charge_allowed", "cutoff_was_discharging"],
    },
    {
        "trigger": "discharge",
        "source": _working_except(B.DISCHARGING),
        "dest": B.DISCHARGING,
        "conditions": "discharge_allowed",
    },
    {
        "trigger": "discharge",
        "source": B.CUTOFF,
        "dest": B.DISCHARGING,
        "conditions": ["discharge_allowed", "cutoff_was_charging"],
    },
    {"trigger": "rest", "source": _working_except(B.IDLE), "dest": B.IDLE},
    {"trigger": "block", "source": _working_except(B.BLOCKED), "dest": B.BLOCKED},
    {"trigger": "disqualify", "source": _working_except(B.INELIGIBLE), "dest": B.INELIGIBLE},
    # the checks (observe)
    {"trigger": "exclude", "source": _ACTIVE, "dest": B.EXCLUDED},
    {"trigger": "reach_cutoff", "source": _ACTIVE, "dest": B.CUTOFF},
    {"trigger": "leave_cutoff", "source": B.CUTOFF, "dest": B.IDLE},
    # the exclusion's timer (tick)
    {"trigger": "expire", "source": B.EXCLUDED, "dest": B.IDLE},
]


class Rest(StrEnum):
    """Why a battery the fleet does not use this cycle gets 0 W (the state it shows)."""

    IDLE = "idle"  # nothing to do, or another battery carries the demand
    BLOCKED = "blocked"  # it would discharge, but discharge is blocked
    INELIGIBLE = "ineligible"  # at a SoC limit for the fleet's direction


_REST_STATE: Final = {
    Rest.IDLE: B.IDLE,
    Rest.BLOCKED: B.BLOCKED,
    Rest.INELIGIBLE: B.INELIGIBLE,
}
_REST_BLOCKED: Final = Rest.BLOCKED
_REST_INELIGIBLE: Final = Rest.INELIGIBLE


class BatteryFsm:
    """One battery's state and memory. Triggers are attached by ``transitions``."""

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

    def exclude(self) -> bool:
        raise NotImplementedError

    def reach_cutoff(self) -> bool:
        raise NotImplementedError

    def leave_cutoff(self) -> bool:
        raise NotImplementedError

    def expire(self) -> bool:
        raise NotImplementedError

    def __init__(
        self,
        name: str,
        *,
        min_soc_pct: float,
        max_soc_pct: float,
        not_following_cycles: int = 5,
        not_following_exclude_s: float = 300.0,
    ) -> None:
        self.name = name
        self.min_soc_pct = min_soc_pct
        self.max_soc_pct = max_soc_pct
        self.not_following_cycles = not_following_cycles
        self.not_following_exclude_s = not_following_exclude_s
        self.soc_pct: float | None = None
        self.discharge_blocked = False
        self.telemetry: BatteryTelemetry | None = None
        # The command in force and since when (the follow check waits for it to settle).
        self.command_w = 0
        self.command_since_s = 0.0
        # The direction it last worked in and when (the relay keep-alive spans short gaps).
        self.last_direction = Direction.NONE
        self.last_active_s = _NEVER
        # The follow check: misses in a row; an exclusion lasts until excluded_until_s.
        self.misses = 0
        self.excluded_until_s = _NEVER
        # The cut-off check: stalled cycles in a row; the cut-off's direction and SoC.
        self.stalled_cycles = 0
        self.cutoff_direction = Direction.NONE
        self.cutoff_soc_pct = 0.0
        # Out of reach, what it is assumed to still deliver (its last command, + discharge).
        self.assumed_w = 0
        self.seen = False  # it has given a valid reading since start
        self._machine = Machine(
            model=self,
            states=BatteryState,
            transitions=BATTERY_TRANSITIONS,
            initial=B.UNAVAILABLE,
            auto_transitions=False,
            model_override=True,
            ignore_invalid_triggers=False,
        )

    # ------------------------------------------------------------------ guards
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

    def exclusion_pending(self) -> bool:
        return self.excluded_until_s != _NEVER

    def cutoff_set(self) -> bool:
        return self.cutoff_direction is not Direction.NONE

    def cutoff_was_discharging(self) -> bool:
        return self.cutoff_direction is Direction.DISCHARGE

    def cutoff_was_charging(self) -> bool:
        return self.cutoff_direction is Direction.CHARGE

    @property
    def available(self) -> bool:
        return self.state is not _UNAVAILABLE

    def usable_for(self, direction: Direction) -> bool:
        """May take part in ``direction``: available, not excluded, not at its cut-off."""
        state = self.state
        if state is _UNAVAILABLE or state is _EXCLUDED:
            return False
        if state is _CUTOFF:  # only the other way than its cut-off
            return direction is not _NONE and self.cutoff_direction == -direction
        return True

    # ------------------------------------------------------------------ observe
    def observe(
        self,
        telemetry: BatteryTelemetry | None,
        now_s: float,
        events: list[DecisionEvent],
        *,
        checks: bool = True,
        cutoff_check: bool = True,
    ) -> None:
        """A cycle's reading: availability first, then the exclusion timer and the checks.

        ``checks`` off (the classic policy) keeps only availability.
        """
        self.telemetry = telemetry
        if telemetry is None or not healthy(telemetry):
            if self.state is not _UNAVAILABLE:
                self.lose()
                events.append(BatteryLost(self.name))
                # The firmware has no watchdog: out of reach, it keeps its last setpoint.
                self.assumed_w = self.command_w
            self.command_w = 0
            self.misses = 0
            return
        self.assumed_w = 0
        if self.state is _UNAVAILABLE:
            self.recover()
            events.append(BatteryReturned(self.name) if self.seen else BatteryConnected(self.name))
            self.seen = True
            self.command_w = 0
            self.command_since_s = now_s
        self.soc_pct = telemetry.soc_pct
        if not checks:
            return
        if self.excluded_until_s != _NEVER:  # else the exclusion's timer has nothing to do
            self.tick(now_s, events)
        self._check_following(telemetry, now_s, events)
        self._check_cutoff(telemetry, events, enabled=cutoff_check)

    def tick(self, now_s: float, events: list[DecisionEvent]) -> None:
        """The exclusion's timer: once it has run out the battery is commanded again."""
        if self.excluded_until_s != _NEVER and reached(now_s, self.excluded_until_s):
            self.excluded_until_s = _NEVER
            if self.state is _EXCLUDED:
                self.expire()
            events.append(ExclusionEnded(self.name))

    def _check_following(
        self, tel: BatteryTelemetry, now_s: float, events: list[DecisionEvent]
    ) -> None:
        """Acknowledges but does not deliver: excluded for a while (reported once)."""
        cmd = self.command_w
        if self.state is _EXCLUDED:
            return
        if abs(cmd) < FOLLOW_MIN_W or not elapsed(now_s, self.command_since_s, FOLLOW_SETTLE_S):
            return
        soc = tel.soc_pct if tel.soc_pct is not None else 50.0
        # The firmware's own SoC cut-offs stop it near the limits: not a fault.
        if (cmd > 0 and soc <= self.min_soc_pct + FOLLOW_LIMIT_MARGIN_PCT) or (
            cmd < 0 and soc >= self.max_soc_pct - FOLLOW_LIMIT_MARGIN_PCT
        ):
            return
        delivered = (tel.power_w or 0.0) * (1 if cmd > 0 else -1)
        if delivered >= FOLLOW_FRACTION * abs(cmd):
            self.misses = 0
            return
        self.misses += 1
        if self.misses < self.not_following_cycles:
            return
        self.misses = 0
        self.excluded_until_s = now_s + self.not_following_exclude_s
        self.exclude()
        events.append(Excluded(self.name, self.excluded_until_s, tel.power_w or 0.0, cmd))

    def _check_cutoff(
        self, tel: BatteryTelemetry, events: list[DecisionEvent], *, enabled: bool
    ) -> None:
        """Near a SoC limit, a battery that delivers nothing has reached its firmware cut-off.

        The firmware's own cut-off (e.g. 12 % or an older unit's 20 %) need not match the
        configured limits; the integer SoC cannot tell either. Such a battery sits that
        direction out until its SoC has moved, so the others carry its share at once.
        """
        soc = tel.soc_pct if tel.soc_pct is not None else 50.0
        if self.state is _CUTOFF and abs(soc - self.cutoff_soc_pct) >= CUTOFF_RELEASE_PCT:
            self.leave_cutoff()
            self._forget_cutoff()
            events.append(CutoffCleared(self.name))
        cmd = self.command_w
        if -KEEPALIVE_W <= cmd <= KEEPALIVE_W:
            # Idle or the keep-alive (most cycles): nothing commanded can have stalled. The
            # same outcome as the full check below, which needs abs(cmd) > KEEPALIVE_W.
            self.stalled_cycles = 0
            return
        direction = 1 if cmd > 0 else -1 if cmd < 0 else 0
        near_limit = (direction > 0 and soc <= self.min_soc_pct + CUTOFF_MARGIN_PCT) or (
            direction < 0 and soc >= self.max_soc_pct - CUTOFF_MARGIN_PCT
        )
        delivered = (tel.power_w or 0.0) * direction
        if not (near_limit and abs(cmd) > KEEPALIVE_W and delivered < FOLLOW_FRACTION * abs(cmd)):
            self.stalled_cycles = 0
            return
        self.stalled_cycles += 1
        if self.stalled_cycles < CUTOFF_CYCLES:
            return
        self.stalled_cycles = 0
        if not enabled or self.state not in _ACTIVE:
            return
        self.cutoff_direction = Direction(direction)
        self.cutoff_soc_pct = soc
        self.reach_cutoff()
        events.append(CutoffReached(self.name, Direction(direction), soc))

    def _forget_cutoff(self) -> None:
        self.cutoff_direction = Direction.NONE
        self.cutoff_soc_pct = 0.0

    # ------------------------------------------------------------------ command
    def command(self, power_w: int, now_s: float, *, at_zero: Rest = Rest.IDLE) -> int:
        """Move to the state matching ``power_w`` (+ discharge); return the power allowed.

        A direction the guards refuse yields 0 W: the battery is blocked or ineligible, never
        commanded against its limits. A battery that sits out (excluded, or at its cut-off
        in that direction) stays where it is and gets 0 W. An unavailable battery is never
        commanded: that is a bug upstream and raises ``MachineError``.
        """
        allowed = self._enter(power_w, at_zero)
        self._note_command(allowed, now_s)
        return allowed

    def _enter(self, power_w: int, at_zero: Rest) -> int:
        if power_w == 0:
            self._rest(at_zero)
            return 0
        state = self.state
        charging = power_w < 0
        trigger, target = (self.charge, _CHARGING) if charging else (self.discharge, _DISCHARGING)
        if state is _UNAVAILABLE:
            trigger()  # not a transition of the table: raises MachineError
        allowed = self.charge_allowed() if charging else self.discharge_allowed()
        direction = _CHARGE if charging else _DISCHARGE
        if not (allowed and self.usable_for(direction)):
            blocked = not charging and self.discharge_blocked
            self._rest(_REST_BLOCKED if blocked else _REST_INELIGIBLE)
            return 0
        if state is not target:
            if not trigger():  # the table's guards have the last word
                self._rest(_REST_INELIGIBLE)
                return 0
            if state is _CUTOFF:
                self._forget_cutoff()  # working the other way: the cut-off no longer holds
        return power_w

    def _rest(self, why: Rest) -> None:
        state = self.state
        if state is _UNAVAILABLE:
            self.rest()  # not a transition of the table: raises MachineError
        if state is _EXCLUDED or state is _CUTOFF:  # sitting out
            return
        if state is _REST_STATE[why]:
            return
        {Rest.IDLE: self.rest, Rest.BLOCKED: self.block, Rest.INELIGIBLE: self.disqualify}[why]()

    def _note_command(self, power_w: int, now_s: float) -> None:
        if power_w == self.command_w:
            return
        # The follow check waits FOLLOW_SETTLE_S after a fresh start: a new direction, or a
        # command the old level would not count as following. A mere change of level must
        # not restart it, or a dead battery under a changing load is never excluded.
        if (power_w > 0) != (self.command_w > 0) or abs(self.command_w) < max(
            FOLLOW_MIN_W, FOLLOW_FRACTION * abs(power_w)
        ):
            self.command_since_s = now_s
        self.command_w = power_w

    def note_wanted(self, power_w: int, now_s: float) -> None:
        """The fleet wanted ``power_w`` of it (before the guards): the relay's last work."""
        if power_w != 0:
            self.last_active_s = now_s
            self.last_direction = _DISCHARGE if power_w > 0 else _CHARGE

    def engaged(self) -> bool:
        """Its relay is closed: it reports power (the keep-alive or real)."""
        tel = self.telemetry
        return tel is not None and tel.power_w is not None and abs(tel.power_w) >= KEEPALIVE_W


def healthy(t: BatteryTelemetry) -> bool:
    """A battery may be commanded only when it answered with a plausible SoC and power."""
    return t.online and t.soc_pct is not None and t.power_w is not None
