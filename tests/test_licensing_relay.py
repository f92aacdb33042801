"""The relay against Whop and Hyper fakes over real HTTP: who gets in, with
which close code, and how many calls the provider sees."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from licensing.testing import FakeProvider, FakeWhop
from tests.clients import (
    close_code,
    first_closes,
    next_restock,
    open_client,
    wait_for_connections,
)
from tests.harness import RelayProcess
from tests.provider_env import PROVIDERS, make_fake, outcome, relay_env

RESTOCK = {"site": "walmart", "sku": "WM-1", "details": {"region": "USA"}}
FAST_TIMEOUT = {"RELAY_LICENSE_TIMEOUT": "0.5"}
NOW_MS = int(time.time() * 1000)

# key -> (status at the provider, what the relay answers)
OUTCOMES = {
    "whop-v1": {
        "WHOP-ACTIVE-1": ("active", "in"),
        "WHOP-TRIAL-1": ("trialing", "in"),
        "WHOP-PASTDUE-1": ("past_due", "in"),
        "WHOP-CANCELING-1": ("canceling", "in"),
        "WHOP-EXPIRED-1": ("expired", 4403),
        "WHOP-CANCELED-1": ("canceled", 4403),
        "WHOP-COMPLETED-1": ("completed", 4403),
    },
    "whop-v2": {
        "WHOP-ACTIVE-1": ("active", "in"),
        "WHOP-TRIAL-1": ("trialing", "in"),
        "WHOP-EXPIRED-1": ("expired", 4403),
        "WHOP-CANCELED-1": ("canceled", 4403),
    },
    "hyper": {
        "HYPR-ACTV-0001": ("active", "in"),
        "HYPR-TRIA-0001": ("trialing", "in"),
        "HYPR-PAST-0001": ("past_due", "in"),
        "HYPR-EXPD-0001": ("expired", 4403),
        "HYPR-CANC-0001": ("canceled", 4403),
    },
}
FAILURES = [("unknown", 4401), ("server-error", 4503), ("slow", 4503)]


def _raise_open_file_limit(needed: int = 8192) -> None:
    """A thousand clients, their relay sockets and the fake's, in one test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProvider]]:
    """One running fake per provider; Whop's serves both API versions."""
    whop, hyper = make_fake("whop-v1"), make_fake("hyper")
    for provider, fake in (("whop-v1", whop), ("whop-v2", whop), ("hyper", hyper)):
        for key, (status, _) in OUTCOMES[provider].items():
            fake.add(key, status)
    hyper.add("HYPR-GONE-0001", "active", cancel_at=NOW_MS - 60_000)
    hyper.add("HYPR-LATE-0001", "active", cancel_at=NOW_MS + 86_400_000)
    for fake in (whop, hyper):
        fake.add("SLOW-KEY-1", "active")
        fake.slow("SLOW-KEY-1", 5.0)
        fake.add("BROKEN-KEY-1", "active")
        fake.fail("BROKEN-KEY-1", 502)
    with whop, hyper:
        yield {"whop-v1": whop, "whop-v2": whop, "hyper": hyper}


@pytest.fixture(scope="module")
def relays(
    fakes: dict[str, FakeProvider], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RelayProcess]]:
    """A running relay per provider, each with a 0.5 s lookup timeout."""
    with contextlib.ExitStack() as stack:
        yield {
            provider: stack.enter_context(
                RelayProcess(
                    tmp_path_factory.mktemp(provider),
                    env=relay_env(provider, fakes[provider], **FAST_TIMEOUT),
                )
            )
            for provider in PROVIDERS
        }


def _outcome_cases() -> list[tuple[str, str, str | int]]:
    return [
        (provider, key, expected)
        for provider, table in OUTCOMES.items()
        for key, (_, expected) in table.items()
    ]


@pytest.mark.parametrize(("provider", "key", "expected"), _outcome_cases())
async def test_provider_status_decides_who_gets_in(relays, provider, key, expected):
    """Active and trialing keys stay; expired and cancelled get 4403."""
    result = await outcome(relays[provider], key)

    assert result == expected


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("case", "expected"), FAILURES)
async def test_unknown_and_unavailable_keys_get_their_close_codes(
    relays, provider, case, expected
):
    """404 is 4401; a 5xx or an answer past the timeout is 4503."""
    relay = relays[provider]
    key = {
        "unknown": "NOT-A-CUSTOMER-1",
        "server-error": "BROKEN-KEY-1",
        "slow": "SLOW-KEY-1",
    }[case]
    started = time.monotonic()

    result = await outcome(relay, key)

    assert result == expected
    assert time.monotonic() - started < 4.0, "the lookup timeout must cut slow answers"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_admitted_key_receives_restocks(relays, provider):
    """A key the provider calls active gets the feed."""
    relay = relays[provider]
    key = next(k for k, (_, want) in OUTCOMES[provider].items() if want == "in")
    client = await open_client(relay.ws_url(key))
    await wait_for_connections(relay, 1)

    relay.post(RESTOCK)
    received = await next_restock(client)
    await client.close()
    await wait_for_connections(relay, 0)

    assert received["sku"] == "WM-1"


