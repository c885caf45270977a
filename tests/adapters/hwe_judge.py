"""Run by the test in its own venv: HomeWizard's python-homewizard-energy reads our simulators.

Not a test module (pytest never collects it): ``test_reference_client.py`` starts it with a
Python >= 3.12 that has python-homewizard-energy installed, passes the servers' addresses as
one JSON argument, presses the simulated button when told ``button?`` on stdout (answering on
stdin), and reads one JSON line of results. Written for HomeWizard's library, not ours: it
uses only its public API, plus one substitution: the CA it trusts (the simulator's test CA in
place of HomeWizard's, exactly what a real device's certificate would need).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def judge(config: dict[str, Any]) -> dict[str, Any]:
    import homewizard_energy  # type: ignore[import-not-found]
    import homewizard_energy.v2  # type: ignore[import-not-found]
    from homewizard_energy import (
        DisabledError,
        HomeWizardEnergyV1,
        HomeWizardEnergyV2,
        has_v2_api,
    )

    result: dict[str, Any] = {"library": homewizard_energy.__name__}
    v1_host, v2_host = config["v1"], config["v2"]
    result["has_v2_api"] = {
        "v1": await has_v2_api(v1_host),
        "v2": await has_v2_api(v2_host),
    }

    async with HomeWizardEnergyV1(v1_host) as v1:
        device = await v1.device()
        measurement = await v1.measurement()
        result["v1"] = {
            "product_type": device.product_type,
            "serial": device.serial,
            "api_version": str(device.api_version),
            "power_w": measurement.power_w,
            "power_l1_w": measurement.power_l1_w,
            "energy_import_kwh": measurement.energy_import_kwh,
            "energy_export_kwh": measurement.energy_export_kwh,
        }

    homewizard_energy.v2.CACERT = config["ca_pem"]  # trust the simulator's CA
    async with HomeWizardEnergyV2(v2_host, identifier=config["identifier"]) as v2:
        try:
            await v2.get_token("mmbc-judge")
            result["token_before_press"] = "granted"
        except DisabledError:
            result["token_before_press"] = "refused"
        print("button?", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        token = await v2.get_token("mmbc-judge")
        device = await v2.device()
        measurement = await v2.measurement()
        system = await v2.system()
        result["v2"] = {
            "token_length": len(token),
            "product_type": device.product_type,
            "serial": device.serial,
            "api_version": str(device.api_version),
            "power_w": measurement.power_w,
            "power_l1_w": measurement.power_l1_w,
            "energy_import_kwh": measurement.energy_import_kwh,
            "energy_export_kwh": measurement.energy_export_kwh,
            "tariff": measurement.tariff,
            "api_v1_enabled": system.api_v1_enabled,
        }
    async with HomeWizardEnergyV2(
        v2_host, identifier="appliance/p1dongle/000000000000", token=token
    ) as wrong:
        try:
            await wrong.measurement()
            result["wrong_identifier"] = "accepted"
        except Exception as err:  # the library wraps the TLS failure in its own error
            result["wrong_identifier"] = type(err).__name__
    return result


def main() -> None:
    config = json.loads(sys.argv[1])
    with open(config["ca_file"], encoding="ascii") as handle:
        config["ca_pem"] = handle.read()
    print(json.dumps(asyncio.run(judge(config))), flush=True)


if __name__ == "__main__":
    main()
