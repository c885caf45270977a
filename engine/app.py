"""``mmbc-engine``: the composition root. Configuration → adapters → controller → signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine import __version__
from engine.adapters.homewizard import HomeWizardClient
from engine.adapters.marstek import MarstekBattery
from engine.adapters.p1 import P1Meter, P1SetupError, locate_pv, open_p1
from engine.config import config_error_exit_message, load_config, load_meter_config
from engine.core.policies import make_policy
from engine.errors import ConfigError, DeviceError
from engine.logs import setup_logging
from engine.ports import Clock, LoopClock
from engine.runtime.controller import SHUTDOWN_BUDGET_S, Controller
from engine.runtime.energy_store import EnergyStateFile
from engine.runtime.event_log import describe, severity
from engine.settings import EngineSettings, LogFormat, LogLevel, MqttSettings

if TYPE_CHECKING:
    from engine.adapters.mqtt import MqttBridge
    from engine.adapters.web import DashboardServer, EngineCounters

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_RELEASED = 3  # stopped, but a battery did not confirm 0 W and release: check it
MQTT_CHECK_TIMEOUT_S = 5.0

_EXIT_STATUS_HELP = """exit status:
  0  stopped on SIGTERM/SIGINT with every battery at 0 W and released (--check: all answered)
  1  --check: a device did not answer
  2  invalid configuration (the message names the key), or no P1 meter to read as configured
  3  stopped, but a battery could not be released (it may still run its last setpoint)
discover: 0 devices listed, 1 none found; pair-p1: 0 paired, 1 no token, 2 no meter to pair"""


def _source_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--config", type=Path, default=default, help="TOML configuration file")
    parser.add_argument(
        "--env-file", type=Path, default=default, help="a .env file (default: ./.env if present)"
    )


def _add_meter_commands(parser: argparse.ArgumentParser) -> None:
    """``discover`` and ``pair-p1``: they read only the P1 meter's settings."""
    commands = parser.add_subparsers(dest="command", metavar="{discover,pair-p1}")
    discover = commands.add_parser(
        "discover", help="list the HomeWizard devices on the network (mDNS) and exit"
    )
    _source_options(discover, argparse.SUPPRESS)
    pair = commands.add_parser(
        "pair-p1",
        help="pair with the P1 meter's API v2: press its button when asked; the token is"
        " stored in the token file (P1_TOKEN_FILE)",
    )
    _source_options(pair, argparse.SUPPRESS)
    pair.add_argument(
        "--print", action="store_true", help="print the token for P1_TOKEN instead of storing it"
    )
    pair.add_argument(
        "--wait-s",
        type=float,
        default=60.0,
        help="how long to wait for the button (default 60 s; the meter grants 30 s from a press)",
    )


