"""Splitting the fleet's power over its batteries (pure functions, no state)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """A battery that may take part in the current direction, with what it can do now."""

    name: str
    soc_pct: float
    limit_w: float  # most it may deliver (discharge) or take (charge) right now, > 0


def priority_order(candidates: Sequence[Candidate], direction: int) -> tuple[str, ...]:
    """Charging: lowest SoC first; discharging: highest SoC first. Ties by name (stable)."""
    if direction > 0:
        ranked = sorted(candidates, key=lambda c: (-c.soc_pct, c.name))
    else:
        ranked = sorted(candidates, key=lambda c: (c.soc_pct, c.name))
    return tuple(c.name for c in ranked)


def split_proportional(total_w: float, candidates: Sequence[Candidate]) -> dict[str, float]:
    """Split ``total_w`` (magnitude) in proportion to each battery's limit.

    Proportional to the limit means every battery saturates at the same moment, so a
    tapered or derated battery is never asked for more than it can give.
    """
    capacity = sum(c.limit_w for c in candidates)
    if capacity <= 0:
        return {c.name: 0.0 for c in candidates}
    share = min(1.0, total_w / capacity)
    return {c.name: c.limit_w * share for c in candidates}


def fill_in_order(total_w: float, ordered: Sequence[Candidate]) -> dict[str, float]:
    """Give ``total_w`` to the first battery, the remainder to the next, and so on."""
    out: dict[str, float] = {}
    left = total_w
    for c in ordered:
        take = min(left, c.limit_w)
        out[c.name] = take
        left -= take
    return out
