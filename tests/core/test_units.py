"""Sign conventions at the edges, and the Marstek register word helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.adapters.marstek_registers import (
    FORCE_CHARGE,
    FORCE_DISCHARGE,
    FORCE_STOP,
    MAX_SETPOINT_W,
    REG_CHARGE_SETPOINT,
    REG_DISCHARGE_SETPOINT,
    REG_FORCE_MODE,
    from_i16,
    from_i32,
    setpoint_writes,
    to_i16,
    to_i32,
    to_u32,
)
from engine.core.units import (
    battery_power_for_mqtt,
    charging_w,
    discharging_w,
    pv_power_from_meter,
)

INT32 = st.integers(-(2**31), 2**31 - 1)


# ---------------------------------------------------------------------------- signs
@pytest.mark.parametrize(
    ("engine_w", "mqtt_w"),
    [
        (800.0, -800),  # discharging inside the engine -> negative on MQTT
        (-800.0, 800),  # charging -> positive on MQTT
        (0.0, 0),
        (-0.0, 0),
        (0.4, 0),
        (-0.6, 1),
        (1.0, -1),  # the 1 W keep-alive is still a discharge
    ],
)
def test_battery_power_for_mqtt_flips_the_sign(engine_w: float, mqtt_w: int) -> None:
    result = battery_power_for_mqtt(engine_w)
    assert result == mqtt_w
    assert type(result) is int


@given(st.floats(-10_000.0, 10_000.0))
def test_battery_power_for_mqtt_is_positive_exactly_when_charging(engine_w: float) -> None:
    mqtt_w = battery_power_for_mqtt(engine_w)
    assert abs(mqtt_w + engine_w) <= 0.5
    if mqtt_w > 0:
        assert engine_w < 0
    if mqtt_w < 0:
        assert engine_w > 0


@pytest.mark.parametrize(
    ("active_w", "negative_when_producing", "pv_w"),
    [
        (-2100.0, True, 2100.0),  # a kWh meter reading the inverter's feed-in
        (2100.0, False, 2100.0),
        (5.0, True, -5.0),  # the inverter's standby draw at night: not production
        (0.0, True, 0.0),
        (0.0, False, 0.0),
    ],
)
def test_pv_power_from_meter(active_w: float, negative_when_producing: bool, pv_w: float) -> None:
    assert pv_power_from_meter(active_w, negative_when_producing=negative_when_producing) == pv_w


@pytest.mark.parametrize(
    ("power_w", "charge_w", "discharge_w"),
    [(-300.0, 300.0, 0.0), (300.0, 0.0, 300.0), (0.0, 0.0, 0.0), (-1.0, 1.0, 0.0)],
)
def test_charging_and_discharging_parts(
    power_w: float, charge_w: float, discharge_w: float
) -> None:
    assert charging_w(power_w) == charge_w
    assert discharging_w(power_w) == discharge_w


# ---------------------------------------------------------------------------- register words
@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, (0, 0)),
        (2500, (0, 2500)),
        (-1, (0xFFFF, 0xFFFF)),
        (-2500, (0xFFFF, 0xF63C)),
        (65536, (1, 0)),
        (2**31 - 1, (0x7FFF, 0xFFFF)),
        (-(2**31), (0x8000, 0)),
    ],
)
def test_i32_words_high_first(value: int, words: tuple[int, int]) -> None:
    assert from_i32(value) == words
    assert to_i32(*words) == value


@settings(max_examples=300)
@given(INT32)
def test_i32_round_trip(value: int) -> None:
    high, low = from_i32(value)
    assert 0 <= high <= 0xFFFF
    assert 0 <= low <= 0xFFFF
    assert to_i32(high, low) == value
    assert to_u32(high, low) == value & 0xFFFF_FFFF


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_words_round_trip(high: int, low: int) -> None:
    assert from_i32(to_i32(high, low)) == (high, low)
    assert 0 <= to_u32(high, low) < 2**32


def test_unsigned_energy_counter_above_the_sign_bit() -> None:
    assert to_u32(0x8000, 0x0001) == 2**31 + 1
    assert to_i32(0x8000, 0x0001) == -(2**31) + 1


@given(st.integers(-(2**15), 2**15 - 1))
def test_i16_round_trip(value: int) -> None:
    raw = from_i16(value)
    assert 0 <= raw <= 0xFFFF
    assert to_i16(raw) == value


@pytest.mark.parametrize(("raw", "value"), [(0xFFFF, -1), (0x8000, -32768), (0x7FFF, 32767)])
def test_i16_sign(raw: int, value: int) -> None:
    assert to_i16(raw) == value


# ---------------------------------------------------------------------------- setpoint writes
@pytest.mark.parametrize(
    ("power_w", "writes"),
    [
        (
            800,
            (
                (REG_CHARGE_SETPOINT, 0),
                (REG_DISCHARGE_SETPOINT, 800),
                (REG_FORCE_MODE, FORCE_DISCHARGE),
            ),
        ),
        (
            -800,
            (
                (REG_DISCHARGE_SETPOINT, 0),
                (REG_CHARGE_SETPOINT, 800),
                (REG_FORCE_MODE, FORCE_CHARGE),
            ),
        ),
        (
            0,
            (
                (REG_FORCE_MODE, FORCE_STOP),
                (REG_CHARGE_SETPOINT, 0),
                (REG_DISCHARGE_SETPOINT, 0),
            ),
        ),
        (
            3000,
            (
                (REG_CHARGE_SETPOINT, 0),
                (REG_DISCHARGE_SETPOINT, 2500),
                (REG_FORCE_MODE, FORCE_DISCHARGE),
            ),
        ),
        (
            -99_999,
            (
                (REG_DISCHARGE_SETPOINT, 0),
                (REG_CHARGE_SETPOINT, 2500),
                (REG_FORCE_MODE, FORCE_CHARGE),
            ),
        ),
        (
            1,
            (
                (REG_CHARGE_SETPOINT, 0),
                (REG_DISCHARGE_SETPOINT, 1),
                (REG_FORCE_MODE, FORCE_DISCHARGE),
            ),
        ),
    ],
    ids=["discharge", "charge", "idle", "clamp-discharge", "clamp-charge", "keepalive"],
)
def test_setpoint_writes(power_w: int, writes: tuple[tuple[int, int], ...]) -> None:
    assert setpoint_writes(power_w) == writes


@given(st.integers(-100_000, 100_000))
def test_setpoint_writes_command_one_direction_within_limits(power_w: int) -> None:
    writes = setpoint_writes(power_w)
    regs = dict(writes)
    assert len(regs) == 3, "each register written once"
    assert all(0 <= v <= 0xFFFF for v in regs.values())
    charge, discharge = regs[REG_CHARGE_SETPOINT], regs[REG_DISCHARGE_SETPOINT]
    assert charge == 0 or discharge == 0
    assert max(charge, discharge) == min(abs(power_w), MAX_SETPOINT_W)
    if power_w > 0:
        assert regs[REG_FORCE_MODE] == FORCE_DISCHARGE
    elif power_w < 0:
        assert regs[REG_FORCE_MODE] == FORCE_CHARGE
    else:
        assert regs[REG_FORCE_MODE] == FORCE_STOP
    if power_w:
        # The force mode goes last: the battery never runs the new direction with a
        # stale setpoint, and the unused direction is zeroed before.
        assert writes[-1][0] == REG_FORCE_MODE
        assert writes[0][1] == 0
    else:
        assert writes[0] == (REG_FORCE_MODE, FORCE_STOP), "stop first when going idle"
