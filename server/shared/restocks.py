"""Restocks over Redis pub/sub: published once, sent by every node.

The node that accepts a webhook runs one script that records the webhook
id (``SET NX EX 600``) and, only if the id is new, publishes the encoded
frames on the restocks channel. Recording and publishing happen together or
not at all, so a retry is never turned away as a duplicate of a restock
that was not sent. Every node, the publisher included, writes what arrives
on the channel to its own clients.

While Redis is out of reach, a webhook is sent to this node's clients only,
answered 503 so that the monitor retries, and its id remembered here. When
the retry is published later (through this node or another), this node
skips it: its clients have it already. Each client gets a restock once.

On the channel a message is ``<count> <webhook id>\\n<frames>``.
"""

from __future__ import annotations

import structlog
from cachetools import TTLCache

from server.errors import SharedStateUnavailable
from server.fanout import Outcome, Publication
from server.hub import Hub
from server.replay import MAX_REMEMBERED, REMEMBER_SECONDS
from server.shared.link import RedisLink

log = structlog.get_logger("server.shared")

_PUBLISH_ONCE = """
-- KEYS[1]: the webhook id's ledger entry; ARGV: ttl, channel, message.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


def restock_message(webhook_id: str, frames: bytes, *, count: int) -> bytes:
    return f"{count} {webhook_id}\n".encode() + frames


def parse_restock_message(message: bytes) -> tuple[str, bytes, int]:
    """``(webhook_id, frames, count)`` of a channel message."""
    header, _, frames = message.partition(b"\n")
    count, _, webhook_id = header.decode().partition(" ")

    return webhook_id, frames, int(count)


class RedisFanout:
    """A :class:`server.fanout.Fanout` that goes through the restocks channel."""

    def __init__(self, link: RedisLink, hub: Hub) -> None:
        self._link = link
        self._hub = hub
        self.channel = link.name("restocks")
        self._publish_once = link.client.register_script(_PUBLISH_ONCE)
        self._sent_here_only: TTLCache[str, bool] = TTLCache(
            maxsize=MAX_REMEMBERED, ttl=REMEMBER_SECONDS
        )
        self.skipped = 0
        """Restocks from the channel not sent again: sent here during an
        outage already."""

    async def publish(
        self, webhook_id: str, frames: bytes, *, count: int
    ) -> Publication:
        try:
            with self._link.guard() as client:
                published = await self._publish_once(
                    keys=[self._link.name("webhook", webhook_id)],
                    args=[
                        REMEMBER_SECONDS,
                        self.channel,
                        restock_message(webhook_id, frames, count=count),
                    ],
                    client=client,
                )
        except SharedStateUnavailable:
            return self._send_here_only(webhook_id, frames, count=count)

        return Publication(Outcome.PUBLISHED if published else Outcome.DUPLICATE)

    def receive(self, message: bytes) -> None:
        """A restock from the channel: send it to this node's clients."""
        webhook_id, frames, count = parse_restock_message(message)
        if webhook_id in self._sent_here_only:
            self.skipped += 1
            log.info("restock.skipped", webhook_id=webhook_id, why="sent here already")
            return
        report = self._hub.broadcast(frames, count=count)
        # The accepting node's webhook line cannot know what each node sent:
        # every node says it here, once per restock.
        log.info(
            "restock.sent",
            webhook_id=webhook_id,
            items=count,
            **report.log_fields(),
        )

    def _send_here_only(
        self, webhook_id: str, frames: bytes, *, count: int
    ) -> Publication:
        self._link.tally.webhooks_local_only += 1
        if webhook_id in self._sent_here_only:
            return Publication(Outcome.LOCAL_ONLY)
        self._sent_here_only[webhook_id] = True
        report = self._hub.broadcast(frames, count=count)

        return Publication(Outcome.LOCAL_ONLY, report)
