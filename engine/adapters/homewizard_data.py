"""The HomeWizard API v1 ``/api/v1/data`` body as a ``P1Reading``: the parser, without I/O.

Apart from the client (``engine.adapters.homewizard``) so that what only parses bodies (the
in-process replay, its hundred thousand polls a day) does not load the HTTP client stack.
"""

from __future__ import annotations

from engine.adapters.meter_json import checked_body, energy_counter_kwh, finite_number
from engine.core.meter import P1Reading


def _counter(body: dict[str, object], direction: str) -> float | None:
    """``total_power_<direction>_kwh``, else the sum of the tariff registers."""
    return energy_counter_kwh(body, *_COUNTER_KEYS[direction])


# (total, tariff) keys per direction, built once: the parser runs at every poll.
_COUNTER_KEYS = {
    direction: (f"total_power_{direction}_kwh", f"total_power_{direction}_t{{t}}_kwh")
    for direction in ("import", "export")
}


def parse_data(body: object, *, device: str = "p1") -> P1Reading:
    """Validate a decoded ``/api/v1/data`` body; raise DeviceResponseError, never guess power."""
    body, power_w, fingerprint = checked_body(body, "active_power_w", device=device)
    return P1Reading(
        active_power_w=power_w,
        total_power_import_kwh=_counter(body, "import"),
        total_power_export_kwh=_counter(body, "export"),
        active_power_l1_w=finite_number(body.get("active_power_l1_w")),
        active_power_l2_w=finite_number(body.get("active_power_l2_w")),
        active_power_l3_w=finite_number(body.get("active_power_l3_w")),
        fingerprint=fingerprint,
    )
