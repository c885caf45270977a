"""The simulated HomeWizard meters: sampling, latency, noise, counters, served JSON, faults."""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sim.plant.meter import API_DISABLED_BODY, KwhMeterModel, P1MeterModel
from sim.plant.params import MeterParams

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "homewizard"
QUIET = MeterParams(noise_w=0.0)
MONDAY_10H = datetime(2024, 6, 3, 10, tzinfo=UTC)

# Data points the v1 API documents for the P1 meter (docs/v1/measurement.mdx) that the fixture
# data.json happens not to carry; the sim may serve them.
DOCUMENTED_P1_EXTRAS = {
    "active_voltage_l1_v",
    "active_voltage_l2_v",
    "active_voltage_l3_v",
}


def _fixture(rel: str) -> dict[str, object]:
    body = json.loads((FIXTURES / rel).read_text())
    assert isinstance(body, dict)
    return body


def _kind(value: object) -> str:
    return type(value).__name__


def _assert_same_types(served: dict[str, object], real: dict[str, object]) -> None:
    """Same JSON types key by key; a fixture's whole-number kWh/Hz may be a float here."""
    for key, real_value in real.items():
        value = served[key]
        if isinstance(real_value, float) or (
            isinstance(real_value, int) and key.endswith(("_kwh", "_hz"))
        ):
            assert isinstance(value, int | float), key
            assert not isinstance(value, bool), key
        else:
            assert _kind(value) == _kind(real_value), (key, value, real_value)


def _run(model: P1MeterModel | KwhMeterModel, power_w: float, until_s: float, dt_s: float) -> None:
    steps = round(until_s / dt_s)
    for i in range(steps + 1):
        model.observe(i * dt_s, power_w)


def test_no_reading_before_the_first_sample_is_visible() -> None:
    model = P1MeterModel(QUIET)
    assert model.latest(0.0) is None
    model.observe(0.0, 400.0)
    assert model.latest(0.4) is None  # taken at 0 s, visible from 0.5 s
    sample = model.latest(0.5)
    assert sample is not None
    assert (sample.at_s, sample.grid_w) == (0.0, 400)
    assert "active_power_w" not in P1MeterModel(QUIET).data_json(0.0)


@pytest.mark.parametrize(("interval_s", "latency_s"), [(1.0, 0.5), (10.0, 0.5), (1.0, 2.0)])
def test_sample_is_the_power_at_its_instant_and_visible_after_the_latency(
    interval_s: float, latency_s: float
) -> None:
    model = P1MeterModel(MeterParams(interval_s=interval_s, latency_s=latency_s, noise_w=0.0))
    dt_s = 0.1
    for i in range(400):
        now_s = i * dt_s
        model.observe(now_s, float(i))  # the power names the plant step it was set at
        sample = model.latest(now_s)
        newest_at_s = math.floor((now_s - latency_s) / interval_s + 1e-9) * interval_s
        if newest_at_s < 0:
            assert sample is None
            continue
        assert sample is not None
        assert sample.at_s == pytest.approx(newest_at_s)
        assert sample.grid_w == round(sample.at_s / dt_s)  # the step in force at that instant


def test_samples_between_observations_use_the_held_power() -> None:
    model = P1MeterModel(QUIET)
    model.observe(0.0, 100.0)
    model.observe(5.0, 900.0)  # plant step of 5 s: samples 1..4 s saw 100 W
    sample = model.latest(4.6)
    assert sample is not None
    assert (sample.at_s, sample.grid_w) == (4.0, 100)
    sample = model.latest(5.5)
    assert sample is not None
    assert (sample.at_s, sample.grid_w) == (5.0, 900)


def test_readings_are_integer_watts_with_noise() -> None:
    model = P1MeterModel(MeterParams(noise_w=10.0), rng_seed=3)
    values = []
    for t in range(20):
        model.observe(float(t), 333.3)
        body = model.data_json(t + 0.5)
        assert isinstance(body["active_power_w"], int)
        sample = model.latest(t + 0.5)
        assert sample is not None
        assert float(sample.grid_w).is_integer()
        values.append(sample.grid_w)
    assert len(set(values)) > 5  # noise actually applied


