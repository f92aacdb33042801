"""A client that stops reading is closed with 4008; nobody else waits for it."""

from __future__ import annotations

import asyncio
import socket

from server.sendpool import SOCKETS_PER_THREAD_AT_LEAST
from tests.clients import close_code, next_restock, open_client, wait_for_connections
from tests.harness import RelayProcess, bulky_restocks

BUFFER = 16 * 1024


async def stalled_client(url: str):
    """A real client whose socket has a tiny receive window and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = url.split("//")[1].split("/")[0].split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    client = await open_client(url, sock=sock)
    client.transport.pause_reading()

    return client


async def test_stalled_client_is_closed_with_4008_and_the_rest_get_everything(tmp_path):
    keys = ["STALLED-1", "HEALTHY-1", "HEALTHY-2"]
    env = {"RELAY_CLIENT_BUFFER": str(BUFFER)}
    with RelayProcess(tmp_path, keys=keys, env=env) as relay:
        stalled = await stalled_client(relay.ws_url(keys[0]))
        # Healthy clients buffer without limit, so only the stalled one stalls.
        healthy = [
            await open_client(relay.ws_url(key), max_queue=None) for key in keys[1:]
        ]
        await wait_for_connections(relay, 3)

        posts = 0
        while relay.health()["slow_consumers_closed"] == 0 and posts < 200:
            status, _ = await asyncio.to_thread(relay.post, bulky_restocks(posts))
            assert status == 202
            posts += 1
        counts = []
        for client in healthy:
            counts.append(len([await next_restock(client) for _ in range(posts * 10)]))
        stalled.transport.resume_reading()
        code = await close_code(stalled)
        await wait_for_connections(relay, 2)
        # The stalled client's key is free again.
        again = await open_client(relay.ws_url(keys[0]))
        await wait_for_connections(relay, 3)
        for client in [*healthy, again]:
            await client.close()

    assert code == 4008
    assert counts == [posts * 10, posts * 10]
    assert relay.log_events() and any(
        e["event"] == "client.slow_consumer" for e in relay.log_events()
    )


async def test_two_writers_deliver_every_frame_in_order_around_a_stalled_client(
    tmp_path,
):
    """Enough clients for the send pool to split the writes between two
    threads: the stalled client's half-written frames go on through its
    transport and it is closed with 4008; every other client gets every
    restock, whole and in order."""
    keys = [f"MANY-{n:04d}" for n in range(2 * SOCKETS_PER_THREAD_AT_LEAST + 40)]
    env = {"RELAY_CLIENT_BUFFER": str(BUFFER), "RELAY_SEND_THREADS": "2"}
    with RelayProcess(tmp_path, keys=keys, env=env) as relay:
        # In the middle, so that it falls in one writer's share, not at an end.
        stalled_at = len(keys) // 2
        healthy = []
        for index, key in enumerate(keys):
            if index == stalled_at:
                stalled = await stalled_client(relay.ws_url(key))
            else:
                healthy.append(await open_client(relay.ws_url(key), max_queue=None))
        await wait_for_connections(relay, len(keys))

        posts = 0
        while relay.health()["slow_consumers_closed"] == 0 and posts < 200:
            status, _ = await asyncio.to_thread(relay.post, bulky_restocks(posts))
            assert status == 202
            posts += 1
        expected = [item["sku"] for n in range(posts) for item in bulky_restocks(n)]
        received = [
            [(await next_restock(client))["sku"] for _ in expected]
            for client in healthy
        ]
        stalled.transport.resume_reading()
        code = await close_code(stalled)
        for client in healthy:
            await client.close()
        writers = [
            e["writers"] for e in relay.log_events() if e["event"] == "webhook.accepted"
        ]

    assert code == 4008
    assert received == [expected] * len(healthy)
    assert writers == [2] * posts
