"""``mmbc-sim serve``: the plant in real time behind real sockets, for an external ``mmbc-engine``.

The P1 meter API (and the PV kWh meter's, if the scenario has one) and one Modbus TCP server
per battery run on ``host``; the plant runs in real time (times ``speed``), each request seeing
the plant of its own instant, with the scenario's scripted events and faults.
The scenario's duration bounds nothing: serving goes on until SIGINT/SIGTERM, and past the
trace's end the house holds the trace's last value (scripted events and faults happen at
their times, whenever those are reached).

The P1 meter speaks API v1 (the default), v2 (HTTPS with a test CA written to ``tls_dir``,
token pairing with a simulated button: SIGUSR1 presses it, or ``p1_button="always"`` keeps it
pressed; ``p1_token`` pre-pairs one token; websocket push of each sample the instant it becomes
visible) or both. The banner's ``plant clock`` line maps plant time to the machine's monotonic
clock (which the engine's loop clock is too), so an outside measurement can tell when each
sample was taken and became visible (``scripts/measure_reading_age.py``).
``mdns`` advertises the meters on the loopback interface as the real ones do on a LAN.

On SIGINT/SIGTERM it stops and, with ``json_path``, writes the score in ``mmbc-sim run
--json``'s shape with policy ``external``. Of the invariants only those visible from the
outside are checked (``SERVED_INVARIANTS``): the engine's snapshots and plans are not seen
here. ``limits_respected`` is judged from the firmware's registers against the scenario's
control settings (so an engine configured with other limits may be judged wrongly):
force-charging at or above ``max_soc_pct`` or force-discharging at or below ``min_soc_pct``
for longer than ``LIMIT_GRACE_S``, or a setpoint above a battery's limit. ``shutdown_safe``:
when serving stops, every battery idles and is out of RS485 control (stop the engine first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.core.settings import ControlSettings
from sim.plant.record import RunRecord
from sim.plant.world import RECORD_STEP_S, World
from sim.replay.inprocess import score_run, settings_for
from sim.replay.invariants import INVARIANTS, InvariantReport
from sim.replay.result import RunResult, result_json
from sim.scenario import Scenario
from sim.servers.homewizard_v2 import Button
from sim.servers.mdns import AdvertisedDevice, MdnsAdvertiser
from sim.servers.plant import WorldServers, start_world_servers

POLICY = "external"
SERVED_INVARIANTS = ("limits_respected", "shutdown_safe")
# An engine sees a limit crossed on its next cycle(s); a battery then needs its dead time.
LIMIT_GRACE_S = 10.0
EXIT_OK = 0
EXIT_CANNOT_SERVE = 2  # a usage problem (port in use, bad --speed): one line on stderr
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # bind-all: advertise loopback
P1_BUTTONS = ("signal", "always")
PAIRED_USER = "local/mmbc"


@dataclass(frozen=True, slots=True)
class P1Options:
    """How the P1 meter is served: its API(s), and for v2 its port, button, token and CA."""

    api: str = "v1"  # v1 | v2 | both
    tls_port: int = 8443
    button: str = "signal"  # signal: SIGUSR1 presses it; always: held down
    token: str | None = None  # pre-paired as local/mmbc
    tls_dir: Path | None = None  # where the CA is written (default: a temporary directory)
    mdns: bool = False  # advertise on the loopback interface


class RegisterWatch:
    """Checks the served invariants from the firmwares' registers at every plant step."""

    def __init__(self, world: World, settings: ControlSettings) -> None:
        self.world = world
        self.settings = settings
        self.report = InvariantReport(first_violation_s=dict.fromkeys(SERVED_INVARIANTS))
        self._since: dict[tuple[int, str], float] = {}

    def step(self) -> None:
        now = self.world.now_s
        s = self.settings
        for i, (fw, spec) in enumerate(
            zip(self.world.firmwares, s.batteries, strict=True), start=1
        ):
            name = f"battery_{i}"
            if fw.control_enabled:
                if fw.charge_setpoint_w > spec.max_charge_w:
                    self.report.fail(
                        "limits_respected", now, f"{name} charge setpoint {fw.charge_setpoint_w} W"
                    )
                if fw.discharge_setpoint_w > spec.max_discharge_w:
                    self.report.fail(
                        "limits_respected",
                        now,
                        f"{name} discharge setpoint {fw.discharge_setpoint_w} W",
                    )
            target_w = fw.target_w
            soc_pct = fw.battery.soc_pct
            self._hold(
                i,
                "full",
                target_w < 0 and soc_pct >= s.max_soc_pct,
                now,
                f"{name} charging at {soc_pct:.1f} %",
            )
            self._hold(
                i,
                "empty",
                target_w > 0 and soc_pct <= s.min_soc_pct,
                now,
                f"{name} discharging at {soc_pct:.1f} %",
            )

    def _hold(self, index: int, what: str, violated: bool, now: float, detail: str) -> None:
        key = (index, what)
        if not violated:
            self._since.pop(key, None)
            return
        since = self._since.setdefault(key, now)
        if now - since > LIMIT_GRACE_S:
            self.report.fail("limits_respected", since, detail)

    def shutdown(self) -> None:
        idle = all(fw.battery.target_w == 0 for fw in self.world.firmwares)
        released = all(not fw.control_enabled for fw in self.world.firmwares)
        if not (idle and released):
            self.report.fail(
                "shutdown_safe",
                self.world.now_s,
                f"when serving stopped: idle={idle} released={released}",
            )


