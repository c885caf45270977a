"""``mmbc-engine``: the composition root. Configuration → adapters → controller → signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import __version__
from engine.adapters.homewizard import HomeWizardClient
from engine.adapters.marstek import MarstekBattery
from engine.config import EngineConfig, load_config
from engine.core.policies import make_policy
from engine.errors import ConfigError, DeviceError
from engine.logs import setup_logging
from engine.ports import Clock, LoopClock
from engine.runtime.controller import Controller

_LOGGER = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_CHECK_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbc-engine",
        description="Keep a HomeWizard P1 meter at zero with Marstek Venus E batteries.",
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--env-file", type=Path, help="a .env file (default: ./.env if present)")
    parser.add_argument(
        "--dry-run", action="store_true", help="read and decide, but write nothing to batteries"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate config, reach every device once, exit"
    )
    parser.add_argument("--version", action="version", version=f"mmbc-engine {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(
            environ=os.environ, config_file=args.config, dotenv_file=args.env_file
        )
    except ConfigError as err:
        print(f"mmbc-engine: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level, config.log_format)
    if args.check:
        return asyncio.run(check(config))
    return asyncio.run(run(config, dry_run=args.dry_run or config.dry_run))


def build_batteries(config: EngineConfig, clock: Clock) -> list[MarstekBattery]:
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


async def check(config: EngineConfig) -> int:
    """Reach every device once and say what answered."""
    clock = LoopClock()
    ok = True
    meter = HomeWizardClient(config.meter.url, timeout_s=config.meter.timeout_s)
    try:
        reading = await meter.read()
        print(f"P1 meter {config.meter.url}: {reading.active_power_w:.0f} W")
    except DeviceError as err:
        print(f"P1 meter {config.meter.url}: FAILED ({err})")
        ok = False
    finally:
        await meter.close()
    for battery in build_batteries(config, clock):
        tel = await battery.read()
        if tel.online and tel.soc_pct is not None:
            print(f"{battery.name} {battery.host}:{battery.port}: SoC {tel.soc_pct:.0f} %, "
                  f"{tel.power_w:.0f} W")
        else:
            print(f"{battery.name} {battery.host}:{battery.port}: FAILED (no valid answer)")
            ok = False
        await battery.close()
    return 0 if ok else EXIT_CHECK_FAILED


async def run(config: EngineConfig, *, dry_run: bool) -> int:
    """Run until SIGTERM/SIGINT; then every battery to 0 W and released."""
    clock = LoopClock()
    settings = config.control_settings()
    policy = make_policy(settings)
    meter = HomeWizardClient(config.meter.url, timeout_s=config.meter.timeout_s)
    pv = (
        HomeWizardClient(config.pv_meter.url, timeout_s=config.pv_meter.timeout_s, name="pv")
        if config.pv_meter
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
    )
    bridge = None
    if config.mqtt is not None:
        from engine.adapters.mqtt import MqttBridge

        bridge = MqttBridge(
            config.mqtt_settings(),
            clock=clock,
            on_block_discharge=controller.set_block_discharge,
            on_mode=controller.set_mode,
            has_pv=config.pv_meter is not None,
            battery_names=[b.name for b in config.batteries],
        )
        controller.sink = bridge
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    _LOGGER.info(
        "mmbc-engine %s: policy %s, %d batteries, meter %s%s",
        __version__,
        policy.name,
        len(batteries),
        config.meter.url,
        " (dry run: nothing is written)" if dry_run else "",
    )
    bridge_task = asyncio.create_task(bridge.run()) if bridge else None
    try:
        await controller.run(stop)
    finally:
        if bridge is not None:
            await bridge.stop()
        if bridge_task is not None:
            bridge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bridge_task
        await meter.close()
        if pv is not None:
            await pv.close()
        for b in batteries:
            await b.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
