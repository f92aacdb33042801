"""Settings from RELAY_* variables: defaults, bad values, hidden secrets."""

from __future__ import annotations

import base64

import pytest

from server.config import (
    DuplicatePolicy,
    Settings,
    auto_send_threads,
    available_cpus,
)
from server.errors import ConfigError

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
BASE = {"RELAY_WEBHOOK_SECRETS": SECRET}


def test_defaults_need_only_a_secret():
    settings = Settings.from_env(BASE)

    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.duplicate_policy is DuplicatePolicy.REJECT
    assert settings.webhook_secrets[0].name == "default"


def test_missing_secret_names_the_variable():
    with pytest.raises(ConfigError, match=r"^RELAY_WEBHOOK_SECRETS: required"):
        Settings.from_env({})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RELAY_PORT", "eighty", "expected a whole number, got 'eighty'"),
        ("RELAY_PORT", "70000", "must be from 0 to 65535"),
        ("RELAY_DUPLICATE_POLICY", "kick", "expected one of reject, replace"),
        ("RELAY_PING_INTERVAL", "-1", "must be at least"),
        ("RELAY_LOG_LEVEL", "loud", "expected one of debug"),
        ("RELAY_WEBHOOK_SECRETS", "acme=whsec_%%%", "not valid base64"),
        ("RELAY_WEBHOOK_SECRETS", "whsec_c2hvcnQ=", "shorter than 16 bytes"),
        ("RELAY_WEBHOOK_SECRETS", f"={SECRET}", "empty name"),
    ],
)
def test_bad_values_name_their_variable(name, value, message):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**BASE, name: value})

    assert str(raised.value).startswith(f"{name}: ")
    assert message in str(raised.value)


def test_named_and_bare_secrets_with_rotation():
    other = "whsec_" + base64.b64encode(b"t" * 24).decode()
    settings = Settings.from_env(
        {"RELAY_WEBHOOK_SECRETS": f"acme={SECRET}, acme={other},{other}"}
    )

    assert [s.name for s in settings.webhook_secrets] == ["acme", "acme", "default"]


def test_repr_hides_secret_bytes():
    settings = Settings.from_env(BASE)

    assert "c3Nz" not in repr(settings)
    assert "sss" not in repr(settings)
    assert "key=<hidden>" in repr(settings)


def test_dead_client_window_is_two_ping_intervals():
    settings = Settings.from_env({**BASE, "RELAY_PING_INTERVAL": "12"})

    assert settings.dead_client_window == 24


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(1, 1, 1), (2, 1, 2), (2, 2, 1), (3, 2, 1), (8, 2, 4), (16, 1, 4), (4, 8, 1)],
)
def test_auto_send_threads_share_the_cpus_between_workers(cpus, workers, threads):
    assert auto_send_threads(cpus, workers) == threads


def test_send_threads_default_to_auto_and_can_be_set():
    auto = auto_send_threads(available_cpus(), workers=1)

    assert Settings.from_env(BASE).send_threads == auto
    assert (
        Settings.from_env({**BASE, "RELAY_SEND_THREADS": "auto"}).send_threads == auto
    )
    assert Settings.from_env({**BASE, "RELAY_SEND_THREADS": "3"}).send_threads == 3
    with pytest.raises(ConfigError, match=r"^RELAY_SEND_THREADS: must be from 1 to"):
        Settings.from_env({**BASE, "RELAY_SEND_THREADS": "0"})
