"""Real ``redis-server`` processes for tests, and a cuttable TCP path to one.

:class:`RedisServer` runs ``redis-server`` on a free loopback port with no
persistence, so a restart comes back empty, as a crashed Redis without
persistence would. :class:`CuttableProxy` forwards a port to it and can
drop every connection and refuse new ones, which is how a node that loses
its network to Redis (while the others keep theirs) looks from the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.clients import TIMEOUT, close_code, open_client
from tests.harness import RelayProcess, free_port, new_secret, require_binary


class RedisServer:
    """One ``redis-server``; ``stop()`` and ``start()`` keep the same port."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.binary = require_binary("redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited early")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, *args: str) -> bytes:
        """Send one command (RESP) and return the raw reply."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False


class CuttableProxy:
    """A TCP forwarder to ``target_port`` that can be cut and mended."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cut = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def sever(self) -> None:
        """Drop every forwarded connection and refuse new ones."""
        self.cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def mend(self) -> None:
        self.cut = False

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


def relay_nodes(
    workdir: Path,
    redis_url: str,
    *,
    count: int = 2,
    keys: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[RelayProcess]:
    """``count`` relay processes (not started) that share one Redis, one
    keys file's worth of keys and one webhook secret, as nodes of one relay
    behind a load balancer would."""
    secret = new_secret()
    prefix = f"relay-{secrets.token_hex(4)}"
    keys = list(keys)
    nodes = []
    for index in range(count):
        node = RelayProcess(
            workdir / f"node-{index}",
            keys=keys,
            env={
                "RELAY_REDIS_URL": redis_url,
                "RELAY_REDIS_PREFIX": prefix,
                "RELAY_WEBHOOK_SECRETS": f"monitor={secret}",
                **(env or {}),
            },
        )
        node.secret = secret
        nodes.append(node)

    return nodes


async def admitted(relay: RelayProcess, key: str, *, settle: float = 0.3) -> bool:
    """Connect with ``key``: True if the relay keeps the connection (it is
    then closed by us), False if it refuses it."""
    client = await open_client(relay.ws_url(key))
    try:
        await close_code(client, timeout=settle)
    except TimeoutError:
        await client.close()
        return True

    return False


async def node_counts(
    relay: RelayProcess,
    *,
    nodes: int,
    total: int | None = None,
    timeout: float = TIMEOUT,
) -> dict[str, int]:
    """Connections per node (worker) behind one port, from ``/healthz``.

    Each request reaches whichever worker accepts it, so this polls until
    it has heard from ``nodes`` workers (and, with ``total``, until their
    latest counts add up to it).
    """
    seen: dict[str, int] = {}
    async with asyncio.timeout(timeout):
        while True:
            health = await asyncio.to_thread(relay.health)
            seen[health["node"]] = health["connections"]
            if len(seen) >= nodes and (total is None or sum(seen.values()) == total):
                return seen
            await asyncio.sleep(0.01)
