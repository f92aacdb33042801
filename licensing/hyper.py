"""Hyper (hyper.co): ``GET {base}/licenses/{key}``.

A license is active when its ``status`` is one of ours and it has no
``cancel_at`` in the past. ``cancel_at`` is milliseconds since the epoch
(an ISO-8601 string is read too). Reading an answer is the pure function
:func:`read_license`; HTTP and its errors live in
:class:`licensing.http.ProviderClient`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from licensing.base import LicenseResult
from licensing.http import Answer, ProviderClient, path_segment
from licensing.keys import is_well_formed_key


def read_license(
    answer: Answer, active_statuses: Collection[str], *, now: float
) -> LicenseResult:
    """A Hyper License, judged at Unix time ``now``."""
    body = answer.body if isinstance(answer.body, dict) else {}
    status = body.get("status")
    if not isinstance(status, str):
        return LicenseResult.unavailable("provider answer has no status")
    if status.lower() not in active_statuses:
        return LicenseResult.inactive(f"status {status}")
    cancel_at = _epoch_seconds(body.get("cancel_at"))
    if cancel_at is not None and cancel_at <= now:
        return LicenseResult.inactive(f"status {status}, cancel_at has passed")

    return LicenseResult.active(f"status {status}")


class HyperProvider:
    """Hyper's licenses API (v6 by default; v4 and v5 answer the same)."""

    name = "hyper"

    def __init__(
        self,
        client: ProviderClient,
        *,
        base_url: str,
        active_statuses: Collection[str],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.active_statuses = frozenset(s.lower() for s in active_statuses)
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return f"HyperProvider(base_url={self.base_url!r})"

    async def lookup(self, key: str) -> LicenseResult:
        if not is_well_formed_key(key):
            return LicenseResult.unknown("malformed key")
        url = f"{self.base_url}/licenses/{path_segment(key)}"

        def interpret(answer: Answer) -> LicenseResult:
            return read_license(answer, self.active_statuses, now=self._wall_clock())

        return await self.client.ask("GET", url, interpret)

    async def close(self) -> None:
        await self.client.close()


def _epoch_seconds(value: Any) -> float | None:
    """``cancel_at`` as Unix seconds: milliseconds or ISO-8601 in, None if
    absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None

    return None
