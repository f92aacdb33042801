"""The monitor side: what a webhook must carry, and what each refusal costs.

Every refusal test proves "broadcast nothing" the same way: after the
refused post, a valid sentinel restock is posted, and the first frame the
client receives must be the sentinel.
"""

from __future__ import annotations

import time

import pytest

from server.cli import signed_headers
from tests.clients import next_restock, open_client, wait_for_connections
from tests.conftest import KEYS
from tests.harness import RelayProcess, new_secret, secret_key


def restock(sku: str, **extra: object) -> dict[str, object]:
    return {
        "site": "amazon",
        "sku": sku,
        "offerId": f"offer-{sku}",
        "details": {"region": "USA"},
        **extra,
    }


@pytest.fixture
async def client(relay):
    """One connected Stellar client on the shared relay."""
    connection = await open_client(relay.ws_url(KEYS[100]))
    await wait_for_connections(relay, 1)
    yield connection
    await connection.close()
    await wait_for_connections(relay, 0)


async def assert_nothing_was_broadcast(relay, client) -> None:
    status, _ = relay.post(restock("SENTINEL"))
    first = await next_restock(client)

    assert status == 202
    assert first["sku"] == "SENTINEL", f"something else was broadcast: {first}"


async def test_valid_restock_is_accepted_with_202(relay, client):
    status, body = relay.post(restock("B0OK"))
    received = await next_restock(client)

    assert (status, body) == (202, {"accepted": 1})
    assert received["sku"] == "B0OK"


async def test_missing_signature_is_401_and_broadcasts_nothing(relay, client):
    status, body = relay.post(restock("B0BAD"), headers={"webhook-signature": ""})

    assert status == 401
    assert "webhook-signature" in body["error"]
    await assert_nothing_was_broadcast(relay, client)


async def test_wrong_secret_is_401_and_broadcasts_nothing(relay, client):
    status, body = relay.post(restock("B0BAD"), secret=new_secret())

    assert (status, body) == (401, {"error": "no matching signature"})
    await assert_nothing_was_broadcast(relay, client)


async def test_tampered_body_is_401(relay, client):
    """The signature covers the raw body: changing one byte breaks it."""
    signed_for = b'{"site":"amazon","sku":"B0A"}'
    headers = signed_headers(signed_for, secret_key(relay.secret))
    status, _ = relay.post(
        None,
        raw=b'{"site":"amazon","sku":"B0B"}',
        headers=headers,
    )

    assert status == 401
    await assert_nothing_was_broadcast(relay, client)


@pytest.mark.parametrize("age", [301, -301], ids=["stale", "future"])
async def test_timestamp_outside_five_minutes_is_401(relay, client, age):
    status, body = relay.post(restock("B0OLD"), timestamp=int(time.time()) - age)

    assert status == 401
    assert "5 minutes" in body["error"]
    await assert_nothing_was_broadcast(relay, client)


async def test_replayed_webhook_id_is_a_duplicate_and_broadcast_once(relay, client):
    first_status, _ = relay.post(restock("B0ONCE"), webhook_id="msg_replay_1")
    second = relay.post(restock("B0ONCE"), webhook_id="msg_replay_1")
    received = await next_restock(client)

    assert first_status == 202
    assert second == (200, {"duplicate": True})
    assert received["sku"] == "B0ONCE"
    await assert_nothing_was_broadcast(relay, client)


async def test_oversized_body_is_413_and_broadcasts_nothing(relay, client):
    huge = restock("B0BIG", details={"region": "USA", "productTitle": "x" * 70_000})
    status, body = relay.post(huge)

    assert status == 413
    assert "error" in body
    await assert_nothing_was_broadcast(relay, client)


async def test_non_json_body_is_415(relay, client):
    status, body = relay.post(None, raw=b"site=amazon&sku=1")

    assert status == 415
    assert body["error"].startswith("body is not JSON")
    await assert_nothing_was_broadcast(relay, client)


async def test_one_invalid_item_refuses_the_whole_batch(relay, client):
    """All or nothing: item 2 is bad, so items 0, 1 and 3 are not sent."""
    batch = [
        restock("B0A"),
        restock("B0B"),
        {"site": "amazon", "sku": "B0C"},
        restock("B0D"),
    ]
    status, body = relay.post(batch)

    assert status == 422
    assert {"index": 2, "field": "details.region", "reason": "required for amazon"} in (
        body["problems"]
    )
    assert {p["index"] for p in body["problems"]} == {2}
    await assert_nothing_was_broadcast(relay, client)


async def test_unknown_fields_are_refused_by_name(relay, client):
    status, body = relay.post(restock("B0X", colour="red"))

    assert status == 422
    assert body["problems"] == [
        {"index": 0, "field": "colour", "reason": "unknown field"}
    ]


async def test_batch_over_100_is_refused(relay, client):
    status, body = relay.post([restock(f"B0{n}") for n in range(101)])

    assert status == 422
    assert "more than 100" in body["problems"][0]["reason"]
    await assert_nothing_was_broadcast(relay, client)


async def test_batch_of_100_reaches_every_client_in_order(relay):
    """Each item is its own frame; every client sees all 100, in order."""
    clients = [await open_client(relay.ws_url(key)) for key in KEYS[200:220]]
    await wait_for_connections(relay, len(clients))
    skus = [f"B0ORDER{n:03d}" for n in range(100)]

    status, body = relay.post([restock(sku) for sku in skus])
    received = [[(await next_restock(c))["sku"] for _ in skus] for c in clients]
    for connection in clients:
        await connection.close()
    await wait_for_connections(relay, 0)

    assert (status, body) == (202, {"accepted": 100})
    assert received == [skus] * len(clients)


async def test_rotated_secrets_both_verify_and_name_the_source(tmp_path):
    """Two secrets under one name (rotation) both work; the name is logged."""
    old, new = new_secret(), new_secret()
    env = {"RELAY_WEBHOOK_SECRETS": f"acme={old}, acme={new}, {new_secret()}"}
    with RelayProcess(tmp_path, env=env) as relay:
        first = relay.post(restock("B0ROT1"), secret=old)
        second = relay.post(restock("B0ROT2"), secret=new)
        events = relay.log_events()

    accepted = [e for e in events if e["event"] == "webhook.accepted"]

    assert first[0] == second[0] == 202
    assert [e["source"] for e in accepted] == ["acme", "acme"]
    assert old.removeprefix("whsec_") not in relay.log_text()


async def test_every_webhook_gets_one_log_line(relay):
    before = len(relay.log_events())
    relay.post(restock("B0LOG"))
    relay.post(restock("B0LOG"), secret=new_secret())

    events = [e["event"] for e in relay.log_events()[before:]]

    assert events == ["webhook.accepted", "webhook.refused"]
