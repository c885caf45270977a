"""End to end: the HTTP server of a real ``mmbc-engine`` controlling a real ``mmbc-sim serve``.

A real headless Chromium opens the dashboard; ``/metrics`` is checked against the simulator's
registers; ``/healthz`` follows a meter outage; the controls move the batteries' registers.
The screenshot the browser test takes is the README's (``DASHBOARD_SCREENSHOT=docs/dashboard.png``
copies it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymodbus.client import ModbusTcpClient

from engine.adapters import marstek_registers as reg
from tests.browser import chromium, require_chromium
from tests.test_e2e import (
    ROOT,
    Lines,
    Served,
    free_port,
    serve_scenario,
    start_engine,
    stop_engine,
)

TRACE = ROOT / "scenarios" / "traces" / "uci_sceaux_2008-07-21.csv"
TOKEN = "dashboard-test-token"
BOUND_S = 60.0  # only keeps a broken run from hanging; not a timing assertion

pytestmark = pytest.mark.slow


def scenario(tmp_path: Path, name: str, faults: str = "") -> Path:
    """Two batteries (70 / 60 %) under a steady afternoon load, plus ``faults`` (TOML)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""name = "{name}"
description = "Dashboard test: two batteries under a steady afternoon load."
seed = 11

[trace]
file = "{TRACE.as_posix()}"
start_s = 50400
duration_s = 3600

[[battery]]
soc_pct = 70.0

[[battery]]
soc_pct = 60.0
{faults}""",
        encoding="utf-8",
    )
    return path


@dataclass
class Engine:
    proc: subprocess.Popen[str]
    out: Lines
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def engine(tmp_path: Path, served: Served, token: str | None = None) -> AsyncIterator[Engine]:
    port = free_port()
    env = served.engine_env() | {"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port)}
    if token is not None:
        env["HTTP_TOKEN"] = token
    proc, out = start_engine(tmp_path, env)
    try:
        await asyncio.to_thread(out.wait_for, "HTTP server on")
        await asyncio.to_thread(out.wait_for, "battery_2 connected")
        yield Engine(proc, out, port)
    finally:
        await asyncio.to_thread(stop_engine, proc, out)
    log = out.rest()
    assert "Traceback" not in log
    if token is not None:
        assert token not in log


def registers(port: int, address: int, count: int = 1) -> list[int]:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=1)
    try:
        assert client.connect()  # type: ignore[no-untyped-call]  # pymodbus ships no hints here
        reply = client.read_holding_registers(address, count=count, device_id=1)
        assert not reply.isError(), reply
        return [int(r) for r in reply.registers]
    finally:
        client.close()  # type: ignore[no-untyped-call]


async def read_registers(port: int, address: int, count: int = 1) -> list[int]:
    return await asyncio.to_thread(registers, port, address, count)


def ac_power_w(words: list[int]) -> int:
    return reg.to_i32(words[0], words[1])


async def until(check: Any, bound_s: float = BOUND_S, every_s: float = 0.2) -> Any:
    """Await ``check()`` until it returns something truthy; that value."""
    async with asyncio.timeout(bound_s):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(every_s)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(session: aiohttp.ClientSession, e: Engine) -> tuple[str, Samples]:
    async with session.get(f"{e.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def battery(name: str, sample: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample, (("battery", name),)


class MeterWatch:
    """Polls the simulated P1 meter in the background: every value and when it was seen."""

    def __init__(self, session: aiohttp.ClientSession, served: Served) -> None:
        self._session = session
        self._url = f"http://127.0.0.1:{served.p1_port}/api/v1/data"
        self.seen: list[tuple[float, float]] = []
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            async with self._session.get(self._url) as response:
                if response.status == 200:
                    body = await response.json()
                    self.seen.append((time.monotonic(), float(body["active_power_w"])))
            await asyncio.sleep(0.1)

    def recent(self, within_s: float) -> set[float]:
        horizon = time.monotonic() - within_s
        return {value for t, value in self.seen if t >= horizon}

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# ---------------------------------------------------------------------------------------
# the dashboard in a real browser


async def test_dashboard_in_chromium_follows_the_engine_live(tmp_path: Path) -> None:
    require_chromium()
    faults = """
