"""Simulated HomeWizard meters: the P1 dongle at the grid connection, a kWh meter on the PV.

Pure models (no I/O, no clock): the replay harness feeds the true power at every plant step with
``observe(now_s, power_w)``; the model samples it every ``interval_s`` (the instantaneous value at
the sample instant, plus Gaussian noise), and a sample becomes visible ``latency_s`` after the
instant it describes. ``respond_data``/``respond_device`` decide what the HTTP API v1 answers,
``respond_measurement``/``respond_device_v2`` what API v2 answers (the same sample under v2's
names), including scripted faults; ``sim.servers.homewizard`` and ``sim.servers.homewizard_v2``
only put that on the wire.
"""

from __future__ import annotations

import functools
import json
import math
import random
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sim.plant.params import MeterParams

# What the fault-injection layer may switch on (``Fault.kind`` with or without "meter_").
FAULT_MODES = frozenset({"outage", "http_error", "garbage", "frozen", "api_disabled"})
# The real device's answer when the local API is switched off (docs/v1/error-handling.mdx).
API_DISABLED_BODY = '{"error":{"id":202,"description":"API not enabled"}}'
# API v2 has no switch for the local API; the nearest fault is the user's token being removed in
# the app, answered with 401 (docs/v2/authorization.mdx).
UNAUTHORIZED_BODY = '{"error":"user:unauthorized"}'
V2_FIRMWARE = "6.00"
V2_API_VERSION = "2.0.0"
QUARTER_S = 900.0  # capacity-tariff averaging window (Belgian meters' active_power_average_w)
GAS_INTERVAL_S = 300.0  # DSMR 5 gas reading period
NOMINAL_V = 230.0
# Meter time at now_s = 0: a Monday 00:00, so tariffs and timestamps are reproducible.
DEFAULT_START = datetime(2024, 6, 3, tzinfo=UTC)
# How a three-phase house's power splits over L1/L2/L3 (the sim has no per-phase model).
PHASE_SPLIT = (0.5, 0.3, 0.2)
_GAS_UNIQUE_ID = "4D4D42432D47"
_V1 = "v1"
_V2 = "v2"


@dataclass(frozen=True, slots=True)
class MeterResponse:
    """One HTTP answer; ``None`` in its place means the device does not answer at all."""

    status: int
    body: str
    content_type: str = "application/json"


class MeterSample(NamedTuple):
    """What the meter measured at ``at_s`` (counters in kWh as served, before rounding).

    Immutable; a named tuple (one per sample, a fifth of a frozen dataclass's cost)."""

    at_s: float
    power_w: float  # as served: integer watts on the P1, 3 decimals on a kWh meter
    phase_w: tuple[float, ...]
    voltage_v: tuple[float, ...]
    frequency_hz: float
    tariff: int
    import_kwh: tuple[float, float]  # T1, T2
    export_kwh: tuple[float, float]
    average_w: float  # running average import power of the current quarter hour
    peak_w: float  # highest completed quarter-hour average this run
    peak_at_s: float

    @property
    def grid_w(self) -> float:
        """The P1's name for ``power_w``: + import."""
        return self.power_w


@functools.lru_cache(maxsize=64)
def _stamp(start: datetime, at_s: float) -> int:
    """DSMR timestamp YYMMDDhhmmss as the API serves it (an integer).

    Cached: the gas and peak timestamps change every few minutes, not every reading.
    """
    return int((start + timedelta(seconds=at_s)).strftime("%y%m%d%H%M%S"))


def _iso(start: datetime, at_s: float) -> str:
    """API v2's timestamps: ISO 8601 local meter time without a zone, whole seconds."""
    return (start + timedelta(seconds=at_s)).strftime("%Y-%m-%dT%H:%M:%S")


def _walk(rng: random.Random, value: float, centre: float, step: float, digits: int) -> float:
    """Mean-reverting random walk, rounded, that never repeats the previous value.

    A live meter never serves the same body twice; a frozen-meter detector relies on it.
    """
    new = round(value + 0.2 * (centre - value) + rng.gauss(0.0, step), digits)
    if new == round(value, digits):
        new = round(value + (10**-digits if value < centre else -(10**-digits)), digits)
    return new


