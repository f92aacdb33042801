"""Key shape, redaction, and the keys-file provider."""

from __future__ import annotations

import os

import pytest

from licensing import (
    KeysFileProvider,
    LicenseStatus,
    is_well_formed_key,
    redact_key,
)
from licensing.static import parse_keys


@pytest.mark.parametrize("key", ["ABCD-1234", "a_b-C", "x" * 128])
def test_well_formed_keys(key):
    assert is_well_formed_key(key)


@pytest.mark.parametrize("key", ["", "x" * 129, "a b", "../x", "a/b", "é", "a\n"])
def test_malformed_keys(key):
    assert not is_well_formed_key(key)


def test_redaction_keeps_four_characters_and_a_stable_hash():
    label = redact_key("ABCD-1234-5678")

    assert label.startswith("ABCD~")
    assert "1234" not in label
    assert label == redact_key("ABCD-1234-5678")
    assert label != redact_key("ABCD-1234-5679")


def test_redaction_of_a_malformed_key_shows_no_characters():
    assert redact_key("../secret").startswith("?~")


def test_keys_file_comments_and_blank_lines():
    text = "# header\nKEY-1\n\n  KEY-2  # who\nbad key\n"

    assert parse_keys(text) == {"KEY-1", "KEY-2"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_keys_file_is_reloaded_after_it_changes(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("KEY-1\n")
    clock = FakeClock()
    provider = KeysFileProvider(path, clock=clock)
    path.write_text("KEY-1\nKEY-2\n")
    os.utime(path, ns=(1, 10**18))

    within_a_second = await provider.lookup("KEY-2")
    clock.now = 1.5
    after = await provider.lookup("KEY-2")

    assert within_a_second.status is LicenseStatus.UNKNOWN
    assert after.status is LicenseStatus.ACTIVE


async def test_unchanged_keys_file_is_not_read_again(tmp_path, monkeypatch):
    path = tmp_path / "keys.txt"
    path.write_text("KEY-1\n")
    clock = FakeClock()
    provider = KeysFileProvider(path, clock=clock)
    reads = []
    monkeypatch.setattr(provider, "_load", lambda signature: reads.append(signature))

    for step in range(10):
        clock.now = step * 2.0
        await provider.lookup("KEY-1")

    assert reads == []


async def test_vanished_keys_file_keeps_the_last_keys(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("KEY-1\n")
    clock = FakeClock()
    provider = KeysFileProvider(path, clock=clock)
    path.unlink()
    clock.now = 5.0

    result = await provider.lookup("KEY-1")

    assert result.is_active


def test_provider_repr_shows_no_keys(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("SECRET-KEY-1\n")

    assert "SECRET" not in repr(KeysFileProvider(path))
