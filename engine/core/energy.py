"""Fleet energy totals that only ever grow: the positive steps of each battery's own counters.

Home Assistant reads a drop of a ``total_increasing`` sensor as a meter reset and counts the
next rise again, so a fleet total must never fall: not when a battery is unreachable, nor
when one is removed from the configuration, nor across restarts. ``EnergyLedger`` keeps, per
configured battery number, the counter values it last saw (its *baseline*) and adds only
what each counter rose since. It is pure: time is passed in, and persistence (a small JSON
file) is the runtime's business, through :meth:`EnergyLedger.to_json` / ``from_json``.

Rules, for the charge and the discharge counter alike:

- The very first readings (no saved state) start the totals at the sum of the counters seen
  then: the product's "sum of the batteries' lifetime counters" for a fleet that never changes.
- A battery first seen later (added, or unreachable at the first start) only sets its baseline;
  its earlier lifetime is not added, which would count it a second time.
- A rise is added. A fall (the counter was reset, or another battery now has this number)
  moves the baseline without adding anything.
- A rise bigger than a battery can deliver since the last reading (``max_power_w``) is not
  energy but a discontinuity (a counter that read 0 while the battery booted, then its
  lifetime value): it moves the baseline without adding. After a restart the time since the
  saved reading is unknown, and any rise counts: the battery ran while the engine was away.
- A battery that reports a serial number is followed by it: a different serial under the
  same number starts a new baseline, and a known serial under another number keeps its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from engine.core.settings import VENUS_E_MAX_POWER_W

STATE_VERSION: Final = 1
# Twice a Venus E's power: a generous bound, only to tell a counter jump from real energy.
DEFAULT_MAX_POWER_W: Final = 2.0 * VENUS_E_MAX_POWER_W
# The counters count 0.01 kWh: one step may appear at any time.
COUNTER_RESOLUTION_WH: Final = 10.0
_WH_PER_WS: Final = 1.0 / 3600.0


@dataclass(frozen=True, slots=True)
class CounterReading:
    """One battery's lifetime counters as read this cycle (``None``: not known now)."""

    number: int  # the configured battery number
    serial_number: str | None
    charge_wh: float | None
    discharge_wh: float | None


@dataclass(frozen=True, slots=True)
class EnergyTotals:
    """The fleet totals in Wh; ``None`` until a battery has reported that counter."""

    charge_wh: float | None
    discharge_wh: float | None


@dataclass(slots=True)
class _Baseline:
    number: int  # the configured number it was last seen under
    serial_number: str | None
    charge_wh: float | None
    discharge_wh: float | None
    # When each counter was last seen on this process's clock; None: loaded from a saved
    # state (another process's clock), so the time since is unknown.
    charge_seen_s: float | None = None
    discharge_seen_s: float | None = None

    @property
    def key(self) -> str:
        return _key(self.number, self.serial_number)


def _key(number: int, serial_number: str | None) -> str:
    return f"serial:{serial_number}" if serial_number is not None else f"number:{number}"


