"""Shared fixtures: a running relay with a few known keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RelayProcess
from tests.redis_harness import RedisServer

KEYS = [f"TEST-{n:04d}-KEY" for n in range(300)]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay on the default (reject) policy with the keys in ``KEYS``."""
    with RelayProcess(tmp_path_factory.mktemp("relay"), keys=KEYS) as process:
        yield process


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test module's own, on a free port."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
