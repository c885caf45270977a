"""The policies a user can choose (``policy = "mmbc" | "classic"``)."""

from __future__ import annotations

from typing import Protocol

from engine.core.classic import ClassicPolicy
from engine.core.model import Plan, Snapshot
from engine.core.policy import MmbcPolicy
from engine.core.settings import ControlSettings


class Policy(Protocol):
    """One control cycle: snapshot in, plan out. ``period_s`` is its loop period."""

    name: str
    period_s: float
    learns_meter_phase: bool  # place the cycles just after the meter's refresh (schedule)

    def decide(self, snap: Snapshot) -> Plan: ...


POLICIES: dict[str, type[MmbcPolicy] | type[ClassicPolicy]] = {
    "mmbc": MmbcPolicy,
    "classic": ClassicPolicy,
}


def make_policy(settings: ControlSettings) -> Policy:
    """The policy named by ``settings.policy``; ``KeyError`` for an unknown name."""
    return POLICIES[settings.policy](settings)
