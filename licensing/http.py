"""The one HTTP adapter every remote provider uses, and its error policy.

A provider (Whop, Hyper) says *what* to ask and how to read a 2xx answer;
:class:`ProviderClient` does the asking. It owns the provider's single
aiohttp session, the per-lookup timeout and the ``Authorization`` header,
and it is the one place where aiohttp's exceptions and the provider's error
statuses become a :class:`LicenseResult`:

- timeout, connection error, 5xx, an unexpected 4xx: ``UNAVAILABLE``;
- 429: ``UNAVAILABLE`` with ``retry_after`` (``Retry-After``, else 60 s);
- 401/403: the relay's own API key is wrong. ``UNAVAILABLE`` (not the
  user's fault), and an ERROR log line at most once a minute;
- 404: ``UNKNOWN``.

Nothing here raises for provider trouble.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from licensing.base import LicenseResult

log = structlog.get_logger("licensing")

DEFAULT_COOLDOWN = 60.0
"""Seconds to back off after a 429 without ``Retry-After`` (Whop's figure)."""
MAX_COOLDOWN = 3600.0
"""A ``Retry-After`` longer than this is cut to it."""
AUTH_ALARM_INTERVAL = 60.0
"""At most one ERROR line per this many seconds for a rejected API key."""
USER_AGENT = "stellar-relay"


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's HTTP answer: its status, JSON body (None if not JSON)."""

    status: int
    body: Any


Interpret = Callable[[Answer], LicenseResult]


def path_segment(key: str) -> str:
    """``key`` escaped for use as one URL path segment (``/`` included)."""
    return quote(key, safe="")


def parse_retry_after(value: str | None, *, now: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or a date).

    A missing or unreadable header means :data:`DEFAULT_COOLDOWN`; the
    answer is kept within 1 s and :data:`MAX_COOLDOWN`. ``now`` is Unix time.
    """
    seconds = DEFAULT_COOLDOWN
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError):
                seconds = DEFAULT_COOLDOWN

    return min(max(seconds, 1.0), MAX_COOLDOWN)


def common_result(
    status: int, retry_after: str | None, *, now: float
) -> LicenseResult | None:
    """What an HTTP status means whatever the provider; None for 2xx."""
    if 200 <= status < 300:
        return None
    if status == 404:
        return LicenseResult.unknown("provider does not know this key")
    if status in (401, 403):
        return LicenseResult.unavailable(
            f"provider rejected the relay's API key ({status})"
        )
    if status == 429:
        wait = parse_retry_after(retry_after, now=now)
        return LicenseResult.unavailable("provider rate limit", retry_after=wait)

    return LicenseResult.unavailable(f"provider answered {status}")


class AuthAlarm:
    """Decides when a rejected API key gets its ERROR line: at most once
    per :data:`AUTH_ALARM_INTERVAL`, counting the ones held back."""

    def __init__(self, interval: float = AUTH_ALARM_INTERVAL) -> None:
        self.interval = interval
        self._last: float | None = None
        self.suppressed = 0

    def should_log(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        self._last = now

        return True


class ProviderClient:
    """One provider's HTTP session, created on first use inside the running
    event loop and kept until :meth:`close`."""

    def __init__(
        self,
        *,
        provider: str,
        api_key: str,
        key_variable: str,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.timeout = timeout
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._key_variable = key_variable
        self._clock = clock
        self._wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None
        self._alarm = AuthAlarm()

    def __repr__(self) -> str:
        return f"ProviderClient(provider={self.provider!r}, timeout={self.timeout})"

    async def ask(
        self,
        method: str,
        url: str,
        interpret: Interpret,
        *,
        json_body: Mapping[str, Any] | None = None,
        also_read: Collection[int] = (),
    ) -> LicenseResult:
        """Send one request; the provider's verdict, or why there is none.

        ``interpret`` reads 2xx answers, and those whose status is in
        ``also_read`` (a provider's own meaning for, say, 400). ``url`` must
        already be escaped (see :func:`path_segment`).
        """
        try:
            async with self._get_session().request(
                method, URL(url, encoded=True), json=json_body
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                text = await response.read()
        except TimeoutError:
            return LicenseResult.unavailable(f"no answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return LicenseResult.unavailable(f"connection error: {type(exc).__name__}")

        if status in (401, 403):
            self._raise_alarm(status)
        if status not in also_read:
            refusal = common_result(status, retry_after, now=self._wall_clock())
            if refusal is not None:
                return refusal

        return interpret(Answer(status, _json_or_none(text)))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                raise_for_status=False,
            )

        return self._session

    def _raise_alarm(self, status: int) -> None:
        if self._alarm.should_log(self._clock()):
            log.error(
                "license.api_key_rejected",
                provider=self.provider,
                status=status,
                fix=f"check {self._key_variable}",
                suppressed=self._alarm.suppressed,
            )
            self._alarm.suppressed = 0


def _json_or_none(text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
