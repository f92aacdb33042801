"""Leases and the restocks channel against a real ``redis-server``, in-process."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from server.config import Settings
from server.errors import SharedStateUnavailable
from server.fanout import Outcome
from server.hub import Hub
from server.shared import LinkState, RedisNode
from server.shared.restocks import parse_restock_message
from tests.redis_harness import CuttableProxy, RedisServer

_prefixes = itertools.count()


@pytest.fixture
def node_settings(redis_server: RedisServer) -> Settings:
    """Settings of one relay on its own prefix, so tests share no keys."""
    return Settings(
        redis_url=redis_server.url,
        redis_prefix=f"t{next(_prefixes)}",
        lease_seconds=30.0,
    )


class Displaced(list[str]):
    """Records the owners a node was told to close."""

    def __call__(self, owner: str) -> None:
        self.append(owner)


async def started_node(settings: Settings, name: str) -> tuple[RedisNode, Displaced]:
    node = RedisNode(settings, node_id=name)
    displaced = Displaced()
    node.attach(Hub(client_buffer=1 << 20), displaced)
    await node.start()

    return node, displaced


@pytest.fixture
async def two_nodes(
    node_settings: Settings,
) -> AsyncIterator[tuple[tuple[RedisNode, Displaced], tuple[RedisNode, Displaced]]]:
    a = await started_node(node_settings, "node-a")
    b = await started_node(node_settings, "node-b")
    yield a, b
    await a[0].stop()
    await b[0].stop()


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_key_held_on_one_node_is_refused_on_another(two_nodes):
    (a, _), (b, _) = two_nodes
    first = await a.registry.claim("KEY-1", "owner-a", replace=False)

    second = await b.registry.claim("KEY-1", "owner-b", replace=False)

    assert first.granted
    assert not second.granted


async def test_release_by_another_owner_leaves_the_lease(two_nodes):
    """Compare-and-delete: a stale owner never frees its successor's lease."""
    (a, _), (b, _) = two_nodes
    await a.registry.claim("KEY-2", "owner-a", replace=False)

    await b.registry.release("KEY-2", "owner-b")
    await a.registry.release("KEY-2", "someone-else")
    still_held = await b.registry.claim("KEY-2", "owner-b", replace=False)

    assert not still_held.granted


async def test_release_frees_the_key_for_every_node(two_nodes):
    (a, _), (b, _) = two_nodes
    await a.registry.claim("KEY-3", "owner-a", replace=False)

    await a.registry.release("KEY-3", "owner-a")
    taken = await b.registry.claim("KEY-3", "owner-b", replace=False)

    assert taken.granted


async def test_lease_expires_unless_kept(two_nodes, redis_server):
    """A lease carries the configured expiry, and the keeper renews it."""
    (a, _), _ = two_nodes
    await a.registry.claim("KEY-4", "owner-a", replace=False)
    name = a.registry.lease_name("KEY-4")
    redis_server.command("PEXPIRE", name, "5000")

    await a.registry.keep()
    ttl = int(redis_server.command("PTTL", name)[1:].strip())

    assert 29_000 < ttl <= 30_000


async def test_lease_names_hide_the_key(two_nodes, redis_server):
    (a, _), _ = two_nodes
    await a.registry.claim("SECRET-KEY-5", "owner-a", replace=False)

    names = redis_server.command("KEYS", "*")

    assert b"SECRET-KEY-5" not in names
    assert a.registry.lease_name("SECRET-KEY-5").encode() in names


async def test_replace_on_another_node_closes_the_old_connection_there(two_nodes):
    """Replace policy: the displaced owner's node is told to close it."""
    (a, displaced_on_a), (b, displaced_on_b) = two_nodes
    await a.registry.claim("KEY-6", "owner-a", replace=True)

    claim = await b.registry.claim("KEY-6", "owner-b", replace=True)
    await until(lambda: displaced_on_a == ["owner-a"])

    assert claim.granted and claim.previous_owner == "owner-a"
    assert displaced_on_b == []


async def test_keeper_closes_a_connection_whose_lease_went_elsewhere(
    two_nodes, redis_server
):
    (a, displaced_on_a), (b, _) = two_nodes
    await a.registry.claim("KEY-7", "owner-a", replace=False)
    redis_server.command("DEL", a.registry.lease_name("KEY-7"))
    await b.registry.claim("KEY-7", "owner-b", replace=False)

    lost = await a.registry.keep()

    assert lost == 1
    assert displaced_on_a == ["owner-a"]


async def test_restock_is_published_once_and_received_by_every_node(two_nodes):
    (a, _), (b, _) = two_nodes
    frames = b"\x81\x02{}"

    first = await a.fanout.publish("monitor:msg-1", frames, count=1)
    retry = await b.fanout.publish("monitor:msg-1", frames, count=1)
    await until(lambda: a.fanout._hub.restocks_sent == b.fanout._hub.restocks_sent == 1)

    assert first.outcome is Outcome.PUBLISHED
    assert retry.outcome is Outcome.DUPLICATE


