"""``stellar-relay check-key`` for operators, and the fakes' own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from licensing import redact_key
from licensing.testing import FakeWhop
from tests.harness import free_port
from tests.provider_env import WHOP_API_KEY, relay_env


@pytest.fixture(scope="module")
def whop() -> Iterator[FakeWhop]:
    fake = FakeWhop(api_key=WHOP_API_KEY)
    fake.add("OPS-ACTIVE-0001", "active")
    fake.add("OPS-EXPIRED-0001", "expired")
    with fake:
        yield fake


def check_key(key: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "server", "check-key", key],
        env={**clean, "RELAY_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_active_key_exits_0_and_is_shown_redacted(whop):
    done = check_key("OPS-ACTIVE-0001", relay_env("whop-v1", whop))

    assert done.returncode == 0
    assert "status:   active" in done.stdout
    assert redact_key("OPS-ACTIVE-0001") in done.stdout
    assert "OPS-ACTIVE-0001" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("key", "status"),
    [("OPS-EXPIRED-0001", "inactive"), ("OPS-NOBODY-0001", "unknown")],
)
def test_not_active_key_exits_1(whop, key, status):
    done = check_key(key, relay_env("whop-v2", whop))

    assert done.returncode == 1
    assert f"status:   {status}" in done.stdout


def test_wrong_api_key_exits_3_with_an_error_line(whop):
    done = check_key("OPS-ACTIVE-0001", relay_env("whop-v1", whop, api_key="nope"))

    assert done.returncode == 3
    assert "status:   unavailable" in done.stdout
    assert '"license.api_key_rejected"' in done.stderr


def test_malformed_key_is_not_sent(whop):
    before = whop.calls
    done = check_key("../admin", relay_env("whop-v1", whop))

    assert done.returncode == 1
    assert "malformed" in done.stdout
    assert whop.calls == before


def test_missing_api_key_exits_2_with_one_line():
    done = check_key("OPS-ACTIVE-0001", {"RELAY_LICENSE_PROVIDER": "hyper"})

    assert done.returncode == 2
    assert done.stderr.strip() == (
        "stellar-relay: RELAY_HYPER_API_KEY: required when RELAY_LICENSE_PROVIDER=hyper"
    )


def test_fake_runs_in_its_own_process():
    """``python -m licensing.testing hyper`` answers and reports its calls."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "licensing.testing",
            "hyper",
            f"--port={port}",
            "--api-key=sk_proc",
            "--license=PROC-KEY-0001=trialing",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v6/licenses/PROC-KEY-0001",
            headers={"Authorization": "Bearer sk_proc"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            license = json.load(answer)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/_fake/calls", timeout=5
        ) as answer:
            calls = json.load(answer)
    finally:
        process.terminate()
        process.wait(10)

    assert f"127.0.0.1:{port}" in banner
    assert license["status"] == "trialing" and license["key"] == "PROC-KEY-0001"
    assert calls == {"calls": 1, "by_key": {"PROC-KEY-0001": 1}}
    assert process.returncode == 0
