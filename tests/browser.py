"""Headless Chromium for tests, driven over the DevTools protocol.

Stellar is an Electron app, so Chromium's own WebSocket is the closest
client to it we can run. :class:`HeadlessChromium` starts Debian's
``chromium`` on a page, trusting one test certificate by its public key
pin (``--ignore-certificate-errors-spki-list``, honoured only with a
``--user-data-dir``), and :class:`DevToolsPage` evaluates JavaScript in
that page, awaiting promises, so a test reads what the page's socket
received without screenshots or fixed sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection, connect

from tests.harness import require_binary

TIMEOUT = 30.0
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def spki_pin(certificate: trustme.LeafCert) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the leaf, as Chromium wants it."""
    leaf = x509.load_pem_x509_certificate(certificate.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class PageError(Exception):
    """JavaScript in the page threw, or a promise it was awaiting rejected."""


class HeadlessChromium:
    """One Chromium process with its own profile, on one page."""

    def __init__(self, workdir: Path, *, trusted: trustme.LeafCert) -> None:
        self.binary = require_binary("chromium")
        self.workdir = workdir
        self.profile = workdir / "profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "chromium.log"
        self.pin = spki_pin(trusted)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, url: str) -> HeadlessChromium:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    *FLAGS,
                    f"--user-data-dir={self.profile}",
                    f"--ignore-certificate-errors-spki-list={self.pin}",
                    "--remote-debugging-port=0",
                    url,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own process group, so that stop() reaches the renderer
                # and helper processes Chromium forks.
                start_new_session=True,
            )

        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def devtools_port(self, timeout: float = TIMEOUT) -> int:
        """The port Chromium chose; it writes it to its profile once listening."""
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"chromium exited early:\n{self.log_text()}")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                return int(lines[0])
            time.sleep(0.05)
        raise RuntimeError(f"chromium opened no DevTools port:\n{self.log_text()}")

    def page_endpoint(self, timeout: float = TIMEOUT) -> str:
        """The DevTools websocket URL of the page Chromium was started on."""
        port = self.devtools_port(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/json/list", timeout=5
            ) as answer:
                targets = json.load(answer)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.05)
        raise RuntimeError("chromium lists no page")

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )


class DevToolsPage:
    """Runtime.evaluate on one page, over its DevTools websocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._ids = itertools.count(1)

    @classmethod
    async def attach(cls, endpoint: str) -> DevToolsPage:
        connection = await connect(
            endpoint, max_size=None, ping_interval=None, proxy=None
        )

        return cls(connection)

    async def close(self) -> None:
        await self._connection.close()

    async def evaluate(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """The value of ``expression``; a promise is awaited in the page."""
        message_id = next(self._ids)
        await self._connection.send(
            json.dumps(
                {
                    "id": message_id,
                    "method": "Runtime.evaluate",
                    "params": {
                        "expression": expression,
                        "awaitPromise": True,
                        "returnByValue": True,
                    },
                }
            )
        )
        async with asyncio.timeout(timeout):
            while True:
                answer = json.loads(await self._connection.recv())
                if answer.get("id") == message_id:
                    break
        if "error" in answer:
            raise PageError(answer["error"].get("message", "devtools error"))
        result = answer["result"]
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {}).get("description")
            raise PageError(thrown or details.get("text", "exception"))

        return result["result"].get("value")

    async def wait_until(self, condition: str, timeout: float = TIMEOUT) -> None:
        """Until ``condition`` is true in the page (it may not have loaded yet)."""
        async with asyncio.timeout(timeout):
            while not await self.evaluate(condition):
                await asyncio.sleep(0.05)
