"""A lean server-side websocket for clients that only listen.

Sanic's own websocket object is built for handlers that ``recv()``: per
connection it keeps a frame assembler (a queue and two events), three
locks, a keepalive task and an auto-close task, about 28 KB in all. A
Stellar client only listens, and the relay has tens of thousands of them,
so this module swaps in :class:`ListeningWebsocket`: the ``websockets``
package's sans-I/O protocol for parsing and the close handshake, the
transport for writing, and no task of its own. Incoming data frames are
dropped; pings are sent by one :class:`Heartbeat` for the whole process.

:class:`RelayWebSocketProtocol` is the Sanic protocol class that does the
upgrade with it; pass it as ``protocol=`` when the server is started.
Sanic calls into ``websocket.data_received``, ``eof_received``,
``connection_lost``, ``close``, ``end_connection`` and reads ``ws_proto``
and ``loop``; those are the methods this class must keep.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from sanic.exceptions import SanicException
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

log = structlog.get_logger("server.websocket")

PING_FRAME = b"\x89\x00"  # final ping frame, no payload, unmasked
KERNEL_SEND_BUFFER = 64 * 1024
"""SO_SNDBUF of every client socket. Left to autotuning, Linux lets up to
4 MiB wait in the kernel for a client that stopped reading, invisible to
RELAY_CLIENT_BUFFER; restock pings are a few hundred bytes, so 64 KiB costs
no throughput and bounds what a stalled client holds."""
CLOSE_TIMEOUT = 5.0
"""Seconds a closing connection may take before its TCP socket is aborted."""


class ListeningWebsocket:
    """One upgraded connection whose client only listens."""

    __slots__ = ("answered", "closed", "loop", "transport", "ws_proto")

    def __init__(self, ws_proto: ServerProtocol, transport: Any, loop: Any) -> None:
        self.ws_proto = ws_proto
        self.transport = transport
        self.loop = loop
        self.closed: asyncio.Future[None] = loop.create_future()
        self.answered = True
        """False from a heartbeat ping until the client next sends anything."""

    # Called by Sanic's protocol with what the network did.

    def data_received(self, data: bytes) -> None:
        self.answered = True
        self.ws_proto.receive_data(data)
        # Data frames are dropped; pings are answered and closes echoed by
        # the protocol itself, so its output is all there is to send.
        self.ws_proto.events_received()
        self._flush()

    def eof_received(self) -> bool:
        self.ws_proto.receive_eof()
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ws_proto.state is not State.CLOSED:
            self.ws_proto.state = State.CLOSED
        if not self.closed.done():
            self.closed.set_result(None)

    # Called by the relay.

    async def wait_closed(self) -> None:
        """Until the TCP connection is gone, however it went."""
        await self.closed

    def ping(self) -> None:
        """Send a ping; ``answered`` stays False until the client replies."""
        if self.ws_proto.state is State.OPEN and not self.transport.is_closing():
            self.answered = False
            self.transport.write(PING_FRAME)

    def end_connection(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; abort if the client never answers."""
        if self.ws_proto.state is State.OPEN:
            self.ws_proto.send_close(code, reason)
            self._flush()
        self._abort_later()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.end_connection(code, reason)

    def fail(self, code: int, reason: str) -> None:
        """Send a close frame and drop the connection without waiting."""
        if self.ws_proto.state is State.OPEN:
            self.ws_proto.fail(code, reason)
            self._flush()
        if not self.transport.is_closing():
            self.transport.close()
        self._abort_later()

    def _flush(self) -> None:
        for chunk in self.ws_proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif not self.transport.is_closing():
                # The protocol's end-of-stream: the handshake is over.
                self.transport.close()

    def _abort_later(self) -> None:
        self.loop.call_later(CLOSE_TIMEOUT, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.closed.done():
            self.transport.abort()

    def close_code(self) -> int:
        """The code this connection closed with, 1006 if none was exchanged."""
        for frame in (self.ws_proto.close_sent, self.ws_proto.close_rcvd):
            if frame is not None:
                return int(frame.code)
        return 1006


WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake_response(headers: Any) -> bytes:
    """The 101 answer to a websocket upgrade request (RFC 6455 section 4.2).

    ``headers`` is a case-insensitive multi-dict (Sanic's). No extension
    and no subprotocol is ever accepted, so frames are never compressed and
    one encoded frame fits every client. Raises ``SanicException`` (400)
    naming what is wrong.
    """

    def tokens(name: str) -> set[str]:
        values = ",".join(headers.getall(name, [])).lower()
        return {token.strip() for token in values.split(",")}

    if "upgrade" not in tokens("connection") or "websocket" not in tokens("upgrade"):
        raise SanicException("not a websocket upgrade request", status_code=400)
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise SanicException("unsupported websocket version, use 13", status_code=400)
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise SanicException("invalid sec-websocket-key", status_code=400)
    accept = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())

    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


class RelayWebSocketProtocol(WebSocketProtocol):
    """Sanic's websocket protocol, upgrading to :class:`ListeningWebsocket`."""

    __slots__ = ()

    async def websocket_handshake(
        self, request: Any, subprotocols: Iterable[str] | None = None
    ) -> ListeningWebsocket:
        await self.send(handshake_response(request.headers))  # type: ignore[no-untyped-call]
        transport = self.transport
        client_socket = (
            None if transport is None else transport.get_extra_info("socket")
        )
        if client_socket is not None:
            client_socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER
            )
        # The handshake is done; the sans-I/O protocol only parses frames.
        ws_proto = ServerProtocol(max_size=self.websocket_max_size, state=State.OPEN)
        websocket = ListeningWebsocket(ws_proto, self.transport, self.loop)
        self.websocket = websocket  # type: ignore[assignment]

        return websocket

    def close_if_idle(self) -> bool:
        # Sanic asks this at shutdown; a websocket is never idle, so close it.
        websocket = self.websocket
        if isinstance(websocket, ListeningWebsocket):
            websocket.end_connection(1001, "server going away")
            return False
        return bool(super().close_if_idle())  # type: ignore[no-untyped-call]


class Heartbeat:
    """One task that pings every connection, instead of a task per client.

    A round visits every connection once: one that has sent nothing since
    its previous ping is dropped, the rest are pinged. The round is spread
    over the whole interval in slices of ``SLICE`` connections, so that
    10,000 pings (and their 10,000 pongs) never arrive as one burst that a
    broadcast has to compete with. A client that dies is dropped between
    one and two intervals later.
    """

    SLICE = 250

    def __init__(
        self,
        connections: Callable[[], list[Any]],
        interval: float,
        on_timeout: Callable[[Any], None],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._connections = connections
        self.interval = interval
        self._on_timeout = on_timeout
        self._sleep = sleep

    async def run(self) -> None:
        while True:
            await self.beat()

    async def beat(self) -> None:
        """One round: every connection of the moment, spread over an interval."""
        connections = self._connections()
        slices = max(1, -(-len(connections) // self.SLICE))
        pause = self.interval / slices
        for start in range(0, slices * self.SLICE, self.SLICE):
            await self._sleep(pause)
            for connection in connections[start : start + self.SLICE]:
                websocket = connection.websocket
                if websocket.answered:
                    websocket.ping()
                else:
                    self._on_timeout(connection)
