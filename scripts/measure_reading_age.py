"""The age of the P1 reading when the engine decides: API v1 polling vs API v2 push.

Usage: ``python scripts/measure_reading_age.py [scenario] [--seconds 90]``. For each API it
starts ``mmbc-sim serve`` (real time) and a real ``mmbc-engine`` pointed at it, lets them run,
and measures from both sides: the engine's debug log gives, for every cycle, when it decided
and when it first saw the reading it decided on (both on its loop clock, the machine's
monotonic clock); the simulator's banner maps its plant time to that same clock, so the
instant each sample was taken (and became visible, the meter's latency later) is known. The
age of a reading at the decision is the decision's instant less the sample's; it is reported
over the first decision on each new reading (median and 95th percentile), and also from the
moment the sample became visible, which is the part the engine can shorten.

Timing figures belong here, not in the tests: they depend on the machine's load.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sim.scenario import DEFAULT_SCENARIO, load_scenario

BIN = Path(sys.executable).parent
CONFIG_PREFIXES = ("P1_", "PV_", "BATTERY_", "MQTT_", "MMBC_", "HTTP_")
_CLOCK = re.compile(r"^plant clock\s+t = (\S+) s at monotonic (\S+) s, x(\S+)$", re.M)
_ENV = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S+)$", re.M)
_CYCLE = re.compile(
    r"cycle at (\S+): decided at (\S+) on the reading seen at (\S+) \((pushed|polled|unpolled)\)"
)
START_BOUND_S = 30.0


def _command(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env.update(extra)
    return env


class _Output:
    """A process's output, collected on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._lock:
                self.text += line

    def wait_for(self, marker: str) -> str:
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            with self._lock:
                if marker in self.text:
                    return self.text
            time.sleep(0.05)
        raise RuntimeError(f"{marker!r} not seen in: {self.text}")

    def rest(self) -> str:
        self._thread.join(timeout=10.0)
        return self.text


@dataclass(frozen=True, slots=True)
class Ages:
    api: str
    decisions: int  # first decisions on a new reading
    cycles: int
    pushed: int
    polled: int
    age_ms: list[float]  # decision - sample instant
    after_visible_ms: list[float]  # decision - the instant the sample became visible


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(scenario: Path, api: str, seconds: float, workdir: Path) -> Ages:
    """One run of ``mmbc-sim serve`` and ``mmbc-engine`` with the P1 over ``api``."""
    meter = load_scenario(scenario).meter
    token = secrets.token_hex(16).upper()
    serve_args = [
        "serve",
        str(scenario),
        "--p1-api",
        api,
        "--p1-port",
        "0",
        "--p1-tls-port",
        "0",
        "--modbus-port",
        "0",
        "--tls-dir",
        str(workdir),
    ]
    if api == "v2":
        serve_args += ["--p1-token", token]
    serve = subprocess.Popen(  # noqa: S603 - our own console scripts, our own arguments
        [*_command("mmbc-sim", "sim"), *serve_args],
        cwd=workdir,
        env=_clean_env({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    engine: subprocess.Popen[str] | None = None
    try:
        served = _Output(serve)
        banner = served.wait_for("plant clock")
        clock = _CLOCK.search(banner)
        assert clock is not None, banner
        warm_s, mono_s, speed = (float(x) for x in clock.groups())
        env = dict(_ENV.findall(banner.split("# .env for mmbc-engine:", 1)[1]))
        env["MMBC_LOG_LEVEL"] = "DEBUG"
        if api == "v2":
            env["P1_TOKEN"] = token
        engine_dir = workdir / "engine"
        engine_dir.mkdir(exist_ok=True)
        engine = subprocess.Popen(  # noqa: S603 - our own console script
            _command("mmbc-engine", "engine"),
            cwd=engine_dir,
            env=_clean_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log = _Output(engine)
        log.wait_for("decided at")
        time.sleep(seconds)
        _stop(engine)
        text = log.rest()
    finally:
        if engine is not None:
            _stop(engine)
        _stop(serve)

    def plant_s(mono: float) -> float:
        return warm_s + (mono - mono_s) * speed

    def mono_of(plant: float) -> float:
        return mono_s + (plant - warm_s) / speed

    interval_s, latency_s = meter.interval_s, meter.latency_s
    ages: list[float] = []
    after_visible: list[float] = []
    seen: set[str] = set()
    cycles = pushed = polled = 0
    for _, decided, reading_seen, how in _CYCLE.findall(text):
        cycles += 1
        pushed += how == "pushed"
        polled += how == "polled"
        if reading_seen == "none" or reading_seen in seen:
            continue  # no reading yet, or not a new one
        seen.add(reading_seen)
        # The newest sample visible when the engine saw the reading is the one it got.
        k = math.floor((plant_s(float(reading_seen)) - latency_s) / interval_s + 1e-9)
        sample_mono = mono_of(k * interval_s)
        ages.append((float(decided) - sample_mono) * 1000.0)
        after_visible.append((float(decided) - mono_of(k * interval_s + latency_s)) * 1000.0)
    return Ages(api, len(ages), cycles, pushed, polled, ages[1:], after_visible[1:])


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--seconds", type=float, default=90.0, help="per API (default 90)")
    args = parser.parse_args(argv)
    results = []
    for api in ("v1", "v2"):
        with tempfile.TemporaryDirectory(prefix=f"mmbc-age-{api}-") as scratch:
            results.append(measure(args.scenario, api, args.seconds, Path(scratch)))
    print(f"reading age at the decision, {args.scenario.name}, {args.seconds:g} s per API")
    print(
        f"{'API':4} {'decisions':>9} {'cycles':>7} {'pushed':>7} {'polled':>7}"
        f" {'age median':>11} {'age p95':>8} {'since visible median':>21} {'p95':>6}"
    )
    for r in results:
        if not r.age_ms:
            print(f"{r.api:4} no decisions measured")
            continue
        print(
            f"{r.api:4} {r.decisions:>9} {r.cycles:>7} {r.pushed:>7} {r.polled:>7}"
            f" {statistics.median(r.age_ms):>8.0f} ms {_p95(r.age_ms):>5.0f} ms"
            f" {statistics.median(r.after_visible_ms):>18.0f} ms"
            f" {_p95(r.after_visible_ms):>3.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