def _valid(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value >= 0.0 else None


class EnergyLedger:
    """Monotonic fleet totals from per-battery counters (see the module docstring)."""

    def __init__(self, *, max_power_w: float = DEFAULT_MAX_POWER_W) -> None:
        if not (math.isfinite(max_power_w) and max_power_w > 0):
            msg = f"max_power_w must be > 0, got {max_power_w}"
            raise ValueError(msg)
        self.max_power_w = max_power_w
        self._charge_total_wh: float | None = None
        self._discharge_total_wh: float | None = None
        self._baselines: dict[str, _Baseline] = {}  # by serial number, else by number
        self.revision = 0  # grows with every change worth saving
        self.discontinuities = 0  # rises rejected as counter jumps (for diagnostics)

    @property
    def totals(self) -> EnergyTotals:
        return EnergyTotals(self._charge_total_wh, self._discharge_total_wh)

    def baseline_numbers(self) -> frozenset[int]:
        return frozenset(b.number for b in self._baselines.values())

    # ------------------------------------------------------------------ observing

    def observe(self, now_s: float, readings: Iterable[CounterReading]) -> EnergyTotals:
        """Take one cycle's counters (any subset of the fleet) and return the totals."""
        fresh = [
            r
            for r in readings
            if _valid(r.charge_wh) is not None or _valid(r.discharge_wh) is not None
        ]
        if not fresh:
            return self.totals
        seed_charge = self._charge_total_wh is None
        seed_discharge = self._discharge_total_wh is None
        for reading in fresh:
            baseline = self._baseline_for(reading)
            charge_wh = _valid(reading.charge_wh)
            discharge_wh = _valid(reading.discharge_wh)
            if charge_wh is not None:
                if seed_charge:
                    self._charge_total_wh = (self._charge_total_wh or 0.0) + charge_wh
                else:
                    self._charge_total_wh = (self._charge_total_wh or 0.0) + self._rise(
                        baseline.charge_wh, baseline.charge_seen_s, charge_wh, now_s
                    )
                self._set(baseline, "charge", charge_wh, now_s)
            if discharge_wh is not None:
                if seed_discharge:
                    self._discharge_total_wh = (self._discharge_total_wh or 0.0) + discharge_wh
                else:
                    self._discharge_total_wh = (self._discharge_total_wh or 0.0) + self._rise(
                        baseline.discharge_wh, baseline.discharge_seen_s, discharge_wh, now_s
                    )
                self._set(baseline, "discharge", discharge_wh, now_s)
        return self.totals

    def _set(self, baseline: _Baseline, kind: str, value_wh: float, now_s: float) -> None:
        if getattr(baseline, f"{kind}_wh") != value_wh:
            self.revision += 1
        setattr(baseline, f"{kind}_wh", value_wh)
        setattr(baseline, f"{kind}_seen_s", now_s)

    def _rise(
        self, base_wh: float | None, seen_s: float | None, value_wh: float, now_s: float
    ) -> float:
        """What to add for a counter going from ``base_wh`` to ``value_wh``."""
        if base_wh is None or value_wh <= base_wh:
            return 0.0  # a new baseline, or a fall: nothing to add
        rise_wh = value_wh - base_wh
        if seen_s is not None:
            possible_wh = (
                self.max_power_w * max(0.0, now_s - seen_s) * _WH_PER_WS + COUNTER_RESOLUTION_WH
            )
            if rise_wh > possible_wh:
                self.discontinuities += 1
                return 0.0
        return rise_wh

    def _baseline_for(self, reading: CounterReading) -> _Baseline:
        """The baseline of the battery behind ``reading``: by serial number, else by number."""
        number, serial = reading.number, reading.serial_number
        baselines = self._baselines
        baseline = baselines.get(_key(number, serial))
        if baseline is None and serial is not None:
            # Known by its number only (its serial not read before): adopt the serial.
            baseline = baselines.pop(_key(number, None), None)
            if baseline is not None:
                baseline.serial_number = serial
                baselines[baseline.key] = baseline
                self.revision += 1
        if baseline is None and serial is None:
            # Its serial is known from before but not this time: the one last seen here.
            baseline = next((b for b in baselines.values() if b.number == number), None)
        if baseline is None:
            baseline = _Baseline(number, serial, None, None)
            baselines[baseline.key] = baseline
            self.revision += 1
        if baseline.number != number:
            baseline.number = number  # renumbered: the battery keeps its own counters
            self.revision += 1
        return baseline

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        """The state to save: totals and baselines (JSON types only)."""
        return {
            "version": STATE_VERSION,
            "charge_total_wh": self._charge_total_wh,
            "discharge_total_wh": self._discharge_total_wh,
            "batteries": [
                {
                    "number": b.number,
                    "serial_number": b.serial_number,
                    "charge_wh": b.charge_wh,
                    "discharge_wh": b.discharge_wh,
                }
                for b in sorted(self._baselines.values(), key=lambda b: (b.number, b.key))
            ],
        }

    @classmethod
    def from_json(cls, data: object, *, max_power_w: float = DEFAULT_MAX_POWER_W) -> EnergyLedger:
        """A ledger from :meth:`to_json`'s output; ``ValueError`` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("the energy state is not a JSON object")
        if data.get("version") != STATE_VERSION:
            msg = f"unknown energy state version {data.get('version')!r}"
            raise ValueError(msg)
        ledger = cls(max_power_w=max_power_w)
        ledger._charge_total_wh = _optional_wh(data, "charge_total_wh")
        ledger._discharge_total_wh = _optional_wh(data, "discharge_total_wh")
        batteries = data.get("batteries", [])
        if not isinstance(batteries, list):
            raise ValueError("'batteries' is not a JSON list")
        for index, entry in enumerate(batteries):
            where = f"batteries[{index}]: "
            if not isinstance(entry, Mapping):
                msg = f"{where}not a JSON object"
                raise ValueError(msg)
            number = entry.get("number")
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                msg = f"{where}number must be a positive integer, got {number!r}"
                raise ValueError(msg)
            serial = entry.get("serial_number")
            if serial is not None and not isinstance(serial, str):
                msg = f"{where}serial_number must be a string"
                raise ValueError(msg)
            baseline = _Baseline(
                number=number,
                serial_number=serial,
                charge_wh=_optional_wh(entry, "charge_wh", where=where),
                discharge_wh=_optional_wh(entry, "discharge_wh", where=where),
            )
            if baseline.key in ledger._baselines:
                msg = f"{where}battery {baseline.key} appears twice"
                raise ValueError(msg)
            ledger._baselines[baseline.key] = baseline
        return ledger


def _optional_wh(data: Mapping[str, Any], key: str, *, where: str = "") -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{where}{key} must be a number, got {value!r}"
        raise ValueError(msg)
    if not (math.isfinite(value) and value >= 0):
        msg = f"{where}{key} must be a finite number >= 0, got {value!r}"
        raise ValueError(msg)
    return float(value)
