"""Pointing a relay (or the CLI) at a provider fake, and watching clients."""

from __future__ import annotations

import asyncio
from typing import Any

from licensing.testing import FakeHyper, FakeProvider, FakeWhop
from tests.clients import TIMEOUT, close_code, open_client, wait_for_connections

WHOP_API_KEY = "whop-test-api-key"
HYPER_API_KEY = "sk_test_hyper_api_key"
PROVIDERS = ("whop-v1", "whop-v2", "hyper")


def make_fake(provider: str) -> FakeProvider:
    """A fake for ``provider`` ("whop-v1", "whop-v2" or "hyper"), not started."""
    if provider == "hyper":
        return FakeHyper(api_key=HYPER_API_KEY)

    return FakeWhop(api_key=WHOP_API_KEY)


def relay_env(
    provider: str, fake: FakeProvider, *, api_key: str | None = None, **extra: str
) -> dict[str, str]:
    """RELAY_* variables for a relay that asks ``fake`` as ``provider``."""
    if isinstance(fake, FakeHyper):
        env = {
            "RELAY_LICENSE_PROVIDER": "hyper",
            "RELAY_HYPER_BASE_URL": fake.v6_url,
            "RELAY_HYPER_API_KEY": api_key or HYPER_API_KEY,
        }
    else:
        assert isinstance(fake, FakeWhop)
        version = provider.removeprefix("whop-")
        env = {
            "RELAY_LICENSE_PROVIDER": "whop",
            "RELAY_WHOP_API": version,
            "RELAY_WHOP_BASE_URL": fake.v2_url if version == "v2" else fake.v1_url,
            "RELAY_WHOP_API_KEY": api_key or WHOP_API_KEY,
        }

    return {**env, **extra}


async def outcome(relay: Any, key: str) -> int | str:
    """``"in"`` when the relay keeps a client with ``key``, else the close
    code it answers with. Expects no other client on ``relay``."""
    client = await open_client(relay.ws_url(key))
    closed = asyncio.create_task(close_code(client))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not closed.done():
                health = await asyncio.to_thread(relay.health)
                if health["connections"] == 1:
                    return "in"
                await asyncio.sleep(0.02)
        code = closed.result()
        return code if code is not None else "no close code"
    finally:
        closed.cancel()
        await client.close()
        await wait_for_connections(relay, 0)
