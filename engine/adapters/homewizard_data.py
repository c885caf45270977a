"""The HomeWizard API v1 ``/api/v1/data`` body as a ``P1Reading``: the parser, without I/O.

Apart from the client (``engine.adapters.homewizard``) so that what only parses bodies (the
in-process replay, its hundred thousand polls a day) does not load the HTTP client stack.
"""

from __future__ import annotations

from engine.adapters.meter_json import checked_body, counter_keys, energy_counter_kwh, finite_number
from engine.core.meter import P1Reading

_IMPORT_KEYS = counter_keys("total_power_", "import")
_EXPORT_KEYS = counter_keys("total_power_", "export")


def parse_data(body: object, *, device: str = "p1") -> P1Reading:
    """Validate a decoded ``/api/v1/data`` body; raise DeviceResponseError, never guess power."""
    body, power_w, fingerprint = checked_body(body, "active_power_w", device=device)
    return P1Reading(
        active_power_w=power_w,
        total_power_import_kwh=energy_counter_kwh(body, *_IMPORT_KEYS),
        total_power_export_kwh=energy_counter_kwh(body, *_EXPORT_KEYS),
        active_power_l1_w=finite_number(body.get("active_power_l1_w")),
        active_power_l2_w=finite_number(body.get("active_power_l2_w")),
        active_power_l3_w=finite_number(body.get("active_power_l3_w")),
        fingerprint=fingerprint,
    )
