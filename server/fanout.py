"""How an accepted restock reaches every client of the relay.

A webhook handler hands :meth:`Fanout.publish` the restock's frames, already
encoded, with the webhook's ledger id. The fan-out decides, once per id,
whether the restock goes out, and sends it:

- :class:`LocalFanout` (one process) writes it to this process's hub;
- ``server.shared.RedisFanout`` (several workers or nodes) publishes it once
  through Redis, and every node, this one included, writes it to its own
  hub. While Redis is out of reach it writes to this node's hub only and
  says so, so that the webhook is answered 503 and retried.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from server.hub import BroadcastReport, Hub
from server.replay import WebhookLedger


class Outcome(enum.Enum):
    PUBLISHED = "published"
    """Sent to every client of the relay."""
    DUPLICATE = "duplicate"
    """The id was seen within the last 10 minutes: nothing sent."""
    LOCAL_ONLY = "local_only"
    """Shared state is unreachable: this node's clients have it (now or from
    an earlier try), the other nodes' clients do not."""


@dataclass(frozen=True, slots=True)
class Publication:
    outcome: Outcome
    report: BroadcastReport | None = None
    """This process's delivery, when it happened during :meth:`publish`."""


class Fanout(Protocol):
    async def publish(
        self, webhook_id: str, frames: bytes, *, count: int
    ) -> Publication: ...


class LocalFanout:
    """One process: the ledger says whether, the hub sends."""

    def __init__(self, hub: Hub, ledger: WebhookLedger) -> None:
        self._hub = hub
        self._ledger = ledger

    async def publish(
        self, webhook_id: str, frames: bytes, *, count: int
    ) -> Publication:
        if not await self._ledger.first_sighting(webhook_id):
            return Publication(Outcome.DUPLICATE)
        report = self._hub.broadcast(frames, count=count)

        return Publication(Outcome.PUBLISHED, report)
