"""Home Assistant MQTT discovery: the retained config messages that describe MMBC's entities.

Pure: builds ``(topic, payload)`` pairs; ``engine.adapters.mqtt`` publishes them (retained,
JSON). One device for the fleet and one per battery (``via_device`` the fleet). Every
entity is available only while ``<prefix>/status/online`` reads ``online``; a battery's
entities also need ``<prefix>/battery/<n>/online`` to read ``true``.

``unique_id``s are ``<node>_<key>`` where ``<node>`` is the topic prefix with every
character outside ``[A-Za-z0-9_-]`` replaced by ``_`` (``mmbc`` -> ``mmbc_soc``,
``mmbc/virtual`` -> ``mmbc_virtual_soc``): stable across restarts and distinct per prefix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine import __version__
from engine.core.model import Mode

MODE_OPTIONS: Final[tuple[str, ...]] = tuple(mode.value for mode in Mode)

_NODE_ID_INVALID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    """One discovery config: publish ``payload`` as JSON to ``topic``, retained.

    ``payload is None`` means "remove this entity" (an empty retained payload), used for
    the PV sensor when no PV meter is configured.
    """

    topic: str
    payload: dict[str, Any] | None


def node_id(topic_prefix: str) -> str:
    """The discovery node id (and unique_id stem) for a topic prefix."""
    return _NODE_ID_INVALID.sub("_", topic_prefix.strip("/")) or "mmbc"


def _config_topic(discovery_prefix: str, component: str, node: str, key: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{key}/config"


def discovery_messages(
    *,
    topic_prefix: str,
    discovery_prefix: str,
    battery_names: Sequence[str],
    has_pv: bool,
) -> list[DiscoveryMessage]:
    """Every discovery config for the fleet and its batteries, in publishing order."""
    node = node_id(topic_prefix)
    online_topic = f"{topic_prefix}/status/online"
    origin = {
        "name": "MMBC",
        "sw_version": __version__,
        "support_url": "https://github.com/vmangelschots/MMBC",
    }
    fleet_device: dict[str, Any] = {
        "identifiers": [node],
        "name": "MMBC",
        "manufacturer": "MMBC",
        "model": "Virtual battery (fleet)",
        "sw_version": __version__,
    }
    engine_availability = {
        "topic": online_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    messages: list[DiscoveryMessage] = []

    def add(
        component: str,
        key: str,
        entity: dict[str, Any],
        device: dict[str, Any],
        availability: list[dict[str, str]],
    ) -> None:
        payload: dict[str, Any] = {
            "unique_id": f"{node}_{key}",
            "has_entity_name": True,
            "device": device,
            "origin": origin,
            "availability": availability,
            "availability_mode": "all",
            "qos": 1,
            **entity,
        }
        messages.append(
            DiscoveryMessage(_config_topic(discovery_prefix, component, node, key), payload)
        )

    def sensor(
        name: str,
        suffix: str,
        *,
        device_class: str | None = None,
        state_class: str | None = None,
        unit: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        entity: dict[str, Any] = {"name": name, "state_topic": f"{topic_prefix}/{suffix}"}
        if device_class is not None:
            entity["device_class"] = device_class
        if state_class is not None:
            entity["state_class"] = state_class
        if unit is not None:
            entity["unit_of_measurement"] = unit
        entity.update(extra)
        return entity

    fleet = [engine_availability]

    def power(name: str, suffix: str, **extra: Any) -> dict[str, Any]:
        return sensor(
            name, suffix, device_class="power", state_class="measurement", unit="W", **extra
        )

    def energy(name: str, suffix: str) -> dict[str, Any]:
        return sensor(
            name, suffix, device_class="energy", state_class="total_increasing", unit="Wh"
        )

    add(
        "sensor",
        "soc",
        sensor(
            "State of charge",
            "status/soc",
            device_class="battery",
            state_class="measurement",
            unit="%",
            suggested_display_precision=1,
        ),
        fleet_device,
        fleet,
    )
    add(
        "sensor",
        "battery_power",
        # + = charging, as status/battery_power
        power("Battery power", "status/battery_power"),
        fleet_device,
        fleet,
    )
    add(
        "sensor",
        "grid_power",
        power("Grid power", "status/grid_power"),
        fleet_device,
        fleet,
    )
    pv_topic = _config_topic(discovery_prefix, "sensor", node, "pv_power")
    if has_pv:
        add("sensor", "pv_power", power("PV power", "status/pv_power"), fleet_device, fleet)
    else:
        # A PV meter configured earlier left a retained config: remove its entity.
        messages.append(DiscoveryMessage(pv_topic, None))
    add(
        "sensor",
        "charge_total_wh",
        energy("Energy charged", "status/charge_total_wh"),
        fleet_device,
        fleet,
    )
    add(
        "sensor",
        "discharge_total_wh",
        energy("Energy discharged", "status/discharge_total_wh"),
        fleet_device,
        fleet,
    )
    add(
        "switch",
        "block_discharge",
        {
            "name": "Block discharge",
            "command_topic": f"{topic_prefix}/control/block_discharge",
            "state_topic": f"{topic_prefix}/status/discharge_blocked",
            "payload_on": "true",
            "payload_off": "false",
            "state_on": "true",
            "state_off": "false",
            "retain": False,
            "icon": "mdi:battery-lock",
        },
        fleet_device,
        fleet,
    )
    add(
        "select",
        "mode",
        {
            "name": "Mode",
            "command_topic": f"{topic_prefix}/control/mode",
            "state_topic": f"{topic_prefix}/status/mode",
            "options": list(MODE_OPTIONS),
            "retain": False,
            "icon": "mdi:battery-sync",
        },
        fleet_device,
        fleet,
    )
    add(
        "sensor",
        "control_quality",
        sensor(
            "Control quality",
            "status/control_quality",
            entity_category="diagnostic",
            icon="mdi:chart-bell-curve",
        ),
        fleet_device,
        fleet,
    )
    add(
        "sensor",
        "grid_rms_w",
        power(
            "Grid error RMS (1 min)",
            "status/grid_rms_w",
            entity_category="diagnostic",
        ),
        fleet_device,
        fleet,
    )

    for index, name in enumerate(battery_names, start=1):
        base = f"battery/{index}"
        prefix_key = f"battery_{index}"
        device: dict[str, Any] = {
            "identifiers": [f"{node}_{prefix_key}"],
            "name": f"MMBC {name}",
            "manufacturer": "Marstek",
            "model": "Venus E",
            "via_device": node,
        }
        # A battery's readings are meaningless while it is offline.
        readings = [
            engine_availability,
            {
                "topic": f"{topic_prefix}/{base}/online",
                "payload_available": "true",
                "payload_not_available": "false",
            },
        ]
        add(
            "sensor",
            f"{prefix_key}_soc",
            sensor(
                "State of charge",
                f"{base}/soc",
                device_class="battery",
                state_class="measurement",
                unit="%",
                suggested_display_precision=1,
            ),
            device,
            readings,
        )
        add(
            "sensor",
            f"{prefix_key}_power",
            # + = charging, as status/battery_power
            power("Power", f"{base}/power"),
            device,
            readings,
        )
        add(
            "sensor",
            f"{prefix_key}_state",
            sensor("State", f"{base}/state", icon="mdi:state-machine"),
            device,
            fleet,
        )
        add(
            "binary_sensor",
            f"{prefix_key}_online",
            {
                "name": "Online",
                "state_topic": f"{topic_prefix}/{base}/online",
                "device_class": "connectivity",
                "payload_on": "true",
                "payload_off": "false",
                "entity_category": "diagnostic",
            },
            device,
            fleet,
        )
    return messages
