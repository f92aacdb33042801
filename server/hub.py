"""The open connections of this process, and the broadcast to all of them.

Broadcast is the hot path. The frame bytes are built once by the caller and
written, unchanged, to every client: server frames are never masked and the
relay negotiates no compression, so every client gets the same bytes. A
client whose transport has nothing waiting gets them straight from its
socket, written by the send pool (several threads at once); every other
client through its transport, which only appends to its buffer. Nothing
here awaits, so one stalled client cannot delay another, and a client whose
buffer passes its bound is closed as a slow consumer instead of growing it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from licensing import redact_key
from server.closecodes import CloseCode
from server.sendpool import SendPool

log = structlog.get_logger("server.hub")


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked websocket text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)

    return header + payload


class Connection:
    """One accepted Stellar client. Kept small: there may be tens of
    thousands."""

    __slots__ = ("fd", "key", "opened_at", "owner", "peer", "transport", "websocket")

    def __init__(
        self, *, owner: str, key: str, peer: str, websocket: Any, opened_at: float
    ) -> None:
        self.owner = owner
        self.key = key
        self.peer = peer
        self.websocket = websocket
        self.transport = websocket.transport
        self.fd = plain_socket_fd(self.transport)
        self.opened_at = opened_at

    def __repr__(self) -> str:
        return f"Connection(owner={self.owner!r}, peer={self.peer!r})"

    def close(self, code: CloseCode) -> None:
        """Send a close frame and drop the TCP connection; never waits."""
        self.websocket.fail(int(code), code.reason)

    def say_going_away(self) -> None:
        """Start a graceful close with 1001, for shutdown."""
        going_away = CloseCode.GOING_AWAY
        self.websocket.end_connection(int(going_away), going_away.reason)


def plain_socket_fd(transport: Any) -> int:
    """The file descriptor under a plain TCP transport, or -1.

    -1 (write through the transport) for TLS, whose bytes on the wire are
    not the frame's, and for anything without a socket.
    """
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")

    return -1 if sock is None else int(sock.fileno())


@dataclass(frozen=True, slots=True)
class BroadcastReport:
    delivered: int
    slow_consumers: int
    seconds: float
    writers: int
    """Threads that wrote the frames (the send pool's share-out)."""

    def log_fields(self) -> dict[str, float]:
        """What a webhook's or a restock's log line says about its fan-out."""
        return {
            "delivered": self.delivered,
            "slow_consumers": self.slow_consumers,
            "fanout_ms": round(self.seconds * 1000, 2),
            "writers": self.writers,
        }


class Hub:
    """Connections by owner id, with counters for ``/healthz``."""

    def __init__(
        self,
        *,
        client_buffer: int,
        send_pool: SendPool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_buffer = client_buffer
        self.send_pool = send_pool or SendPool(threads=1)
        self._connections: dict[str, Connection] = {}
        self._held: dict[str, Any] = {}
        self.clock = clock
        self.restocks_sent = 0
        self.slow_consumers_closed = 0

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: Connection) -> None:
        self._connections[connection.owner] = connection

    def remove(self, owner: str) -> None:
        self._connections.pop(owner, None)

    def get(self, owner: str) -> Connection | None:
        return self._connections.get(owner)

    def hold(self, owner: str, websocket: Any) -> None:
        """Note a websocket whose key is claimed but whose license is being
        looked up, so that a newer connection can still replace it."""
        self._held[owner] = websocket

    def unhold(self, owner: str) -> bool:
        """Forget a held websocket; False if it was evicted meanwhile."""
        return self._held.pop(owner, None) is not None

    def evict(self, owner: str, code: CloseCode) -> bool:
        """Close ``owner``'s connection, served or still held; True if found."""
        connection = self._connections.pop(owner, None)
        if connection is not None:
            connection.close(code)
            return True
        websocket = self._held.pop(owner, None)
        if websocket is not None:
            websocket.fail(int(code), code.reason)
            return True

        return False

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def broadcast(self, frames: bytes, *, count: int) -> BroadcastReport:
        """Write ``frames`` (``count`` restocks) to every open connection.

        A connection that already has more than ``client_buffer`` bytes
        waiting is closed instead, so a client's buffer never holds more
        than that bound plus one webhook's frames. A connection with nothing
        waiting is written by the send pool; what its socket does not take
        goes to its transport, behind nothing, so the bytes stay in order.
        """
        started = time.perf_counter()
        limit = self.client_buffer
        delivered = 0
        slow: list[Connection] = []
        direct: list[Connection] = []
        fds: list[int] = []
        for connection in self._connections.values():
            transport = connection.transport
            if transport.is_closing():
                continue
            waiting = transport.get_write_buffer_size()
            if waiting == 0 and connection.fd >= 0:
                direct.append(connection)
                fds.append(connection.fd)
            elif waiting > limit:
                slow.append(connection)
            else:
                transport.write(frames)
                delivered += 1
        writers = self.send_pool.writers_for(len(fds))
        if fds:
            for position, sent in self.send_pool.write(fds, frames):
                direct[position].transport.write(frames[sent:])
            delivered += len(fds)
        for connection in slow:
            self._drop_slow_consumer(connection)
        self.restocks_sent += count
        seconds = time.perf_counter() - started

        return BroadcastReport(delivered, len(slow), seconds, writers)

    def _drop_slow_consumer(self, connection: Connection) -> None:
        self.remove(connection.owner)
        self.slow_consumers_closed += 1
        log.warning(
            "client.slow_consumer",
            key=redact_key(connection.key),
            peer=connection.peer,
            waiting=connection.transport.get_write_buffer_size(),
        )
        connection.close(CloseCode.SLOW_CONSUMER)
