"""Whop and Hyper clients: reading answers (pure), and talking HTTP to the
fakes (real sockets, in this event loop)."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from licensing import LicenseResult, LicenseStatus
from licensing.http import (
    DEFAULT_COOLDOWN,
    Answer,
    AuthAlarm,
    ProviderClient,
    common_result,
    parse_retry_after,
    path_segment,
)
from licensing.hyper import HyperProvider, read_license
from licensing.testing import WHOP_RATE_LIMIT_BODY, FakeHyper, FakeWhop
from licensing.whop import (
    WhopLegacyProvider,
    WhopProvider,
    read_membership,
    read_validation,
)
from tests.harness import free_port

WHOP_ACTIVE = frozenset({"trialing", "active", "past_due", "canceling"})
HYPER_ACTIVE = frozenset({"active", "trialing", "past_due"})
NOW = 1_800_000_000.0


# -- reading answers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("active", LicenseStatus.ACTIVE),
        ("trialing", LicenseStatus.ACTIVE),
        ("past_due", LicenseStatus.ACTIVE),
        ("canceling", LicenseStatus.ACTIVE),
        ("expired", LicenseStatus.INACTIVE),
        ("canceled", LicenseStatus.INACTIVE),
        ("completed", LicenseStatus.INACTIVE),
        ("unresolved", LicenseStatus.INACTIVE),
        ("drafted", LicenseStatus.INACTIVE),
    ],
)
def test_whop_membership_status_decides(status, expected):
    result = read_membership(Answer(200, {"status": status}), WHOP_ACTIVE)

    assert result.status is expected
    assert status in result.reason


def test_whop_active_statuses_are_configurable():
    """With only "active" configured, a trial is not let in."""
    result = read_membership(Answer(200, {"status": "trialing"}), {"active"})

    assert result.status is LicenseStatus.INACTIVE


@pytest.mark.parametrize("body", [None, {}, {"status": 3}, ["active"]])
def test_whop_membership_without_a_status_is_unavailable(body):
    """An answer we cannot read is not the user's fault."""
    result = read_membership(Answer(200, body), WHOP_ACTIVE)

    assert result.status is LicenseStatus.UNAVAILABLE


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(201, {"valid": True, "status": "active"}), LicenseStatus.ACTIVE),
        (Answer(201, {"valid": False, "status": "expired"}), LicenseStatus.INACTIVE),
        (Answer(200, {"valid": False, "status": "active"}), LicenseStatus.INACTIVE),
        (Answer(400, {"error": {"status": 400}}), LicenseStatus.INACTIVE),
        (Answer(201, {"status": "active"}), LicenseStatus.UNAVAILABLE),
    ],
    ids=["valid", "expired", "valid-flag-wins", "metadata-mismatch", "no-flag"],
)
def test_whop_v2_valid_flag_decides(answer, expected):
    assert read_validation(answer).status is expected


@pytest.mark.parametrize(
    ("license", "expected"),
    [
        ({"status": "active", "cancel_at": None}, LicenseStatus.ACTIVE),
        ({"status": "trialing"}, LicenseStatus.ACTIVE),
        ({"status": "past_due"}, LicenseStatus.ACTIVE),
        ({"status": "canceled"}, LicenseStatus.INACTIVE),
        ({"status": "active", "cancel_at": NOW * 1000 - 1}, LicenseStatus.INACTIVE),
        ({"status": "active", "cancel_at": NOW * 1000 + 60_000}, LicenseStatus.ACTIVE),
        (
            {"status": "active", "cancel_at": "2020-01-01T00:00:00Z"},
            LicenseStatus.INACTIVE,
        ),
        ({"status": "active", "cancel_at": "soon"}, LicenseStatus.ACTIVE),
        ({"key": "no status"}, LicenseStatus.UNAVAILABLE),
    ],
    ids=[
        "active",
        "trialing",
        "past-due",
        "canceled",
        "cancel-at-passed",
        "cancel-at-ahead",
        "cancel-at-iso-passed",
        "cancel-at-unreadable",
        "no-status",
    ],
)
def test_hyper_status_and_cancel_at_decide(license, expected):
    assert read_license(Answer(200, license), HYPER_ACTIVE, now=NOW).status is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (404, LicenseStatus.UNKNOWN),
        (401, LicenseStatus.UNAVAILABLE),
        (403, LicenseStatus.UNAVAILABLE),
        (429, LicenseStatus.UNAVAILABLE),
        (500, LicenseStatus.UNAVAILABLE),
        (503, LicenseStatus.UNAVAILABLE),
        (422, LicenseStatus.UNAVAILABLE),
    ],
)
def test_error_statuses_mean_the_same_for_every_provider(status, expected):
    result = common_result(status, None, now=NOW)

    assert (result.status if result else None) is expected


