"""The relay behind real nginx, running the config shipped in ``nginx/``.

Every client comes from its own loopback address (``fresh_address``), so
that the address the relay logs can only have come from X-Forwarded-For,
and one test's requests never count against another's limits.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from licensing import redact_key
from tests.browser import DevToolsPage, HeadlessChromium
from tests.clients import close_code, next_restock, wait_for_connections
from tests.conftest import KEYS
from tests.harness import RelayProcess, free_port
from tests.nginx_harness import (
    TEST_PAGES,
    NginxProcess,
    client_context,
    fresh_address,
    handshake_result,
    https_request,
    open_from,
    post_restock,
)
from tests.test_connections import NORMALISED, RESTOCK

BEHIND_NGINX = {"RELAY_PROXIES_COUNT": "1"}
BROWSER_PAGE = Path(__file__).with_name("browser_page.html")


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certificate(tls_ca: trustme.CA) -> trustme.LeafCert:
    """An RSA key, so that TLS 1.2 suites with RSA key exchange exist at all."""
    return tls_ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def tls(tls_ca):
    """A client TLS context that trusts the test CA only."""
    return client_context(tls_ca)


@pytest.fixture(scope="module")
def relay(tmp_path_factory) -> Iterator[RelayProcess]:
    """A relay that believes one proxy's X-Forwarded-For, as deployed."""
    workdir = tmp_path_factory.mktemp("relay")
    with RelayProcess(workdir, keys=KEYS, env=BEHIND_NGINX) as process:
        yield process


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, relay, certificate) -> Iterator[NginxProcess]:
    workdir = tmp_path_factory.mktemp("nginx")
    with NginxProcess(
        workdir, relay_port=relay.port, certificate=certificate
    ) as process:
        yield process


@pytest.fixture(autouse=True)
async def no_clients_left(relay) -> AsyncIterator[None]:
    """Each test starts with nobody connected to the shared relay."""
    yield
    await wait_for_connections(relay, 0)


async def access_lines(nginx: NginxProcess, source: str, count: int) -> list[str]:
    """Until nginx has logged ``count`` requests from ``source``; those lines."""
    async with asyncio.timeout(10):
        while len(lines := nginx.access_lines(source)) < count:
            await asyncio.sleep(0.02)

    return lines


def client_events(relay: RelayProcess, **fields: str) -> list[dict[str, object]]:
    """The relay's ``client.*`` log lines whose fields match ``fields``."""
    return [
        event
        for event in relay.log_events()
        if event["event"].startswith("client.")
        and all(event.get(name) == value for name, value in fields.items())
    ]


def test_nginx_accepts_the_shipped_config(tmp_path, certificate):
    """``nginx -t`` passes on nginx.conf and stellar-relay.conf as shipped."""
    nginx = NginxProcess(tmp_path, relay_port=free_port(), certificate=certificate)

    result = nginx.check()

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize("path", ["/ws", "/"])
async def test_wss_client_receives_a_restock_posted_over_https(nginx, relay, tls, path):
    """wss:// on the TLS port, webhook over https: the restock arrives."""
    client = await open_from(nginx.wss_url(KEYS[100], path), fresh_address(), tls)
    await wait_for_connections(relay, 1)

    status, _ = await asyncio.to_thread(
        post_restock,
        nginx,
        RESTOCK,
        secret=relay.secret,
        source=fresh_address(),
        context=tls,
    )
    received = await next_restock(client)
    await client.close()

    assert status == 202
    assert received == NORMALISED


async def test_plain_ws_client_on_port_80_receives_a_restock(nginx, relay, tls):
    """Users who need plain ws:// get the same feed on the plain port."""
    client = await open_from(nginx.ws_url(KEYS[101]), fresh_address())
    await wait_for_connections(relay, 1)

    await asyncio.to_thread(
        post_restock,
        nginx,
        RESTOCK,
        secret=relay.secret,
        source=fresh_address(),
        context=tls,
    )
    received = await next_restock(client)
    await client.close()

    assert received == NORMALISED


async def test_unknown_key_keeps_its_4401_through_nginx(nginx, tls):
    code = await handshake_result(nginx.wss_url("NOT-A-CUSTOMER"), fresh_address(), tls)

    assert code == 4401


