"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (aiohttp).

Debian's ``chromium`` (``/usr/bin/chromium``); tests that need it skip with a reason when it is
missing. Every browser gets a fresh profile, listens for DevTools on a free loopback port and is
killed when the block ends. Only loopback pages are opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")
# Chromium runs as root here: no sandbox; nothing reaches outside (no sync, no updates).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_BOUND_S = 30.0
COMMAND_BOUND_S = 30.0


def chromium_path() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def require_chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")
    return path


class CdpError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat session: commands go over the browser's websocket."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self._browser = browser
        self._session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._browser.send(
            method, session_id=self._session_id, **params
        )
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); raises on exceptions."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression!r} raised: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, bound_s: float = START_BOUND_S) -> Any:
        """Poll ``expression`` until it is truthy; its value. AssertionError after the bound."""
        async with asyncio.timeout(bound_s):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(0.1)

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )

    async def screenshot(self, path: Path) -> bytes:
        reply = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(reply["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data


class Browser:
    """The browser-level DevTools connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the connection"))

    async def send(self, method: str, *, session_id: str | None = None, **params: Any) -> Any:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        await self._ws.send_json(message)
        async with asyncio.timeout(COMMAND_BOUND_S):
            reply = await future
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open(self, url: str) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Page.navigate", url=url)
        return page

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()


async def _devtools_url(profile: Path, proc: asyncio.subprocess.Process) -> str:
    """Chromium writes its DevTools port and browser path into the profile once it listens."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(START_BOUND_S):
        while True:
            if proc.returncode is not None:
                raise CdpError(f"chromium exited with status {proc.returncode}")
            with contextlib.suppress(FileNotFoundError):
                lines = marker.read_text(encoding="ascii").split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A fresh headless Chromium and its DevTools connection; killed afterwards."""
    executable = require_chromium()
    with tempfile.TemporaryDirectory(prefix="mmbc-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        proc = await asyncio.create_subprocess_exec(
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        try:
            url = await _devtools_url(profile, proc)
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(url, max_msg_size=64 * 1024 * 1024)
                browser = Browser(ws)
                try:
                    yield browser
                finally:
                    await browser.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