def test_only_a_429_carries_a_retry_after():
    limited = common_result(429, None, now=NOW)
    outage = common_result(503, "30", now=NOW)

    assert limited is not None and limited.retry_after == DEFAULT_COOLDOWN
    assert outage is not None and outage.retry_after is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 60.0),
        ("", 60.0),
        ("7", 7.0),
        ("0", 1.0),
        ("99999", 3600.0),
        ("soon", 60.0),
        (formatdate(NOW + 120, usegmt=True), 120.0),
    ],
    ids=["missing", "empty", "seconds", "floor", "ceiling", "garbage", "http-date"],
)
def test_retry_after_is_read_and_bounded(header, seconds):
    assert parse_retry_after(header, now=NOW) == pytest.approx(seconds)


def test_key_is_escaped_as_one_path_segment():
    assert path_segment("../x/y?z#w") == "..%2Fx%2Fy%3Fz%23w"


def test_auth_alarm_fires_at_most_once_a_minute():
    alarm = AuthAlarm()
    fired = [alarm.should_log(t) for t in (0.0, 1.0, 59.0, 60.0, 61.0, 125.0)]

    assert fired == [True, False, False, True, False, True]


# -- over HTTP, against the fakes --------------------------------------------


def _client(api_key: str, *, timeout: float = 2.0, provider: str = "whop"):
    variable = "RELAY_HYPER_API_KEY" if provider == "hyper" else "RELAY_WHOP_API_KEY"
    return ProviderClient(
        provider=provider, api_key=api_key, key_variable=variable, timeout=timeout
    )


@pytest.fixture
async def whop():
    async with FakeWhop(api_key="whop-key") as fake:
        yield fake


@pytest.fixture
async def hyper():
    async with FakeHyper(api_key="sk_hyper") as fake:
        yield fake


@pytest.fixture
async def whop_v1(whop):
    provider = WhopProvider(
        _client("whop-key"), base_url=whop.v1_url, active_statuses=WHOP_ACTIVE
    )
    yield provider
    await provider.close()


@pytest.fixture
async def whop_v2(whop):
    provider = WhopLegacyProvider(_client("whop-key"), base_url=whop.v2_url)
    yield provider
    await provider.close()


@pytest.fixture
async def hyper_v6(hyper):
    provider = HyperProvider(
        _client("sk_hyper", provider="hyper"),
        base_url=hyper.v6_url,
        active_statuses=HYPER_ACTIVE,
    )
    yield provider
    await provider.close()


@pytest.fixture(params=["whop_v1", "whop_v2", "hyper_v6"])
def any_provider(request, whop, hyper):
    """Each provider client with its fake."""
    fake = hyper if request.param == "hyper_v6" else whop
    return request.getfixturevalue(request.param), fake


async def test_active_and_cancelled_keys_over_http(any_provider):
    provider, fake = any_provider
    fake.add("KEY-ACTIVE-1", "active")
    fake.add("KEY-CANCELED-1", "canceled")

    active = await provider.lookup("KEY-ACTIVE-1")
    canceled = await provider.lookup("KEY-CANCELED-1")

    assert active.status is LicenseStatus.ACTIVE
    assert canceled.status is LicenseStatus.INACTIVE
    assert fake.calls == 2


async def test_unknown_key_over_http(any_provider):
    provider, fake = any_provider

    result = await provider.lookup("NOBODY-1")

    assert result.status is LicenseStatus.UNKNOWN and fake.calls == 1


async def test_malformed_key_never_reaches_the_provider(any_provider):
    """``../memberships`` or a slash is refused before any URL is built."""
    provider, fake = any_provider
    results = [await provider.lookup(k) for k in ("../x", "a/b", "", "x" * 129)]

    assert {r.status for r in results} == {LicenseStatus.UNKNOWN}
    assert fake.calls == 0