class _SampledMeter(ABC):
    """Sampling, latency, energy counters and fault responses shared by both meter kinds."""

    def __init__(
        self,
        params: MeterParams,
        rng_seed: int | None,
        *,
        start: datetime,
        import_kwh: tuple[float, float],
        export_kwh: tuple[float, float],
        serial: str,
        wifi_ssid: str,
    ) -> None:
        if params.interval_s <= 0 or params.latency_s < 0 or params.noise_w < 0:
            msg = f"invalid meter params {params}"
            raise ValueError(msg)
        self.params = params
        self.serial = serial
        self.wifi_ssid = wifi_ssid
        self._rng = random.Random(params.seed if rng_seed is None else rng_seed)
        self._start = start
        self._start_import_kwh = import_kwh
        self._start_export_kwh = export_kwh
        # True plant state, integrated exactly between observations (power held in between).
        self._t_s: float | None = None  # integrated up to here
        self._observed_s = 0.0  # time of the last observe()
        self._power_w = 0.0
        self._import_wh = [0.0, 0.0]
        self._export_wh = [0.0, 0.0]
        self._quarter_import_wh = 0.0
        self._peak_w = 0.0
        self._peak_at_s = 0.0
        self._next_k = 0
        self._pending: deque[MeterSample] = deque()
        self._visible: MeterSample | None = None
        self._fault: str | None = None
        self._garbage_n = 0
        # Per API ("v1", "v2"): the last healthy body, the body a frozen dongle keeps serving,
        # and the rendering of the visible sample.
        self._last_body: dict[str, str] = {}
        self._frozen_body: dict[str, str] = {}
        self._rendered: dict[str, tuple[MeterSample | None, str]] = {}
        self.data_requests = 0

    # -- plant side ------------------------------------------------------------------------

    def observe(self, now_s: float, power_w: float) -> None:
        """The true power from ``now_s`` on (held until the next call). Times never go back.

        If ``latest`` already took a sample after ``now_s`` (the harness lags the meter's
        reader), that sample keeps the power held then; the new power counts from there.
        """
        if self._t_s is None:
            self._t_s = self._observed_s = now_s
            self._next_k = math.ceil(now_s / self.params.interval_s - 1e-9)
        elif now_s < self._observed_s:
            msg = f"meter observed at {now_s} after {self._observed_s}"
            raise ValueError(msg)
        self._observed_s = now_s
        # (each _sample_until only where it has a sample to take: most calls have none)
        interval_s = self.params.interval_s
        if self._next_k * interval_s < now_s:
            self._sample_until(now_s, inclusive=False)  # instants before now_s saw the old power
        self._advance(now_s)
        self._power_w = float(power_w)
        if self._next_k * interval_s <= now_s:
            self._sample_until(now_s, inclusive=True)

    def next_visible_s(self, after_s: float) -> float:
        """The first instant after ``after_s`` at which a new sample becomes visible (its
        instant plus the latency): when a pushing meter sends it."""
        interval_s, latency_s = self.params.interval_s, self.params.latency_s
        k = math.floor((after_s - latency_s) / interval_s + 1e-9) + 1
        return k * interval_s + latency_s

    def latest(self, now_s: float) -> MeterSample | None:
        """The newest reading visible at ``now_s`` (None before the first)."""
        if self._t_s is not None and now_s - self.params.latency_s >= self._t_s:
            # The power is held since the last observation, so due samples can be taken now.
            self._sample_until(now_s - self.params.latency_s, inclusive=True)
        while self._pending and self._pending[0].at_s + self.params.latency_s <= now_s + 1e-9:
            self._visible = self._pending.popleft()
        return self._visible

    def _sample_until(self, until_s: float, *, inclusive: bool) -> None:
        while True:
            at_s = self._next_k * self.params.interval_s
            if at_s > until_s or (at_s == until_s and not inclusive):
                return
            if self._t_s is None or at_s > self._t_s:  # else a no-op: observe got here first
                self._advance(at_s)
            self._pending.append(self._make_sample(at_s))
            self._next_k += 1

    def _advance(self, to_s: float) -> None:
        """Integrate the held power up to ``to_s``, split at quarter-hour boundaries."""
        assert self._t_s is not None
        t_s = self._t_s
        while t_s < to_s:
            quarter_end_s = (math.floor(t_s / QUARTER_S) + 1) * QUARTER_S
            seg_end_s = min(to_s, quarter_end_s)
            energy_wh = self._power_w * (seg_end_s - t_s) / 3600.0
            slot = self._tariff(t_s) - 1
            if energy_wh >= 0:
                self._import_wh[slot] += energy_wh
                self._quarter_import_wh += energy_wh
            else:
                self._export_wh[slot] -= energy_wh
            t_s = seg_end_s
            if t_s >= quarter_end_s:
                average_w = self._quarter_import_wh * 3600.0 / QUARTER_S
                if average_w > self._peak_w:
                    self._peak_w, self._peak_at_s = average_w, quarter_end_s
                self._quarter_import_wh = 0.0
        self._t_s = max(self._t_s, to_s)

    def _counters(self) -> tuple[tuple[float, float], tuple[float, float]]:
        imp = self._start_import_kwh
        exp = self._start_export_kwh
        return (
            (imp[0] + self._import_wh[0] / 1000.0, imp[1] + self._import_wh[1] / 1000.0),
            (exp[0] + self._export_wh[0] / 1000.0, exp[1] + self._export_wh[1] / 1000.0),
        )

    def _quarter_average_w(self, at_s: float) -> float:
        elapsed_s = at_s - math.floor(at_s / QUARTER_S) * QUARTER_S
        return self._quarter_import_wh * 3600.0 / elapsed_s if elapsed_s > 0 else 0.0

    def _tariff(self, at_s: float) -> int:
        return 1

    @abstractmethod
    def _make_sample(self, at_s: float) -> MeterSample: ...

    @abstractmethod
    def data_json(self, now_s: float) -> dict[str, object]:
        """The ``GET /api/v1/data`` body at ``now_s``, fault-free."""

    @abstractmethod
    def device_json(self) -> dict[str, object]:
        """The ``GET /api`` body."""

    # -- fault hooks (called by the fault-injection layer) ----------------------------------

    @property
    def fault(self) -> str | None:
        return self._fault

    def set_fault(self, kind: str | None) -> None:
        """Start a fault mode from ``FAULT_MODES`` ("meter_" prefix accepted); None clears."""
        if kind is None:
            self.clear_fault()
            return
        mode = kind.removeprefix("meter_")
        if mode not in FAULT_MODES:
            msg = f"unknown meter fault {kind!r}; expected one of {sorted(FAULT_MODES)}"
            raise ValueError(msg)
        self._fault = mode
        self._garbage_n = 0
        self._frozen_body = {}

    def clear_fault(self) -> None:
        self._fault = None
        self._frozen_body = {}

    def respond_data(self, now_s: float) -> MeterResponse | None:
        """What ``GET /api/v1/data`` answers at ``now_s``; None = no answer (outage)."""
        return self._respond(now_s, _V1)

    def respond_measurement(self, now_s: float, *, pushed: bool = False) -> MeterResponse | None:
        """What API v2's ``GET /api/measurement`` answers at ``now_s``; None = no answer.

        The same faults as v1, but ``api_disabled`` (v1's 403) becomes v2's 401: v2 cannot be
        switched off, only the token withdrawn. ``pushed``: the body is for the websocket
        push, not a request (``data_requests`` counts requests only).
        """
        return self._respond(now_s, _V2, count=not pushed)

    def _respond(self, now_s: float, api: str, *, count: bool = True) -> MeterResponse | None:
        if count:
            self.data_requests += 1
        if self._fault == "outage":
            return None
        if self._fault == "http_error":
            return MeterResponse(500, "Internal Server Error", "text/plain")
        if self._fault == "api_disabled":
            if api == _V1:
                return MeterResponse(403, API_DISABLED_BODY)
            return MeterResponse(401, UNAUTHORIZED_BODY)
        power_key = "active_power_w" if api == _V1 else "power_w"
        if self._fault == "garbage":
            self._garbage_n += 1
            if self._garbage_n % 2:
                return MeterResponse(200, f'{{"unique_id":"4D4D42432D5031","{power_key}":-5')
            body = self.data_json(now_s) if api == _V1 else self.measurement_json(now_s)
            body.pop(power_key, None)
            return MeterResponse(200, json.dumps(body, separators=(",", ":")))
        if self._fault == "frozen":
            # The dongle stops updating: it keeps serving the body it last had, byte for byte.
            if api not in self._frozen_body:
                self._frozen_body[api] = self._last_body.get(api) or self._render(now_s, api)
            return MeterResponse(200, self._frozen_body[api])
        self._last_body[api] = self._render(now_s, api)
        return MeterResponse(200, self._last_body[api])

    def respond_device(self, now_s: float) -> MeterResponse | None:
        """What ``GET /api`` answers; it stays reachable while only the data API is disabled."""
        if self._fault == "outage":
            return None
        if self._fault == "http_error":
            return MeterResponse(500, "Internal Server Error", "text/plain")
        return MeterResponse(200, json.dumps(self.device_json(), separators=(",", ":")))

    def respond_device_v2(self, now_s: float) -> MeterResponse | None:
        """What API v2's ``GET /api`` answers (to an authorised request)."""
        if self._fault == "outage":
            return None
        if self._fault == "http_error":
            return MeterResponse(500, "Internal Server Error", "text/plain")
        if self._fault == "api_disabled":
            return MeterResponse(401, UNAUTHORIZED_BODY)
        return MeterResponse(200, json.dumps(self.device_json_v2(), separators=(",", ":")))

    def device_json_v2(self) -> dict[str, object]:
        """API v2's ``GET /api`` body (docs/v2/device_information.mdx)."""
        v1 = self.device_json()
        return {
            "product_name": v1["product_name"],
            "product_type": v1["product_type"],
            "serial": self.serial,
            "firmware_version": V2_FIRMWARE,
            "api_version": V2_API_VERSION,
        }

    @property
    @abstractmethod
    def tls_product(self) -> str:
        """The product name in the device certificate (``appliance/<this>/<serial>``)."""

    @property
    def identifier(self) -> str:
        """The TLS hostname of the device's certificate (docs/v2/authorization.mdx)."""
        return f"appliance/{self.tls_product}/{self.serial}"

    @abstractmethod
    def measurement_json(self, now_s: float) -> dict[str, object]:
        """The API v2 ``GET /api/measurement`` body at ``now_s``, fault-free."""

    def _render(self, now_s: float, api: str = _V1) -> str:
        # The body depends only on the visible sample: render each sample once per API.
        sample = self.latest(now_s)
        cached = self._rendered.get(api)
        if cached is None or cached[0] is not sample:
            body = self.data_json(now_s) if api == _V1 else self.measurement_json(now_s)
            cached = (sample, json.dumps(body, separators=(",", ":")))
            self._rendered[api] = cached
        return cached[1]