async def test_hyper_license_past_its_cancel_at_is_refused(relays):
    """Hyper: an active status with a passed cancel_at is 4403; a future one is in."""
    gone = await outcome(relays["hyper"], "HYPR-GONE-0001")
    late = await outcome(relays["hyper"], "HYPR-LATE-0001")

    assert (gone, late) == (4403, "in")


@pytest.fixture(scope="module")
def crowd_fake() -> Iterator[FakeWhop]:
    """A Whop fake that knows 1,500 active keys."""
    _raise_open_file_limit()
    fake = FakeWhop(api_key="whop-test-api-key")
    for n in range(1500):
        fake.add(f"CROWD-{n:04d}", "active")
    fake.add("ONE-SHARED-KEY", "active")
    with fake:
        yield fake


@pytest.fixture(scope="module")
def crowd_relay(
    crowd_fake: FakeWhop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    env = relay_env("whop-v1", crowd_fake)
    with RelayProcess(tmp_path_factory.mktemp("crowd"), env=env) as relay:
        yield relay


async def _connect_all(relay: RelayProcess, keys: list[str]) -> list:
    return list(await asyncio.gather(*(open_client(relay.ws_url(k)) for k in keys)))


async def _close_all(relay: RelayProcess, clients: list) -> None:
    await asyncio.gather(*(client.close() for client in clients))
    await wait_for_connections(relay, 0, timeout=30)


async def test_500_simultaneous_distinct_keys_make_500_calls(crowd_relay, crowd_fake):
    """Each distinct key is looked up once; all 500 get in."""
    keys = [f"CROWD-{n:04d}" for n in range(500)]
    before = crowd_fake.calls
    clients = await _connect_all(crowd_relay, keys)
    await wait_for_connections(crowd_relay, 500, timeout=30)
    calls = crowd_fake.calls - before
    await _close_all(crowd_relay, clients)

    assert calls == 500
    assert {crowd_fake.calls_for(k) for k in keys} == {1}


async def test_500_simultaneous_connects_of_one_key_make_one_call(
    crowd_relay, crowd_fake
):
    """One key, 500 connects at once: one call, one client in, 499 get 4409.

    Under the default reject policy the key claim turns the 499 away before
    any lookup; concurrent lookups of one key sharing one call is pinned in
    test_licensing_cache (single flight, also over HTTP)."""
    before = crowd_fake.calls
    clients = await _connect_all(crowd_relay, ["ONE-SHARED-KEY"] * 500)
    refused = await first_closes(clients, 499, timeout=30)
    await wait_for_connections(crowd_relay, 1)
    calls = crowd_fake.calls - before
    await _close_all(crowd_relay, clients)

    assert calls == 1
    assert refused == [4409] * 499


async def test_reconnect_of_1000_cached_keys_makes_no_call(crowd_relay, crowd_fake):
    """After one lookup each, 1,000 clients reconnecting cost the provider
    nothing."""
    keys = [f"CROWD-{n:04d}" for n in range(500, 1500)]
    clients = await _connect_all(crowd_relay, keys)
    await wait_for_connections(crowd_relay, 1000, timeout=30)
    await _close_all(crowd_relay, clients)
    before = crowd_fake.calls

    clients = await _connect_all(crowd_relay, keys)
    await wait_for_connections(crowd_relay, 1000, timeout=30)
    calls = crowd_fake.calls - before
    await _close_all(crowd_relay, clients)

    assert calls == 0


@pytest.fixture
def own_fake() -> Iterator[FakeWhop]:
    """A Whop fake for one test, free to break."""
    fake = FakeWhop(api_key="whop-test-api-key")
    with fake:
        yield fake


@pytest.mark.parametrize("failure", ["503", "connection refused", "timeout"])
async def test_provider_down_does_not_lock_out_a_user_who_was_active(
    own_fake, tmp_path, failure
):
    """Past its 0.5 s TTL, a key seen active is let in on a dead provider,
    the log says so; a key never seen gets 4503."""
    own_fake.add("LOYAL-USER-1", "active")
    own_fake.add("NEW-USER-1", "active")
    env = relay_env("whop-v1", own_fake, RELAY_LICENSE_TTL="0.5", **FAST_TIMEOUT)
    with RelayProcess(tmp_path, env=env) as relay:
        first = await outcome(relay, "LOYAL-USER-1")
        await asyncio.sleep(0.6)  # let the cached answer expire
        if failure == "503":
            own_fake.outage(503)
        elif failure == "timeout":
            own_fake.slow("LOYAL-USER-1", 5.0)
            own_fake.slow("NEW-USER-1", 5.0)
        else:
            own_fake.stop()

        during = await outcome(relay, "LOYAL-USER-1")
        stranger = await outcome(relay, "NEW-USER-1")
        events = relay.log_events()

    stale = [e for e in events if e["event"] == "license.stale_if_error"]
    assert (first, during, stranger) == ("in", "in", 4503)
    assert len(stale) == 1 and stale[0]["level"] == "warning"


async def test_rate_limit_is_not_retried_in_a_loop(own_fake, tmp_path):
    """After Whop's 429 (no Retry-After: 60 s cooldown) the relay stops
    calling: ten more connects, no more calls."""
    keys = [f"BUSY-{n}" for n in range(11)]
    for key in keys:
        own_fake.add(key, "active")
    own_fake.rate_limit(60)
    with RelayProcess(tmp_path, env=relay_env("whop-v1", own_fake)) as relay:
        codes = [await outcome(relay, key) for key in keys]
        events = relay.log_events()

    assert codes == [4503] * 11
    assert own_fake.calls == 1
    assert [e["cooldown"] for e in events if e["event"] == "license.rate_limited"] == [
        60.0
    ]


async def test_retry_after_ends_the_cooldown(own_fake, tmp_path):
    """A 429 with Retry-After: 2 holds calls back for two seconds, not 60:
    connects during the cooldown cost nothing, the first after it gets in."""
    own_fake.add("PATIENT-1", "active")
    with RelayProcess(tmp_path, env=relay_env("whop-v1", own_fake)) as relay:
        own_fake.rate_limit(2, retry_after=2)
        started = time.monotonic()
        codes = [await outcome(relay, "PATIENT-1")]
        async with asyncio.timeout(10):
            while codes[-1] != "in":
                await asyncio.sleep(0.2)
                codes.append(await outcome(relay, "PATIENT-1"))
        waited = time.monotonic() - started

    assert set(codes[:-1]) == {4503} and len(codes) > 2
    assert own_fake.calls == 2
    assert 2.0 <= waited < 10


async def test_license_cancelled_at_the_provider_drops_at_next_recheck(
    own_fake, tmp_path
):
    """Re-checks every second: cancelled gets 4403, deleted 4401; an active
    key and one whose provider errors keep their feed."""
    for key in ("STAYS-1", "CANCELLED-1", "DELETED-1", "FLAKY-1"):
        own_fake.add(key, "active")
    env = relay_env("whop-v1", own_fake, RELAY_LICENSE_RECHECK="1")
    with RelayProcess(tmp_path, env=env) as relay:
        clients = {
            key: await open_client(relay.ws_url(key))
            for key in ("STAYS-1", "CANCELLED-1", "DELETED-1", "FLAKY-1")
        }
        await wait_for_connections(relay, 4)
        own_fake.set_status("CANCELLED-1", "canceled")
        own_fake.remove("DELETED-1")
        own_fake.fail("FLAKY-1", 503)
        flaky_calls = own_fake.calls_for("FLAKY-1")

        cancelled = await close_code(clients["CANCELLED-1"], timeout=5)
        deleted = await close_code(clients["DELETED-1"], timeout=5)
        async with asyncio.timeout(5):
            while own_fake.calls_for("FLAKY-1") < flaky_calls + 2:
                await asyncio.sleep(0.05)
        await wait_for_connections(relay, 2)
        relay.post(RESTOCK)
        stays = await next_restock(clients["STAYS-1"])
        flaky = await next_restock(clients["FLAKY-1"])
        for client in clients.values():
            await client.close()
        events = relay.log_events()

    lapsed = [e["code"] for e in events if e["event"] == "client.license_lapsed"]
    assert (cancelled, deleted) == (4403, 4401)
    assert stays["sku"] == flaky["sku"] == "WM-1"
    assert sorted(lapsed) == [4401, 4403]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_wrong_api_key_is_loud_in_the_log_and_not_the_users_fault(
    tmp_path: Path, provider: str
):
    """401 from the provider: users get 4503 (try again), the log gets one
    ERROR line naming the variable to fix, not one per lookup."""
    fake = make_fake(provider)
    for n in range(5):
        fake.add(f"PAYING-{n}", "active")
    with fake:
        env = relay_env(provider, fake, api_key="wrong-key")
        with RelayProcess(tmp_path, env=env) as relay:
            codes = [await outcome(relay, f"PAYING-{n}") for n in range(5)]
            events = relay.log_events()

    errors = [e for e in events if e["level"] == "error"]
    assert codes == [4503] * 5
    assert fake.calls == 5
    assert [e["event"] for e in errors] == ["license.api_key_rejected"]
    variable = "RELAY_HYPER_API_KEY" if provider == "hyper" else "RELAY_WHOP_API_KEY"
    assert variable in errors[0]["fix"]
    assert "wrong-key" not in relay.log_text()


def test_missing_api_key_stops_start_up_with_one_line(tmp_path):
    """RELAY_LICENSE_PROVIDER=whop without RELAY_WHOP_API_KEY: exit, one line."""
    relay = RelayProcess(
        tmp_path, env={"RELAY_LICENSE_PROVIDER": "whop", "RELAY_WHOP_API_KEY": ""}
    )
    with pytest.raises(RuntimeError, match="exited early"):
        relay.start()

    lines = relay.log_text().strip().splitlines()
    assert lines == [
        "stellar-relay: RELAY_WHOP_API_KEY: required when RELAY_LICENSE_PROVIDER=whop"
    ]
    assert relay.process is not None and relay.process.returncode == 2