async def test_webhook_ids_are_remembered_for_ten_minutes(two_nodes, redis_server):
    (a, _), _ = two_nodes
    await a.fanout.publish("monitor:msg-2", b"\x81\x02{}", count=1)

    ttl = int(redis_server.command("TTL", a.link.name("webhook", "monitor:msg-2"))[1:])

    assert 590 <= ttl <= 600


async def test_channel_message_carries_id_count_and_frames(node_settings, redis_server):
    node, _ = await started_node(node_settings, "node-c")
    listener = node.link.client.pubsub()
    await listener.subscribe(node.fanout.channel)
    await listener.get_message(timeout=2)
    try:
        await node.fanout.publish("monitor:msg-3", b"\x81\x01x\x81\x01y", count=2)
        message = None
        async with asyncio.timeout(5):
            while message is None:
                message = await listener.get_message(
                    ignore_subscribe_messages=True, timeout=1
                )
    finally:
        await listener.aclose()
        await node.stop()

    assert parse_restock_message(message["data"]) == (
        "monitor:msg-3",
        b"\x81\x01x\x81\x01y",
        2,
    )


async def test_node_that_cannot_reach_redis_at_start_serves_as_in_an_outage(
    tmp_path,
):
    """Redis gone between the start-up check and a worker's start: the
    worker starts DOWN, refuses claims, and recovers when Redis appears."""
    server = RedisServer(tmp_path / "redis")
    node, _ = await started_node(Settings(redis_url=server.url), "node-g")
    try:
        state_at_start = node.link.state
        with pytest.raises(SharedStateUnavailable):
            await node.registry.claim("KEY-11", "owner", replace=False)
        server.start()
        await until(lambda: node.link.up, timeout=15)
        claim = await node.registry.claim("KEY-11", "owner", replace=False)
    finally:
        await node.stop()
        server.stop()

    assert state_at_start is LinkState.DOWN
    assert claim.granted


async def test_outage_refuses_claims_and_sends_webhooks_here_only(tmp_path):
    """Redis gone: claims raise, a webhook reaches this node's hub once."""
    server = RedisServer(tmp_path / "redis").start()
    node, _ = await started_node(Settings(redis_url=server.url), "node-d")
    hub = node.fanout._hub
    try:
        server.stop()
        await until(lambda: node.link.state is not LinkState.UP)
        with pytest.raises(SharedStateUnavailable):
            await node.registry.claim("KEY-8", "owner", replace=False)
        first = await node.fanout.publish("monitor:msg-4", b"\x81\x02{}", count=1)
        retry = await node.fanout.publish("monitor:msg-4", b"\x81\x02{}", count=1)
    finally:
        await node.stop()

    assert (first.outcome, retry.outcome) == (Outcome.LOCAL_ONLY, Outcome.LOCAL_ONLY)
    assert hub.restocks_sent == 1
    assert node.link.tally.clients_refused == 1


async def test_recovery_takes_back_live_leases_and_skips_restocks_sent_here(
    tmp_path,
):
    """Redis restarts empty: the live lease is taken back before UP, and the
    published retry of a webhook sent here during the outage is not sent
    here again."""
    server = RedisServer(tmp_path / "redis").start()
    node, _ = await started_node(Settings(redis_url=server.url), "node-e")
    hub = node.fanout._hub
    try:
        await node.registry.claim("KEY-9", "owner", replace=False)
        server.stop()
        await until(lambda: node.link.state is not LinkState.UP)
        await node.fanout.publish("monitor:msg-5", b"\x81\x02{}", count=1)
        server.start()
        await until(lambda: node.link.up, timeout=15)
        lease = server.command("GET", node.registry.lease_name("KEY-9"))
        retried = await node.fanout.publish("monitor:msg-5", b"\x81\x02{}", count=1)
        await until(lambda: node.fanout.skipped == 1)
    finally:
        await node.stop()
        server.stop()

    assert b"node-e/owner" in lease
    assert retried.outcome is Outcome.PUBLISHED
    assert hub.restocks_sent == 1


async def test_release_during_an_outage_is_finished_on_recovery(redis_server):
    """Cut off (Redis keeps its data): a release that could not be sent is
    sent on recovery, so the key is not held until its lease runs out."""
    proxy = await CuttableProxy(redis_server.port).start()
    settings = Settings(redis_url=proxy.url, redis_prefix=f"t{next(_prefixes)}")
    node, _ = await started_node(settings, "node-f")
    try:
        await node.registry.claim("KEY-10", "owner", replace=False)
        name = node.registry.lease_name("KEY-10")
        proxy.sever()
        await until(lambda: node.link.state is not LinkState.UP)
        await node.registry.release("KEY-10", "owner")
        held_while_cut = redis_server.command("EXISTS", name)
        proxy.mend()
        await until(lambda: node.link.up, timeout=15)
        held_after = redis_server.command("EXISTS", name)
    finally:
        await node.stop()
        await proxy.close()

    assert held_while_cut == b":1\r\n"
    assert held_after == b":0\r\n"
