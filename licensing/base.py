"""The provider interface and the one result type every provider returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class LicenseStatus(enum.Enum):
    """What a provider said of a key, reduced to what the relay acts on."""

    ACTIVE = "active"
    """Paying (or trialing): the key may hold a connection."""
    INACTIVE = "inactive"
    """Known to the provider but expired, cancelled or otherwise not active."""
    UNKNOWN = "unknown"
    """The provider has never heard of this key."""
    UNAVAILABLE = "unavailable"
    """No answer could be had (timeout, outage, rate limit): not the user's
    fault, try again later."""


@dataclass(frozen=True, slots=True)
class LicenseResult:
    """A provider's verdict on one key. ``reason`` is short and safe to log.

    ``retry_after`` is set only on an ``UNAVAILABLE`` result that came from
    the provider asking to be left alone (HTTP 429): the seconds to wait
    before the next call to that provider, for any key.
    """

    status: LicenseStatus
    reason: str = ""
    retry_after: float | None = None

    @property
    def is_active(self) -> bool:
        return self.status is LicenseStatus.ACTIVE

    @classmethod
    def active(cls, reason: str = "") -> LicenseResult:
        return cls(LicenseStatus.ACTIVE, reason)

    @classmethod
    def inactive(cls, reason: str) -> LicenseResult:
        return cls(LicenseStatus.INACTIVE, reason)

    @classmethod
    def unknown(cls, reason: str = "unknown key") -> LicenseResult:
        return cls(LicenseStatus.UNKNOWN, reason)

    @classmethod
    def unavailable(
        cls, reason: str, *, retry_after: float | None = None
    ) -> LicenseResult:
        return cls(LicenseStatus.UNAVAILABLE, reason, retry_after)


class LicenseProvider(Protocol):
    """Anything that can say whether a key is licensed.

    ``lookup`` receives only keys that passed :func:`is_well_formed_key` and
    must not raise for provider trouble: it returns ``UNAVAILABLE`` instead.
    """

    name: str

    async def lookup(self, key: str) -> LicenseResult: ...

    async def close(self) -> None: ...
