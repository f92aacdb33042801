"""One worker process as a node of a relay that shares its state in Redis.

A node owns three background tasks:

- the *listener* reads the pub/sub connection: restocks for this node's
  clients, and "close this connection" notices for keys another node took
  over (replace policy);
- the *keeper* pings Redis and extends this node's leases every third of
  the lease time;
- the *recovery*, started when the link is lost: reconnect with backoff and
  jitter; then subscribe again, take back the leases of live sockets and
  finish the releases the outage held back; only then is the link UP and
  are new clients let in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio.client import PubSub

from server.config import Settings
from server.errors import SharedStateUnavailable
from server.hub import Hub
from server.shared.leases import RedisKeyRegistry
from server.shared.link import COMMAND_TIMEOUT, FAILURES, RedisLink, reconnect_delays
from server.shared.restocks import RedisFanout

log = structlog.get_logger("server.shared")


def new_node_id() -> str:
    """Host, process and a random part: readable in logs, unique in Redis."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"

    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class RedisNode:
    """Registry and fan-out backed by Redis, with their lifecycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        node_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.node_id = node_id or new_node_id()
        self.link = RedisLink(
            settings.redis_url,
            prefix=settings.redis_prefix,
            node_id=self.node_id,
            clock=clock,
        )
        self.registry = RedisKeyRegistry(
            self.link, lease_seconds=settings.lease_seconds
        )
        self.fanout: RedisFanout | None = None
        self._keep_every = settings.lease_seconds / 3
        self._rng = rng
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._stopped = False
        self.link.when_lost(self._start_recovery)

    def __repr__(self) -> str:
        return f"RedisNode({self.node_id!r}, {self.link!r})"

    def attach(
        self, hub: Hub, close_displaced: Callable[[str], None]
    ) -> tuple[RedisKeyRegistry, RedisFanout]:
        """Wire the node to this process's hub; the registry and fan-out."""
        self.fanout = RedisFanout(self.link, hub)
        self.registry.on_displaced = close_displaced

        return self.registry, self.fanout

    def health(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "redis": self.link.state.value,
            "leases": len(self.registry),
        }

    async def start(self) -> None:
        """Connect and subscribe; if Redis does not answer, start as in an
        outage (the main process checked it a moment ago: a Redis that
        was never there stopped start-up then)."""
        self.link.recovering()
        try:
            with self.link.guard(recovering=True) as client:
                await client.ping()
            await self._subscribe()
        except SharedStateUnavailable as exc:
            await self._drop_subscription()
            self.link.started_down(exc.__cause__ or exc)
        else:
            self.link.recovered(first_start=True)
            log.info("redis.connected", redis=self.link.location, node=self.node_id)
        self._keeper = asyncio.create_task(self._keep_leases())

    def stopping(self) -> None:
        """Shutdown has begun: connections closing now free their leases in
        one batch at :meth:`stop`."""
        self.registry.defer_releases()

    async def stop(self) -> None:
        """Free this node's leases and close its connections to Redis."""
        self._stopped = True
        for task in (self._keeper, self._recovery, self._listener):
            if task is not None:
                task.cancel()
        await self.registry.release_all()
        self.link.closing()
        await self._drop_subscription()
        await self.link.close()

    async def _subscribe(self) -> None:
        """Subscribe, and wait until Redis confirms both channels: a client
        accepted after this point cannot miss a restock."""
        assert self.fanout is not None, "attach() before start()"
        channels = (self.fanout.channel, self.link.name("node", self.node_id))
        pubsub = self.link.client.pubsub()
        self._pubsub = pubsub
        with self.link.guard(recovering=True):
            await pubsub.subscribe(*channels)
            confirmed = 0
            async with asyncio.timeout(COMMAND_TIMEOUT):
                while confirmed < len(channels):
                    message = await pubsub.get_message(timeout=COMMAND_TIMEOUT)
                    if message is not None and message["type"] == "subscribe":
                        confirmed += 1
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: PubSub) -> None:
        assert self.fanout is not None
        restocks = self.fanout.channel.encode()
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message["type"] != "message":
                    continue
                try:
                    if message["channel"] == restocks:
                        self.fanout.receive(message["data"])
                    else:
                        self.registry.displaced(message["data"].decode())
                except Exception:
                    log.exception("redis.message_failed", channel=message["channel"])
        except FAILURES as exc:
            self.link.lost(exc)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._keep_every)
            if not self.link.up:
                continue
            try:
                with self.link.guard() as client:
                    await client.ping()
                await self.registry.keep()
            except SharedStateUnavailable:
                continue  # the link is down; the recovery has started

    def _start_recovery(self) -> None:
        if self._stopped:
            return
        if self._listener is not None:
            self._listener.cancel()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        await self._drop_subscription()
        for delay in reconnect_delays(self._rng):
            await asyncio.sleep(delay)
            # Idle pooled connections may still point at the Redis that went
            # away, and the pool does not always notice: dial anew. (Ones in
            # use are left to fail on their own; closing them under a
            # running command breaks redis-py.)
            await self.link.drop_idle_connections()
            if await self._try_recovering():
                return

    async def _try_recovering(self) -> bool:
        self.link.recovering()
        try:
            with self.link.guard(recovering=True) as client:
                await client.ping()
            await self._subscribe()
            displaced = await self.registry.keep(take_back=True)
            released = await self.registry.finish_releases()
        except SharedStateUnavailable:
            await self._drop_subscription()
            return False
        self.link.recovered(
            leases_kept=len(self.registry) - displaced,
            clients_displaced=displaced,
            late_releases=released,
        )

        return True

    async def _drop_subscription(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*FAILURES):  # the connection is gone
                await pubsub.aclose()  # type: ignore[no-untyped-call]