[[fault]]
at_s = 25
kind = "battery_offline"
duration_s = 15
battery = 2
"""
    path = scenario(tmp_path, "dashboard_battery_offline", faults)
    with serve_scenario(tmp_path, path) as served:
        async with (
            engine(tmp_path, served, token=TOKEN) as e,
            aiohttp.ClientSession() as session,
            chromium() as browser,
        ):
            watch = MeterWatch(session, served)
            try:
                page = await browser.open(f"{e.url}/")
                await page.viewport(1100, 1400)
                await page.wait_for("Number(document.body.dataset.updates || 0) >= 3")
                # The shown grid power is what the simulated meter said at most ~2 cycles ago
                # (one poll period, one cycle, the stream): the update delay.
                for _ in range(5):
                    shown = await page.evaluate(
                        "Number(document.getElementById('grid-power').dataset.value)"
                    )
                    assert shown in watch.recent(within_s=2.5), (shown, watch.seen[-30:])
                    await asyncio.sleep(0.7)
                assert await page.evaluate("document.getElementById('link').dataset.state") == (
                    "live"
                )
                # Battery 2 goes offline in the scenario: an event with its time, and its card.
                event = await page.wait_for(
                    "[...document.querySelectorAll('#events li[data-kind=BatteryLost]')]"
                    ".map(li => li.textContent).find(t => t.includes('battery_2'))",
                    bound_s=BOUND_S,
                )
                assert "unavailable" in event
                assert await page.evaluate(
                    "/^\\d\\d:\\d\\d:\\d\\d/.test("
                    "document.querySelector('#events li[data-kind=BatteryLost] time').textContent)"
                )
                assert await page.wait_for(
                    "document.querySelector('.battery[data-name=battery_2]').dataset.online"
                    " === 'false'"
                )
                # Chart data for every series: grid, two powers, two SoCs.
                assert await page.evaluate("document.querySelectorAll('.u-legend th').length") >= 5
                shot = tmp_path / "dashboard.png"
                data = await page.screenshot(shot)
                assert data.startswith(b"\x89PNG")
                assert len(data) > 20_000
                if target := os.environ.get("DASHBOARD_SCREENSHOT"):
                    shutil.copyfile(shot, target)
                # Readable on a phone: one column, nothing wider than the screen.
                await page.viewport(390, 844, mobile=True)
                await asyncio.sleep(0.5)
                assert await page.evaluate(
                    "document.documentElement.scrollWidth <= window.innerWidth + 1"
                )
                await page.screenshot(tmp_path / "dashboard-phone.png")
                # The page's controls: a wrong token is refused, the right one blocks discharge.
                await page.evaluate(
                    "document.getElementById('token').value = 'wrong-token-123';"
                    "document.getElementById('block-toggle').click()"
                )
                assert "refused" in await page.wait_for(
                    "document.getElementById('control-result').dataset.ok === 'false'"
                    " && document.getElementById('control-result').textContent"
                )
                await page.evaluate(
                    f"document.getElementById('token').value = {TOKEN!r};"
                    "document.getElementById('block-toggle').click()"
                )
                await page.wait_for("!document.getElementById('blocked').hidden")
                await until(
                    lambda: _not_discharging(served.modbus_port),
                )
                assert TOKEN not in await page.evaluate("document.body.innerText")
                # Battery 2 answers again: that is an event too, and its card comes back.
                # (Newest first: the return above the loss.)
                back = await page.wait_for(
                    "(() => { const items = [...document.querySelectorAll('#events li')];"
                    " const at = (kind) => items.findIndex(li => li.dataset.kind === kind"
                    " && li.textContent.includes('battery_2'));"
                    " const back = at('BatteryReturned'), lost = at('BatteryLost');"
                    " return back >= 0 && back < lost && items[back].textContent; })()",
                    bound_s=BOUND_S,
                )
                assert "available again" in back
                assert await page.wait_for(
                    "document.querySelector('.battery[data-name=battery_2]').dataset.online"
                    " === 'true'"
                )
            finally:
                await watch.close()


async def _all(read: Any, value: int) -> bool:
    return bool(await read() == [value] * 2)


async def _in_control(read: Any) -> bool:
    return await _all(read, reg.RS485_ENABLE)


async def _not_discharging(port: int) -> bool:
    return (await read_registers(port, reg.REG_FORCE_MODE))[0] != reg.FORCE_DISCHARGE


# ---------------------------------------------------------------------------------------
# /metrics against the registers


async def test_metrics_match_the_simulated_registers(tmp_path: Path) -> None:
    with serve_scenario(tmp_path, scenario(tmp_path, "dashboard_metrics")) as served:
        async with engine(tmp_path, served) as e, aiohttp.ClientSession() as session:
            names = ("battery_1", "battery_2")
            ports = {"battery_1": served.modbus_port, "battery_2": served.modbus_port + 1}
            await asyncio.sleep(5.0)  # under control

            async def stable(sample: str, name: str, read: Any) -> tuple[float, float] | None:
                # Scrape, read the register, scrape: if the engine's value did not move
                # meanwhile, the register it came from must hold it now.
                _, before = await scrape(session, e)
                register = await read()
                _, after = await scrape(session, e)
                key = battery(name, sample)
                if key in before and before.get(key) == after.get(key):
                    return before[key], register
                return None

            for name in names:
                port = ports[name]

                async def soc(port: int = port) -> float:
                    return (await read_registers(port, reg.REG_SOC))[0] / 100.0

                async def setpoint(port: int = port) -> float:
                    (mode,) = await read_registers(port, reg.REG_FORCE_MODE)
                    charge, discharge = await read_registers(port, reg.REG_CHARGE_SETPOINT, 2)
                    if mode == reg.FORCE_DISCHARGE:
                        return float(discharge)
                    return -float(charge) if mode == reg.FORCE_CHARGE else 0.0

                metric_soc, register_soc = await until(
                    lambda n=name, r=soc: stable("mmbc_battery_state_of_charge_ratio", n, r)
                )
                assert metric_soc == register_soc
                metric_w, register_w = await until(
                    lambda n=name, r=setpoint: stable("mmbc_battery_setpoint_watts", n, r)
                )
                assert metric_w == register_w

            # AC power moves with the plant between the engine's read and ours: close, and
            # the same sign convention (+ discharging, as register 32202).
            text, m = await scrape(session, e)
            for name in names:
                words = await read_registers(ports[name], reg.REG_AC_POWER, 2)
                measured = m[battery(name, "mmbc_battery_power_watts")]
                assert abs(measured - ac_power_w(words)) <= 150 + 0.1 * abs(measured)
                assert m[battery(name, "mmbc_battery_available")] == 1.0
                assert m[battery(name, "mmbc_modbus_reads_total")] > 0
                assert m[battery(name, "mmbc_modbus_errors_total")] == 0
            assert m[("mmbc_fleet_power_watts", ())] > 500  # the afternoon load is covered
            assert m[("mmbc_grid_power_watts", ())] < m[("mmbc_fleet_power_watts", ())]
            assert m[("mmbc_mode", (("mode", "normal"),))] == 1.0
            assert m[("mmbc_cycles_total", ())] >= 3
            assert m[("mmbc_cycle_duration_seconds_count", ())] >= 3
            writes = {name: m[battery(name, "mmbc_modbus_writes_total")] for name in names}
            promtool = shutil.which("promtool")
            if promtool is not None:
                result = await asyncio.to_thread(
                    subprocess.run,
                    [promtool, "check", "metrics"],
                    input=text,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert result.returncode == 0, result.stdout + result.stderr
        run = served.stop()
    # The simulator saw at least every write the engine had counted.
    assert run["metrics"]["modbus_writes"] >= sum(writes.values()) > 0


# ---------------------------------------------------------------------------------------
# /healthz through a meter outage


async def test_healthz_is_503_during_a_meter_outage_and_200_after(tmp_path: Path) -> None:
    faults = """
