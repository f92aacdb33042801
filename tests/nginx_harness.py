"""Real nginx for tests, running the shipped config from ``nginx/``.

The shipped files are plain nginx configs with production values: ports 80
and 443, relay.example.com's certificate, Debian's log and pid paths, the
relay on 127.0.0.1:8080. :class:`NginxProcess` renders them by swapping
exactly those values for a test's own (free ports, a trustme certificate,
paths in a temporary directory) and nothing else. A value that is no longer
in the file is an error, so the tests cannot drift from what ships.

Clients reach nginx from their own loopback source address
(:func:`fresh_address`): 127.0.0.0/8 is all local on Linux, so the address
nginx forwards differs from nginx's own 127.0.0.1, and the per-address
limits of one test do not count against another.
"""

from __future__ import annotations

import getpass
import http.client
import itertools
import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trustme
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from server.cli import signed_headers
from tests.clients import close_code, open_client
from tests.harness import free_port, require_binary, secret_key

NGINX_DIR = Path(__file__).resolve().parent.parent / "nginx"
SITE_CONF = NGINX_DIR / "stellar-relay.conf"
MAIN_CONF = NGINX_DIR / "nginx.conf"
TEST_PAGES = "/test-pages/"
"""Where a rendered config serves the test's own static files, when asked."""

_addresses = itertools.count(2)


def fresh_address() -> str:
    """A loopback address no other client of this test run has used."""
    number = next(_addresses)

    return f"127.0.{number // 250}.{number % 250 + 2}"


def render(text: str, replacements: Mapping[str, str], name: str) -> str:
    """``text`` with each key replaced; each must occur exactly once."""
    for old, new in replacements.items():
        count = text.count(old)
        if count != 1:
            raise ValueError(f"{name}: expected {old!r} once, found it {count} times")
        text = text.replace(old, new)

    return text


