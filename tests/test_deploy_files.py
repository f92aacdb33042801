"""The deployment files in ``nginx/`` agree with each other and with the relay."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings
from server.errors import ConfigError
from tests.harness import new_secret, require_binary
from tests.nginx_harness import NGINX_DIR, SITE_CONF

ENV_EXAMPLE = NGINX_DIR / "relay.env.example"
UNIT = NGINX_DIR / "stellar-relay.service"
PLACEHOLDER_SECRET = "whsec_REPLACE_WITH_YOUR_SECRET"
INSTALLED_SCRIPT = "/opt/stellar-relay/.venv/bin/stellar-relay"


def env_file(text: str) -> dict[str, str]:
    """The variables of a systemd EnvironmentFile (KEY=value, # comments)."""
    pairs = (
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )

    return {name.strip(): value.strip() for name, value in pairs}


def test_example_env_points_the_relay_where_nginx_proxies():
    """Once its secret is filled in, the example is the upstream nginx expects."""
    text = ENV_EXAMPLE.read_text().replace(PLACEHOLDER_SECRET, new_secret())

    settings = Settings.from_env(env_file(text))

    assert f"server {settings.host}:{settings.port};" in SITE_CONF.read_text()
    assert settings.proxies_count == 1


def test_unedited_example_env_stops_start_up_on_the_secret():
    """Copied as is, the example refuses to start rather than run unsigned."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env_file(ENV_EXAMPLE.read_text()))

    assert raised.value.variable == "RELAY_WEBHOOK_SECRETS"


def test_systemd_unit_verifies_cleanly(tmp_path):
    """``systemd-analyze verify`` finds no unknown key or bad value in the unit."""
    analyze = require_binary("systemd-analyze")
    script = Path(sys.executable).with_name("stellar-relay")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_SCRIPT, str(script)))

    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_systemd_unit_stops_the_relay_gracefully():
    """SIGTERM to the main process only, and descriptors for 20,000 sockets."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]

    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["LimitNOFILE"]) > 20_000
    assert service["ExecStart"] == f"{INSTALLED_SCRIPT} serve"
    assert service["EnvironmentFile"].endswith("relay.env")
