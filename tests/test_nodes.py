"""Two relay processes sharing one Redis behave as one relay."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from tests.clients import (
    close_code,
    first_closes,
    next_restock,
    open_client,
    refusal_code,
    wait_for_connections,
)
from tests.harness import RelayProcess
from tests.redis_harness import RedisServer, admitted, relay_nodes

KEYS = [f"NODE-{n:04d}-KEY" for n in range(50)]
RESTOCK = {
    "site": "amazon",
    "sku": "B0NODES001",
    "offerId": "offer-n",
    "details": {"region": "USA"},
}


@pytest.fixture(scope="module")
def nodes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RelayProcess]]:
    """Nodes A and B on the reject policy."""
    pair = relay_nodes(tmp_path_factory.mktemp("nodes"), redis_server.url, keys=KEYS)
    for node in pair:
        node.start()
    yield pair
    for node in pair:
        node.stop()


async def test_key_connected_on_a_is_refused_on_b(nodes):
    a, b = nodes
    held = await open_client(a.ws_url(KEYS[0]))
    await wait_for_connections(a, 1)

    code = await refusal_code(b.ws_url(KEYS[0]))
    await held.close()
    await wait_for_connections(a, 0)

    assert code == 4409


async def test_key_freed_on_a_connects_on_b(nodes):
    a, b = nodes
    first = await open_client(a.ws_url(KEYS[1]))
    await wait_for_connections(a, 1)
    await first.close()
    await wait_for_connections(a, 0)

    second = await open_client(b.ws_url(KEYS[1]))
    await wait_for_connections(b, 1)
    await second.close()
    await wait_for_connections(b, 0)


async def test_simultaneous_connects_across_two_nodes_let_exactly_one_through(nodes):
    """200 connects of one key, half on each node: one winner, 199 refusals."""
    a, b = nodes
    urls = [(a if n % 2 else b).ws_url(KEYS[2]) for n in range(200)]
    clients = await asyncio.gather(*(open_client(url) for url in urls))

    refused = await first_closes(clients, 199)
    counts = [(await asyncio.to_thread(node.health))["connections"] for node in (a, b)]
    for client in clients:
        await client.close()
    await wait_for_connections(a, 0)
    await wait_for_connections(b, 0)

    assert refused == [4409] * 199
    assert sorted(counts) == [0, 1]


async def test_webhook_to_a_reaches_clients_on_a_and_b_and_retry_to_b_is_duplicate(
    nodes,
):
    a, b = nodes
    on_a = [await open_client(a.ws_url(key)) for key in KEYS[3:6]]
    on_b = [await open_client(b.ws_url(key)) for key in KEYS[6:9]]
    await wait_for_connections(a, 3)
    await wait_for_connections(b, 3)

    first = a.post(RESTOCK, webhook_id="msg_nodes_1")
    received = [await next_restock(client) for client in on_a + on_b]
    retry = b.post(RESTOCK, webhook_id="msg_nodes_1")
    b.post({**RESTOCK, "sku": "B0NODES002"}, webhook_id="msg_nodes_2")
    following = [(await next_restock(client))["sku"] for client in on_a + on_b]
    for client in on_a + on_b:
        await client.close()

    assert first == (202, {"accepted": 1})
    assert all(restock["sku"] == "B0NODES001" for restock in received)
    assert retry == (200, {"duplicate": True})
    assert following == ["B0NODES002"] * 6, "the retry was sent to nobody"
    for node in (a, b):
        sent = [
            event["delivered"]
            for event in node.log_events()
            if event["event"] == "restock.sent"
            and event["webhook_id"] == "monitor:msg_nodes_1"
        ]
        assert sent == [3], "each node logs what it sent, once"


async def test_replace_on_b_closes_the_socket_on_a(redis_server, tmp_path):
    key = "REPLACE-ACROSS-1"
    a, b = relay_nodes(
        tmp_path,
        redis_server.url,
        keys=[key],
        env={"RELAY_DUPLICATE_POLICY": "replace"},
    )
    with a, b:
        old = await open_client(a.ws_url(key))
        await wait_for_connections(a, 1)
        new = await open_client(b.ws_url(key))

        old_code = await close_code(old)
        await wait_for_connections(a, 0)
        await wait_for_connections(b, 1)
        b.post(RESTOCK)
        received = await next_restock(new)
        await new.close()

    assert old_code == 4409
    assert received["sku"] == RESTOCK["sku"]


async def test_killed_node_frees_its_keys_within_the_lease(redis_server, tmp_path):
    """SIGKILL: no release runs, the lease (2 s here) runs out on its own."""
    key = "KILLED-NODE-1"
    lease = 2.0
    a, b = relay_nodes(
        tmp_path, redis_server.url, keys=[key], env={"RELAY_LEASE_SECONDS": "2"}
    )
    with a, b:
        held = await open_client(a.ws_url(key))
        await wait_for_connections(a, 1)
        refused_before = await refusal_code(b.ws_url(key))
        a.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        await held.close()
        while not await admitted(b, key):
            assert time.monotonic() - killed_at < lease + 2, "lease never ran out"
        freed_after = time.monotonic() - killed_at

    assert refused_before == 4409
    assert freed_after <= lease + 0.5


async def test_node_logs_never_hold_the_key(nodes):
    a, b = nodes
    client = await open_client(a.ws_url(KEYS[9]))
    await wait_for_connections(a, 1)
    await refusal_code(b.ws_url(KEYS[9]))
    await client.close()
    await wait_for_connections(a, 0)

    assert KEYS[9] not in a.log_text() + b.log_text()
