"""JSON helpers shared by the HomeWizard API v1 and v2 parsers: one set of fail-safe rules."""

from __future__ import annotations

import json
import math

from engine.errors import DeviceResponseError

# Canonical JSON text of a decoded body. A decoded body cannot be circular, so the circular-
# reference check (a third of the cost, paid on every poll) is skipped.
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)


def finite_number(value: object) -> float | None:
    """A finite JSON number as float, else None (bool is not a number in JSON)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return result if math.isfinite(result) else None


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
) -> tuple[dict[str, object], float, str]:
    """A decoded meter body as a JSON object, its total power and its fingerprint.

    Raises DeviceResponseError when the body is not an object, when ``power_key`` is missing
    or not a finite number (no fallback to the phase sum: a body without the total is not a
    reading), or when the body is not plain JSON. The fingerprint is the canonical text of the
    whole body: equal bodies (a frozen dongle) give equal fingerprints.
    """
    if not isinstance(body, dict):
        msg = f"{device}: body is {type(body).__name__}, not a JSON object"
        raise DeviceResponseError(msg, device=device)
    raw_power = body.get(power_key)
    power_w = finite_number(raw_power)
    if power_w is None:
        msg = f"{device}: {power_key} missing or invalid ({raw_power!r:.40})"
        raise DeviceResponseError(msg, device=device)
    try:
        fingerprint = CANONICAL_JSON.encode(body)
    except (TypeError, ValueError, RecursionError) as exc:
        msg = f"{device}: body is not plain JSON ({exc})"
        raise DeviceResponseError(msg, device=device) from exc
    return body, power_w, fingerprint
