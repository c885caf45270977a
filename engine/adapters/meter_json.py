"""JSON helpers shared by the HomeWizard API v1 and v2 parsers: one set of fail-safe rules."""

from __future__ import annotations

import json
import math

from engine.errors import DeviceResponseError

# Canonical JSON text of a decoded body. A decoded body cannot be circular, so the circular-
# reference check (a third of the cost) is skipped.
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)
# No home connection carries a megawatt (a 3 x 80 A main fuse is 55 kW): a total power beyond
# this is a garbled reply, not a reading (and beyond 2**53 W it would not even survive the
# conversion to float).
MAX_PLAUSIBLE_METER_W = 1_000_000.0


def decode_body(raw: str | bytes) -> object:
    """A meter's JSON text decoded, with ``NaN`` and ``Infinity`` kept as their text.

    They are not JSON (RFC 8259), so no field is ever a non-finite number; kept as text they
    are still never a number (``finite_number`` refuses text), and two bodies that carry one
    compare equal (``float("nan") != float("nan")`` would make a frozen dongle look fresh).
    Raises ValueError (JSONDecodeError, UnicodeDecodeError) or RecursionError.
    """
    return json.loads(raw, parse_constant=str)


class BodyFingerprint:
    """The fingerprint of a reading: equal exactly when the whole decoded bodies are equal.

    Compared as values (dict equality: key order does not matter, as in canonical JSON
    text), which costs a small fraction of serialising the body at every poll; hashed, which
    nothing does per poll, through the body's canonical JSON text. The body is never mutated
    after it is parsed.
    """

    __slots__ = ("_body",)

    def __init__(self, body: dict[str, object]) -> None:
        self._body = body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BodyFingerprint):
            return NotImplemented
        return self._body == other._body

    def __hash__(self) -> int:
        return hash(CANONICAL_JSON.encode(self._body))

    def __repr__(self) -> str:
        return f"BodyFingerprint({CANONICAL_JSON.encode(self._body)})"


def finite_number(value: object) -> float | None:
    """A finite JSON number as float, else None (bool is not a number in JSON)."""
    if type(value) is float:  # the common case, decoded JSON's float: float(value) is value
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return result if math.isfinite(result) else None


def counter_keys(prefix: str, direction: str) -> tuple[str, str]:
    """A counter's (total, tariff) keys: ``<prefix><direction>_kwh`` and the ``_t{t}`` registers
    (built once per parser module: the parsers run at every poll)."""
    return f"{prefix}{direction}_kwh", f"{prefix}{direction}_t{{t}}_kwh"


def energy_counter_kwh(body: dict[str, object], total_key: str, tariff_key: str) -> float | None:
    """``body[total_key]``, else the sum of the tariff registers (T1+T2 is the total).

    ``tariff_key`` has a ``{t}`` placeholder for the tariff number 1..4. Some firmware (the
    minimal / single-phase variants) sends only the tariff registers.
    """
    total = finite_number(body.get(total_key))
    if total is not None:
        return total
    parts = [finite_number(body.get(tariff_key.format(t=i))) for i in range(1, 5)]
    present = [p for p in parts if p is not None]
    return round(sum(present), 3) if present else None


def checked_body(
    body: object, power_key: str, *, device: str
) -> tuple[dict[str, object], float, BodyFingerprint]:
    """A decoded meter body as a JSON object, its total power and its fingerprint.

    Raises DeviceResponseError when the body is not an object, or when ``power_key`` is
    missing, not a finite number or beyond ``MAX_PLAUSIBLE_METER_W`` (no fallback to the
    phase sum: a body without the total is not a reading). Equal bodies (a frozen dongle)
    give equal fingerprints.
    """
    if not isinstance(body, dict):
        msg = f"{device}: body is {type(body).__name__}, not a JSON object"
        raise DeviceResponseError(msg, device=device)
    raw_power = body.get(power_key)
    power_w = finite_number(raw_power)
    if power_w is None:
        msg = f"{device}: {power_key} missing or invalid ({raw_power!r:.40})"
        raise DeviceResponseError(msg, device=device)
    if abs(power_w) > MAX_PLAUSIBLE_METER_W:
        msg = f"{device}: {power_key} implausible ({raw_power!r:.40} W)"
        raise DeviceResponseError(msg, device=device)
    return body, power_w, BodyFingerprint(body)
