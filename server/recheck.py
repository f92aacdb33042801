"""Re-checking connected keys, so a lapsed license does not keep the feed.

Every connected key is asked of its provider again at most
``RELAY_LICENSE_RECHECK`` seconds after it connected or was last checked.
The moments are spread out: a key's first re-check falls at a random point
in the second half of the interval after it was first seen, the later ones
between 90 % and 100 % of the interval, so a thousand clients that connected
together after a restart are not all re-checked in the same second.

The decisions are pure: :class:`RecheckSchedule` (which owners are due) and
:func:`recheck_verdict` (what a fresh answer means for a live connection).
:func:`run_rechecks` is the task that applies them to the hub.

A connection is closed only on a definite answer: 4403 when the license is
no longer active, 4401 when the provider no longer knows the key. An
unavailable provider closes nobody: the connection was licensed when it
opened, and the cache's grace covers the outage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from licensing import LicenseResult, LicenseStatus, redact_key
from server.closecodes import CloseCode
from server.hub import Connection, Hub

log = structlog.get_logger("server.recheck")

FIRST_SPREAD = 0.5
"""A key's first re-check: between (1 - this) and 1 interval after it is seen."""
LATER_SPREAD = 0.1
"""Later re-checks: between (1 - this) and 1 interval after the last one."""
MAX_CONCURRENT = 10
"""Re-checks in flight at once, so they never crowd out connecting clients."""

CLOSE_FOR_STATUS = {
    LicenseStatus.INACTIVE: CloseCode.LICENSE_INACTIVE,
    LicenseStatus.UNKNOWN: CloseCode.BAD_KEY,
}


def recheck_verdict(result: LicenseResult) -> CloseCode | None:
    """The close code for a connected key given a fresh answer; None keeps it."""
    return CLOSE_FOR_STATUS.get(result.status)


class RecheckSchedule:
    """When each connection is next due, by owner id."""

    def __init__(
        self, interval: float, *, rng: Callable[[], float] = random.random
    ) -> None:
        self.interval = interval
        self._rng = rng
        self._due_at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due_at)

    def due(self, owners: Iterable[str], now: float) -> list[str]:
        """The owners due at ``now``, each rescheduled; forgets the gone."""
        current = set(owners)
        for gone in self._due_at.keys() - current:
            del self._due_at[gone]
        due = []
        for owner in current:
            due_at = self._due_at.get(owner)
            if due_at is None:
                self._due_at[owner] = self._next(now, FIRST_SPREAD)
            elif due_at <= now:
                due.append(owner)
                self._due_at[owner] = self._next(now, LATER_SPREAD)

        return due

    def _next(self, now: float, spread: float) -> float:
        return now + self.interval * (1.0 - spread * self._rng())


def tick_for(interval: float) -> float:
    """How often the schedule is looked at: often enough to keep to it."""
    return max(0.05, min(5.0, interval / 20))


async def run_rechecks(
    hub: Hub,
    lookup: Callable[[str], Awaitable[LicenseResult]],
    interval: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> None:
    """Re-check the hub's connections forever; cancel the task to stop."""
    schedule = RecheckSchedule(interval, rng=rng)
    limit = asyncio.Semaphore(MAX_CONCURRENT)
    running: set[asyncio.Task[None]] = set()
    tick = tick_for(interval)
    log.info("recheck.started", interval=interval)
    try:
        while True:
            owners = [c.owner for c in hub.connections()]
            for owner in schedule.due(owners, clock()):
                task = asyncio.create_task(_recheck_one(hub, owner, lookup, limit))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.sleep(tick)
    finally:
        for task in running:
            task.cancel()


async def _recheck_one(
    hub: Hub,
    owner: str,
    lookup: Callable[[str], Awaitable[LicenseResult]],
    limit: asyncio.Semaphore,
) -> None:
    async with limit:
        connection = hub.get(owner)
        if connection is None:
            return
        try:
            result = await lookup(connection.key)
        except Exception:
            log.exception("recheck.crashed", key=redact_key(connection.key))
            return
    code = recheck_verdict(result)
    if code is not None and hub.get(owner) is connection:
        _drop(hub, connection, code, result)


def _drop(
    hub: Hub, connection: Connection, code: CloseCode, why: LicenseResult
) -> None:
    hub.remove(connection.owner)
    connection.close(code)
    log.info(
        "client.license_lapsed",
        key=redact_key(connection.key),
        peer=connection.peer,
        code=int(code),
        why=why.reason,
    )
