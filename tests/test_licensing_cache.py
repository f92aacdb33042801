"""CachedProvider on a fake clock: TTLs, single flight, grace, cooldown."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from licensing import LicenseResult, LicenseStatus
from licensing.cache import CachedProvider, fresh_lookup
from licensing.http import ProviderClient
from licensing.testing import FakeWhop
from licensing.whop import WhopProvider

TTL, NEGATIVE_TTL, GRACE = 600.0, 60.0, 86400.0
ACTIVE = LicenseResult.active("status active")
CANCELED = LicenseResult.inactive("status canceled")
UNKNOWN = LicenseResult.unknown()
DOWN = LicenseResult.unavailable("provider answered 503")
RATE_LIMITED = LicenseResult.unavailable("provider rate limit", retry_after=30.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedProvider:
    """Answers each key with what the test set, recording every call."""

    name = "scripted"

    def __init__(self) -> None:
        self.answers: dict[str, LicenseResult] = {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def lookup(self, key: str) -> LicenseResult:
        self.calls.append(key)
        if self.gate is not None:
            await self.gate.wait()
        return self.answers.get(key, UNKNOWN)

    async def close(self) -> None:
        self.closed = True


class CrashingProvider(ScriptedProvider):
    async def lookup(self, key: str) -> LicenseResult:
        raise RuntimeError("bug")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def inner() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def cache(inner: ScriptedProvider, clock: FakeClock) -> CachedProvider:
    return CachedProvider(
        inner, ttl=TTL, negative_ttl=NEGATIVE_TTL, grace=GRACE, clock=clock
    )


async def test_active_answer_is_reused_until_its_ttl(cache, inner, clock):
    """Within 10 min the cache answers; after, the provider is asked again."""
    inner.answers["K1"] = ACTIVE
    await cache.lookup("K1")
    clock.advance(TTL - 1)
    await cache.lookup("K1")
    calls_within = len(inner.calls)
    clock.advance(2)

    await cache.lookup("K1")

    assert (calls_within, len(inner.calls)) == (1, 2)


@pytest.mark.parametrize("answer", [CANCELED, UNKNOWN], ids=["inactive", "unknown"])
async def test_negative_answer_is_kept_for_the_shorter_ttl(cache, inner, clock, answer):
    """Unknown and not-active keys are cached for 60 s only."""
    inner.answers["K1"] = answer
    first = await cache.lookup("K1")
    clock.advance(NEGATIVE_TTL - 1)
    await cache.lookup("K1")
    calls_within = len(inner.calls)
    clock.advance(2)

    await cache.lookup("K1")

    assert first == answer
    assert (calls_within, len(inner.calls)) == (1, 2)


async def test_unavailable_answer_is_not_cached(cache, inner):
    inner.answers["K1"] = DOWN
    await cache.lookup("K1")

    await cache.lookup("K1")

    assert len(inner.calls) == 2


async def test_concurrent_lookups_of_one_key_share_one_call(cache, inner):
    """Single flight: 100 waiters, one provider call, one answer."""
    inner.answers["K1"] = ACTIVE
    inner.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.lookup("K1")) for _ in range(100)]
    await asyncio.sleep(0)
    inner.gate.set()

    results = await asyncio.gather(*waiters)

    assert inner.calls == ["K1"]
    assert set(results) == {ACTIVE}


async def test_a_waiter_that_leaves_does_not_cancel_the_shared_call(cache, inner):
    """A client hanging up mid-lookup leaves the others their answer."""
    inner.answers["K1"] = ACTIVE
    inner.gate = asyncio.Event()
    leaver = asyncio.create_task(cache.lookup("K1"))
    stayer = asyncio.create_task(cache.lookup("K1"))
    await asyncio.sleep(0)
    leaver.cancel()
    inner.gate.set()

    result = await stayer

    assert result == ACTIVE
    assert inner.calls == ["K1"]


async def test_distinct_keys_make_distinct_calls(cache, inner):
    inner.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.lookup(f"K{n}")) for n in range(50)]
    await asyncio.sleep(0)
    inner.gate.set()
    await asyncio.gather(*waiters)

    assert sorted(inner.calls) == sorted(f"K{n}" for n in range(50))


async def test_provider_down_lets_a_recently_active_key_in_and_says_so(
    cache, inner, clock
):
    """Stale if error: active within the grace, the key is still let in."""
    inner.answers["LOYAL-KEY-0001"] = ACTIVE
    await cache.lookup("LOYAL-KEY-0001")
    clock.advance(TTL + 1)
    inner.answers["LOYAL-KEY-0001"] = DOWN

    with capture_logs() as logs:
        result = await cache.lookup("LOYAL-KEY-0001")

    assert result.status is LicenseStatus.ACTIVE
    assert "503" in result.reason
    stale = [e for e in logs if e["event"] == "license.stale_if_error"]
    assert len(stale) == 1 and stale[0]["log_level"] == "warning"
    assert "LOYAL-KEY-0001" not in str(stale)


async def test_grace_ends(cache, inner, clock):
    """Past 24 h since it was last active, an outage refuses the key."""
    inner.answers["K1"] = ACTIVE
    await cache.lookup("K1")
    clock.advance(GRACE + 1)
    inner.answers["K1"] = DOWN

    result = await cache.lookup("K1")

    assert result == DOWN


async def test_a_key_never_seen_gets_unavailable_on_an_outage(cache, inner):
    inner.answers["K1"] = DOWN

    result = await cache.lookup("K1")

    assert result == DOWN


async def test_a_cancelled_answer_ends_the_grace(cache, inner, clock):
    """Active, then cancelled, then an outage: the key is not let in."""
    inner.answers["K1"] = ACTIVE
    await cache.lookup("K1")
    inner.answers["K1"] = CANCELED
    await cache.refresh("K1")
    clock.advance(NEGATIVE_TTL + 1)
    inner.answers["K1"] = DOWN

    result = await cache.lookup("K1")

    assert result == DOWN


async def test_rate_limit_starts_a_cooldown_without_calls(cache, inner, clock):
    """After a 429 with retry_after 30 s no key reaches the provider for 30 s."""
    inner.answers["K1"] = RATE_LIMITED
    await cache.lookup("K1")
    during = [await cache.lookup(f"K{n}") for n in range(2, 12)]
    calls_during = len(inner.calls)
    clock.advance(31)
    inner.answers["K1"] = ACTIVE

    after = await cache.lookup("K1")

    assert calls_during == 1
    assert {r.status for r in during} == {LicenseStatus.UNAVAILABLE}
    assert after == ACTIVE and len(inner.calls) == 2


async def test_cooldown_still_answers_from_cache_and_grace(cache, inner, clock):
    """During a cooldown, a cached key is in, and an expired one is in on grace."""
    inner.answers.update(FRESH=ACTIVE, OLDER=ACTIVE)
    await cache.lookup("OLDER")
    clock.advance(TTL - 10)
    await cache.lookup("FRESH")
    inner.answers["OTHER"] = RATE_LIMITED
    await cache.lookup("OTHER")
    clock.advance(20)

    fresh, older = await cache.lookup("FRESH"), await cache.lookup("OLDER")

    assert fresh == ACTIVE
    assert older.status is LicenseStatus.ACTIVE and "cooling down" in older.reason
    assert inner.calls == ["OLDER", "FRESH", "OTHER"]


async def test_rate_limit_is_logged_once_per_cooldown(cache, inner):
    inner.answers["K1"] = RATE_LIMITED
    with capture_logs() as logs:
        await cache.lookup("K1")
        await cache.lookup("K1")

    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "license.rate_limited"
    ]


async def test_refresh_skips_the_fresh_cache(cache, inner):
    """A re-check asks the provider even when the answer is cached."""
    inner.answers["K1"] = ACTIVE
    await cache.lookup("K1")
    inner.answers["K1"] = CANCELED

    refreshed = await cache.refresh("K1")
    looked_up = await cache.lookup("K1")

    assert refreshed == looked_up == CANCELED


async def test_fresh_lookup_is_refresh_for_a_cache_and_lookup_otherwise(cache, inner):
    assert fresh_lookup(cache) == cache.refresh
    assert fresh_lookup(inner) == inner.lookup


async def test_a_crashing_provider_is_unavailable_and_logged_as_a_bug(clock):
    """A provider that raises is a bug: ERROR line, users get unavailable."""
    cache = CachedProvider(
        CrashingProvider(), ttl=TTL, negative_ttl=NEGATIVE_TTL, grace=GRACE, clock=clock
    )
    with capture_logs() as logs:
        result = await cache.lookup("K1")

    assert result.status is LicenseStatus.UNAVAILABLE
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "license.provider_crashed"
    ]


async def test_close_closes_the_inner_provider(cache, inner):
    await cache.close()

    assert inner.closed


async def test_500_concurrent_lookups_of_one_key_over_http_make_one_call():
    """Single flight against the Whop fake over real HTTP."""
    async with FakeWhop(api_key="k") as fake:
        fake.add("ONE-KEY-1", "active")
        client = ProviderClient(
            provider="whop", api_key="k", key_variable="RELAY_WHOP_API_KEY", timeout=5
        )
        provider = WhopProvider(
            client, base_url=fake.v1_url, active_statuses={"active"}
        )
        cache = CachedProvider(
            provider, ttl=TTL, negative_ttl=NEGATIVE_TTL, grace=GRACE
        )
        results = await asyncio.gather(*(cache.lookup("ONE-KEY-1") for _ in range(500)))
        await cache.close()

    assert fake.calls == 1
    assert {r.status for r in results} == {LicenseStatus.ACTIVE}
