"""The Stellar side: who gets a connection, and how refusals close."""

from __future__ import annotations

import asyncio

import pytest

from tests.clients import (
    close_code,
    first_closes,
    next_restock,
    open_client,
    refusal_code,
    wait_for_connections,
)
from tests.conftest import KEYS
from tests.harness import RelayProcess

RESTOCK = {
    "site": "amazon",
    "sku": "B0TESTSKU1",
    "offerId": "offer-1",
    "details": {"region": "USA", "productPrice": 19.99},
}
NORMALISED = {
    "site": "amazon",
    "sku": "B0TESTSKU1",
    "asin": "B0TESTSKU1",
    "offerId": "offer-1",
    "details": {"region": "USA", "offerId": "offer-1", "productPrice": "19.99"},
}


async def test_valid_key_receives_exactly_the_normalised_payload(relay):
    """A licensed client gets the restock in Stellar's normalised shape."""
    client = await open_client(relay.ws_url(KEYS[0]))
    await wait_for_connections(relay, 1)

    status, _ = relay.post(RESTOCK)
    received = await next_restock(client)
    await client.close()

    assert status == 202
    assert received == NORMALISED


async def test_root_path_accepts_clients_too(relay):
    """Users paste ``wss://host/?key=``; that works like ``/ws``."""
    client = await open_client(relay.ws_url(KEYS[1], path="/"))
    await wait_for_connections(relay, 1)

    relay.post(RESTOCK)
    received = await next_restock(client)
    await client.close()

    assert received == NORMALISED


@pytest.mark.parametrize(
    "key",
    ["", "x" * 129, "bad key", "../etc", "KEY%2F1", "ключ"],
    ids=["empty", "too-long", "space", "dots", "slash", "non-ascii"],
)
async def test_malformed_key_is_refused_with_4401(relay, key):
    """Wrongly shaped keys close with 4401 before any provider lookup."""
    code = await refusal_code(relay.ws_url(key))

    assert code == 4401


async def test_missing_key_is_refused_with_4401(relay):
    code = await refusal_code(f"ws://127.0.0.1:{relay.port}/ws")

    assert code == 4401


async def test_unknown_key_is_refused_with_4401(relay):
    code = await refusal_code(relay.ws_url("NOT-A-CUSTOMER"))

    assert code == 4401


async def test_second_connection_with_same_key_is_refused_with_4409(relay):
    """Reject policy: the first connection stays, the newcomer gets 4409."""
    first = await open_client(relay.ws_url(KEYS[2]))
    await wait_for_connections(relay, 1)

    code = await refusal_code(relay.ws_url(KEYS[2]))
    relay.post(RESTOCK)
    still_served = await next_restock(first)
    await first.close()

    assert code == 4409
    assert still_served == NORMALISED


async def test_simultaneous_connects_with_one_key_let_exactly_one_through(relay):
    """Repeated races of 10 connects on one key: one winner every time."""
    for round_number in range(20):
        key = KEYS[10 + round_number]
        clients = await asyncio.gather(
            *(open_client(relay.ws_url(key)) for _ in range(10))
        )
        refused = await first_closes(clients, 9)
        await wait_for_connections(relay, 1)
        for client in clients:
            await client.close()
        await wait_for_connections(relay, 0)

        assert refused == [4409] * 9, f"round {round_number}: {refused}"


async def test_disconnect_frees_the_key(relay):
    """A client that leaves lets the same key connect again at once."""
    first = await open_client(relay.ws_url(KEYS[3]))
    await wait_for_connections(relay, 1)
    await first.close()
    await wait_for_connections(relay, 0)

    second = await open_client(relay.ws_url(KEYS[3]))
    await wait_for_connections(relay, 1)
    relay.post(RESTOCK)
    received = await next_restock(second)
    await second.close()

    assert received == NORMALISED


async def test_dropped_tcp_connection_frees_the_key(relay):
    """A client whose socket is torn down without a close frame frees its key."""
    first = await open_client(relay.ws_url(KEYS[4]))
    await wait_for_connections(relay, 1)
    first.transport.abort()
    await wait_for_connections(relay, 0)

    second = await open_client(relay.ws_url(KEYS[4]))
    await wait_for_connections(relay, 1)
    relay.post(RESTOCK)
    received = await next_restock(second)
    await second.close()

    assert received == NORMALISED


async def test_client_messages_are_ignored(relay):
    """Small messages from a client change nothing: it keeps its feed."""
    client = await open_client(relay.ws_url(KEYS[5]))
    await wait_for_connections(relay, 1)
    await client.send("hello")
    await client.send(b"\x00\x01")

    relay.post(RESTOCK)
    received = await next_restock(client)
    await client.close()

    assert received == NORMALISED


async def test_oversized_client_message_closes_with_1009(relay):
    client = await open_client(relay.ws_url(KEYS[6]))
    await wait_for_connections(relay, 1)
    await client.send("x" * 10_000)

    code = await close_code(client)

    assert code == 1009