def _meter_command(args: argparse.Namespace) -> int:
    from engine.p1_commands import discover, pair_p1

    try:
        meter, config_file = load_meter_config(
            environ=os.environ, config_file=args.config, dotenv_file=args.env_file
        )
    except ConfigError as err:
        print(f"mmbc-engine: {config_error_exit_message(err)}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(LogLevel.WARNING, LogFormat.TEXT)
    if args.command == "discover":
        return asyncio.run(discover(meter))
    if not args.wait_s > 0:
        print("mmbc-engine pair-p1: --wait-s must be > 0", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(
        pair_p1(meter, config_file=config_file, print_token=args.print, wait_s=args.wait_s)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbc-engine",
        description="Keep a HomeWizard P1 meter at zero with Marstek Venus E batteries.",
        epilog=_EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _source_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="read and decide, but write nothing to batteries"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate config, reach every device once, exit"
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        help="where the energy totals are kept across restarts (overrides MMBC_STATE_FILE;"
        " default: /data/mmbc-state.json if /data is writable, else ./mmbc-state.json)",
    )
    parser.add_argument("--version", action="version", version=f"mmbc-engine {__version__}")
    _add_meter_commands(parser)
    args = parser.parse_args(argv)
    if args.command is not None:
        return _meter_command(args)
    try:
        config = load_config(environ=os.environ, config_file=args.config, dotenv_file=args.env_file)
    except ConfigError as err:
        print(f"mmbc-engine: {config_error_exit_message(err)}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log.level, config.log.format)
    for warning in config.warnings:
        _LOGGER.warning("configuration: %s", warning)
    if args.check:
        return asyncio.run(check(config))
    return asyncio.run(
        run(
            config,
            dry_run=args.dry_run or config.dry_run,
            state_file=args.state_file or config.state_file,
        )
    )


def build_batteries(config: EngineSettings, clock: Clock) -> list[MarstekBattery]:
    return [
        MarstekBattery(
            b.name,
            b.host,
            b.port,
            b.unit_id,
            clock=clock,
            message_gap_s=b.message_gap_s,
            timeout_s=b.timeout_s,
            control_recheck_s=config.control.control_recheck_s,
        )
        for b in config.batteries
    ]


async def _check_meter(name: str, url: str, timeout_s: float) -> bool:
    meter = HomeWizardClient(url, timeout_s=timeout_s, name=name)
    try:
        reading = await meter.read()
    except DeviceError as err:
        print(f"{name} meter {url}: FAILED ({err})")
        return False
    finally:
        await meter.close()
    print(f"{name} meter {url}: OK, {reading.active_power_w:.0f} W")
    return True


async def _check_p1(config: EngineSettings, clock: Clock) -> bool:
    """Find the P1 meter as the engine would and read it once."""
    try:
        meter = await open_p1(config.meter, clock=clock, config_file=config.config_file)
    except P1SetupError as err:
        print(f"P1 meter: FAILED ({err})")
        return False
    try:
        reading = await meter.read()
    except DeviceError as err:
        print(f"P1 meter {meter.describe()}: FAILED ({err})")
        return False
    finally:
        await meter.close()
    print(f"P1 meter {meter.describe()}: OK, {reading.active_power_w:.0f} W")
    return True


async def _check_mqtt(mqtt: MqttSettings) -> bool:
    """Connect to the broker once (TLS and credentials as configured) and disconnect."""
    import aiomqtt  # only imported when MQTT is configured

    where = f"MQTT broker {mqtt.host}:{mqtt.port}"
    how = ("TLS" if mqtt.tls else "no TLS") + (f", user {mqtt.username}" if mqtt.username else "")
    if mqtt.tls_cert_file is not None:
        how += ", client certificate"
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.password_text(),
        # Not the engine's own id: a running engine with that id would be kicked off.
        identifier=f"{mqtt.client_id}-check",
        clean_session=True,
        timeout=MQTT_CHECK_TIMEOUT_S,
        tls_context=mqtt.ssl_context(),
    )
    try:
        async with asyncio.timeout(MQTT_CHECK_TIMEOUT_S), client:
            pass
    except (aiomqtt.MqttError, OSError, TimeoutError) as err:
        reason = str(err) or f"no answer within {MQTT_CHECK_TIMEOUT_S:g} s"
        print(f"{where}: FAILED ({how}: {reason})")
        return False
    print(f"{where}: OK ({how})")
    return True


async def check(config: EngineSettings) -> int:
    """Print the configuration, reach every device and the broker once, say what answered.

    Reads only. Exit status 0 when everything answered, 1 otherwise.
    """
    print(f"mmbc-engine {__version__}: configuration is valid")
    print(config.describe())
    clock = LoopClock()
    results = [await _check_p1(config, clock)]
    if config.pv_meter is not None:
        pv_url = await locate_pv(config.pv_meter, config.meter, None)
        if pv_url is None:
            print(f"PV meter serial {config.pv_meter.serial}: FAILED (not found by mDNS)")
            results.append(False)
        else:
            results.append(await _check_meter("PV", pv_url, config.pv_meter.timeout_s))
    for battery in build_batteries(config, clock):
        try:
            tel = await battery.read()
        finally:
            await battery.close()
        where = f"{battery.name} {battery.host}:{battery.port} unit {battery.unit_id}"
        if tel.online and tel.soc_pct is not None and tel.power_w is not None:
            print(f"{where}: OK, SoC {tel.soc_pct:.0f} %, {tel.power_w:.0f} W")
            results.append(True)
        else:
            print(f"{where}: FAILED (no valid answer)")
            results.append(False)
    if config.mqtt is not None:
        results.append(await _check_mqtt(config.mqtt))
    ok = all(results)
    print("check: everything answered" if ok else "check: FAILED, see above")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _make_bridge(
    config: EngineSettings, mqtt: MqttSettings, controller: Controller, clock: Clock
) -> MqttBridge:
    from engine.adapters.mqtt import MqttBridge  # aiomqtt is only imported when MQTT is on

    return MqttBridge(
        mqtt,
        clock=clock,
        on_block_discharge=controller.set_block_discharge,
        on_mode=controller.set_mode,
        has_pv=config.pv_meter is not None,
        battery_numbers=[b.number for b in config.batteries],
    )


def _counters(
    controller: Controller, batteries: Sequence[MarstekBattery], bridge: MqttBridge | None
) -> EngineCounters:
    """The counters ``/metrics`` reads at each scrape, from where the engine keeps them."""
    from engine.adapters.web import BatteryCounters, EngineCounters

    stats = controller.stats
    return EngineCounters(
        cycles=stats.cycles,
        cycle_errors=stats.errors,
        cycle_error_runs=stats.error_runs,
        meter_failures=stats.meter_failures,
        batteries=tuple(
            BatteryCounters(
                name=b.name,
                reads=b.reads,
                writes=b.writes,
                errors=b.errors,
                retries=b.retries,
                connects=b.connects,
                control_lost=b.commander.control_lost_count,
            )
            for b in batteries
        ),
        mqtt_connected=None if bridge is None else bridge.connected,
        mqtt_reconnects=None if bridge is None else max(0, bridge.connections - 1),
        mqtt_rejected_commands=None if bridge is None else bridge.rejected,
    )


def _make_server(
    config: EngineSettings,
    controller: Controller,
    batteries: Sequence[MarstekBattery],
    bridge: MqttBridge | None,
    clock: Clock,
) -> DashboardServer | None:
    http = config.http
    if not http.serves:
        return None
    from engine.adapters.web import DashboardServer  # prometheus_client only when it is on

    settings = config.control
    return DashboardServer(
        clock=clock,
        battery_names=[b.name for b in config.batteries],
        on_mode=controller.set_mode,
        on_block_discharge=controller.set_block_discharge,
        describe=describe,
        severity=severity,
        host=http.host,
        port=http.port,
        token=None if http.token is None else http.token.get_secret_value(),
        counters=lambda: _counters(controller, batteries, bridge),
        # The core's stale verdict comes first (it knows the meter's interval); this only
        # backstops a policy without one.
        meter_max_age_s=max(30.0, 6 * settings.stale_after_s),
        # A healthy cycle takes at most a battery timeout or two beyond its period.
        cycle_stale_s=max(10.0, 5 * settings.loop_period_s),
        period_s=settings.loop_period_s,
        has_pv=config.pv_meter is not None,
        version=__version__,
    )


def _latency_summary(controller: Controller) -> str:
    latencies_ms = sorted(s * 1000.0 for s in controller.stats.latencies_s)
    if not latencies_ms:
        return f"{controller.stats.cycles} cycles"
    median_ms = statistics.median(latencies_ms)
    p99_ms = latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))]
    return (
        f"{controller.stats.cycles} cycles, cycle latency (meter answer to last battery write)"
        f" median {median_ms:.2f} ms, p99 {p99_ms:.2f} ms"
    )