async def test_slow_answer_is_cut_by_the_timeout(whop):
    whop.add("SLOW-1", "active")
    whop.slow("SLOW-1", 5.0)
    provider = WhopProvider(
        _client("whop-key", timeout=0.3),
        base_url=whop.v1_url,
        active_statuses=WHOP_ACTIVE,
    )
    started = time.monotonic()

    result = await provider.lookup("SLOW-1")
    await provider.close()

    assert result.status is LicenseStatus.UNAVAILABLE
    assert "0.3 s" in result.reason
    assert time.monotonic() - started < 2.0


async def test_server_error_is_unavailable(any_provider):
    provider, fake = any_provider
    fake.add("KEY-1", "active")
    fake.fail("KEY-1", 502)

    result = await provider.lookup("KEY-1")

    assert result.status is LicenseStatus.UNAVAILABLE and "502" in result.reason


async def test_connection_refused_is_unavailable():
    provider = WhopProvider(
        _client("whop-key"),
        base_url=f"http://127.0.0.1:{free_port()}/api/v1",
        active_statuses=WHOP_ACTIVE,
    )

    result = await provider.lookup("KEY-1")
    await provider.close()

    assert result.status is LicenseStatus.UNAVAILABLE
    assert result.reason.startswith("connection error")


async def test_whop_429_without_retry_after_means_60_s(whop_v2, whop):
    """Whop documents a 60 s cooldown and no header."""
    whop.add("KEY-1", "active")
    whop.rate_limit(60)

    result = await whop_v2.lookup("KEY-1")

    assert result.status is LicenseStatus.UNAVAILABLE
    assert result.retry_after == 60.0


async def test_retry_after_header_is_honoured(hyper_v6, hyper):
    hyper.add("KEY-1", "active")
    hyper.rate_limit(60, retry_after=5)

    result = await hyper_v6.lookup("KEY-1")

    assert result.retry_after == 5.0


async def test_wrong_api_key_is_unavailable_and_one_error_line(any_provider):
    """401: users are not blamed; the operator gets one ERROR, not one per key."""
    provider, fake = any_provider
    fake.add("KEY-1", "active")
    fake.api_key = "a-different-key"

    with capture_logs() as logs:
        results = [await provider.lookup("KEY-1") for _ in range(5)]

    assert {r.status for r in results} == {LicenseStatus.UNAVAILABLE}
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["license.api_key_rejected"]
    assert errors[0]["status"] == 401
    assert "a-different-key" not in str(logs) and "whop-key" not in str(logs)


async def test_one_session_is_kept_for_every_lookup(whop_v1, whop):
    """The aiohttp session is opened once, on the first lookup, and reused."""
    whop.add("KEY-1", "active")
    await whop_v1.lookup("KEY-1")
    session = whop_v1.client._session

    await whop_v1.lookup("KEY-1")

    assert session is not None and whop_v1.client._session is session
    await whop_v1.close()
    assert session.closed


