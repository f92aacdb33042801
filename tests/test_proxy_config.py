"""Which client address the relay believes: the socket's, or a proxy's header."""

from __future__ import annotations

import pytest

from licensing import redact_key
from server.config import Settings
from server.errors import ConfigError
from tests.clients import open_client, wait_for_connections
from tests.harness import RelayProcess, new_secret

KEY = "PROXY-CONFIG-1"
BASE = {"RELAY_WEBHOOK_SECRETS": new_secret()}


async def connected_peer(
    relay: RelayProcess, source: str, headers: dict[str, str]
) -> str:
    """Connect from ``source`` sending ``headers``; the peer the relay logged."""
    client = await open_client(
        relay.ws_url(KEY), local_addr=(source, 0), additional_headers=headers
    )
    await wait_for_connections(relay, 1)
    await client.close()
    await wait_for_connections(relay, 0)
    events = [
        e
        for e in relay.log_events()
        if e["event"] == "client.connected" and e["key"] == redact_key(KEY)
    ]

    return str(events[-1]["peer"])


async def test_by_default_the_relay_ignores_x_forwarded_for(tmp_path):
    """With no proxy configured, a client cannot choose the address logged."""
    with RelayProcess(tmp_path, keys=[KEY]) as relay:
        peer = await connected_peer(
            relay, "127.0.0.7", {"X-Forwarded-For": "203.0.113.9"}
        )

    assert peer == "127.0.0.7"


async def test_one_trusted_proxy_means_the_last_forwarded_entry(tmp_path):
    """RELAY_PROXIES_COUNT=1: the entry the nearest proxy appended is the peer."""
    env = {"RELAY_PROXIES_COUNT": "1"}
    with RelayProcess(tmp_path, keys=[KEY], env=env) as relay:
        peer = await connected_peer(
            relay, "127.0.0.8", {"X-Forwarded-For": "203.0.113.9, 198.51.100.4"}
        )

    assert peer == "198.51.100.4"


async def test_the_forwarded_header_name_can_be_changed(tmp_path):
    """RELAY_FORWARDED_FOR_HEADER names the header believed instead of XFF."""
    env = {"RELAY_PROXIES_COUNT": "1", "RELAY_FORWARDED_FOR_HEADER": "X-Client-Chain"}
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Client-Chain": "198.51.100.7"}
    with RelayProcess(tmp_path, keys=[KEY], env=env) as relay:
        peer = await connected_peer(relay, "127.0.0.9", headers)

    assert peer == "198.51.100.7"


def test_proxy_settings_default_to_trusting_nobody():
    settings = Settings.from_env(BASE)

    assert settings.proxies_count == 0
    assert settings.forwarded_for_header == "X-Forwarded-For"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_PROXIES_COUNT", "-1"),
        ("RELAY_PROXIES_COUNT", "one"),
        ("RELAY_FORWARDED_FOR_HEADER", "X Forwarded For"),
        ("RELAY_FORWARDED_FOR_HEADER", "X-Forwarded-For:"),
    ],
)
def test_bad_proxy_settings_name_their_variable(variable, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**BASE, variable: value})

    assert raised.value.variable == variable
