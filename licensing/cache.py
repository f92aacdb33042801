"""A cache in front of any provider, so a reconnect storm costs no calls and
a provider's bad minute locks no paying user out.

:class:`CachedProvider` keeps, in cachetools TTL caches:

- active results for ``ttl`` seconds, not-active and unknown ones for the
  shorter ``negative_ttl``;
- the time each key was last seen active, for ``grace`` seconds: while the
  provider is unavailable such a key is still let in (stale if error), and
  the log says so;
- one in-flight call per key: concurrent lookups of one key share it;
- a cooldown after a 429 (``retry_after`` on the result): until it ends no
  call is made, and lookups are answered from the caches or as unavailable.

:meth:`CachedProvider.refresh` skips the fresh caches (for re-checks of
connected keys) but keeps the single flight, the cooldown and the grace.
Every clock is injectable; the caches run on ``clock``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from cachetools import TTLCache

from licensing.base import LicenseProvider, LicenseResult, LicenseStatus
from licensing.keys import redact_key

log = structlog.get_logger("licensing")

MAX_ENTRIES = 100_000
"""Bound of each cache; past it the oldest entries go first."""


class CachedProvider:
    """Any :class:`LicenseProvider`, cached. Is a provider itself."""

    def __init__(
        self,
        inner: LicenseProvider,
        *,
        ttl: float,
        negative_ttl: float,
        grace: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._clock = clock
        self._active: TTLCache[str, LicenseResult] = TTLCache(
            max_entries, ttl, timer=clock
        )
        self._negative: TTLCache[str, LicenseResult] = TTLCache(
            max_entries, negative_ttl, timer=clock
        )
        self._last_active: TTLCache[str, float] = TTLCache(
            max_entries, grace, timer=clock
        )
        self._in_flight: dict[str, asyncio.Future[LicenseResult]] = {}
        self._cooldown_until = float("-inf")
        self.provider_calls = 0

    def __repr__(self) -> str:
        return (
            f"CachedProvider({self.inner!r}, active={len(self._active)}, "
            f"negative={len(self._negative)})"
        )

    @property
    def cooling_down(self) -> bool:
        return self._clock() < self._cooldown_until

    async def lookup(self, key: str) -> LicenseResult:
        """A fresh cached answer if there is one, else the provider's."""
        cached = self._active.get(key) or self._negative.get(key)
        if cached is not None:
            log.debug("license.cached", key=redact_key(key), status=cached.status.value)
            return cached

        return await self.refresh(key)

    async def refresh(self, key: str) -> LicenseResult:
        """The provider's answer now (or, if it has none, the grace's)."""
        call = self._in_flight.get(key)
        if call is None:
            call = asyncio.ensure_future(self._ask(key))
            self._in_flight[key] = call
        # A waiter that goes away (its client hung up) must not cancel the
        # call the other waiters share.
        return await asyncio.shield(call)

    async def close(self) -> None:
        await self.inner.close()

    async def _ask(self, key: str) -> LicenseResult:
        try:
            result = await self._call_provider(key)
            self._remember(key, result)
        finally:
            del self._in_flight[key]
        if result.status is LicenseStatus.UNAVAILABLE:
            return self._stale_if_error(key, result)

        return result

    async def _call_provider(self, key: str) -> LicenseResult:
        remaining = self._cooldown_until - self._clock()
        if remaining > 0:
            return LicenseResult.unavailable(
                f"provider cooling down after a 429, {remaining:.0f} s left"
            )
        self.provider_calls += 1
        started = self._clock()
        try:
            result = await self.inner.lookup(key)
        except Exception:
            # A provider must answer UNAVAILABLE, not raise: this is a bug.
            log.exception("license.provider_crashed", provider=self.name)
            return LicenseResult.unavailable("provider lookup failed")
        log.debug(
            "license.looked_up",
            key=redact_key(key),
            provider=self.name,
            status=result.status.value,
            why=result.reason,
            seconds=round(self._clock() - started, 3),
        )

        return result

    def _remember(self, key: str, result: LicenseResult) -> None:
        if result.status is LicenseStatus.ACTIVE:
            self._negative.pop(key, None)
            self._active[key] = result
            self._last_active[key] = self._clock()
        elif result.status is LicenseStatus.UNAVAILABLE:
            if result.retry_after is not None:
                self._start_cooldown(result.retry_after)
        else:
            # Not active any more: no grace for it either.
            self._active.pop(key, None)
            self._last_active.pop(key, None)
            self._negative[key] = result

    def _start_cooldown(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._cooldown_until:
            self._cooldown_until = until
            log.warning("license.rate_limited", provider=self.name, cooldown=seconds)

    def _stale_if_error(self, key: str, result: LicenseResult) -> LicenseResult:
        seen = self._last_active.get(key)
        if seen is None:
            return result
        age = self._clock() - seen
        log.warning(
            "license.stale_if_error",
            key=redact_key(key),
            provider=self.name,
            why=result.reason,
            last_active_seconds_ago=round(age),
        )

        return LicenseResult.active(
            f"provider unavailable ({result.reason}); active {age:.0f} s ago"
        )


def fresh_lookup(
    provider: LicenseProvider,
) -> Callable[[str], Awaitable[LicenseResult]]:
    """How to ask ``provider`` about a key now, past any fresh cache."""
    if isinstance(provider, CachedProvider):
        return provider.refresh

    return provider.lookup
