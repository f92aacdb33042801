"""The stellar-relay command: publish, demo mode, start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys

from server.cli import demo_environment
from server.config import Settings
from tests.clients import next_restock, open_client, wait_for_connections
from tests.conftest import KEYS
from tests.harness import free_port


def stellar_relay(*args: str, env: dict[str, str] | None = None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


async def test_publish_command_delivers_a_restock(relay):
    """The README's quick-start command reaches a connected client."""
    client = await open_client(relay.ws_url(KEYS[150]))
    await wait_for_connections(relay, 1)

    result = stellar_relay(
        "publish",
        "--url",
        relay.webhook_url,
        "--secret",
        relay.secret,
        "--site",
        "amazon",
        "--sku",
        "B0CLI",
        "--offer-id",
        "cli-offer",
        "--price",
        "9.50",
        "--title",
        "From the CLI",
    )
    received = await next_restock(client)
    await client.close()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("202 ")
    assert received["details"] == {
        "region": "USA",
        "offerId": "cli-offer",
        "productPrice": "9.50",
        "productTitle": "From the CLI",
    }


async def test_publish_command_reports_a_refusal(relay, tmp_path):
    payload = tmp_path / "restock.json"
    payload.write_text('{"site": "amazon", "sku": "B0"}')

    result = stellar_relay(
        "publish",
        "--url",
        relay.webhook_url,
        "--secret",
        relay.secret,
        "--file",
        str(payload),
    )

    assert result.returncode == 1
    assert result.stdout.startswith("422 ")


def test_demo_environment_is_made_once_and_reused(tmp_path):
    first = demo_environment({}, tmp_path / "demo")
    second = demo_environment({}, tmp_path / "demo")
    settings = Settings.from_env(first)

    assert first == second
    assert settings.webhook_secrets[0].name == "demo"
    assert (tmp_path / "demo" / "keys.txt").read_text().count("DEMO-") == 1


def test_demo_environment_keeps_what_is_configured(tmp_path):
    env = demo_environment({"RELAY_KEYS_FILE": "/etc/keys"}, tmp_path / "demo")

    assert env["RELAY_KEYS_FILE"] == "/etc/keys"


def test_bad_config_stops_start_up_with_one_line(tmp_path):
    result = stellar_relay(
        "serve",
        env={"RELAY_WEBHOOK_SECRETS": "whsec_" + "A" * 43, "RELAY_PORT": "x"},
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stellar-relay: RELAY_PORT: expected a whole number, got 'x'"
    ]


def test_missing_keys_file_stops_start_up(tmp_path):
    result = stellar_relay(
        "serve",
        env={
            "RELAY_WEBHOOK_SECRETS": "whsec_" + "A" * 43,
            "RELAY_KEYS_FILE": str(tmp_path / "nope.txt"),
        },
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "RELAY_KEYS_FILE: cannot read" in result.stderr


def test_demo_mode_never_prints_the_operators_own_keys(tmp_path):
    """``serve --demo`` with a real keys file shows a placeholder, not a key."""
    keys = tmp_path / "customers.txt"
    keys.write_text("REAL-CUSTOMER-KEY-1\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--demo"],
        env={
            **os.environ,
            "RELAY_KEYS_FILE": str(keys),
            "RELAY_PORT": str(free_port()),
            "RELAY_LOG_FORMAT": "json",
        },
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "--price" in line:
                break
    finally:
        process.terminate()
        process.wait(15)
    printed = "".join(lines)

    assert "key=YOUR-KEY" in printed
    assert "REAL-CUSTOMER-KEY-1" not in printed