class NginxProcess:
    """nginx in the foreground with the shipped config, rendered for a test."""

    def __init__(
        self,
        workdir: Path,
        *,
        relay_port: int,
        certificate: trustme.LeafCert,
        serve_test_pages: bool = False,
    ) -> None:
        self.binary = require_binary("nginx")
        self.workdir = workdir
        self.relay_port = relay_port
        self.http_port = free_port()
        self.https_port = free_port()
        while self.https_port == self.http_port:
            self.https_port = free_port()
        self.pages_dir = workdir / TEST_PAGES.strip("/")
        self.access_log_path = workdir / "logs" / "stellar-relay.access.log"
        self.error_log_path = workdir / "logs" / "error.log"
        self.main_conf = workdir / "conf" / "nginx.conf"
        self.site_conf = workdir / "conf" / "stellar-relay.conf"
        self._write_files(certificate, serve_test_pages)
        self.process: subprocess.Popen[bytes] | None = None

    def _write_files(self, certificate: trustme.LeafCert, test_pages: bool) -> None:
        for directory in ("conf", "logs", "temp", "tls", "test-pages"):
            (self.workdir / directory).mkdir(parents=True, exist_ok=True)
        chain = self.workdir / "tls" / "fullchain.pem"
        key = self.workdir / "tls" / "privkey.pem"
        for blob in certificate.cert_chain_pems:
            blob.write_to_path(chain, append=True)
        certificate.private_key_pem.write_to_path(key)
        self.site_conf.write_text(self._render_site(chain, key, test_pages))
        self.main_conf.write_text(self._render_main())

    def _render_site(self, chain: Path, key: Path, test_pages: bool) -> str:
        replacements = {
            "listen 443 ssl;": f"listen 127.0.0.1:{self.https_port} ssl;",
            "listen 80;": f"listen 127.0.0.1:{self.http_port};",
            # Tests reach nginx over IPv4 loopback only.
            "listen [::]:443 ssl;": "",
            "listen [::]:80;": "",
            "server 127.0.0.1:8080;": f"server 127.0.0.1:{self.relay_port};",
            "/etc/letsencrypt/live/relay.example.com/fullchain.pem": str(chain),
            "/etc/letsencrypt/live/relay.example.com/privkey.pem": str(key),
            "/var/log/nginx/stellar-relay.access.log": str(self.access_log_path),
        }
        if test_pages:
            replacements["    location / {"] = (
                f"    location ^~ {TEST_PAGES} {{ root {self.workdir}; }}\n"
                "    location / {"
            )

        return render(SITE_CONF.read_text(), replacements, SITE_CONF.name)

    def _render_main(self) -> str:
        temp = self.workdir / "temp"
        temp_paths = "".join(
            f"    {kind}_temp_path {temp / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        replacements = {
            # As root, nginx's workers take this user; as anyone else the
            # directive is ignored. Either way they can read the temp dir.
            "user www-data;": f"user {getpass.getuser()};",
            "pid /run/nginx.pid;": f"pid {self.workdir / 'nginx.pid'};",
            "/var/log/nginx/error.log": str(self.error_log_path),
            # The host's modules and other sites are not part of the test.
            "include /etc/nginx/modules-enabled/*.conf;": "",
            "include /etc/nginx/conf.d/*.conf;": "",
            "include /etc/nginx/sites-enabled/*;": (
                f"include {self.site_conf};\n{temp_paths}"
            ),
        }

        return render(MAIN_CONF.read_text(), replacements, MAIN_CONF.name)

    def command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            str(self.workdir),
            "-c",
            str(self.main_conf),
            "-e",
            str(self.error_log_path),
            *extra,
        ]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered config."""
        return subprocess.run(
            self.command("-t"), capture_output=True, text=True, timeout=30
        )

    def start(self, timeout: float = 15.0) -> NginxProcess:
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.error_log()}")
            if self._accepting():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start listening:\n{self.error_log()}")

    def _accepting(self) -> bool:
        try:
            for port in (self.http_port, self.https_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False

        return True

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wss_url(self, key: str, path: str = "/ws") -> str:
        return f"wss://127.0.0.1:{self.https_port}{path}?key={quote(key, safe='')}"

    def ws_url(self, key: str, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.http_port}{path}?key={quote(key, safe='')}"

    def https_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.https_port}{path}"

    def access_log(self) -> str:
        return _read(self.access_log_path)

    def access_lines(self, address: str) -> list[str]:
        """Access log lines of requests that came from ``address``."""
        prefix = f"{address} "

        return [
            line for line in self.access_log().splitlines() if line.startswith(prefix)
        ]

    def error_log(self) -> str:
        return _read(self.error_log_path)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A TLS client context that trusts the test CA and nothing else."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)

    return context


async def open_from(
    url: str, source: str, context: ssl.SSLContext | None = None, **options: Any
) -> ClientConnection:
    """A websocket client whose TCP connection comes from ``source``."""
    if url.startswith("wss:"):
        options["ssl"] = context

    return await open_client(url, local_addr=(source, 0), proxy=None, **options)


async def handshake_result(
    url: str, source: str, context: ssl.SSLContext | None = None
) -> int | None:
    """The HTTP status nginx refused with, or the close code once upgraded."""
    try:
        client = await open_from(url, source, context)
    except InvalidStatus as refused:
        return refused.response.status_code

    return await close_code(client)


def https_request(
    nginx: NginxProcess,
    method: str,
    path: str,
    *,
    source: str,
    context: ssl.SSLContext,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request from ``source``: status, headers, body."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        nginx.https_port,
        context=context,
        source_address=(source, 0),
        timeout=10,
    )
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def post_restock(
    nginx: NginxProcess,
    body: Any,
    *,
    secret: str,
    source: str,
    context: ssl.SSLContext,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """POST a signed restock to the relay through nginx; (status, answer)."""
    data = raw if raw is not None else json.dumps(body).encode()
    status, _, answer = https_request(
        nginx,
        "POST",
        "/webhooks/restock",
        source=source,
        context=context,
        body=data,
        headers=signed_headers(data, secret_key(secret)),
    )
    try:
        return status, json.loads(answer or b"null")
    except ValueError:
        return status, answer.decode(errors="replace")
