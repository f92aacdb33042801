"""Real relay processes for tests: start, wait until healthy, read logs, stop.

Each :class:`RelayProcess` is a ``python -m server serve`` subprocess on a
free loopback port with its own keys file and secret, exactly as an operator
would run it. Its log lines (JSON) are kept in a file the test can read.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from server.cli import signed_headers

STRICT_FLAG = "RELAY_TESTS_STRICT"
"""Set by .ci/run: a test that would skip for a missing binary fails instead."""


def require_binary(name: str) -> str:
    """The path of ``name``; skip (or, under CI, fail) when it is missing."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get(STRICT_FLAG):
            pytest.fail(f"{message}, and {STRICT_FLAG} forbids skipping")
        pytest.skip(message)

    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bulky_restocks(n: int) -> list[dict[str, object]]:
    """About 20 KB of restocks in one post: fills a stalled client fast."""
    return [
        {
            "site": "amazon",
            "sku": f"B0BULK{n:03d}{i:02d}",
            "offerId": "o",
            "details": {"region": "USA", "productTitle": "t" * 2000},
        }
        for i in range(10)
    ]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


class RelayProcess:
    """One relay subprocess. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        workdir: Path,
        *,
        keys: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.secret = new_secret()
        self.keys_file = workdir / "keys.txt"
        self.keys_file.write_text("".join(f"{key}\n" for key in keys))
        self.log_path = workdir / "relay.log"
        self.env = {
            **os.environ,
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(self.port),
            "RELAY_KEYS_FILE": str(self.keys_file),
            "RELAY_WEBHOOK_SECRETS": f"monitor={self.secret}",
            "RELAY_LOG_FORMAT": "json",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.http_url}/webhooks/restock"

    def ws_url(self, key: str, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}?key={quote(key, safe='')}"

    def start(self, timeout: float = 15.0) -> RelayProcess:
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay exited early:\n{self.log_text()}")
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"relay did not become healthy:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as answer:
            return dict(json.load(answer))

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def post(
        self,
        body: Any,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> tuple[int, Any]:
        """POST a restock signed with this relay's secret; (status, JSON)."""
        data = raw if raw is not None else json.dumps(body).encode()
        signed = signed_headers(
            data,
            secret_key(secret or self.secret),
            webhook_id=webhook_id,
            timestamp=timestamp,
        )
        request = urllib.request.Request(
            self.webhook_url,
            data=data,
            headers={**signed, **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, text.decode(errors="replace")
