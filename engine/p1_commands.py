"""``mmbc-engine discover`` and ``mmbc-engine pair-p1``: finding HomeWizard devices, pairing.

``discover`` lists the HomeWizard devices mDNS finds (type, serial, address, APIs) and exits.
``pair-p1`` finds the P1 meter as the engine would (``P1_HOST``, else mDNS and ``P1_SERIAL``),
asks the user to press its button, retries the token request through the button's window and
stores the token, with the meter's serial, in the token file (readable only by its owner), or
prints it for ``P1_TOKEN`` (``--print``). Both need only the meter's settings, no battery.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from engine.adapters.discovery import (
    DiscoveryError,
    FoundDevice,
    browse,
    select_p1,
)
from engine.adapters.homewizard_v2 import (
    DEFAULT_USER_NAME,
    HomeWizardV2Client,
    PairingTimeout,
    StoredToken,
    pair,
    save_token,
)
from engine.adapters.p1 import P1SetupError, find_devices, identifier_at, token_file_of
from engine.errors import DeviceError
from engine.settings import MeterSettings

EXIT_OK = 0
EXIT_FAILED = 1  # nothing found, or no token (the button was not pressed, no answer)
EXIT_CONFIG = 2  # the settings do not lead to a meter that can be paired
DISCOVER_S = 5.0
PAIR_WAIT_S = 60.0

Output = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)


def _apis(device: FoundDevice) -> str:
    apis = []
    if device.v1_port is not None:
        state = " (off in the app)" if device.v1_enabled is False else ""
        apis.append(f"v1 :{device.v1_port}{state}")
    if device.v2_port is not None:
        apis.append(f"v2 {device.v2_api_version or '?'} :{device.v2_port}")
    return ", ".join(apis) or "none"


def device_table(devices: list[FoundDevice]) -> str:
    """The devices as aligned columns: type, serial, address, APIs, name."""
    rows = [("type", "serial", "address", "APIs", "name")]
    rows += [
        (d.product_type, d.serial, ", ".join(d.addresses) or "?", _apis(d), d.product_name)
        for d in devices
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + f"  {row[4]}".rstrip()
        for row in rows
    )


async def discover(
    meter: MeterSettings, *, timeout_s: float = DISCOVER_S, say: Output = _say
) -> int:
    """Print the HomeWizard devices found on the network; 1 when there are none."""
    where = ", ".join(meter.mdns_interfaces) if meter.mdns_interfaces else "every interface"
    try:
        devices = await browse(timeout_s, interfaces=meter.mdns_interfaces)
    except OSError as err:
        say(f"discover: cannot look on {where} (mDNS): {err}")
        return EXIT_FAILED
    if not devices:
        say(f"no HomeWizard device answered within {timeout_s:g} s on {where} (mDNS)")
        return EXIT_FAILED
    say(device_table(devices))
    return EXIT_OK


async def _v2_meter(meter: MeterSettings) -> tuple[str, str]:
    """Where the P1 meter's API v2 answers (host[:port]) and its certificate name."""
    if meter.host is None and meter.url is not None:
        msg = "is API v1's URL; pairing is for API v2: give P1_HOST, or neither (mDNS)"
        raise P1SetupError("P1_API_URL", msg)
    if meter.host is not None:
        return meter.host, await identifier_at(meter, meter.serial)
    devices = await find_devices(meter, serial=meter.serial, want_v2=True)
    try:
        device = select_p1(devices, serial=meter.serial)
    except DiscoveryError as err:
        raise P1SetupError("P1_SERIAL", str(err)) from None
    if device.v2_port is None:
        msg = (
            f"{device.product_type} {device.serial} does not offer API v2"
            " (_homewizard._tcp; firmware 6.00 or later)"
        )
        raise P1SetupError("P1_SERIAL", msg)
    return f"{device.address}:{device.v2_port}", device.tls_hostname


async def pair_p1(
    meter: MeterSettings,
    *,
    config_file: Path | None = None,
    print_token: bool = False,
    wait_s: float = PAIR_WAIT_S,
    say: Output = _say,
) -> int:
    """Pair with the P1 meter's API v2; store the token (or print it). The exit status."""
    token_file = token_file_of(meter, config_file)
    try:
        host, identifier = await _v2_meter(meter)
    except P1SetupError as err:
        print(f"mmbc-engine pair-p1: {err}", file=sys.stderr)
        return EXIT_CONFIG
    say(f"pairing with the P1 meter at {host} ({identifier})")
    client = HomeWizardV2Client(
        host, identifier=identifier, ca_file=meter.ca_file, timeout_s=meter.timeout_s
    )
    try:
        token = await pair(client, prompt=say, user_name=DEFAULT_USER_NAME, wait_s=wait_s)
        client.set_token(token)
        info = await client.device()  # the token works, and the meter says who it is
    except PairingTimeout as err:
        say(f"pair-p1: {err}")
        return EXIT_FAILED
    except DeviceError as err:
        say(f"pair-p1: {err}")
        return EXIT_FAILED
    finally:
        await client.close()
    serial = info.serial.lower()
    if print_token:
        say(f"paired with {info.product_type} {serial}; for .env (keep it secret):")
        say(f"P1_TOKEN={token}")
        say(f"P1_SERIAL={serial}")
        return EXIT_OK
    stored = StoredToken(token=token, serial=serial, product_type=info.product_type)
    try:
        save_token(token_file, stored)
    except OSError as err:
        say(
            f"pair-p1: cannot write {token_file} ({err.strerror or err}); set P1_TOKEN_FILE to"
            " a writable place, or use --print"
        )
        return EXIT_FAILED
    say(
        f"paired with {info.product_type} {serial}: token stored in {token_file}"
        " (readable only by you); mmbc-engine now reads the meter over API v2"
    )
    return EXIT_OK