def test_noise_has_roughly_the_configured_sigma() -> None:
    model = P1MeterModel(MeterParams(noise_w=10.0), rng_seed=7)
    values = []
    for t in range(3000):
        model.observe(float(t), 500.0)
        sample = model.latest(t + 0.5)
        assert sample is not None
        values.append(sample.grid_w)
    assert statistics.fmean(values) == pytest.approx(500.0, abs=1.5)
    assert statistics.pstdev(values) == pytest.approx(10.0, abs=0.8)


def test_same_seed_same_readings_different_seed_different() -> None:
    def readings(seed: int) -> list[float]:
        model = P1MeterModel(MeterParams(noise_w=10.0), rng_seed=seed)
        out = []
        for t in range(30):
            model.observe(float(t), 0.0)
            sample = model.latest(t + 0.5)
            assert sample is not None
            out.append(sample.grid_w)
        return out

    assert readings(1) == readings(1)
    assert readings(1) != readings(2)


def test_params_seed_is_used_when_no_rng_seed_given() -> None:
    a = P1MeterModel(MeterParams(noise_w=10.0, seed=5))
    b = P1MeterModel(MeterParams(noise_w=10.0), rng_seed=5)
    for model in (a, b):
        model.observe(0.0, 0.0)
    assert a.latest(1.0) == b.latest(1.0)


def test_import_counters_integrate_constant_power_exactly() -> None:
    model = P1MeterModel(QUIET, start=MONDAY_10H, import_kwh=(0.0, 0.0), export_kwh=(0.0, 0.0))
    _run(model, 1200.0, 3600.0, 1.0)
    body = model.data_json(3600.5)
    assert body["total_power_import_kwh"] == pytest.approx(1.2, abs=0.0005)
    assert body["total_power_import_t2_kwh"] == pytest.approx(1.2, abs=0.0005)  # weekday day
    assert body["total_power_import_t1_kwh"] == 0.0
    assert body["total_power_export_kwh"] == 0.0
    assert body["active_tariff"] == 2


def test_export_counters_split_at_the_tariff_change() -> None:
    start = datetime(2024, 6, 3, 22, 30, tzinfo=UTC)  # 23:00 switches to the low tariff
    model = P1MeterModel(QUIET, start=start, import_kwh=(0.0, 0.0), export_kwh=(0.0, 0.0))
    _run(model, -800.0, 3600.0, 2.0)
    body = model.data_json(3600.5)
    assert body["total_power_export_kwh"] == pytest.approx(0.8, abs=0.0005)
    assert body["total_power_export_t2_kwh"] == pytest.approx(0.4, abs=0.0005)
    assert body["total_power_export_t1_kwh"] == pytest.approx(0.4, abs=0.0005)
    assert body["total_power_import_kwh"] == 0.0
    assert body["active_tariff"] == 1


def test_counters_are_served_with_three_decimals_from_the_start_values() -> None:
    model = P1MeterModel(QUIET, import_kwh=(10.0004, 20.0), export_kwh=(1.0, 2.0))
    model.observe(0.0, 0.0)
    body = model.data_json(1.0)
    assert body["total_power_import_t1_kwh"] == 10.0
    assert body["total_power_import_kwh"] == 30.0
    assert body["total_power_export_kwh"] == 3.0


def test_quarter_hour_average_and_monthly_peak() -> None:
    model = P1MeterModel(QUIET)
    for t in range(1801):
        model.observe(float(t), 2000.0 if t < 900 else 500.0)
        if t == 1350:
            halfway = model.data_json(t + 0.5)
            assert halfway["active_power_average_w"] == pytest.approx(500.0, abs=0.01)
            assert halfway["montly_power_peak_w"] == pytest.approx(2000.0, abs=0.01)
    body = model.data_json(1800.5)
    assert body["montly_power_peak_w"] == pytest.approx(2000.0, abs=0.01)
    assert body["montly_power_peak_timestamp"] == 240603001500  # end of the first quarter


