"""Scripted appliance events on top of a trace: their kinds, their shapes, the summed timeline.

Each kind is a frozen dataclass whose fields are the keys of its ``[[event]]`` table (validated
by pydantic in ``sim.scenario``; scenarios/README.md documents them). ``power_at(t_s)`` is the
extra load (W, negative = extra PV) the event adds at scenario time ``t_s``: 0 outside
``[at_s, at_s + duration_s)``. ``Event`` is the union of the kinds, told apart by ``kind``.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Literal, Self

from annotated_types import Gt, Lt
from pydantic import Field, model_validator, with_config

from sim.plant.params import TABLE_CONFIG, NonNegative, Number, Positive, Seed, Text, field_error


class EventKind(StrEnum):
    LOAD_STEP = "load_step"
    PULSE = "pulse"
    RAMP = "ramp"
    CYCLING = "cycling"
    SURGE = "surge"


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class EventBase:
    """What every event has: where it starts, how strong, how long; a label for plots."""

    kind: EventKind
    at_s: NonNegative
    power_w: Number
    duration_s: Positive
    label: Text = ""

    def _since_start(self, t_s: float) -> float | None:
        """Seconds into the event at ``t_s``, or None outside it."""
        u_s = t_s - self.at_s
        return u_s if 0.0 <= u_s < self.duration_s else None


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class LoadStep(EventBase):
    """A constant ``power_w`` for ``duration_s`` (kettle, dishwasher heater, EV without ramp)."""

    kind: Literal[EventKind.LOAD_STEP] = EventKind.LOAD_STEP

    def power_at(self, t_s: float) -> float:
        return 0.0 if self._since_start(t_s) is None else self.power_w


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class Pulse(EventBase):
    """``power_w`` on for ``on_s``, off for ``off_s``, repeated exactly, starting on."""

    kind: Literal[EventKind.PULSE] = EventKind.PULSE
    on_s: Positive
    off_s: Positive

    def power_at(self, t_s: float) -> float:
        u_s = self._since_start(t_s)
        if u_s is None:
            return 0.0
        return self.power_w if u_s % (self.on_s + self.off_s) < self.on_s else 0.0


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ramp(EventBase):
    """Linear 0 -> ``power_w`` over the first ``ramp_s``, held, back to 0 over the last."""

    kind: Literal[EventKind.RAMP] = EventKind.RAMP
    ramp_s: Positive

    @model_validator(mode="after")
    def _ramps_fit(self) -> Self:
        if not 2.0 * self.ramp_s <= self.duration_s:
            raise field_error("ramp_s", "must be > 0 and at most half of duration_s", self.ramp_s)
        return self

    def power_at(self, t_s: float) -> float:
        u_s = self._since_start(t_s)
        if u_s is None:
            return 0.0
        if u_s < self.ramp_s:
            return self.power_w * u_s / self.ramp_s
        remaining_s = self.duration_s - u_s
        if remaining_s < self.ramp_s:
            return self.power_w * remaining_s / self.ramp_s
        return self.power_w


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class Cycling(EventBase):
    """An element its own controller switches: on for ``duty`` of every cycle, starting on.

    Each cycle lasts ``period_s`` plus a jitter drawn uniformly from ``±jitter_s`` (its on time
    scales with it), from a generator seeded with ``seed``: the same seed, the same edges. The
    scenario derives ``seed`` from its own seed and the event's position when it is not set.
    Induction hob, washing-machine heater, time-proportioned oven, microwave at part power.
    """

    kind: Literal[EventKind.CYCLING] = EventKind.CYCLING
    period_s: Positive
    duty: Annotated[Number, Gt(0.0), Lt(1.0)]
    jitter_s: NonNegative = 0.0
    seed: Seed | None = None

    @model_validator(mode="after")
    def _jitter_leaves_a_cycle(self) -> Self:
        if not self.jitter_s < self.period_s / 2.0:
            msg = f"must be below half of period_s ({self.period_s / 2.0:g})"
            raise field_error("jitter_s", msg, self.jitter_s)
        return self

    def power_at(self, t_s: float) -> float:
        u_s = self._since_start(t_s)
        if u_s is None:
            return 0.0
        return self.power_w if _cycles_of(self).is_on(u_s) else 0.0


@with_config(TABLE_CONFIG)
@dataclass(frozen=True, slots=True, kw_only=True)
class Surge(EventBase):
    """A motor or compressor start: ``surge_w`` for the first ``surge_s``, then ``power_w``."""

    kind: Literal[EventKind.SURGE] = EventKind.SURGE
    surge_w: Number
    surge_s: Positive

    @model_validator(mode="after")
    def _surge_is_the_start(self) -> Self:
        if not self.surge_s < self.duration_s:
            raise field_error("surge_s", "must be shorter than duration_s", self.surge_s)
        return self

    def power_at(self, t_s: float) -> float:
        u_s = self._since_start(t_s)
        if u_s is None:
            return 0.0
        return self.surge_w if u_s < self.surge_s else self.power_w


Event = Annotated[LoadStep | Pulse | Ramp | Cycling | Surge, Field(discriminator="kind")]
EVENT_TYPES: dict[EventKind, type[EventBase]] = {
    EventKind.LOAD_STEP: LoadStep,
    EventKind.PULSE: Pulse,
    EventKind.RAMP: Ramp,
    EventKind.CYCLING: Cycling,
    EventKind.SURGE: Surge,
}


class _Cycles:
    """The cycles of one ``Cycling`` event, drawn in order as far as they are asked for.

    Drawing lazily keeps a long event cheap; drawing in order keeps the edges the same
    whatever times are asked, and in whatever order.
    """

    __slots__ = ("_event", "_next_start_s", "_on_ends_s", "_rng", "_starts_s")

    def __init__(self, event: Cycling) -> None:
        self._event = event
        self._rng = random.Random(event.seed if event.seed is not None else 0)
        self._starts_s: list[float] = []
        self._on_ends_s: list[float] = []
        self._next_start_s = 0.0
        self._draw(0.0)

    def _draw(self, start_s: float) -> None:
        event = self._event
        length_s = event.period_s
        if event.jitter_s > 0.0:
            length_s += self._rng.uniform(-event.jitter_s, event.jitter_s)
        self._starts_s.append(start_s)
        self._on_ends_s.append(start_s + event.duty * length_s)
        self._next_start_s = start_s + length_s

    def is_on(self, u_s: float) -> bool:
        """Whether the element is on ``u_s`` seconds into the event."""
        while self._next_start_s <= u_s:
            self._draw(self._next_start_s)
        i = bisect_right(self._starts_s, u_s) - 1
        return u_s < self._on_ends_s[i]

    def edges_s(self, until_s: float) -> list[tuple[float, float]]:
        """(start, end of the on part) of each cycle starting before ``until_s``."""
        self.is_on(until_s)
        return [
            (start_s, on_end_s)
            for start_s, on_end_s in zip(self._starts_s, self._on_ends_s, strict=True)
            if start_s < until_s
        ]


@lru_cache(maxsize=256)
def _cycles_of(event: Cycling) -> _Cycles:
    # A pure function of the (frozen, hashable) event: evicting an entry only costs a redraw.
    return _Cycles(event)


def cycle_edges(event: Cycling, until_s: float) -> list[tuple[float, float]]:
    """(start, end of the on part) of each cycle starting before ``until_s`` into the event."""
    return _Cycles(event).edges_s(until_s)


class EventTimeline:
    """The summed extra load of scripted events over time.

    Keeps a cursor: the replay asks for increasing times, which then costs only the events
    active at that time; going back in time rescans from the start.
    """

    __slots__ = ("_active", "_events", "_last_t_s", "_next")

    def __init__(self, events: Iterable[Event]) -> None:
        self._events: tuple[Event, ...] = tuple(sorted(events, key=lambda e: e.at_s))
        self._next = 0
        self._active: list[Event] = []
        self._last_t_s = -math.inf

    @property
    def events(self) -> tuple[Event, ...]:
        """The events, ordered by start time."""
        return self._events

    def extra_w_at(self, t_s: float) -> float:
        """Summed extra load (W, negative = extra PV) at scenario time ``t_s``."""
        if t_s < self._last_t_s:
            self._next = 0
            self._active = []
        self._last_t_s = t_s
        events = self._events
        n = len(events)
        while self._next < n and events[self._next].at_s <= t_s:
            self._active.append(events[self._next])
            self._next += 1
        if not self._active:
            return 0.0
        total_w = 0.0
        still: list[Event] = []
        for event in self._active:
            if t_s < event.at_s + event.duration_s:
                still.append(event)
                total_w += event.power_at(t_s)
        self._active = still
        return total_w

    def step_times(self) -> list[tuple[float, float]]:
        """(at_s, change_w) of each ``load_step`` edge: +power at the start, -power at the end."""
        edges: list[tuple[float, float]] = []
        for event in self._events:
            if isinstance(event, LoadStep):
                edges.append((event.at_s, event.power_w))
                edges.append((event.at_s + event.duration_s, -event.power_w))
        edges.sort(key=lambda edge: edge[0])
        return edges
