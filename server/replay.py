"""Webhook ids seen recently, so a retried delivery is not broadcast twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from cachetools import TTLCache

REMEMBER_SECONDS = 600
MAX_REMEMBERED = 500_000


class WebhookLedger(Protocol):
    async def first_sighting(self, webhook_id: str) -> bool:
        """True the first time an id is offered; False while it is remembered."""
        ...


class InMemoryWebhookLedger:
    """Ids kept for 10 minutes, twice the signature tolerance.

    Past ``MAX_REMEMBERED`` ids the oldest are forgotten early; only senders
    holding a webhook secret can add ids, so that takes a misbehaving
    monitor.
    """

    def __init__(
        self,
        *,
        ttl: float = REMEMBER_SECONDS,
        maxsize: int = MAX_REMEMBERED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen: TTLCache[str, bool] = TTLCache(
            maxsize=maxsize, ttl=ttl, timer=clock
        )

    async def first_sighting(self, webhook_id: str) -> bool:
        if webhook_id in self._seen:
            return False
        self._seen[webhook_id] = True

        return True