def serve(
    scenario: Scenario,
    *,
    host: str,
    p1_port: int,
    pv_port: int | None,
    modbus_port: int,
    json_path: Path | None,
    speed: float = 1.0,
    p1: P1Options | None = None,
) -> int:
    """Serve ``scenario`` until SIGINT/SIGTERM; 0 when stopped that way, 2 if it cannot serve.

    ``pv_port=None`` serves a scenario's PV meter on a free port (printed).
    """
    if not speed > 0:
        print(f"mmbc-sim serve: --speed must be > 0, got {speed}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    return asyncio.run(
        _serve(
            scenario,
            host=host,
            p1_port=p1_port,
            pv_port=0 if pv_port is None else pv_port,
            modbus_port=modbus_port,
            json_path=json_path,
            speed=speed,
            p1=p1 or P1Options(),
        )
    )


def env_snippet(servers: WorldServers) -> str:
    """The ``.env`` lines that point an ``mmbc-engine`` at ``servers``.

    A P1 serving both APIs adds its v2 settings as comments (the engine's v2 support).
    """

    def loopback(env: dict[str, str]) -> dict[str, str]:
        if servers.host not in _WILDCARD_HOSTS:
            return env
        env = {k: v.replace(f"//{servers.host}:", "//127.0.0.1:") for k, v in env.items()}
        env = {
            k: v.replace(f"{servers.host}:", "127.0.0.1:", 1) if k == "P1_HOST" else v
            for k, v in env.items()
        }
        return {k: "127.0.0.1" if k.endswith("_IP") else v for k, v in env.items()}

    lines = [f"{key}={value}" for key, value in loopback(servers.env()).items()]
    if servers.p1 is not None and servers.p1_v2 is not None:
        lines.append("# or the P1 over API v2:")
        lines += [f"# {key}={value}" for key, value in loopback(servers.env_v2()).items()]
    return "\n".join(lines)


def _print_endpoints(scenario: Scenario, servers: WorldServers, speed: float) -> None:
    lines = [f"mmbc-sim serve: {scenario.name} at {speed:g}x real time"]
    if servers.p1 is not None:
        lines.append(f"P1 meter      {servers.p1.url}")
    if servers.p1_v2 is not None:
        v2 = servers.p1_v2
        lines.append(f"P1 meter v2   {v2.base_url} as {v2.identifier}, CA {servers.ca_file}")
        if v2.button.always_pressed:
            lines.append("P1 button     held down: every token request is granted")
        else:
            lines.append(f"P1 button     press it with: kill -USR1 {os.getpid()}")
    if servers.pv_url is not None:
        lines.append(f"PV meter      {servers.pv_url}")
    for i, server in enumerate(servers.batteries, start=1):
        lines.append(f"battery_{i}     modbus://{server.host}:{server.port} unit {server.unit_id}")
    lines.append("# .env for mmbc-engine:")
    lines.append(env_snippet(servers))
    lines.append("(SIGINT/SIGTERM stops; --json writes the score)")
    print("\n".join(lines), flush=True)


async def _serve(
    scenario: Scenario,
    *,
    host: str,
    p1_port: int,
    pv_port: int,
    modbus_port: int,
    json_path: Path | None,
    speed: float,
    p1: P1Options,
) -> int:
    with tempfile.TemporaryDirectory(prefix="mmbc-sim-") as scratch:
        tls_dir = p1.tls_dir or Path(scratch)
        return await _serve_in(
            scenario,
            host=host,
            p1_port=p1_port,
            pv_port=pv_port,
            modbus_port=modbus_port,
            json_path=json_path,
            speed=speed,
            p1=p1,
            ca_file=tls_dir / "p1-ca.pem",
        )


