"""Who holds which key: one key, one connection, relay-wide.

A connection *claims* its key before the license is checked, so that two
connections racing with one key can never both get through, and *releases*
it when it ends, however it ends. ``release`` compares the owner before it
deletes: a connection that was replaced never frees its successor's claim.

:class:`InMemoryKeyRegistry` serves one process; a shared registry (Redis)
implements the same two methods for several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of a claim.

    ``granted`` is False when the key is held and the policy is reject.
    ``previous_owner`` is set when the claim pushed another owner out
    (replace policy): that connection must now be closed.
    """

    granted: bool
    previous_owner: str | None = None


class KeyRegistry(Protocol):
    async def claim(self, key: str, owner: str, *, replace: bool) -> Claim: ...

    async def release(self, key: str, owner: str) -> None: ...


class InMemoryKeyRegistry:
    """Claims in a dict. Each method runs without awaiting, so it is atomic
    on the event loop."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"InMemoryKeyRegistry(claimed={len(self._owners)})"

    def __len__(self) -> int:
        return len(self._owners)

    async def claim(self, key: str, owner: str, *, replace: bool) -> Claim:
        previous = self._owners.get(key)
        if previous is not None and not replace:
            return Claim(granted=False)
        self._owners[key] = owner

        return Claim(granted=True, previous_owner=previous)

    async def release(self, key: str, owner: str) -> None:
        if self._owners.get(key) == owner:
            del self._owners[key]
