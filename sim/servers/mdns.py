"""mDNS advertisements of simulated HomeWizard devices, as the real ones announce themselves.

A device with API v1 registers ``_hwenergy._tcp`` (TXT api_enabled, path, serial,
product_name, product_type); with API v2 also ``_homewizard._tcp`` (TXT api_version, id,
serial, product_name, product_type), both under ``<prefix>-<last 6 of serial>``
(docs/discovery.mdx). The tests advertise on the loopback interface only: multicast sent
there never leaves the machine.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_V1 = "_hwenergy._tcp.local."
SERVICE_V2 = "_homewizard._tcp.local."
LOOPBACK = "127.0.0.1"
# docs/discovery.mdx: the instance is "<product>-<last 6 characters of the serial>".
INSTANCE_PREFIXES = {
    "HWE-P1": "p1meter",
    "HWE-KWH1": "kwhmeter",
    "HWE-KWH3": "kwhmeter",
    "SDM230-wifi": "kwhmeter",
    "SDM630-wifi": "kwhmeter",
    "HWE-SKT": "energysocket",
    "HWE-WTR": "watermeter",
    "HWE-BAT": "battery",
}


@dataclass(frozen=True, slots=True)
class AdvertisedDevice:
    """What one simulated device announces; a port of None leaves that service out."""

    product_type: str
    product_name: str
    serial: str
    address: str = LOOPBACK
    v1_port: int | None = None
    v1_enabled: bool = True
    v2_port: int | None = None
    api_version: str = "2.0.0"
    identifier: str | None = None  # TXT id; the certificate name

    @property
    def instance(self) -> str:
        prefix = INSTANCE_PREFIXES.get(self.product_type, "hwdevice")
        return f"{prefix}-{self.serial[-6:].upper()}"

    def services(self) -> list[AsyncServiceInfo]:
        common = {
            "serial": self.serial,
            "product_name": self.product_name,
            "product_type": self.product_type,
        }
        server = f"{self.instance}.local."
        addresses = [socket.inet_aton(self.address)]
        infos = []
        if self.v1_port is not None:
            txt = {"api_enabled": "1" if self.v1_enabled else "0", "path": "/api/v1", **common}
            infos.append(
                AsyncServiceInfo(
                    SERVICE_V1,
                    f"{self.instance}.{SERVICE_V1}",
                    addresses=addresses,
                    port=self.v1_port,
                    properties=txt,
                    server=server,
                )
            )
        if self.v2_port is not None:
            txt = {"api_version": self.api_version, **common}
            if self.identifier is not None:
                txt["id"] = self.identifier
            infos.append(
                AsyncServiceInfo(
                    SERVICE_V2,
                    f"{self.instance}.{SERVICE_V2}",
                    addresses=addresses,
                    port=self.v2_port,
                    properties=txt,
                    server=server,
                )
            )
        return infos


class MdnsAdvertiser:
    """Announces devices on ``interfaces`` (loopback by default) until ``stop``."""

    def __init__(self, interfaces: Sequence[str] = (LOOPBACK,)) -> None:
        self._zeroconf = AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
        self._devices: dict[str, AdvertisedDevice] = {}
        self._infos: dict[str, list[AsyncServiceInfo]] = {}

    async def advertise(self, device: AdvertisedDevice) -> None:
        """Announce ``device`` (replacing an earlier announcement of the same serial)."""
        if device.serial in self._infos:
            await self.withdraw(device.serial)
        infos = device.services()
        # Each call returns an awaitable that completes once the announcements have gone
        # out; both services probe and announce at the same time.
        sent = [
            await self._zeroconf.async_register_service(info, allow_name_change=False)
            for info in infos
        ]
        await asyncio.gather(*sent)
        self._devices[device.serial] = device
        self._infos[device.serial] = infos

    async def move(
        self,
        serial: str,
        address: str,
        *,
        v1_port: int | None = None,
        v2_port: int | None = None,
    ) -> AdvertisedDevice:
        """The device got a new address (and, for the simulator, maybe new ports; None keeps
        the old one): announce the change, as a device re-announces after a new DHCP lease.
        """
        before = self._devices[serial]
        device = replace(
            before,
            address=address,
            v1_port=before.v1_port if v1_port is None else v1_port,
            v2_port=before.v2_port if v2_port is None else v2_port,
        )
        infos = device.services()
        await asyncio.gather(*[await self._zeroconf.async_update_service(i) for i in infos])
        self._devices[serial] = device
        self._infos[serial] = infos
        return device

    async def withdraw(self, serial: str) -> None:
        infos = self._infos.pop(serial, [])
        # Completes once the goodbyes have gone out.
        await asyncio.gather(*[await self._zeroconf.async_unregister_service(i) for i in infos])
        self._devices.pop(serial, None)

    async def stop(self) -> None:
        await self._zeroconf.async_unregister_all_services()
        await self._zeroconf.async_close()
