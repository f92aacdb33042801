"""Key claims as Redis leases: one key, one connection, across every node.

A claim is a ``SET`` of the key's lease with an expiry (``NX`` under the
reject policy; ``GET`` under replace, to learn whom it pushed out). The
lease's value names the node and the connection (``node/owner``), so that:

- a release is a compare-and-delete: a node never frees a lease that is no
  longer its own;
- a replaced connection on another node is told to close, through that
  node's channel;
- a node's keeper, one task per node, extends all of its leases in a few
  scripted round trips every third of the lease time. A node that dies
  stops extending, and its keys are free when their leases run out.

Lease names hold a SHA-256 of the key, never the key: whoever can read
Redis still cannot read license keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import structlog

from server.errors import SharedStateUnavailable
from server.registry import Claim
from server.shared.link import RedisLink

log = structlog.get_logger("server.shared")

KEEP_BATCH = 1000
"""Leases per scripted round trip of the keeper (and of batched releases)."""

_KEEP = """
-- Extend every lease that is still ours; with ARGV[2] = '1', also take back
-- the ones that vanished (Redis restarted empty). Returns the positions of
-- leases now held by someone else (or gone, when not taking back).
local lost = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 2]
  local current = redis.call('GET', key)
  if current == mine then
    redis.call('PEXPIRE', key, ARGV[1])
  elseif not current and ARGV[2] == '1' then
    redis.call('SET', key, mine, 'PX', ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

_RELEASE = """
-- Delete each lease only if it still holds the value we gave it.
local freed = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    freed = freed + redis.call('DEL', key)
  end
end
return freed
"""


def lease_value(node_id: str, owner: str) -> str:
    return f"{node_id}/{owner}"


def parse_lease(value: bytes | str) -> tuple[str, str]:
    """``(node_id, owner)`` of a lease value."""
    text = value.decode() if isinstance(value, bytes) else value
    node_id, _, owner = text.partition("/")

    return node_id, owner


def _batches(
    items: Sequence[tuple[str, str]], size: int
) -> Iterator[Sequence[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RedisKeyRegistry:
    """A :class:`server.registry.KeyRegistry` whose claims are Redis leases."""

    def __init__(self, link: RedisLink, *, lease_seconds: float) -> None:
        self._link = link
        self._lease_ms = int(lease_seconds * 1000)
        self._held: dict[str, str] = {}
        """Lease name to value, for every claim of this node still alive."""
        self._unreleased: dict[str, str] = {}
        """Releases that could not reach Redis; done on recovery."""
        self._keep = link.client.register_script(_KEEP)
        self._release = link.client.register_script(_RELEASE)
        self._deferring = False
        self.on_displaced: Callable[[str], None] = lambda owner: None
        """Closes this node's connection ``owner``: its key is held elsewhere."""

    def __repr__(self) -> str:
        return f"RedisKeyRegistry(held={len(self._held)})"

    def __len__(self) -> int:
        return len(self._held)

    def lease_name(self, key: str) -> str:
        return self._link.name("lease", hashlib.sha256(key.encode()).hexdigest())

    async def claim(self, key: str, owner: str, *, replace: bool) -> Claim:
        name = self.lease_name(key)
        value = lease_value(self._link.node_id, owner)
        previous: bytes | None = None
        try:
            with self._link.guard() as client:
                if replace:
                    previous = await client.set(  # type: ignore[assignment]
                        name, value, px=self._lease_ms, get=True
                    )
                elif not await client.set(name, value, px=self._lease_ms, nx=True):
                    return Claim(granted=False)
        except SharedStateUnavailable:
            self._link.tally.clients_refused += 1
            raise
        self._held[name] = value
        if previous is None:
            return Claim(granted=True)
        previous_node, previous_owner = parse_lease(previous)
        if previous_node != self._link.node_id:
            await self._tell_displaced(previous_node, previous_owner)

        return Claim(granted=True, previous_owner=previous_owner)

    async def release(self, key: str, owner: str) -> None:
        name = self.lease_name(key)
        value = lease_value(self._link.node_id, owner)
        if self._held.get(name) != value:
            return  # replaced by a newer claim of this node, or never granted
        del self._held[name]
        if self._deferring or not self._link.up:
            self._unreleased[name] = value
            return
        try:
            with self._link.guard() as client:
                await self._release(keys=[name], args=[value], client=client)
        except SharedStateUnavailable:
            self._unreleased[name] = value

    def displaced(self, owner: str) -> None:
        """Another node took over a key of ``owner`` (replace policy)."""
        self.on_displaced(owner)

    async def keep(self, *, take_back: bool = False) -> int:
        """Extend this node's leases; close the connections that lost theirs.

        ``take_back`` is for recovery: leases that vanished (Redis came back
        empty) are taken again. A lease another node took meanwhile stays
        theirs: Redis decides, and this node's connection is closed with
        4409. Returns how many connections lost their key.
        """
        snapshot = list(self._held.items())
        lost: list[str] = []
        for batch in _batches(snapshot, KEEP_BATCH):
            with self._link.guard(recovering=take_back) as client:
                positions = await self._keep(
                    keys=[name for name, _ in batch],
                    args=[self._lease_ms, int(take_back), *(v for _, v in batch)],
                    client=client,
                )
            lost.extend(batch[position - 1][1] for position in positions)
        for value in lost:
            self.on_displaced(parse_lease(value)[1])

        return len(lost)

    async def finish_releases(self) -> int:
        """Recovery: the compare-and-deletes the outage held back."""
        pending, self._unreleased = self._unreleased, {}
        if not pending:
            return 0
        try:
            await self._release_many(pending, recovering=True)
        except SharedStateUnavailable:
            self._unreleased.update(pending)
            raise

        return len(pending)

    def defer_releases(self) -> None:
        """Shutdown has begun: collect releases for :meth:`release_all`
        instead of a round trip per closing connection."""
        self._deferring = True

    async def release_all(self) -> None:
        """Shutdown: free every lease this node still holds, if Redis is up."""
        pending = {**self._unreleased, **self._held}
        self._held.clear()
        self._unreleased.clear()
        if not pending or not self._link.up:
            return
        try:
            await self._release_many(pending)
        except SharedStateUnavailable:
            # They run out within the lease time.
            log.warning("leases.not_released", leases=len(pending))

    async def _release_many(
        self, leases: dict[str, str], *, recovering: bool = False
    ) -> None:
        for batch in _batches(list(leases.items()), KEEP_BATCH):
            with self._link.guard(recovering=recovering) as client:
                await self._release(
                    keys=[name for name, _ in batch],
                    args=[value for _, value in batch],
                    client=client,
                )

    async def _tell_displaced(self, node_id: str, owner: str) -> None:
        try:
            with self._link.guard() as client:
                await client.publish(self._link.name("node", node_id), owner)
        except SharedStateUnavailable:
            # That node's keeper finds the lease gone within a third of the
            # lease time and closes its connection then.
            return