async def test_second_socket_for_a_key_keeps_its_4409_through_nginx(nginx, relay, tls):
    """The relay's duplicate refusal reaches the client unchanged."""
    first = await open_from(nginx.wss_url(KEYS[102]), fresh_address(), tls)
    await wait_for_connections(relay, 1)

    code = await handshake_result(nginx.wss_url(KEYS[102]), fresh_address(), tls)
    await first.close()

    assert code == 4409


async def test_relay_logs_the_client_address_not_nginx(nginx, relay, tls):
    """``peer`` on the relay's lines is the client's source address."""
    source = fresh_address()
    client = await open_from(nginx.wss_url(KEYS[103]), source, tls)
    await wait_for_connections(relay, 1)
    await client.close()
    await wait_for_connections(relay, 0)

    events = client_events(relay, key=redact_key(KEYS[103]))

    assert [e["event"] for e in events] == ["client.connected", "client.disconnected"]
    assert {e["peer"] for e in events} == {source}


async def test_client_cannot_choose_its_address_with_x_forwarded_for(nginx, relay, tls):
    """A forged X-Forwarded-For from the client is not what the relay logs."""
    source = fresh_address()
    client = await open_from(
        nginx.wss_url(KEYS[104]),
        source,
        tls,
        additional_headers={"X-Forwarded-For": "203.0.113.9"},
    )
    await wait_for_connections(relay, 1)
    await client.close()

    events = client_events(relay, key=redact_key(KEYS[104]), event="client.connected")

    assert [e["peer"] for e in events] == [source]


def test_webhook_lines_carry_the_monitor_address(nginx, relay, tls):
    source = fresh_address()

    status, _ = post_restock(
        nginx, RESTOCK, secret=relay.secret, source=source, context=tls
    )

    accepted = [e for e in relay.log_events() if e["event"] == "webhook.accepted"]
    assert status == 202
    assert accepted[-1]["peer"] == source


async def test_access_log_holds_no_key(nginx, relay, tls):
    """Accepted and refused sockets are logged by path, never with ?key=."""
    source = fresh_address()
    client = await open_from(nginx.wss_url(KEYS[105]), source, tls)
    await wait_for_connections(relay, 1)
    await client.close()
    refused = await handshake_result(nginx.wss_url("NOT-A-CUSTOMER-2"), source, tls)

    lines = await access_lines(nginx, source, 2)

    assert refused == 4401
    assert all('"GET /ws HTTP/1.1" 101' in line for line in lines)
    assert KEYS[105] not in nginx.access_log()
    assert "NOT-A-CUSTOMER-2" not in nginx.access_log()
    assert "key=" not in nginx.access_log()


async def test_handshakes_past_the_rate_get_429_and_never_reach_the_relay(
    nginx, relay, tls
):
    """40 quick handshakes from one address: 5 a second and a burst of 20 pass."""
    source = fresh_address()
    key = "NOT-A-CUSTOMER-3"
    # Five in flight at a time, so that the limit on open sockets (10) is
    # never what refuses them.
    in_flight = asyncio.Semaphore(5)

    async def attempt() -> int | None:
        async with in_flight:
            return await handshake_result(nginx.wss_url(key), source, tls)

    started = time.monotonic()
    results = await asyncio.gather(*(attempt() for _ in range(40)))
    elapsed = time.monotonic() - started

    passed, limited = results.count(4401), results.count(429)
    assert passed + limited == 40, results
    assert 21 <= passed <= 21 + math.ceil(5 * elapsed)
    assert limited >= 1
    assert len(client_events(relay, peer=source)) == passed
    assert key not in nginx.error_log()


async def test_eleventh_socket_from_one_address_gets_429(nginx, relay, tls):
    """Ten open sockets per address; the next handshake is refused."""
    source = fresh_address()
    clients = [
        await open_from(nginx.wss_url(key), source, tls) for key in KEYS[110:120]
    ]
    await wait_for_connections(relay, 10)

    status = await handshake_result(nginx.wss_url(KEYS[120]), source, tls)
    for client in clients:
        await client.close()

    assert status == 429
    assert client_events(relay, key=redact_key(KEYS[120])) == []


