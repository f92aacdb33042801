"""A lean Stellar-like websocket client that holds thousands of connections.

Run as its own process by the bench. It speaks just enough RFC 6455 for the
job: the upgrade request, unmasked server frames (text, ping, close) and a
masked pong. Per connection it keeps a few integers and one list of arrival
times, so that the load generator costs far less per message than the relay
it measures.

Commands on stdin, one JSON line each; answers on stdout, one JSON line each:

- ``{"cmd": "connect", "url": ..., "keys": [...], "stalled": M}``: open one
  connection per key; the last M stop reading once upgraded.
- ``{"cmd": "report"}``: arrival times (monotonic seconds) per healthy
  connection, and the close codes seen.
- ``{"cmd": "resume"}``: stalled connections read again (to see their close).
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # the bench still runs, only slower
    uvloop = None

UPGRADE = (
    "GET {path}?key={key} HTTP/1.1\r\n"
    "Host: {host}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: c3RlbGxhci1yZWxheS0xNg==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
PONG_EMPTY = bytes((0x8A, 0x80, 0, 0, 0, 0))  # masked, zero key, no payload


class BenchClient(asyncio.Protocol):
    __slots__ = (
        "arrivals",
        "buffer",
        "close_code",
        "handshake",
        "ready",
        "stalled",
        "transport",
        "upgraded",
    )

    def __init__(self, handshake: bytes, ready: asyncio.Future[float], stalled: bool):
        self.handshake = handshake
        self.ready = ready
        self.stalled = stalled
        self.upgraded = False
        self.buffer = b""
        self.arrivals: list[float] = []
        self.close_code: int | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.handshake)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self._fail(buffer[:40].decode(errors="replace"))
                return
            self.upgraded = True
            buffer = buffer[end + 4 :]
            if not self.ready.done():
                self.ready.set_result(now)
            if self.stalled:
                self.transport.pause_reading()
        self.buffer = self._frames(buffer, now)

    def _frames(self, buffer: bytes, now: float) -> bytes:
        offset, size = 0, len(buffer)
        while size - offset >= 2:
            opcode = buffer[offset] & 0x0F
            length = buffer[offset + 1] & 0x7F
            head = 2
            if length == 126:
                if size - offset < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset + 2)
                head = 4
            elif length == 127:
                if size - offset < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset + 2)
                head = 10
            if size - offset < head + length:
                break
            if opcode == 1:
                self.arrivals.append(now)
            elif opcode == 9:
                payload = buffer[offset + head : offset + head + length]
                self.transport.write(
                    bytes((0x8A, 0x80 | len(payload), 0, 0, 0, 0)) + payload
                )
            elif opcode == 8:
                if length >= 2:
                    (self.close_code,) = struct.unpack_from("!H", buffer, offset + head)
                self.transport.close()
            offset += head + length

        return buffer[offset:]

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before upgrade"))
        if self.close_code is None:
            self.close_code = 1006


async def open_all(
    url: str, keys: list[str], stalled: int
) -> tuple[list[BenchClient], float]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    clients: list[BenchClient] = []
    started = time.monotonic()
    limit = asyncio.Semaphore(512)  # connects in flight at once

    async def one(index: int, key: str) -> None:
        handshake = UPGRADE.format(path=parts.path or "/ws", key=key, host=parts.netloc)
        ready: asyncio.Future[float] = loop.create_future()
        is_stalled = index >= len(keys) - stalled
        async with limit:
            sock = socket.socket()
            if is_stalled:
                # A small receive window makes a stalled reader fill up fast.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            _, client = await loop.create_connection(
                lambda: BenchClient(handshake.encode(), ready, is_stalled), sock=sock
            )
            clients.append(client)
            await ready

    await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))

    return clients, time.monotonic() - started


async def drain(clients: list[BenchClient], expect: int) -> float:
    """Resume paused clients; seconds until each has ``expect`` frames.

    The frames are already waiting in the kernel, so this is the load
    generator's own speed, with the relay out of the picture.
    """
    started = time.monotonic()
    for client in clients:
        client.transport.resume_reading()
    while any(len(c.arrivals) < expect for c in clients if not c.stalled):
        await asyncio.sleep(0.001)
    last = max(c.arrivals[expect - 1] for c in clients if not c.stalled)

    return last - started


def raise_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main() -> None:
    raise_file_limit()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    clients: list[BenchClient] = []

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "connect":
            try:
                clients, seconds = await open_all(
                    command["url"], command["keys"], command.get("stalled", 0)
                )
                answer({"connected": len(clients), "seconds": seconds})
            except Exception as exc:  # reported to the bench, which stops
                answer({"error": repr(exc)})
        elif command["cmd"] == "report":
            answer(
                {
                    "arrivals": [c.arrivals for c in clients if not c.stalled],
                    "stalled_codes": [c.close_code for c in clients if c.stalled],
                    "healthy_codes": [c.close_code for c in clients if not c.stalled],
                }
            )
        elif command["cmd"] == "pause":
            for client in clients:
                client.transport.pause_reading()
            answer({"paused": True})
        elif command["cmd"] == "drain":
            answer({"seconds": await drain(clients, command["expect"])})
        elif command["cmd"] == "resume":
            for client in clients:
                if client.stalled:
                    client.transport.resume_reading()
            answer({"resumed": True})
        elif command["cmd"] == "quit":
            for client in clients:
                client.transport.abort()
            answer({"bye": True})
            return


if __name__ == "__main__":
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
