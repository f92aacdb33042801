"""Redis lost while the relay runs: what stays, what is refused, what heals."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.clients import (
    close_code,
    next_restock,
    open_client,
    refusal_code,
    wait_for_connections,
)
from tests.harness import RelayProcess
from tests.redis_harness import CuttableProxy, RedisServer, admitted, relay_nodes

KEYS = [f"OUTAGE-{n:04d}-KEY" for n in range(20)]


def restock(sku: str) -> dict[str, Any]:
    return {
        "site": "amazon",
        "sku": sku,
        "offerId": "o-1",
        "details": {"region": "USA"},
    }


async def health(relay: RelayProcess) -> dict[str, Any]:
    return await asyncio.to_thread(relay.health)


async def post(relay: RelayProcess, body: Any, webhook_id: str) -> tuple[int, Any]:
    return await asyncio.to_thread(relay.post, body, webhook_id=webhook_id)


async def until_redis(relay: RelayProcess, *, up: bool, timeout: float = 15) -> None:
    """Until the relay's /healthz says its Redis link is (or is not) up."""
    async with asyncio.timeout(timeout):
        while ((await health(relay))["redis"] == "up") != up:
            await asyncio.sleep(0.05)


def events(relay: RelayProcess, name: str) -> list[dict[str, Any]]:
    return [event for event in relay.log_events() if event["event"] == name]


async def test_redis_stopped_and_restarted(tmp_path):
    """Open clients stay and get local restocks; newcomers get 4503; webhooks
    503 and are not sent twice; after the restart leases are back first."""
    server = RedisServer(tmp_path / "redis").start()
    a, b = relay_nodes(
        tmp_path, server.url, keys=KEYS, env={"RELAY_LEASE_SECONDS": "3"}
    )
    try:
        with a, b:
            on_a = [await open_client(a.ws_url(key)) for key in KEYS[0:5]]
            on_b = [await open_client(b.ws_url(key)) for key in KEYS[5:10]]
            await wait_for_connections(a, 5)
            await wait_for_connections(b, 5)

            # Redis goes away.
            server.stop()
            await until_redis(a, up=False)
            await until_redis(b, up=False)
            refused = [
                await refusal_code(a.ws_url(KEYS[10])),
                await refusal_code(b.ws_url(KEYS[11])),
            ]
            during = await post(a, restock("DURING"), "outage-1")
            again = await post(a, restock("DURING"), "outage-1")
            got_on_a = [(await next_restock(c))["sku"] for c in on_a]
            a_during, b_during = await health(a), await health(b)

            # Redis comes back, empty.
            server.start()
            await until_redis(a, up=True)
            await until_redis(b, up=True)
            live_key_elsewhere = await refusal_code(b.ws_url(KEYS[0]))
            newcomer = await admitted(b, KEYS[10])
            retry = await post(b, restock("DURING"), "outage-1")
            got_on_b = [(await next_restock(c))["sku"] for c in on_b]
            after = await post(a, restock("AFTER"), "after-1")
            next_everywhere = [(await next_restock(c))["sku"] for c in on_a + on_b]
            a_after = await health(a)
            for client in on_a + on_b:
                await client.close()
    finally:
        server.stop()

    assert refused == [4503, 4503]
    assert during[0] == again[0] == 503
    assert got_on_a == ["DURING"] * 5
    assert (a_during["connections"], b_during["connections"]) == (5, 5)
    assert (a_during["restocks_sent"], b_during["restocks_sent"]) == (1, 0)
    assert live_key_elsewhere == 4409, "the live socket's lease was taken back"
    assert newcomer
    assert retry == (202, {"accepted": 1})
    assert got_on_b == ["DURING"] * 5
    assert after == (202, {"accepted": 1})
    assert next_everywhere == ["AFTER"] * 10, "no client got DURING twice"
    assert a_after["restocks_sent"] == 2
    lost, recovered = events(a, "redis.lost"), events(a, "redis.recovered")
    assert len(lost) == len(recovered) == 1
    assert recovered[0]["outage_seconds"] > 0
    assert recovered[0]["clients_refused"] == 1
    assert recovered[0]["webhooks_local_only"] == 2
    assert recovered[0]["leases_kept"] == 5


async def test_node_cut_off_from_redis_loses_keys_taken_meanwhile(tmp_path):
    """One node loses its network to Redis; the other does not. A key whose
    lease ran out meanwhile and was taken on the healthy node stays there:
    the cut-off node closes its own socket with 4409 when it is back."""
    key = KEYS[12]
    server = RedisServer(tmp_path / "redis").start()
    proxy = await CuttableProxy(server.port).start()
    a, b = relay_nodes(
        tmp_path, server.url, keys=[key], env={"RELAY_LEASE_SECONDS": "2"}
    )
    a.env["RELAY_REDIS_URL"] = proxy.url
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        held = await open_client(a.ws_url(key))
        await wait_for_connections(a, 1)

        proxy.sever()
        await until_redis(a, up=False)
        taken = await _connect_once_free(b, key, timeout=6)
        to_b = await post(b, restock("TO-B"), "cut-1")
        b_got = (await next_restock(taken))["sku"]
        to_a = await post(a, restock("TO-A"), "cut-2")
        a_got = (await next_restock(held))["sku"]
        a_cut = await health(a)

        proxy.mend()
        await until_redis(a, up=True)
        held_code = await close_code(held)
        await wait_for_connections(b, 1)
        await taken.close()
    finally:
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(b.stop)
        await proxy.close()
        server.stop()

    assert to_b == (202, {"accepted": 1})
    assert b_got == "TO-B"
    assert to_a[0] == 503
    assert a_got == "TO-A"
    assert a_cut["restocks_sent"] == 1, "a cut-off node misses the others' restocks"
    assert held_code == 4409
    assert events(a, "redis.recovered")[0]["clients_displaced"] == 1


async def _connect_once_free(relay: RelayProcess, key: str, timeout: float) -> Any:
    """Retry connecting with ``key`` until the relay keeps the connection."""
    async with asyncio.timeout(timeout):
        while True:
            client = await open_client(relay.ws_url(key))
            try:
                await close_code(client, timeout=0.3)
            except TimeoutError:
                return client
            await asyncio.sleep(0.1)