def tls12_handshake(nginx: NginxProcess, ca: trustme.CA, ciphers: str) -> str:
    """Offer only TLS 1.2 with ``ciphers``; the suite nginx picks."""
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    with (
        socket.create_connection(("127.0.0.1", nginx.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
    ):
        suite = tls_socket.cipher()
    assert suite is not None

    return suite[0]


def test_tls12_client_with_a_forward_secret_aead_suite_connects(nginx, tls_ca):
    suite = tls12_handshake(nginx, tls_ca, "ECDHE-RSA-AES128-GCM-SHA256")

    assert suite == "ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize(
    "ciphers",
    ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA256"],
    ids=["no-forward-secrecy", "cbc"],
)
def test_tls12_suites_outside_the_modern_list_are_refused(nginx, tls_ca, ciphers):
    """Without ECDHE, or without an AEAD cipher, there is no handshake."""
    with pytest.raises(ssl.SSLError):
        tls12_handshake(nginx, tls_ca, ciphers)


def test_healthz_answers_an_allowed_address(nginx, tls):
    status, _, body = https_request(
        nginx, "GET", "/healthz", source="127.0.0.1", context=tls
    )

    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_healthz_is_refused_to_other_addresses(nginx, tls):
    status, _, _ = https_request(
        nginx, "GET", "/healthz", source=fresh_address(), context=tls
    )

    assert status == 403


def test_https_answers_carry_hsts(nginx, tls):
    _, headers, _ = https_request(
        nginx, "GET", "/healthz", source="127.0.0.1", context=tls
    )

    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_webhook_body_over_64k_is_stopped_by_nginx(nginx, relay, tls):
    """nginx answers 413 itself; the relay never hears of the post."""
    source = fresh_address()
    oversized = json.dumps({**RESTOCK, "padding": "x" * 70_000}).encode()

    status, _ = post_restock(
        nginx, None, raw=oversized, secret=relay.secret, source=source, context=tls
    )

    assert status == 413
    assert [e for e in relay.log_events() if e.get("peer") == source] == []


def test_webhook_body_under_64k_reaches_the_relay(nginx, relay, tls):
    """Up to the relay's own limit, nginx passes the post on (the relay judges)."""
    source = fresh_address()
    large = json.dumps({**RESTOCK, "padding": "x" * 60_000}).encode()

    status, _ = post_restock(
        nginx, None, raw=large, secret=relay.secret, source=source, context=tls
    )

    refused = [e for e in relay.log_events() if e.get("peer") == source]
    assert status == 422
    assert [e["event"] for e in refused] == ["webhook.refused"]


async def test_relay_shutdown_closes_clients_with_1001_through_nginx(
    tmp_path, certificate, tls
):
    """SIGTERM to the relay: the client behind nginx hears "going away"."""
    key = "SHUTDOWN-BEHIND-NGINX"
    relay = RelayProcess(tmp_path / "relay", keys=[key], env=BEHIND_NGINX).start()
    try:
        with NginxProcess(
            tmp_path / "nginx", relay_port=relay.port, certificate=certificate
        ) as nginx:
            client = await open_from(nginx.wss_url(key), fresh_address(), tls)
            await wait_for_connections(relay, 1)
            await asyncio.to_thread(relay.stop)

            code = await close_code(client)
    finally:
        relay.stop()

    assert code == 1001


async def test_browser_websocket_receives_a_restock(tmp_path, relay, certificate, tls):
    """Headless Chromium's page opens wss:// through nginx and gets the feed."""
    key = KEYS[130]
    with NginxProcess(
        tmp_path / "nginx",
        relay_port=relay.port,
        certificate=certificate,
        serve_test_pages=True,
    ) as nginx:
        shutil.copy(BROWSER_PAGE, nginx.pages_dir / "client.html")
        browser = HeadlessChromium(tmp_path / "chromium", trusted=certificate)
        browser.start(nginx.https_url(f"{TEST_PAGES}client.html?key={key}"))
        try:
            endpoint = await asyncio.to_thread(browser.page_endpoint)
            page = await DevToolsPage.attach(endpoint)
            await page.wait_until("typeof window.relayTest === 'object'")
            opened = await page.evaluate("window.relayTest.opened")
            await wait_for_connections(relay, 1)

            status, _ = await asyncio.to_thread(
                post_restock,
                nginx,
                RESTOCK,
                secret=relay.secret,
                source=fresh_address(),
                context=tls,
            )
            message = await page.evaluate("window.relayTest.firstMessage")
            await page.close()
        finally:
            browser.stop()

    assert opened is True
    assert status == 202
    assert json.loads(message) == NORMALISED