async def test_connection_log_lines_never_hold_the_key(relay):
    """Opened, closed and refused lines carry a redacted key only."""
    key = KEYS[7]
    client = await open_client(relay.ws_url(key))
    await wait_for_connections(relay, 1)
    await refusal_code(relay.ws_url(key))
    await client.close()
    await wait_for_connections(relay, 0)

    events = relay.log_events()
    names = {event["event"] for event in events}

    assert key not in relay.log_text()
    assert {"client.connected", "client.disconnected", "client.refused"} <= names
    closed = [e for e in events if e["event"] == "client.disconnected"]
    assert all("seconds" in e and "code" in e for e in closed)


async def test_replace_policy_closes_the_old_socket(tmp_path):
    """Replace policy: the old connection gets 4409, the newcomer is served."""
    key = "REPLACE-ME-1"
    with RelayProcess(
        tmp_path, keys=[key], env={"RELAY_DUPLICATE_POLICY": "replace"}
    ) as relay:
        old = await open_client(relay.ws_url(key))
        await wait_for_connections(relay, 1)
        new = await open_client(relay.ws_url(key))

        old_code = await close_code(old)
        await wait_for_connections(relay, 1)
        relay.post(RESTOCK)
        received = await next_restock(new)
        await new.close()

    assert old_code == 4409
    assert received == NORMALISED


async def test_silent_client_is_dropped_by_ping_timeout(tmp_path):
    """A client that stops answering pings loses its key within one window."""
    key = "SILENT-CLIENT-1"
    env = {"RELAY_PING_INTERVAL": "0.3"}
    with RelayProcess(tmp_path, keys=[key], env=env) as relay:
        client = await open_client(relay.ws_url(key))
        await wait_for_connections(relay, 1)
        # Stop reading: pings sit unanswered in the socket buffer.
        client.transport.pause_reading()

        await wait_for_connections(relay, 0, timeout=5)
        client.transport.abort()

        replacement = await open_client(relay.ws_url(key))
        await wait_for_connections(relay, 1)
        await replacement.close()


async def test_sigterm_closes_clients_with_1001(tmp_path):
    """Shutdown says "going away" to every client."""
    key = "SHUTDOWN-1"
    relay = RelayProcess(tmp_path, keys=[key]).start()
    try:
        client = await open_client(relay.ws_url(key))
        await wait_for_connections(relay, 1)
        await asyncio.to_thread(relay.stop)

        code = await close_code(client)
    finally:
        relay.stop()

    assert code == 1001


async def test_keys_file_changes_are_picked_up(tmp_path):
    """A key added to the file is accepted without a restart."""
    relay = RelayProcess(tmp_path, keys=["OLD-KEY-1"]).start()
    try:
        before = await refusal_code(relay.ws_url("NEW-KEY-1"))
        relay.keys_file.write_text("OLD-KEY-1\nNEW-KEY-1  # added later\n")
        await asyncio.sleep(1.2)  # the file is looked at once a second
        client = await open_client(relay.ws_url("NEW-KEY-1"))
        await wait_for_connections(relay, 1)
        await client.close()
    finally:
        relay.stop()

    assert before == 4401


async def test_client_that_answers_pings_stays_connected(tmp_path):
    """Many heartbeat rounds later, a live client still has its feed."""
    key = "LIVELY-CLIENT-1"
    with RelayProcess(
        tmp_path, keys=[key], env={"RELAY_PING_INTERVAL": "0.2"}
    ) as relay:
        client = await open_client(relay.ws_url(key))
        await wait_for_connections(relay, 1)
        await asyncio.sleep(1.5)  # seven pings answered by the client library

        relay.post(RESTOCK)
        received = await next_restock(client)
        await client.close()

    assert received == NORMALISED


async def test_compression_is_never_negotiated(relay):
    """One encoded frame fits every client only if nobody compresses."""
    client = await open_client(relay.ws_url(KEYS[8]), compression="deflate")
    extensions = client.response.headers.get_all("Sec-WebSocket-Extensions")
    await client.close()

    assert extensions == []


async def test_replace_during_a_slow_license_lookup_keeps_one_connection(tmp_path):
    """Replace policy with a slow provider: of 5 racing connects, one stays."""
    from licensing.testing import FakeWhop

    key = "SLOW-LOOKUP-1"
    with FakeWhop() as whop:
        whop.add(key, "active")
        whop.slow(key, 0.3)
        env = {
            "RELAY_DUPLICATE_POLICY": "replace",
            "RELAY_LICENSE_PROVIDER": "whop",
            "RELAY_WHOP_API_KEY": whop.api_key,
            "RELAY_WHOP_BASE_URL": whop.v1_url,
        }
        with RelayProcess(tmp_path, env=env) as relay:
            clients = await asyncio.gather(
                *(open_client(relay.ws_url(key)) for _ in range(5))
            )
            codes = await first_closes(clients, 4)
            await wait_for_connections(relay, 1)
            await asyncio.sleep(0.5)  # every lookup has answered by now

            connections = relay.health()["connections"]
            for client in clients:
                await client.close()

    assert codes == [4409] * 4
    assert connections == 1