async def _serve_in(
    scenario: Scenario,
    *,
    host: str,
    p1_port: int,
    pv_port: int,
    modbus_port: int,
    json_path: Path | None,
    speed: float,
    p1: P1Options,
    ca_file: Path,
) -> int:
    wall_start = time.perf_counter()  # the reported wall time, not control
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    world = World(scenario, horizon_s=math.inf)  # serving goes on past the scenario's end
    watch = RegisterWatch(world, settings_for(scenario, "mmbc"))
    # Warm up until the meter's first reading is visible, so no client ever sees a meter
    # without one (the real dongle has had a reading for years when the engine starts).
    warm_s = math.ceil(scenario.meter.latency_s / RECORD_STEP_S + 1) * RECORD_STEP_S
    world.advance_to(warm_s)
    started_s = loop.time()

    def plant_time() -> float:
        return warm_s + (loop.time() - started_s) * speed

    v2 = p1.api in {"v2", "both"}
    ca = None
    if v2:
        from sim.servers.tls import SimulatorCA  # needs cryptography: only for v2

        ca = SimulatorCA()
        ca.write_ca(ca_file)
    try:
        servers = await start_world_servers(
            world,
            host=host,
            p1_port=p1_port,
            pv_port=pv_port,
            modbus_port=modbus_port,
            p1_api=p1.api,
            p1_tls_port=p1.tls_port,
            ca=ca,
            ca_file=ca_file if v2 else None,
            button=Button(always_pressed=p1.button == "always"),
            p1_users={PAIRED_USER: p1.token} if p1.token else None,
            time_source=plant_time,
        )
    except OSError as err:  # ListenError names the server and the port
        print(f"mmbc-sim serve: {err}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    if servers.p1_v2 is not None and p1.button == "signal":
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGUSR1, servers.p1_v2.press_button)
    advertiser = await _advertise(world, servers) if p1.mdns else None
    _print_endpoints(scenario, servers, speed)
    print(f"plant clock   t = {warm_s:g} s at monotonic {started_s:.6f} s, x{speed:g}", flush=True)
    pusher = asyncio.create_task(
        servers.push_samples(lambda t_s: started_s + (t_s - warm_s) / speed)
    )
    try:
        await _run_plant(world, servers, watch, stop, speed, plant_time)
    finally:
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
        watch.shutdown()
        if advertiser is not None:
            await advertiser.stop()
        await servers.stop()
    if json_path is not None:
        _write_json(json_path, _result(scenario, world, watch, wall_start))
        print(f"results written to {json_path}", flush=True)
    return EXIT_OK


async def _advertise(world: World, servers: WorldServers) -> MdnsAdvertiser:
    """Announce the P1 (and PV) meter on the loopback interface, as devices do on a LAN."""
    address = "127.0.0.1" if servers.host in _WILDCARD_HOSTS else servers.host
    advertiser = MdnsAdvertiser()
    meter = world.meter
    await advertiser.advertise(
        AdvertisedDevice(
            "HWE-P1",
            "P1 Meter",
            meter.serial,
            address=address,
            v1_port=None if servers.p1 is None else servers.p1.port,
            v2_port=None if servers.p1_v2 is None else servers.p1_v2.port,
            identifier=meter.identifier,
        )
    )
    if servers.pv is not None and world.pv_meter is not None:
        await advertiser.advertise(
            AdvertisedDevice(
                "HWE-KWH1",
                "kWh Meter",
                world.pv_meter.serial,
                address=address,
                v1_port=servers.pv.port,
            )
        )
    return advertiser


async def _run_plant(
    world: World,
    servers: WorldServers,
    watch: RegisterWatch,
    stop: asyncio.Event,
    speed: float,
    plant_time: Callable[[], float],
) -> None:
    """Move the plant along in real time (x ``speed``) until ``stop``: its faults reach the
    servers, the v2 push goes out, the served invariants are checked."""
    period_s = RECORD_STEP_S / speed
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period_s):
                await stop.wait()
        if stop.is_set():
            break
        world.advance_to(plant_time())
        await servers.apply_faults()
        watch.step()


def _result(scenario: Scenario, world: World, watch: RegisterWatch, wall_start: float) -> RunResult:
    record: RunRecord = world.finish()
    record.modbus_reads = sum(fw.reads for fw in world.firmwares)
    record.modbus_writes = sum(fw.writes for fw in world.firmwares)
    metrics = score_run(scenario, record, wall_start)
    return RunResult(
        scenario=scenario.name,
        policy=POLICY,
        metrics=metrics,
        invariants=watch.report.passed(),
        report=watch.report,
        record=record,
        notes=[],
    )


def _write_json(path: Path, result: RunResult) -> None:
    run = result_json(result)
    run["unchecked_invariants"] = [n for n in INVARIANTS if n not in SERVED_INVARIANTS]
    path.write_text(json.dumps({"runs": [run]}, indent=2) + "\n", encoding="utf-8")
