"""This node's link to Redis: one client, one state, one place for errors.

Every Redis command of the relay runs inside :meth:`RedisLink.guard`, which
is where Redis's exceptions become :class:`SharedStateUnavailable` and where
a failure marks the link down. The state goes::

    UP --(any command fails)--> DOWN --(PING answers)--> RECOVERING --> UP

While the link is not UP, nothing that needs Redis is attempted: new
clients are refused with 4503 and webhooks are delivered to this node only
and answered 503. The outage is logged once when it starts
(``redis.lost``) and once when it ends (``redis.recovered``, with its
length and what was refused meanwhile).
"""

from __future__ import annotations

import contextlib
import enum
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.asyncio
import structlog
from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry

from server.config import redact_redis_url
from server.errors import ConfigError, SharedStateUnavailable

log = structlog.get_logger("server.shared")

COMMAND_TIMEOUT = 2.0
"""Seconds a Redis command may take before the link counts as lost."""
MAX_CONNECTIONS = 32
"""Redis connections per node: one for pub/sub, the rest shared by claims,
releases, the keeper and webhooks."""
FIRST_RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 5.0

FAILURES = (RedisError, OSError, RuntimeError, AttributeError)
"""What a Redis call raises when Redis is not there. Besides its own errors,
redis-py (5 to 8) can surface a connection torn down under a cancelled
command as uvloop's RuntimeError ("handler is closed") or an AttributeError
on its missing writer; both mean the same: this connection is gone."""


class LinkState(enum.Enum):
    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"


def reconnect_delays(
    rng: Callable[[], float] = random.random,
    *,
    first: float = FIRST_RETRY_DELAY,
    cap: float = MAX_RETRY_DELAY,
) -> Iterator[float]:
    """Endless delays between reconnect attempts: doubling up to ``cap``,
    each drawn from its upper half so that nodes do not retry in step."""
    ceiling = first
    while True:
        yield ceiling * (0.5 + rng() / 2)
        ceiling = min(cap, ceiling * 2)


@dataclass(slots=True)
class OutageTally:
    """What the relay turned away while Redis was out of reach."""

    clients_refused: int = 0
    webhooks_local_only: int = 0


class RedisLink:
    """The Redis client of one node (one worker process), and its health."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        node_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            # A bounded pool: a connect storm waits for a free connection
            # instead of opening thousands. The wait has no limit of its
            # own (a busy pool is no outage); every command holding a
            # connection is bounded by the socket timeout.
            max_connections=MAX_CONNECTIONS,
            timeout=None,
            # No retries inside the client: a failed command marks the link
            # down at once, and the node's own loop reconnects with backoff.
            retry=Retry(NoBackoff(), 0),
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
        )
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_pool(pool)
        self.location = redact_redis_url(url)
        self.prefix = prefix
        self.node_id = node_id
        self.state = LinkState.DOWN
        self.tally = OutageTally()
        self._clock = clock
        self._down_since = clock()
        self._on_lost: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"RedisLink({self.location!r}, state={self.state.value})"

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    def name(self, *parts: str) -> str:
        """A Redis key or channel name under this relay's prefix."""
        return ":".join((self.prefix, *parts))

    def when_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost.append(callback)

    @contextmanager
    def guard(self, *, recovering: bool = False) -> Iterator[redis.asyncio.Redis]:
        """The client, for commands whose failure means Redis is gone.

        Refuses at once while the link is down (or recovering, unless the
        caller is the recovery itself).
        """
        allowed = self.up or (recovering and self.state is LinkState.RECOVERING)
        if not allowed:
            raise SharedStateUnavailable("redis unavailable")
        try:
            yield self.client
        except FAILURES as exc:
            self.lost(exc)
            raise SharedStateUnavailable("redis unavailable") from exc

    def lost(self, error: BaseException) -> None:
        """Mark the link down; the first failure of an outage is logged."""
        if self.state is LinkState.DOWN:
            return
        was_up = self.up
        self.state = LinkState.DOWN
        if was_up:  # else a failed recovery: the outage goes on, logged
            self._begin_outage(error)

    def started_down(self, error: BaseException) -> None:
        """Redis went away between the start-up check and this worker's
        start: serve as in an outage, and recover."""
        self.state = LinkState.DOWN
        self._begin_outage(error)

    def _begin_outage(self, error: BaseException) -> None:
        self._down_since = self._clock()
        self.tally = OutageTally()
        log.warning(
            "redis.lost",
            redis=self.location,
            node=self.node_id,
            error=f"{type(error).__name__}: {error}",
        )
        for callback in self._on_lost:
            callback()

    def closing(self) -> None:
        """Shutdown: from now on a failure is no outage, and is not logged."""
        self.state = LinkState.DOWN
        self._on_lost.clear()

    def recovering(self) -> None:
        self.state = LinkState.RECOVERING

    def recovered(self, *, first_start: bool = False, **fields: int) -> None:
        """Back UP; after an outage, log how long it lasted."""
        self.state = LinkState.UP
        if first_start:
            return
        log.info(
            "redis.recovered",
            redis=self.location,
            node=self.node_id,
            outage_seconds=round(self._clock() - self._down_since, 3),
            clients_refused=self.tally.clients_refused,
            webhooks_local_only=self.tally.webhooks_local_only,
            **fields,
        )

    async def drop_idle_connections(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self.client.aclose()


def check_reachable(url: str) -> None:
    """Start-up: PING Redis once, or stop with one line saying why."""
    client = SyncRedis.from_url(
        url,
        retry=SyncRetry(NoBackoff(), 0),
        socket_timeout=COMMAND_TIMEOUT,
        socket_connect_timeout=COMMAND_TIMEOUT,
    )
    try:
        client.ping()
    except FAILURES as exc:
        raise ConfigError(
            "RELAY_REDIS_URL",
            f"cannot reach redis at {redact_redis_url(url)}: {exc}",
        ) from None
    finally:
        client.close()
