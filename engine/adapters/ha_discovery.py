"""Home Assistant MQTT discovery: the retained config messages that describe MMBC's entities.

Pure: builds ``(topic, payload)`` pairs; ``engine.adapters.mqtt`` publishes them (retained,
JSON) and clears the configs of entities the engine no longer has. One device for the fleet
("MMBC") and one per battery ("MMBC Battery <n>", ``via_device`` the fleet), with names that
read as words: Home Assistant shows "MMBC Battery 1 State of charge".

Availability: every entity needs ``<prefix>/status/online`` = ``online``. What can become
unknown also needs its source's topic to read ``true``:

- ``status/meter_online``: grid power and the grid error RMS (the P1 reading is fresh);
- ``status/pv_meter_online``: PV power;
- ``status/batteries_online``: the fleet's SoC and battery power (a battery reports);
- ``battery/<n>/online``: a battery's readings.

So a value the engine no longer knows shows as unavailable, never as the last one.

``unique_id``s are ``<node>_<key>`` where ``<node>`` is the topic prefix with every
character outside ``[A-Za-z0-9_-]`` replaced by ``_`` (``mmbc`` -> ``mmbc_soc``,
``mmbc/virtual`` -> ``mmbc_virtual_soc``): stable across restarts and distinct per prefix.
A battery's keys carry its configured number (``battery_2_soc``), and its device lists the
serial number the battery reports, where it reports one (``serial_number`` in a device map
needs Home Assistant 2024.2 or later: home-assistant/core#108105).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine import __version__
from engine.core.model import BatteryIdentity, Mode
from engine.core.states import BatteryState, FleetState

MODE_OPTIONS: Final[tuple[str, ...]] = tuple(mode.value for mode in Mode)
# "unavailable" is Home Assistant's word for "no data": availability says that instead.
BATTERY_STATE_OPTIONS: Final[tuple[str, ...]] = tuple(
    state.value for state in BatteryState if state is not BatteryState.UNAVAILABLE
)
FLEET_STATE_OPTIONS: Final[tuple[str, ...]] = tuple(state.value for state in FleetState)
# Negates status/battery_power (+ charging) for Home Assistant's energy dashboard, which
# (since 2025.12) takes battery power as + discharging.
DISCHARGE_POWER_TEMPLATE: Final = "{{ -(value | int) }}"

_NODE_ID_INVALID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    """One discovery config: publish ``payload`` as JSON to ``topic``, retained."""

    topic: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BatteryDevice:
    """A configured battery: its number and, once read, what it says it is."""

    number: int
    identity: BatteryIdentity | None = None


def node_id(topic_prefix: str) -> str:
    """The discovery node id (and unique_id stem) for a topic prefix."""
    return _NODE_ID_INVALID.sub("_", topic_prefix.strip("/")) or "mmbc"


def config_topic(discovery_prefix: str, component: str, node: str, key: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{key}/config"


def config_filter(discovery_prefix: str, node: str) -> str:
    """The topic filter matching every config this node may have published."""
    return f"{discovery_prefix}/+/{node}/+/config"


def _availability(topic: str, available: str, not_available: str) -> dict[str, str]:
    return {"topic": topic, "payload_available": available, "payload_not_available": not_available}


def battery_device_info(node: str, device: BatteryDevice) -> dict[str, Any]:
    """The ``device`` map of one battery's entities."""
    identity = device.identity or BatteryIdentity()
    identifiers = [f"{node}_battery_{device.number}"]
    if identity.serial_number is not None:
        identifiers.append(f"marstek_{identity.serial_number}")
    info: dict[str, Any] = {
        "identifiers": identifiers,
        "name": f"MMBC Battery {device.number}",
        "manufacturer": "Marstek",
        "model": "Venus E" if identity.device_name is None else f"Venus E ({identity.device_name})",
        "via_device": node,
    }
    if identity.serial_number is not None:
        info["serial_number"] = identity.serial_number
    if identity.firmware is not None:
        info["sw_version"] = identity.firmware
    return info