[[fault]]
at_s = 15
kind = "meter_outage"
duration_s = 15
"""
    path = scenario(tmp_path, "dashboard_meter_outage", faults)
    with serve_scenario(tmp_path, path) as served:
        async with engine(tmp_path, served) as e, aiohttp.ClientSession() as session:

            async def health() -> tuple[int, dict[str, Any]]:
                async with session.get(f"{e.url}/healthz") as response:
                    return response.status, await response.json()

            async def status_is(code: int) -> dict[str, Any] | None:
                status, body = await health()
                return body if status == code else None

            assert (await until(lambda: status_is(200)))["status"] == "ok"
            down = await until(lambda: status_is(503))
            assert "meter" in down["reason"]
            up = await until(lambda: status_is(200))
            assert up["meter_age_s"] < 5
            async with session.get(f"{e.url}/api/snapshot") as response:
                kinds = [event["kind"] for event in (await response.json())["events"]]
    for kind in ("MeterLost", "SafeHoldEntered", "MeterReturned", "SafeHoldLeft"):
        assert kind in kinds
    assert kinds.index("MeterLost") < kinds.index("MeterReturned")


# ---------------------------------------------------------------------------------------
# controls over HTTP


async def test_controls_need_the_token_and_move_the_batteries(tmp_path: Path) -> None:
    with serve_scenario(tmp_path, scenario(tmp_path, "dashboard_controls")) as served:
        ports = (served.modbus_port, served.modbus_port + 1)

        async def rs485() -> list[int]:
            return [(await read_registers(port, reg.REG_RS485_CONTROL))[0] for port in ports]

        async with engine(tmp_path, served) as e, aiohttp.ClientSession() as session:
            await until(lambda: _in_control(rs485))
            for path, body in (
                ("/api/mode", {"mode": "selfcontrol"}),
                ("/api/discharge_block", {"blocked": True}),
            ):
                for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                    async with session.post(f"{e.url}{path}", json=body, headers=headers) as r:
                        assert r.status == 403
            await asyncio.sleep(2.0)
            assert await rs485() == [reg.RS485_ENABLE] * 2  # nothing changed

        async with engine(tmp_path, served, token=TOKEN) as e, aiohttp.ClientSession() as session:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            await until(lambda: _in_control(rs485))
            async with session.post(
                f"{e.url}/api/mode", json={"mode": "selfcontrol"}, headers={"Authorization": "x"}
            ) as r:
                assert r.status == 403
            async with session.post(
                f"{e.url}/api/mode", json={"mode": "selfcontrol"}, headers=auth
            ) as r:
                assert r.status == 200
            # Released to their own logic: 42000 = 0x55BB on both batteries.
            await until(lambda: _all(rs485, reg.RS485_DISABLE))
            async with session.post(
                f"{e.url}/api/mode", json={"mode": "normal"}, headers=auth
            ) as r:
                assert r.status == 200
            await until(lambda: _in_control(rs485))
    assert "HTTP command: mode = selfcontrol" in e.out.rest()