async def test_requests_carry_the_documented_path_auth_and_body():
    """Seen from the server side: paths, bearer header, v2's JSON body."""
    seen: list[tuple[str, str, str | None, object]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append(
            (request.method, request.path, request.headers.get("Authorization"), body)
        )
        return web.json_response({"status": "active", "valid": True}, status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    providers = [
        WhopProvider(_client("wk"), base_url=f"{base}/api/v1", active_statuses={"a"}),
        WhopLegacyProvider(_client("wk"), base_url=f"{base}/api"),
        HyperProvider(
            _client("hk", provider="hyper"),
            base_url=f"{base}/v6",
            active_statuses=set(),
        ),
    ]
    try:
        for provider in providers:
            await provider.lookup("ABCD-1234")
            await provider.close()
    finally:
        await runner.cleanup()

    assert seen == [
        ("GET", "/api/v1/memberships/ABCD-1234", "Bearer wk", None),
        (
            "POST",
            "/api/v2/memberships/ABCD-1234/validate_license",
            "Bearer wk",
            {"metadata": {}},
        ),
        ("GET", "/v6/licenses/ABCD-1234", "Bearer hk", None),
    ]


# -- the fakes themselves ----------------------------------------------------


async def test_whop_fake_answers_with_the_documented_shapes(whop):
    """v1 Membership, v2 201 with valid, 404 error body, 429 body."""
    whop.add("KEY-1", "trialing")
    headers = {"Authorization": "Bearer whop-key"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{whop.v1_url}/memberships/KEY-1") as answer:
            membership = (answer.status, await answer.json())
        async with session.post(
            f"{whop.v2_url}/v2/memberships/KEY-1/validate_license", json={}
        ) as answer:
            validated = (answer.status, await answer.json())
        async with session.get(f"{whop.v1_url}/memberships/NOPE") as answer:
            missing = (answer.status, await answer.json())
        async with session.get(
            f"{whop.v1_url}/memberships/{membership[1]['id']}"
        ) as answer:
            by_id = answer.status
        whop.rate_limit(60)
        async with session.get(f"{whop.v1_url}/memberships/KEY-1") as answer:
            limited = (answer.status, await answer.json(), answer.headers)

    assert membership[0] == 200
    assert membership[1]["status"] == "trialing"
    assert membership[1]["license_key"] == "KEY-1"
    assert membership[1]["id"].startswith("mem_")
    assert {"user", "product", "plan", "created_at", "metadata"} <= membership[1].keys()
    assert "valid" not in membership[1]
    assert validated[0] == 201 and validated[1]["valid"] is True
    assert missing == (
        404,
        {"error": {"status": 404, "message": "membership not found"}},
    )
    assert by_id == 200
    assert limited[:2] == (429, WHOP_RATE_LIMIT_BODY)
    assert "Retry-After" not in limited[2]
    assert whop.calls == 5


async def test_whop_fake_refuses_other_metadata_with_400(whop):
    whop.add("KEY-1", "active", metadata={"hwid": "machine-a"})
    headers = {"Authorization": "Bearer whop-key"}
    url = f"{whop.v2_url}/v2/memberships/KEY-1/validate_license"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(url, json={"metadata": {"hwid": "b"}}) as other:
            other_status = other.status
        async with session.post(url, json={"metadata": {"hwid": "machine-a"}}) as same:
            same_status = same.status

    assert (other_status, same_status) == (400, 201)


async def test_whop_fake_rate_window_ends_in_a_cooldown():
    """limit_rate(3, 10 s): the 4th call within the window gets 429, and so
    does every call for the cooldown."""
    now = [0.0]
    fake = FakeWhop(api_key="k", clock=lambda: now[0])
    fake.add("KEY-1", "active")
    fake.limit_rate(3, 10.0, cooldown=60.0)
    provider = WhopProvider(_client("k"), base_url="", active_statuses=WHOP_ACTIVE)
    async with fake:
        provider.base_url = fake.v1_url
        statuses = []
        for at in (0.0, 1.0, 2.0, 3.0, 30.0, 64.0):
            now[0] = at
            statuses.append((await provider.lookup("KEY-1")).status)
        await provider.close()

    a, u = LicenseStatus.ACTIVE, LicenseStatus.UNAVAILABLE
    assert statuses == [a, a, a, u, u, a]


async def test_fake_runs_in_a_thread_for_other_processes():
    """``with FakeHyper()`` serves from its own thread and loop."""
    fake = FakeHyper(api_key="sk_x")
    fake.add("KEY-1", "active")
    with fake:
        provider = HyperProvider(
            _client("sk_x", provider="hyper"),
            base_url=fake.v6_url,
            active_statuses=HYPER_ACTIVE,
        )
        result = await provider.lookup("KEY-1")
        await provider.close()

    assert result == LicenseResult.active("status active")
    assert fake.calls_for("KEY-1") == 1


async def test_older_hyper_versions_answer_the_same(hyper):
    hyper.add("KEY-1", "active")
    for version in ("v4", "v5"):
        provider = HyperProvider(
            _client("sk_hyper", provider="hyper"),
            base_url=f"{hyper.url}/{version}",
            active_statuses=HYPER_ACTIVE,
        )
        result = await provider.lookup("KEY-1")
        await provider.close()

        assert result.status is LicenseStatus.ACTIVE


async def test_fake_counts_calls_until_reset(whop_v1, whop):
    whop.add("KEY-1", "active")
    await asyncio.gather(*(whop_v1.lookup("KEY-1") for _ in range(3)))
    before = whop.calls
    whop.reset_calls()

    assert (before, whop.calls) == (3, 0)
