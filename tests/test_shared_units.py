"""Pure parts of the Redis mode: settings, backoff, wire formats."""

from __future__ import annotations

import itertools

import pytest

from server.config import Settings, redact_redis_url
from server.errors import ConfigError
from server.shared.leases import lease_value, parse_lease
from server.shared.link import reconnect_delays
from server.shared.restocks import parse_restock_message, restock_message

SECRET = "whsec_" + "QUJD" * 8


def settings(**env: str) -> Settings:
    return Settings.from_env({"RELAY_WEBHOOK_SECRETS": SECRET, **env})


def test_without_redis_url_state_stays_in_process():
    """No RELAY_REDIS_URL: one worker, in-memory state."""
    plain = settings()

    assert (plain.redis_url, plain.workers, plain.lease_seconds) == ("", 1, 30.0)


def test_several_workers_without_redis_are_refused_naming_the_variable():
    with pytest.raises(ConfigError) as refused:
        settings(RELAY_WORKERS="2")

    assert refused.value.variable == "RELAY_WORKERS"
    assert "RELAY_REDIS_URL" in str(refused.value)


def test_several_workers_with_redis_are_accepted():
    shared = settings(RELAY_WORKERS="4", RELAY_REDIS_URL="redis://127.0.0.1:7/0")

    assert shared.workers == 4


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_REDIS_URL", "http://127.0.0.1:7"),
        ("RELAY_WORKERS", "0"),
        ("RELAY_LEASE_SECONDS", "0.5"),
        ("RELAY_REDIS_PREFIX", "bad prefix"),
    ],
)
def test_bad_shared_state_values_name_their_variable(variable, value):
    env = {"RELAY_REDIS_URL": "redis://127.0.0.1:7", variable: value}

    with pytest.raises(ConfigError) as refused:
        settings(**env)

    assert refused.value.variable == variable


def test_redis_password_stays_out_of_repr_and_location():
    """The URL's credentials never reach a repr or a log field."""
    shared = settings(RELAY_REDIS_URL="redis://relay:hunter2@cache.internal:6380/3")

    assert "hunter2" not in repr(shared)
    assert shared.redis_location == "redis://cache.internal:6380/3"


def test_bad_url_error_hides_the_password():
    with pytest.raises(ConfigError) as refused:
        settings(RELAY_REDIS_URL="http://relay:hunter2@cache.internal")

    assert "hunter2" not in str(refused.value)


def test_unix_socket_url_is_shown_by_path():
    assert redact_redis_url("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock"


def test_reconnect_delays_double_up_to_the_cap_with_jitter():
    """Delays grow 0.2, 0.4, ... up to 5 s, each in the upper half of its step."""
    low = list(itertools.islice(reconnect_delays(lambda: 0.0), 7))
    high = list(itertools.islice(reconnect_delays(lambda: 1.0), 7))

    assert low == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5])
    assert high == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_lease_value_names_node_and_owner():
    value = lease_value("host-12-abc", "f00d")

    assert parse_lease(value.encode()) == ("host-12-abc", "f00d")


def test_restock_message_round_trips_id_frames_and_count():
    """Frames may hold newlines and spaces; only the header is split."""
    frames = b"\x81\x05a b\nc" * 3
    message = restock_message("monitor:msg 1", frames, count=3)

    assert parse_restock_message(message) == ("monitor:msg 1", frames, 3)
