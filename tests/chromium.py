"""Real headless Chromium (Debian's ``chromium``), driven over its DevTools protocol.

No Playwright and no browser download: the system browser is started with
``--remote-debugging-port=0``, its port is read from ``DevToolsActivePort`` in
a fresh profile directory, and the page target is driven over a WebSocket
(tornado's client, already installed as a dependency of Flower). What the
tests need: navigate, evaluate JavaScript, collect console errors and
uncaught exceptions, and take a full-page screenshot.

Missing chromium is a failure with the install command, never a skip: the
status page claim must not pass silently on a machine without a browser.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tornado.websocket import WebSocketClientConnection, websocket_connect

# Flags that work as root in a container without a GPU or network access.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1400,1000",
]


def find_chromium() -> str:
    """The browser binary (``CHROMIUM`` overrides), or fail naming how to install it."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("chromium is not installed, and the status page test needs a real browser: run `make install` "
                "(as root on Debian it installs it via deploy/install_system.sh) or `apt-get install -y chromium`",
                pytrace=False)


class CdpError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = find_chromium()
        self.log_path = log_dir / "chromium.log"
        self.profile = Path(tempfile.mkdtemp(prefix="discovery-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.loop = asyncio.new_event_loop()
        self.ws: WebSocketClientConnection | None = None
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def __enter__(self) -> Chromium:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"chromium did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.loads(resp.read())
        page = next(t for t in targets if t["type"] == "page")

        async def connect() -> WebSocketClientConnection:  # created inside this loop
            return await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=256 * 1024 * 1024)

        self.ws = self.loop.run_until_complete(connect())
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _send(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.ws is not None
        self._next_id += 1
        call_id = self._next_id
        await self.ws.write_message(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), timeout)
            if raw is None:
                raise CdpError(f"chromium closed the DevTools connection during {method}")
            message = json.loads(raw)
            if message.get("id") == call_id:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._send(method, params, timeout))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout, what=f"{url} to load")

    def wait_for(self, expression: str, timeout: float = 15.0, what: str | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expression} (last: {value!r})")
            time.sleep(0.1)

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far (read after a round trip)."""
        self.evaluate("1")  # drains events queued on the socket
        errors = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                           for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return errors

    def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the window), as PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        result = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                           clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if not self.loop.is_closed():
            self.loop.close()
        shutil.rmtree(self.profile, ignore_errors=True)
