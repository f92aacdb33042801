"""The bench's two load generators measure what the relay really sends.

Both (bench/loadclient.c and bench/loadclient.py) take the same commands;
each must see every restock on every healthy client, and read the 4008 a
stalled client is closed with, or the bench's numbers mean nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.__main__ import LoadClient, build_c_load_client
from tests.harness import RelayProcess, bulky_restocks, require_binary

KEYS = [f"LOAD-{n:02d}" for n in range(6)]
STALLED = 2


def load_client_binary(kind: str, tmp_path: Path) -> Path | None:
    if kind == "python":
        return None
    require_binary("cc")
    binary = build_c_load_client(tmp_path / "loadclient")
    assert binary is not None, "bench/loadclient.c did not compile"

    return binary


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["c", "python"])
def test_load_client_counts_every_restock_and_reads_4008(kind, tmp_path):
    binary = load_client_binary(kind, tmp_path)
    env = {"RELAY_CLIENT_BUFFER": "16384"}
    with RelayProcess(tmp_path / "relay", keys=KEYS, env=env) as relay:
        load = LoadClient(binary, tmp_path)
        try:
            connected = load.ask(
                cmd="connect",
                url=relay.ws_url("x").split("?")[0],
                keys=KEYS,
                stalled=STALLED,
            )
            wait_until(lambda: relay.health()["connections"] == len(KEYS))
            posts = 0
            while relay.health()["slow_consumers_closed"] < STALLED and posts < 200:
                status, _ = relay.post(bulky_restocks(posts))
                assert status == 202
                posts += 1
            load.ask(cmd="resume")

            def everything_arrived() -> bool:
                report = load.ask(cmd="report")
                return (
                    all(len(times) == posts * 10 for times in report["arrivals"])
                    and None not in report["stalled_codes"]
                )

            wait_until(everything_arrived)
            report = load.ask(cmd="report")
        finally:
            load.close()

    assert connected["connected"] == len(KEYS)
    assert len(report["arrivals"]) == len(KEYS) - STALLED
    assert all(times == sorted(times) for times in report["arrivals"])
    assert report["stalled_codes"] == [4008] * STALLED
    assert report["healthy_codes"] == [None] * (len(KEYS) - STALLED)
