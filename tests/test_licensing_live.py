"""The same checks against the real Whop and Hyper APIs.

These need real credentials, which CI and most laptops do not have, so each
provider's tests skip unless its variables are set:

- Whop (sandbox): ``WHOP_SANDBOX_API_KEY`` and ``WHOP_TEST_LICENSE_KEY`` (an
  active license key in that sandbox company). ``WHOP_SANDBOX_BASE_URL``
  overrides the sandbox's v1 base.
- Hyper: ``HYPER_TEST_API_KEY`` and ``HYPER_TEST_LICENSE_KEY`` (an active
  license). ``HYPER_BASE_URL`` overrides the v6 base.

Run them with ``make test PYTEST_ARGS="-m live"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RelayProcess
from tests.provider_env import outcome

pytestmark = pytest.mark.live

WHOP_SANDBOX_V1 = "https://sandbox-api.whop.com/api/v1"
HYPER_V6 = "https://api.hyper.co/v6"
MADE_UP_KEY = "STELLAR-RELAY-NO-SUCH-KEY-0000"


def _credentials(provider: str) -> tuple[dict[str, str], str]:
    """The relay env for ``provider``'s real API and its active test key;
    skips, naming the missing variables, when there are no credentials."""
    if provider == "whop":
        api_var, key_var = "WHOP_SANDBOX_API_KEY", "WHOP_TEST_LICENSE_KEY"
        base = os.environ.get("WHOP_SANDBOX_BASE_URL", WHOP_SANDBOX_V1)
    else:
        api_var, key_var = "HYPER_TEST_API_KEY", "HYPER_TEST_LICENSE_KEY"
        base = os.environ.get("HYPER_BASE_URL", HYPER_V6)
    missing = [v for v in (api_var, key_var) if not os.environ.get(v)]
    if missing:
        pytest.skip(f"no {provider} credentials: set {' and '.join(missing)}")
    upper = provider.upper()
    env = {
        "RELAY_LICENSE_PROVIDER": provider,
        f"RELAY_{upper}_BASE_URL": base,
        f"RELAY_{upper}_API_KEY": os.environ[api_var],
    }

    return env, os.environ[key_var]


@pytest.fixture(params=["whop", "hyper"])
def live_relay(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RelayProcess, str]]:
    env, key = _credentials(request.param)
    with RelayProcess(tmp_path, env=env) as relay:
        yield relay, key


async def test_live_active_key_gets_in(live_relay):
    relay, key = live_relay

    assert await outcome(relay, key) == "in"


async def test_live_unknown_key_gets_4401(live_relay):
    relay, _ = live_relay

    assert await outcome(relay, MADE_UP_KEY) == 4401


@pytest.mark.parametrize("provider", ["whop", "hyper"])
async def test_live_wrong_api_key_is_4503_and_an_error_line(tmp_path, provider):
    env, key = _credentials(provider)
    env[f"RELAY_{provider.upper()}_API_KEY"] = "stellar-relay-wrong-key"
    with RelayProcess(tmp_path, env=env) as relay:
        code = await outcome(relay, key)
        events = relay.log_events()

    assert code == 4503
    assert "license.api_key_rejected" in [
        e["event"] for e in events if e["level"] == "error"
    ]
