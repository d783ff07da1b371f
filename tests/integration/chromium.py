"""A tiny headless-Chromium driver over the DevTools protocol (aiohttp's websocket client; no
Selenium, no Playwright download): navigate, evaluate JavaScript, type real keystrokes, take a
screenshot. Debian's ``chromium`` package is installed by :func:`find_or_install_chromium` when
missing (needs root and apt; otherwise the caller skips with the reason)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_or_install_chromium() -> tuple[str | None, str]:
    """The browser's path, or None and why it cannot be had."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "chromium is not installed and apt-get as root is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        result = subprocess.run(install, env=env, capture_output=True, timeout=600)
        if result.returncode != 0:
            return None, f"apt-get install chromium failed: {result.stderr.decode()[-500:]}"
    found = shutil.which("chromium")
    return (found, "") if found else (None, "chromium installed but not on PATH")


class Browser:
    """One headless Chromium with one page, driven over the DevTools websocket."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1500) -> None:
        self.binary = binary
        self.size = (width, height)
        self.profile = tempfile.TemporaryDirectory(prefix="shoppulse-chromium-")
        self.process: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count(1)
        self.console: list[str] = []

    async def __aenter__(self) -> Browser:
        profile = Path(self.profile.name)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--window-size={self.size[0]},{self.size[1]}",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.profile.cleanup()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        message_id = next(self.ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        while True:
            reply = await asyncio.wait_for(self.ws.receive_json(), 30)
            if reply.get("method") == "Runtime.consoleAPICalled":
                args = reply["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", "")) for a in args))
            elif reply.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(reply["params"]["exceptionDetails"]))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    async def navigate(self, url: str, timeout: float = 30) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", timeout)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {expression!r}; console: {self.console[-5:]}"
                )
            await asyncio.sleep(0.2)

    async def type_text(self, selector: str, text: str) -> None:
        """Focus an element and type into it as a user would, then press Enter."""
        await self.evaluate(f"document.querySelector({selector!r}).focus()")
        for char in text:
            await self.send("Input.dispatchKeyEvent", type="keyDown", text=char, key=char)
            await self.send("Input.dispatchKeyEvent", type="keyUp", key=char)
        enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        await self.send("Input.dispatchKeyEvent", type="keyDown", text="\r", **enter)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **enter)

    async def screenshot(self, path: Path) -> bytes:
        reply = await self.send("Page.captureScreenshot", format="png")
        data = base64.b64decode(reply["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data
