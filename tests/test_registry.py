"""One key, one connection: the in-memory registry and the ledger."""

from __future__ import annotations

from server.registry import Claim, InMemoryKeyRegistry
from server.replay import InMemoryWebhookLedger


async def test_second_claim_is_refused_under_reject():
    registry = InMemoryKeyRegistry()
    await registry.claim("K", "a", replace=False)

    assert await registry.claim("K", "b", replace=False) == Claim(granted=False)


async def test_claim_under_replace_names_the_previous_owner():
    registry = InMemoryKeyRegistry()
    await registry.claim("K", "a", replace=True)

    assert await registry.claim("K", "b", replace=True) == Claim(True, "a")


async def test_replaced_owner_cannot_release_its_successor():
    """Compare-and-delete: the old connection's release frees nothing."""
    registry = InMemoryKeyRegistry()
    await registry.claim("K", "a", replace=True)
    await registry.claim("K", "b", replace=True)
    await registry.release("K", "a")

    assert await registry.claim("K", "c", replace=False) == Claim(granted=False)


async def test_release_frees_the_key():
    registry = InMemoryKeyRegistry()
    await registry.claim("K", "a", replace=False)
    await registry.release("K", "a")

    assert (await registry.claim("K", "b", replace=False)).granted


async def test_ledger_remembers_ids_for_ten_minutes():
    now = [0.0]
    ledger = InMemoryWebhookLedger(clock=lambda: now[0])
    first = await ledger.first_sighting("acme:msg_1")
    now[0] = 599.0
    again = await ledger.first_sighting("acme:msg_1")
    now[0] = 1200.0
    later = await ledger.first_sighting("acme:msg_1")

    assert (first, again, later) == (True, False, True)
