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
    headroom_wh: float = 0.0  # energy it can still deliver (discharge) or take (charge)


def priority_order(candidates: Sequence[Candidate], direction: int) -> tuple[str, ...]:
    """Charging: lowest SoC first; discharging: highest SoC first. Ties by name (stable)."""
    if direction > 0:
        ranked = sorted(candidates, key=lambda c: (-c.soc_pct, c.name))
    else:
        ranked = sorted(candidates, key=lambda c: (c.soc_pct, c.name))
    return tuple(c.name for c in ranked)


def split_proportional(
    total_w: float, candidates: Sequence[Candidate], *, by_energy: bool = False
) -> dict[str, float]:
    """Split ``total_w`` (magnitude) over ``candidates``, none above its limit.

    By power (``by_energy`` false): in proportion to each battery's limit, so every battery
    saturates at the same moment and a tapered or derated one is never asked for more than
    it can give. By energy: in proportion to the energy each can still give or take, so all
    reach their SoC limit together and the fleet keeps its full power for as long as
    possible; a battery that hits its power limit is capped and the rest shared again.
    """
    out: dict[str, float] = {}
    left = [c for c in candidates if c.limit_w > 0]
    for c in candidates:
        out[c.name] = 0.0
    remaining = total_w
    while left and remaining > 0:
        weights = {c.name: (max(c.headroom_wh, 0.0) if by_energy else c.limit_w) for c in left}
        weight_sum = sum(weights.values())
        if weight_sum <= 0:
            weights = {c.name: c.limit_w for c in left}
            weight_sum = sum(weights.values())
        scale = remaining / weight_sum
        capped = [c for c in left if scale * weights[c.name] >= c.limit_w]
        if not capped:
            for c in left:
                out[c.name] = scale * weights[c.name]
            break
        for c in capped:
            out[c.name] = c.limit_w
            remaining -= c.limit_w
        left = [c for c in left if c not in capped]
    return out


def fill_in_order(total_w: float, ordered: Sequence[Candidate]) -> dict[str, float]:
    """Give ``total_w`` to the first battery, the remainder to the next, and so on."""
    out: dict[str, float] = {}
    left = total_w
    for c in ordered:
        take = min(left, c.limit_w)
        out[c.name] = take
        left -= take
    return out


# Venus E AC<->DC efficiency by AC power, as measured and published (MVEM/Omnibattery docs);
# linear between the points, held beyond them. Only used to choose how many batteries share a
# large demand: small shares run at poor efficiency.
CHARGE_EFFICIENCY: tuple[tuple[float, float], ...] = (
    (63.0, 0.603),
    (125.0, 0.772),
    (250.0, 0.885),
    (500.0, 0.938),
    (750.0, 0.95),
)
DISCHARGE_EFFICIENCY: tuple[tuple[float, float], ...] = (
    (63.0, 0.75),
    (250.0, 0.856),
    (500.0, 0.898),
    (750.0, 0.91),
    (1250.0, 0.91),
    (2500.0, 0.893),
)
STANDBY_W = 10.0  # an idle Venus E draws about this from its cells


def efficiency(curve: Sequence[tuple[float, float]], power_w: float) -> float:
    """Efficiency at ``power_w`` (>= 0) on ``curve``."""
    first_w, first_eta = curve[0]
    if power_w <= first_w:
        return first_eta
    prev_w, prev_eta = first_w, first_eta
    for point_w, eta in curve[1:]:
        if power_w <= point_w:
            return prev_eta + (eta - prev_eta) * (power_w - prev_w) / (point_w - prev_w)
        prev_w, prev_eta = point_w, eta
    return prev_eta


def fleet_loss_w(total_w: float, active: int, fleet: int, *, charging: bool) -> float:
    """Power lost when ``active`` of ``fleet`` batteries share ``total_w`` equally."""
    share_w = total_w / active
    if charging:
        loss_w = share_w * (1.0 - efficiency(CHARGE_EFFICIENCY, share_w))
    else:
        loss_w = share_w * (1.0 / efficiency(DISCHARGE_EFFICIENCY, share_w) - 1.0)
    return active * loss_w + (fleet - active) * STANDBY_W
