"""RELAY_WORKERS=2 on one machine: two Sanic workers on one port, one relay."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import close_code, first_closes, next_restock, open_client
from tests.harness import RelayProcess, free_port, new_secret
from tests.redis_harness import RedisServer, node_counts

KEYS = [f"WORKER-{n:04d}-KEY" for n in range(300)]
"""Each test uses keys of its own: a lease is freed just after /healthz
stops counting its connection."""
RESTOCK = {
    "site": "amazon",
    "sku": "B0WORKERS1",
    "offerId": "offer-w",
    "details": {"region": "USA"},
}


@pytest.fixture(scope="module")
def relay(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    env = {"RELAY_REDIS_URL": redis_server.url, "RELAY_WORKERS": "2"}
    with RelayProcess(
        tmp_path_factory.mktemp("workers"), keys=KEYS, env=env
    ) as process:
        asyncio.run(node_counts(process, nodes=2))  # both workers serve
        yield process


async def test_both_workers_get_connections_on_the_shared_port(relay):
    """100 clients spread over the two workers; each is one node."""
    clients = [await open_client(relay.ws_url(key)) for key in KEYS[:100]]

    counts = await node_counts(relay, nodes=2, total=100)
    for client in clients:
        await client.close()
    await node_counts(relay, nodes=2, total=0)

    assert len(counts) == 2
    assert all(count > 0 for count in counts.values()), counts


async def test_one_key_racing_over_both_workers_lets_exactly_one_through(relay):
    clients = await asyncio.gather(
        *(open_client(relay.ws_url(KEYS[100])) for _ in range(50))
    )

    refused = await first_closes(clients, 49)
    counts = await node_counts(relay, nodes=2, total=1)
    for client in clients:
        await client.close()
    await node_counts(relay, nodes=2, total=0)

    assert refused == [4409] * 49
    assert sorted(counts.values()) == [0, 1]


async def test_webhook_reaches_the_clients_of_both_workers_once(relay):
    clients = [await open_client(relay.ws_url(key)) for key in KEYS[200:240]]
    counts = await node_counts(relay, nodes=2, total=40)

    first = relay.post(RESTOCK, webhook_id="msg_workers_1")
    received = [(await next_restock(client))["sku"] for client in clients]
    retry = relay.post(RESTOCK, webhook_id="msg_workers_1")
    relay.post({**RESTOCK, "sku": "B0WORKERS2"}, webhook_id="msg_workers_2")
    following = [(await next_restock(client))["sku"] for client in clients]
    for client in clients:
        await client.close()
    await node_counts(relay, nodes=2, total=0)

    assert all(count > 0 for count in counts.values()), counts
    assert first == (202, {"accepted": 1})
    assert received == ["B0WORKERS1"] * 40
    assert retry == (200, {"duplicate": True})
    assert following == ["B0WORKERS2"] * 40


async def test_sigterm_closes_every_workers_clients_with_1001_and_frees_keys(
    redis_server, tmp_path
):
    env = {"RELAY_REDIS_URL": redis_server.url, "RELAY_WORKERS": "2"}
    env["RELAY_REDIS_PREFIX"] = "sigterm-test"
    relay = RelayProcess(tmp_path, keys=KEYS, env=env).start()
    try:
        await node_counts(relay, nodes=2)  # both workers serve
        clients = [await open_client(relay.ws_url(key)) for key in KEYS[250:280]]
        counts = await node_counts(relay, nodes=2, total=30)
        await asyncio.to_thread(relay.stop)
        codes = [await close_code(client) for client in clients]
    finally:
        relay.stop()

    leases = redis_server.command("KEYS", "sigterm-test:lease:*")

    assert all(count > 0 for count in counts.values()), counts
    assert codes == [1001] * 30
    assert leases == b"*0\r\n", "every worker freed its leases on the way out"


def test_sigterm_right_after_start_up_stops_the_relay(redis_server, tmp_path):
    """A stop signal while a worker is still starting ends the relay, cleanly
    (Sanic alone would spin forever: sanic-org/sanic#2997)."""
    env = {"RELAY_REDIS_URL": redis_server.url, "RELAY_WORKERS": "2"}
    codes = []
    for attempt in range(3):
        relay = RelayProcess(tmp_path / str(attempt), keys=KEYS, env=env).start()
        relay.process.send_signal(signal.SIGTERM)
        try:
            codes.append(relay.process.wait(timeout=10))
        finally:
            relay.stop(signal.SIGKILL)

    assert codes == [0, 0, 0]


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``stellar-relay serve`` to its exit; it is expected to refuse."""
    keys = tmp_path / "keys.txt"
    keys.write_text("SOME-KEY\n")
    environ = {
        **os.environ,
        "RELAY_PORT": str(free_port()),
        "RELAY_KEYS_FILE": str(keys),
        "RELAY_WEBHOOK_SECRETS": new_secret(),
        "RELAY_LOG_FORMAT": "json",
        **env,
    }

    return subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_unreachable_redis_stops_start_up_with_one_line(tmp_path):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    result = serve(tmp_path, RELAY_REDIS_URL=url)
    lines = result.stderr.strip().splitlines()

    assert result.returncode == 2
    assert lines[-1].startswith("stellar-relay: RELAY_REDIS_URL: cannot reach redis")
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_several_workers_without_redis_stop_start_up_with_one_line(tmp_path):
    result = serve(tmp_path, RELAY_WORKERS="2")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stellar-relay: RELAY_WORKERS: 2 workers must share keys and restocks: "
        "set RELAY_REDIS_URL"
    ]