class P1MeterModel(_SampledMeter):
    """HomeWizard P1 meter (HWE-P1) on a DSMR 5 smart meter; ``observe`` takes grid_w (+ import)."""

    def __init__(
        self,
        params: MeterParams | None = None,
        rng_seed: int | None = None,
        *,
        phases: int = 3,
        gas: bool = True,
        start: datetime = DEFAULT_START,
        import_kwh: tuple[float, float] = (10830.511, 2948.827),
        export_kwh: tuple[float, float] = (1285.951, 2876.51),
        serial: str = "3c39e7a1b2c3",
        wifi_ssid: str = "My Wi-Fi",
    ) -> None:
        if phases not in {1, 3}:
            msg = f"phases must be 1 or 3, not {phases}"
            raise ValueError(msg)
        super().__init__(
            params or MeterParams(),
            rng_seed,
            start=start,
            import_kwh=import_kwh,
            export_kwh=export_kwh,
            serial=serial,
            wifi_ssid=wifi_ssid,
        )
        self.phases = phases
        self._tariff_hour: int | None = None
        self._tariff_value = 1
        self._into_hour_s = self._start.minute * 60.0 + self._start.second
        self.gas = gas
        self._voltage_v = [NOMINAL_V + 0.5 * i for i in range(phases)]
        # The v1 body's per-phase keys, and its constant run after the currents (built once:
        # the body is built at every poll).
        names = range(1, phases + 1)
        self._power_keys = tuple(f"active_power_l{n}_w" for n in names)
        self._voltage_keys = tuple(f"active_voltage_l{n}_v" for n in names)
        self._current_keys = tuple(f"active_current_l{n}_a" for n in names)
        self._constant_tail: dict[str, object] = {
            "active_frequency_hz": 50,
            **{f"voltage_sag_l{n}_count": 1 if n < 3 else 0 for n in names},
            **{f"voltage_swell_l{n}_count": 0 for n in names},
            "any_power_fail_count": 4,
            "long_power_fail_count": 5,
        }

    def _tariff(self, at_s: float) -> int:
        # Dutch double tariff: 2 (normal) on weekdays 07-23 h, else 1 (low). Constant within
        # an hour, so computed once per hour (this runs at every plant step).
        hour = int((self._into_hour_s + at_s) // 3600.0)
        if hour != self._tariff_hour:
            start_hour = self._start.replace(minute=0, second=0, microsecond=0)
            t = start_hour + timedelta(hours=hour)
            self._tariff_hour = hour
            self._tariff_value = 2 if t.weekday() < 5 and 7 <= t.hour < 23 else 1
        return self._tariff_value

    def _make_sample(self, at_s: float) -> MeterSample:
        noise_w = self._rng.gauss(0.0, self.params.noise_w)
        total_w = round(self._power_w + noise_w)
        if self.phases == 1:
            phase_w: tuple[float, ...] = (total_w,)
        else:
            l1_w = round(total_w * PHASE_SPLIT[0])
            l2_w = round(total_w * PHASE_SPLIT[1])
            phase_w = (l1_w, l2_w, total_w - l1_w - l2_w)
        self._voltage_v = [_walk(self._rng, v, NOMINAL_V, 0.3, 1) for v in self._voltage_v]
        imp, exp = self._counters()
        return MeterSample(
            at_s=at_s,
            power_w=total_w,
            phase_w=phase_w,
            voltage_v=tuple(self._voltage_v),
            frequency_hz=50.0,
            tariff=self._tariff(at_s),
            import_kwh=imp,
            export_kwh=exp,
            average_w=self._quarter_average_w(at_s),
            peak_w=self._peak_w,
            peak_at_s=self._peak_at_s,
        )

    def data_json(self, now_s: float) -> dict[str, object]:
        sample = self.latest(now_s)
        body: dict[str, object] = {
            "wifi_ssid": self.wifi_ssid,
            "wifi_strength": 100,
            "smr_version": 50,
            "meter_model": "ISKRA  2M550T-101",
            "unique_id": "4D4D42432D5031",
        }
        if sample is None:
            return body  # booted, no telegram yet: every measurement is absent
        imp, exp = sample.import_kwh, sample.export_kwh
        body["active_tariff"] = sample.tariff
        body["total_power_import_kwh"] = round(imp[0] + imp[1], 3)
        body["total_power_import_t1_kwh"] = round(imp[0], 3)
        body["total_power_import_t2_kwh"] = round(imp[1], 3)
        body["total_power_export_kwh"] = round(exp[0] + exp[1], 3)
        body["total_power_export_t1_kwh"] = round(exp[0], 3)
        body["total_power_export_t2_kwh"] = round(exp[1], 3)
        body["active_power_w"] = int(sample.power_w)
        phase_w, voltage_v = sample.phase_w, sample.voltage_v
        for key, p_w in zip(self._power_keys, phase_w, strict=True):
            body[key] = int(p_w)
        for key, v in zip(self._voltage_keys, voltage_v, strict=True):
            body[key] = v
        for key, p_w, v in zip(self._current_keys, phase_w, voltage_v, strict=True):
            body[key] = round(p_w / v)  # DSMR: whole amps, signed here
        body |= self._constant_tail  # frequency, sags, swells, power failures
        if self.gas:
            gas_at_s = math.floor(sample.at_s / GAS_INTERVAL_S) * GAS_INTERVAL_S
            gas_m3 = round(2569.646 + 0.05 * gas_at_s / 3600.0, 3)  # ~1.2 m3/day
            gas_stamp = _stamp(self._start, gas_at_s)
            body["total_gas_m3"] = gas_m3
            body["gas_timestamp"] = gas_stamp
            body["gas_unique_id"] = _GAS_UNIQUE_ID
        body["active_power_average_w"] = round(sample.average_w, 3)
        body["montly_power_peak_w"] = round(sample.peak_w, 3)  # sic: the API's spelling
        body["montly_power_peak_timestamp"] = _stamp(self._start, sample.peak_at_s)
        if self.gas:
            body["external"] = [
                {
                    "unique_id": _GAS_UNIQUE_ID,
                    "type": "gas_meter",
                    "timestamp": gas_stamp,
                    "value": gas_m3,
                    "unit": "m3",
                }
            ]
        return body

    def device_json(self) -> dict[str, object]:
        return {
            "product_type": "HWE-P1",
            "product_name": "P1 Meter",
            "serial": self.serial,
            "firmware_version": "5.18",
            "api_version": "v1",
        }

    @property
    def tls_product(self) -> str:
        return "p1dongle"

    def measurement_json(self, now_s: float) -> dict[str, object]:
        """The v1 body under v2's names (docs/v2/measurement.mdx), in the fixtures' order.

        v2 drops the Wi-Fi fields (they moved to ``/api/system``) and the top-level gas fields
        (gas is an ``external`` device), serves ISO timestamps, and adds the sample's
        ``timestamp`` and ``current_a`` (the sum of the phases' absolute currents).
        """
        v1 = self.data_json(now_s)
        sample = self.latest(now_s)
        body: dict[str, object] = {
            "protocol_version": v1["smr_version"],
            "meter_model": v1["meter_model"],
            "unique_id": v1["unique_id"],
        }
        if sample is None:
            return body
        body["timestamp"] = _iso(self._start, sample.at_s)
        body["tariff"] = v1["active_tariff"]
        for direction in ("import", "export"):
            body[f"energy_{direction}_kwh"] = v1[f"total_power_{direction}_kwh"]
            for t in (1, 2):
                body[f"energy_{direction}_t{t}_kwh"] = v1[f"total_power_{direction}_t{t}_kwh"]
        body["power_w"] = v1["active_power_w"]
        names = range(1, self.phases + 1)
        for n in names:
            body[f"power_l{n}_w"] = v1[f"active_power_l{n}_w"]
        for n in names:
            body[f"voltage_l{n}_v"] = v1[f"active_voltage_l{n}_v"]
        currents = [v1[f"active_current_l{n}_a"] for n in names]
        body["current_a"] = sum(abs(c) for c in currents if isinstance(c, int | float))
        for n, current in zip(names, currents, strict=True):
            body[f"current_l{n}_a"] = current
        body["frequency_hz"] = v1["active_frequency_hz"]
        for key in (
            *(f"voltage_sag_l{n}_count" for n in names),
            *(f"voltage_swell_l{n}_count" for n in names),
            "any_power_fail_count",
            "long_power_fail_count",
        ):
            body[key] = v1[key]
        body["average_power_15m_w"] = v1["active_power_average_w"]
        body["monthly_power_peak_w"] = v1["montly_power_peak_w"]
        body["monthly_power_peak_timestamp"] = _iso(self._start, sample.peak_at_s)
        if self.gas:
            gas_at_s = math.floor(sample.at_s / GAS_INTERVAL_S) * GAS_INTERVAL_S
            body["external"] = [
                {
                    "unique_id": v1["gas_unique_id"],
                    "type": "gas_meter",
                    "timestamp": _iso(self._start, gas_at_s),
                    "value": v1["total_gas_m3"],
                    "unit": "m3",
                }
            ]
        return body


class KwhMeterModel(_SampledMeter):
    """HomeWizard kWh meter (HWE-KWH1, 1 phase) on the PV inverter.

    ``observe`` takes ``active_power_w`` as the meter sees it: negative while the inverter
    produces (energy flows in the export direction); ``observe_pv`` takes PV power >= 0.
    """

    def __init__(
        self,
        params: MeterParams | None = None,
        rng_seed: int | None = None,
        *,
        start: datetime = DEFAULT_START,
        import_kwh: float = 122.376,
        export_kwh: float = 579.813,
        serial: str = "3c39e7d4e5f6",
        wifi_ssid: str = "My Wi-Fi",
    ) -> None:
        super().__init__(
            params or MeterParams(),
            rng_seed,
            start=start,
            import_kwh=(import_kwh, 0.0),
            export_kwh=(export_kwh, 0.0),
            serial=serial,
            wifi_ssid=wifi_ssid,
        )
        self._voltage = NOMINAL_V
        self._frequency_hz = 50.0

    def observe_pv(self, now_s: float, pv_w: float) -> None:
        """PV production (>= 0) from ``now_s`` on; the meter reads it as negative power."""
        self.observe(now_s, -pv_w)

    def _make_sample(self, at_s: float) -> MeterSample:
        power_w = round(self._power_w + self._rng.gauss(0.0, self.params.noise_w), 3)
        self._voltage = _walk(self._rng, self._voltage, NOMINAL_V, 0.3, 3)
        self._frequency_hz = _walk(self._rng, self._frequency_hz, 50.0, 0.01, 3)
        imp, exp = self._counters()
        return MeterSample(
            at_s=at_s,
            power_w=power_w,
            phase_w=(power_w,),
            voltage_v=(self._voltage,),
            frequency_hz=self._frequency_hz,
            tariff=1,
            import_kwh=imp,
            export_kwh=exp,
            average_w=0.0,
            peak_w=0.0,
            peak_at_s=0.0,
        )

    def data_json(self, now_s: float) -> dict[str, object]:
        sample = self.latest(now_s)
        body: dict[str, object] = {"wifi_ssid": self.wifi_ssid, "wifi_strength": 74}
        if sample is None:
            return body
        power_w = sample.power_w
        voltage_v = sample.voltage_v[0]
        # An inverter's power factor drops at low output (the fixture: 0.611 at 45 W).
        factor = min(0.99, 0.5 + abs(power_w) / 400.0)
        apparent_va = abs(power_w) / factor
        reactive_var = -math.sqrt(max(0.0, apparent_va**2 - power_w**2))
        body |= {
            "total_power_import_kwh": round(sample.import_kwh[0], 3),
            "total_power_import_t1_kwh": round(sample.import_kwh[0], 3),
            "total_power_export_kwh": round(sample.export_kwh[0], 3),
            "total_power_export_t1_kwh": round(sample.export_kwh[0], 3),
            "active_power_w": power_w,
            "active_power_l1_w": power_w,
            "active_voltage_v": voltage_v,
            "active_current_a": round(abs(power_w) / voltage_v, 3),
            "active_apparent_current_a": round(apparent_va / voltage_v, 3),
            "active_reactive_current_a": round(abs(reactive_var) / voltage_v, 3),
            "active_apparent_power_va": round(apparent_va, 3),
            "active_reactive_power_var": round(reactive_var, 3),
            "active_power_factor": round(factor, 3),
            "active_frequency_hz": sample.frequency_hz,
        }
        return body

    def device_json(self) -> dict[str, object]:
        return {
            "product_type": "HWE-KWH1",
            "product_name": "kWh Meter",
            "serial": self.serial,
            "firmware_version": "4.19",
            "api_version": "v1",
        }

    @property
    def tls_product(self) -> str:
        return "energymeter"

    def measurement_json(self, now_s: float) -> dict[str, object]:
        """The v1 body under v2's names (the HWE-KWH1 v2 fixture's keys and order)."""
        v1 = self.data_json(now_s)
        if "active_power_w" not in v1:
            return {}
        return {
            "energy_import_kwh": v1["total_power_import_kwh"],
            "energy_export_kwh": v1["total_power_export_kwh"],
            "power_w": v1["active_power_w"],
            "voltage_v": v1["active_voltage_v"],
            "current_a": v1["active_current_a"],
            "apparent_current_a": v1["active_apparent_current_a"],
            "reactive_current_a": v1["active_reactive_current_a"],
            "apparent_power_va": v1["active_apparent_power_va"],
            "reactive_power_var": v1["active_reactive_power_var"],
            "power_factor": v1["active_power_factor"],
            "frequency_hz": v1["active_frequency_hz"],
        }