def discovery_messages(
    *,
    topic_prefix: str,
    discovery_prefix: str,
    batteries: Sequence[BatteryDevice],
    has_pv: bool,
) -> list[DiscoveryMessage]:
    """Every discovery config for the fleet and its batteries, in publishing order."""
    node = node_id(topic_prefix)
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
    engine = _availability(f"{topic_prefix}/status/online", "online", "offline")

    def needs(suffix: str) -> list[dict[str, str]]:
        return [engine, _availability(f"{topic_prefix}/{suffix}", "true", "false")]

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
            "device": device,
            "origin": origin,
            "availability": availability,
            "availability_mode": "all",
            "qos": 1,
            **entity,
        }
        messages.append(
            DiscoveryMessage(config_topic(discovery_prefix, component, node, key), payload)
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

    def power(name: str, suffix: str, **extra: Any) -> dict[str, Any]:
        return sensor(
            name, suffix, device_class="power", state_class="measurement", unit="W", **extra
        )

    def energy(name: str, suffix: str, unit: str, **extra: Any) -> dict[str, Any]:
        return sensor(
            name, suffix, device_class="energy", state_class="total_increasing", unit=unit, **extra
        )

    def flag(name: str, suffix: str, device_class: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "state_topic": f"{topic_prefix}/{suffix}",
            "device_class": device_class,
            "payload_on": "true",
            "payload_off": "false",
            **extra,
        }

    # -- the fleet
    fleet = [engine]
    fleet_readings = needs("status/batteries_online")
    grid = needs("status/meter_online")
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
        fleet_readings,
    )
    # + = charging, as status/battery_power (the product's topic table)
    add(
        "sensor",
        "battery_power",
        power("Battery power", "status/battery_power"),
        fleet_device,
        fleet_readings,
    )
    add(
        "sensor",
        "battery_discharge_power",
        power(
            "Battery discharge power",
            "status/battery_power",
            value_template=DISCHARGE_POWER_TEMPLATE,
        ),
        fleet_device,
        fleet_readings,
    )
    add("sensor", "grid_power", power("Grid power", "status/grid_power"), fleet_device, grid)
    if has_pv:
        add(
            "sensor",
            "pv_power",
            power("PV power", "status/pv_power"),
            fleet_device,
            needs("status/pv_meter_online"),
        )
    add(
        "sensor",
        "charge_total_wh",
        energy("Energy charged", "status/charge_total_wh", "Wh"),
        fleet_device,
        fleet,
    )
    add(
        "sensor",
        "discharge_total_wh",
        energy("Energy discharged", "status/discharge_total_wh", "Wh"),
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
        "fleet_state",
        sensor(
            "Fleet state",
            "status/fleet_state",
            device_class="enum",
            options=list(FLEET_STATE_OPTIONS),
            icon="mdi:state-machine",
        ),
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
        power("Grid error RMS (1 min)", "status/grid_rms_w", entity_category="diagnostic"),
        fleet_device,
        grid,
    )
    add(
        "binary_sensor",
        "meter_online",
        flag("Meter", "status/meter_online", "connectivity", entity_category="diagnostic"),
        fleet_device,
        fleet,
    )

    # -- the batteries
    for battery in batteries:
        n = battery.number
        base = f"battery/{n}"
        key = f"battery_{n}"
        device = battery_device_info(node, battery)
        # A battery's readings are meaningless while it is offline.
        readings = needs(f"{base}/online")
        add(
            "sensor",
            f"{key}_soc",
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
        # + = charging, as status/battery_power
        add("sensor", f"{key}_power", power("Power", f"{base}/power"), device, readings)
        add(
            "sensor",
            f"{key}_state",
            sensor(
                "State",
                f"{base}/state",
                device_class="enum",
                options=list(BATTERY_STATE_OPTIONS),
                icon="mdi:state-machine",
            ),
            device,
            readings,
        )
        add(
            "binary_sensor",
            f"{key}_online",
            flag("Online", f"{base}/online", "connectivity", entity_category="diagnostic"),
            device,
            fleet,
        )
        add(
            "sensor",
            f"{key}_charge_total_kwh",
            energy(
                "Energy charged",
                f"{base}/charge_total_kwh",
                "kWh",
                suggested_display_precision=2,
            ),
            device,
            readings,
        )
        add(
            "sensor",
            f"{key}_discharge_total_kwh",
            energy(
                "Energy discharged",
                f"{base}/discharge_total_kwh",
                "kWh",
                suggested_display_precision=2,
            ),
            device,
            readings,
        )
        add(
            "sensor",
            f"{key}_stored_energy_kwh",
            sensor(
                "Stored energy",
                f"{base}/stored_energy_kwh",
                device_class="energy_storage",
                state_class="measurement",
                unit="kWh",
                suggested_display_precision=2,
            ),
            device,
            readings,
        )
        add(
            "sensor",
            f"{key}_voltage",
            sensor(
                "Voltage",
                f"{base}/voltage",
                device_class="voltage",
                state_class="measurement",
                unit="V",
                suggested_display_precision=2,
            ),
            device,
            readings,
        )
        add(
            "sensor",
            f"{key}_current",
            # + = charging, as the battery's power
            sensor(
                "Current",
                f"{base}/current",
                device_class="current",
                state_class="measurement",
                unit="A",
                suggested_display_precision=2,
            ),
            device,
            readings,
        )
        add(
            "sensor",
            f"{key}_temperature",
            sensor(
                "Temperature",
                f"{base}/temperature",
                device_class="temperature",
                state_class="measurement",
                unit="°C",
                suggested_display_precision=1,
            ),
            device,
            readings,
        )
        add(
            "binary_sensor",
            f"{key}_alarm",
            flag(
                "Alarm",
                f"{base}/alarm",
                "problem",
                entity_category="diagnostic",
                json_attributes_topic=f"{topic_prefix}/{base}/alarms",
            ),
            device,
            readings,
        )
        add(
            "binary_sensor",
            f"{key}_fault",
            flag(
                "Fault",
                f"{base}/fault",
                "problem",
                entity_category="diagnostic",
                json_attributes_topic=f"{topic_prefix}/{base}/faults",
            ),
            device,
            readings,
        )
    return messages