async def _open_meter(config: EngineSettings, clock: Clock) -> P1Meter | None:
    """The P1 meter as configured (found by mDNS without an address); None after printing
    why there is none to read (exit status 2)."""
    try:
        return await open_p1(config.meter, clock=clock, config_file=config.config_file)
    except P1SetupError as err:
        print(f"mmbc-engine: P1 meter: {err}", file=sys.stderr)
        return None


async def run(config: EngineSettings, *, dry_run: bool, state_file: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT; then every battery to 0 W and released within 5 s.

    Returns ``EXIT_OK``, or ``EXIT_NOT_RELEASED`` when a battery could not be released.
    ``state_file``: the energy totals' state (default ``default_state_file()``).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    clock = LoopClock()
    settings = config.control_settings()
    policy = make_policy(settings)
    meter = await _open_meter(config, clock)
    if meter is None:
        return EXIT_CONFIG
    pv_url = await locate_pv(config.pv_meter, config.meter, None) if config.pv_meter else None
    pv = (
        HomeWizardClient(pv_url, timeout_s=config.pv_meter.timeout_s, name="pv")
        if config.pv_meter and pv_url
        else None
    )
    batteries = build_batteries(config, clock)
    controller = Controller(
        clock=clock,
        policy=policy,
        meter=meter,
        batteries=batteries,
        pv_meter=pv,
        pv_negative_when_producing=config.pv_meter.negative_when_producing
        if config.pv_meter
        else True,
        capacities={b.name: b.capacity_wh for b in config.batteries},
        dry_run=dry_run,
        battery_numbers={b.name: b.number for b in config.batteries},
        energy_store=EnergyStateFile(state_file),
        push=meter.stream,
    )
    mqtt = config.mqtt
    bridge = _make_bridge(config, mqtt, controller, clock) if mqtt is not None else None
    if bridge is not None:
        controller.sinks.append(bridge)
    _LOGGER.info(
        "mmbc-engine %s: policy %s, %d batteries, meter %s, MQTT %s, HTTP %s%s",
        __version__,
        policy.name,
        len(batteries),
        meter.describe(),
        "on" if bridge is not None else "off",
        f"port {config.http.port}" if config.http.serves else "off",
        " (dry run: nothing is written)" if dry_run else "",
    )
    server = _make_server(config, controller, batteries, bridge, clock)
    # A port in use is one log line inside start(); control goes on without the server.
    if server is not None and await server.start():
        controller.sinks.append(server)
    bridge_task = asyncio.create_task(bridge.run()) if bridge is not None else None

    async def stop_bridge() -> None:
        # Runs beside the batteries' shutdown, so the two share the 5 s budget.
        await stop.wait()
        if bridge is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_BUDGET_S):
                    await bridge.stop()

    bridge_stopper = asyncio.create_task(stop_bridge())
    try:
        await controller.run(stop)
    finally:
        stop.set()
        if server is not None:
            await server.stop()
        await bridge_stopper
        if bridge_task is not None:
            bridge_task.cancel()
            await asyncio.gather(bridge_task, return_exceptions=True)
        await meter.close()
        if pv is not None:
            await pv.close()
        for b in batteries:
            await b.close()
    if controller.released_ok is False:
        _LOGGER.error(
            "mmbc-engine stopped, but not every battery was released: %s",
            _latency_summary(controller),
        )
        return EXIT_NOT_RELEASED
    _LOGGER.info("mmbc-engine stopped: %s", _latency_summary(controller))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
