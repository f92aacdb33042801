"""Whop: a license key is a membership, looked up by key.

Two APIs, one per class:

- :class:`WhopProvider` (``RELAY_WHOP_API=v1``, the current API):
  ``GET {base}/memberships/{key}``; the membership's ``status`` decides.
- :class:`WhopLegacyProvider` (``v2``): ``POST
  {base}/v2/memberships/{key}/validate_license`` with ``{"metadata": {}}``;
  the ``valid`` flag decides. A 400 there means the key is bound to other
  metadata (another machine): not active for this relay.

The reading of an answer is a pure function per API (:func:`read_membership`,
:func:`read_validation`); HTTP and its errors live in
:class:`licensing.http.ProviderClient`.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import Any

from licensing.base import LicenseResult
from licensing.http import Answer, ProviderClient, path_segment
from licensing.keys import is_well_formed_key

MALFORMED = LicenseResult.unknown("malformed key")


def read_membership(answer: Answer, active_statuses: Collection[str]) -> LicenseResult:
    """A v1 Membership: active when its ``status`` is one of ours."""
    status = _field(answer.body, "status")
    if not isinstance(status, str):
        return LicenseResult.unavailable("provider answer has no status")
    if status.lower() in active_statuses:
        return LicenseResult.active(f"status {status}")

    return LicenseResult.inactive(f"status {status}")


def read_validation(answer: Answer) -> LicenseResult:
    """A v2 ``validate_license`` answer: the ``valid`` flag decides; a 400
    means the key is bound to other metadata."""
    if answer.status == 400:
        return LicenseResult.inactive("key bound to other metadata")
    if not 200 <= answer.status < 300:
        return LicenseResult.unavailable(f"provider answered {answer.status}")
    valid = _field(answer.body, "valid")
    if not isinstance(valid, bool):
        return LicenseResult.unavailable("provider answer has no valid flag")
    status = _field(answer.body, "status")
    label = f"status {status}" if isinstance(status, str) else "no status"

    if valid:
        return LicenseResult.active(f"valid, {label}")
    return LicenseResult.inactive(f"not valid, {label}")


class WhopProvider:
    """Whop's current API: ``GET /memberships/{key}``."""

    name = "whop"

    def __init__(
        self, client: ProviderClient, *, base_url: str, active_statuses: Collection[str]
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.active_statuses = frozenset(s.lower() for s in active_statuses)

    def __repr__(self) -> str:
        return f"WhopProvider(base_url={self.base_url!r})"

    async def lookup(self, key: str) -> LicenseResult:
        if not is_well_formed_key(key):
            return MALFORMED
        url = f"{self.base_url}/memberships/{path_segment(key)}"
        interpret = partial(read_membership, active_statuses=self.active_statuses)

        return await self.client.ask("GET", url, interpret)

    async def close(self) -> None:
        await self.client.close()


class WhopLegacyProvider:
    """Whop's older API: ``POST /v2/memberships/{key}/validate_license``."""

    name = "whop"

    def __init__(self, client: ProviderClient, *, base_url: str) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"WhopLegacyProvider(base_url={self.base_url!r})"

    async def lookup(self, key: str) -> LicenseResult:
        if not is_well_formed_key(key):
            return MALFORMED
        url = f"{self.base_url}/v2/memberships/{path_segment(key)}/validate_license"

        # No metadata is sent: the relay does not bind keys to machines.
        return await self.client.ask(
            "POST", url, read_validation, json_body={"metadata": {}}, also_read=(400,)
        )

    async def close(self) -> None:
        await self.client.close()


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, dict) else None