def test_p1_body_has_the_real_keys_and_types() -> None:
    real = _fixture("HWE-P1/data.json")
    model = P1MeterModel(MeterParams(noise_w=10.0))
    _run(model, -543.0, 10.0, 0.5)
    served = model.data_json(10.0)
    assert set(real) <= set(served)
    assert set(served) - set(real) <= DOCUMENTED_P1_EXTRAS
    _assert_same_types(served, real)
    external = served["external"]
    assert isinstance(external, list)
    real_external = real["external"]
    assert isinstance(real_external, list)
    assert set(external[0]) == set(real_external[0])
    phases = [served[f"active_power_l{n}_w"] for n in (1, 2, 3)]
    assert sum(phases) == served["active_power_w"]  # type: ignore[arg-type]


def test_single_phase_p1_omits_l2_and_l3_and_gas_can_be_off() -> None:
    real = _fixture("HWE-P1/data_no_gas.json")
    model = P1MeterModel(QUIET, phases=1, gas=False)
    _run(model, 250.0, 3.0, 1.0)
    served = model.data_json(3.0)
    assert served["active_power_l1_w"] == served["active_power_w"] == 250
    assert not any("l2" in key or "l3" in key for key in served)
    assert not {"total_gas_m3", "gas_timestamp", "external"} & set(served)
    _assert_same_types(served, {k: v for k, v in real.items() if v is not None and k in served})


def test_every_new_sample_changes_the_body_even_at_constant_power() -> None:
    for model in (P1MeterModel(QUIET), KwhMeterModel(QUIET)):
        bodies = set()
        for t in range(60):
            model.observe(float(t), 0.0)
            bodies.add(json.dumps(model.data_json(t + 0.5), sort_keys=True))
        assert len(bodies) == 60


def test_between_samples_the_body_is_unchanged() -> None:
    model = P1MeterModel(MeterParams(noise_w=10.0))
    model.observe(0.0, 100.0)
    model.observe(0.5, 100.0)
    assert model.data_json(0.6) == model.data_json(0.9)


def test_device_json_is_a_v1_p1() -> None:
    real = _fixture("HWE-P1/device.json")
    served = P1MeterModel().device_json()
    assert set(served) == set(real)
    assert served["product_type"] == "HWE-P1"
    assert served["api_version"] == "v1"
    _assert_same_types(served, real)


def test_kwh_meter_matches_the_hwe_kwh1_shape_and_is_negative_while_producing() -> None:
    real = _fixture("HWE-KWH1/data.json")
    model = KwhMeterModel(MeterParams(noise_w=2.0), import_kwh=0.0, export_kwh=0.0)
    for t in range(3601):
        model.observe_pv(float(t), 1500.0)
    served = model.data_json(3600.5)
    assert set(served) == set(real)
    _assert_same_types(served, real)
    power_w = served["active_power_w"]
    assert isinstance(power_w, float)
    assert power_w == pytest.approx(-1500.0, abs=10.0)
    assert served["total_power_export_kwh"] == pytest.approx(1.5, abs=0.01)
    assert served["total_power_import_kwh"] == 0.0
    assert served["active_power_l1_w"] == power_w
    current_a = served["active_current_a"]
    assert isinstance(current_a, float)
    assert current_a > 0


def test_kwh_device_json() -> None:
    real = _fixture("HWE-KWH1/device.json")
    served = KwhMeterModel().device_json()
    assert served["product_type"] == "HWE-KWH1"
    assert set(served) == set(real)


def test_observing_backwards_in_time_is_refused() -> None:
    model = P1MeterModel()
    model.observe(5.0, 0.0)
    with pytest.raises(ValueError, match="after"):
        model.observe(4.0, 0.0)


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="phases"):
        P1MeterModel(phases=2)
    with pytest.raises(ValueError, match="params"):
        P1MeterModel(MeterParams(interval_s=0.0))


# -- faults ---------------------------------------------------------------------------------


def _live_model() -> P1MeterModel:
    model = P1MeterModel(MeterParams(noise_w=10.0))
    model.observe(0.0, 300.0)
    return model


