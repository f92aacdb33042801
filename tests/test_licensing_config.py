"""The licensing variables: defaults, checks, and secrets kept out of reprs."""

from __future__ import annotations

import pytest

from server.config import (
    LicensingSettings,
    ProviderKind,
    Settings,
    WhopApi,
)
from server.errors import ConfigError

SECRETS = {"RELAY_WEBHOOK_SECRETS": "whsec_" + "QUJDREVGR0hJSktMTU5PUA=="}


def settings(**env: str) -> LicensingSettings:
    return Settings.from_env({**SECRETS, **env}).licensing


def test_defaults_match_the_readme():
    """static, 3 s, 10 min, 60 s, 24 h, 15 min, Whop v1 on its public base."""
    licensing = settings()

    assert licensing.provider is ProviderKind.STATIC
    assert (licensing.timeout, licensing.ttl, licensing.negative_ttl) == (3, 600, 60)
    assert (licensing.grace, licensing.recheck) == (86400, 900)
    assert licensing.whop_api is WhopApi.V1
    assert licensing.whop_base_url == "https://api.whop.com/api/v1"
    assert licensing.hyper_base_url == "https://api.hyper.co/v6"
    assert licensing.whop_active_statuses == {
        "trialing",
        "active",
        "past_due",
        "canceling",
    }
    assert licensing.hyper_active_statuses == {"active", "trialing", "past_due"}


def test_two_variables_switch_to_whop():
    licensing = settings(RELAY_LICENSE_PROVIDER="whop", RELAY_WHOP_API_KEY="k")

    assert licensing.provider is ProviderKind.WHOP
    assert licensing.whop_api_key.value == "k"


def test_whop_v2_defaults_to_the_older_base():
    licensing = settings(RELAY_WHOP_API="v2")

    assert licensing.whop_base_url == "https://api.whop.com/api"


@pytest.mark.parametrize(
    ("provider", "variable"),
    [("whop", "RELAY_WHOP_API_KEY"), ("hyper", "RELAY_HYPER_API_KEY")],
)
def test_missing_api_key_is_one_clear_error(provider, variable):
    with pytest.raises(ConfigError) as error:
        settings(RELAY_LICENSE_PROVIDER=provider)

    assert str(error.value) == (
        f"{variable}: required when RELAY_LICENSE_PROVIDER={provider}"
    )
    assert error.value.variable == variable


def test_api_keys_are_hidden_in_reprs():
    full = Settings.from_env(
        {
            **SECRETS,
            "RELAY_LICENSE_PROVIDER": "hyper",
            "RELAY_HYPER_API_KEY": "sk_live_very_secret",
            "RELAY_WHOP_API_KEY": "whop_also_secret",
        }
    )

    text = repr(full) + str(full.licensing) + str(full.licensing.hyper_api_key)

    assert "very_secret" not in text and "also_secret" not in text
    assert "hyper_api_key=<hidden>" in text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_LICENSE_PROVIDER", "gumroad"),
        ("RELAY_WHOP_API", "v5"),
        ("RELAY_LICENSE_TIMEOUT", "0"),
        ("RELAY_LICENSE_TTL", "-1"),
        ("RELAY_LICENSE_NEGATIVE_TTL", "soon"),
        ("RELAY_LICENSE_GRACE", "-5"),
        ("RELAY_LICENSE_RECHECK", "0"),
        ("RELAY_WHOP_BASE_URL", "api.whop.com/api/v1"),
        ("RELAY_HYPER_BASE_URL", "ftp://api.hyper.co/v6"),
        ("RELAY_WHOP_ACTIVE_STATUSES", " , "),
    ],
)
def test_bad_values_name_their_variable(variable, value):
    with pytest.raises(ConfigError) as error:
        settings(**{variable: value})

    assert error.value.variable == variable
    assert value.strip(" ,") in str(error.value) or "none" in str(error.value)


def test_active_statuses_are_lower_cased_words():
    licensing = settings(RELAY_HYPER_ACTIVE_STATUSES="Active, TRIALING ,")

    assert licensing.hyper_active_statuses == {"active", "trialing"}


def test_base_url_loses_its_trailing_slash():
    licensing = settings(RELAY_HYPER_BASE_URL="http://127.0.0.1:9/v6/")

    assert licensing.hyper_base_url == "http://127.0.0.1:9/v6"


def test_check_key_needs_no_webhook_secret():
    """Settings for check-key read without RELAY_WEBHOOK_SECRETS."""
    full = Settings.from_env({}, need_webhook_secrets=False)

    assert full.webhook_secrets == ()
    with pytest.raises(ConfigError, match="RELAY_WEBHOOK_SECRETS"):
        Settings.from_env({})