def test_healthy_response_is_the_data_body() -> None:
    model = _live_model()
    response = model.respond_data(1.0)
    assert response is not None
    assert response.status == 200
    assert json.loads(response.body) == model.data_json(1.0)


def test_outage_gives_no_answer_and_http_error_a_500() -> None:
    model = _live_model()
    model.set_fault("outage")
    assert model.respond_data(1.0) is None
    assert model.respond_device(1.0) is None
    model.set_fault("meter_http_error")
    response = model.respond_data(1.0)
    assert response is not None
    assert response.status == 500


def test_api_disabled_is_the_real_403_body() -> None:
    model = _live_model()
    model.set_fault("api_disabled")
    response = model.respond_data(1.0)
    assert response is not None
    assert response.status == 403
    assert json.loads(response.body) == {"error": {"id": 202, "description": "API not enabled"}}
    assert response.body == API_DISABLED_BODY
    device = model.respond_device(1.0)
    assert device is not None
    assert device.status == 200


def test_garbage_alternates_invalid_json_and_a_body_without_power() -> None:
    model = _live_model()
    model.set_fault("garbage")
    first, second, third = (model.respond_data(1.0) for _ in range(3))
    assert first is not None
    assert second is not None
    assert third is not None
    with pytest.raises(json.JSONDecodeError):
        json.loads(first.body)
    body = json.loads(second.body)
    assert "active_power_w" not in body
    assert "active_power_l1_w" in body  # phases stay: a client must not sum them
    assert third.body == first.body


def test_frozen_serves_the_last_body_byte_for_byte_until_cleared() -> None:
    model = _live_model()
    for t in range(1, 4):
        model.observe(float(t), 300.0)
    before = model.respond_data(3.6)
    assert before is not None
    model.set_fault("frozen")
    for t in range(4, 10):
        model.observe(float(t), 900.0)
        response = model.respond_data(t + 0.6)
        assert response is not None
        assert response.body == before.body
    model.clear_fault()
    after = model.respond_data(9.6)
    assert after is not None
    assert json.loads(after.body)["active_power_w"] != json.loads(before.body)["active_power_w"]


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown meter fault"):
        P1MeterModel().set_fault("meter_on_fire")


def test_a_lagging_observation_after_a_query_is_accepted() -> None:
    model = P1MeterModel(QUIET)
    model.observe(0.0, 100.0)
    sample = model.latest(3.0)  # the reader is ahead of the plant: samples 0..2 s taken
    assert sample is not None
    assert (sample.at_s, sample.grid_w) == (2.0, 100)
    model.observe(1.0, 700.0)  # behind the last sample, not behind the last observation
    model.observe(4.0, 700.0)
    sample = model.latest(4.5)
    assert sample is not None
    assert (sample.at_s, sample.grid_w) == (4.0, 700)


# -- API v2 ------------------------------------------------------------------------------------


def test_v2_measurement_has_the_real_keys_and_types() -> None:
    real = _fixture("v2/HWE-P1/measurement_3_phase_with_gas_with_watermeter.json")
    model = P1MeterModel(MeterParams(noise_w=10.0))
    _run(model, -543.0, 10.0, 0.5)
    served = model.measurement_json(10.0)
    assert set(real) <= set(served)
    # docs/v2/measurement.mdx documents these; the fixture happens not to carry them.
    assert set(served) - set(real) <= {"voltage_l1_v", "voltage_l2_v", "voltage_l3_v"} | {
        "frequency_hz"
    }
    _assert_same_types(served, {k: v for k, v in real.items() if k != "external"})
    assert list(served)[:4] == ["protocol_version", "meter_model", "unique_id", "timestamp"]
    external = served["external"]
    real_external = real["external"]
    assert isinstance(external, list)
    assert isinstance(real_external, list)
    assert set(external[0]) == set(real_external[0])
    assert external[0]["type"] == "gas_meter"


def test_v2_measurement_is_the_v1_sample_under_v2_names() -> None:
    model = P1MeterModel(MeterParams(noise_w=10.0))
    _run(model, 1234.0, 5.0, 0.5)
    v1 = model.data_json(5.0)
    v2 = model.measurement_json(5.0)
    assert v2["power_w"] == v1["active_power_w"]
    assert [v2[f"power_l{n}_w"] for n in (1, 2, 3)] == [
        v1[f"active_power_l{n}_w"] for n in (1, 2, 3)
    ]
    assert v2["energy_import_kwh"] == v1["total_power_import_kwh"]
    assert v2["energy_export_t2_kwh"] == v1["total_power_export_t2_kwh"]
    assert v2["tariff"] == v1["active_tariff"]
    assert v2["monthly_power_peak_w"] == v1["montly_power_peak_w"]
    currents = [v1[f"active_current_l{n}_a"] for n in (1, 2, 3)]
    assert v2["current_a"] == sum(abs(c) for c in currents)  # type: ignore[arg-type]
    sample = model.latest(5.0)
    assert sample is not None
    assert v2["timestamp"] == "2024-06-03T00:00:04"  # the sample's instant, meter time
    assert "wifi_ssid" not in v2


def test_v2_single_phase_measurement_matches_the_fixture_shape() -> None:
    real = _fixture("v2/HWE-P1/measurement_1_phase_no_gas.json")
    model = P1MeterModel(QUIET, phases=1, gas=False)
    _run(model, -678.0, 3.0, 1.0)
    served = model.measurement_json(3.0)
    assert set(real) <= set(served)
    assert not any("l2" in key or "l3" in key for key in served)
    assert "external" not in served
    _assert_same_types(served, real)


def test_v2_kwh_measurement_matches_the_fixture() -> None:
    real = _fixture("v2/HWE-KWH1/measurement.json")
    model = KwhMeterModel(QUIET)
    for t in range(5):
        model.observe_pv(float(t), 900.0)
    served = model.measurement_json(4.5)
    assert list(served) == list(real)
    for key, value in served.items():  # the doc example rounds to integers; devices need not
        assert isinstance(value, int | float), key
        assert not isinstance(value, bool), key
    assert served["power_w"] == -900.0


def test_v2_device_json_matches_the_fixture() -> None:
    real = _fixture("v2/HWE-P1/device.json")
    served = P1MeterModel(serial="5c2fafaabbcc").device_json_v2()
    assert served == real
    assert P1MeterModel(serial="5c2fafaabbcc").identifier == "appliance/p1dongle/5c2fafaabbcc"
    assert KwhMeterModel(serial="5c2fafddeeff").identifier == "appliance/energymeter/5c2fafddeeff"


def test_v2_faults_mirror_v1_and_api_disabled_is_a_401() -> None:
    model = _live_model()
    response = model.respond_measurement(1.0)
    assert response is not None
    assert json.loads(response.body) == model.measurement_json(1.0)
    model.set_fault("api_disabled")
    refused = model.respond_measurement(1.0)
    assert refused is not None
    assert (refused.status, json.loads(refused.body)) == (401, {"error": "user:unauthorized"})
    model.set_fault("garbage")
    first, second = model.respond_measurement(1.0), model.respond_measurement(1.0)
    assert first is not None
    assert second is not None
    with pytest.raises(json.JSONDecodeError):
        json.loads(first.body)
    assert "power_w" not in json.loads(second.body)
    assert "power_l1_w" in json.loads(second.body)
    model.set_fault("outage")
    assert model.respond_measurement(1.0) is None
    assert model.respond_device_v2(1.0) is None


def test_v2_frozen_body_stays_byte_for_byte_and_pushes_are_not_requests() -> None:
    model = _live_model()
    for t in range(1, 4):
        model.observe(float(t), 300.0)
    before = model.respond_measurement(3.6)
    assert before is not None
    model.set_fault("frozen")
    for t in range(4, 8):
        model.observe(float(t), 900.0)
        frozen = model.respond_measurement(t + 0.6)
        assert frozen is not None
        assert frozen.body == before.body
    requests = model.data_requests
    model.respond_measurement(8.0, pushed=True)
    assert model.data_requests == requests
