"""The embedded default provider: a plain file of keys, one per line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from licensing.base import LicenseResult
from licensing.keys import is_well_formed_key

log = structlog.get_logger("licensing.static")

# How often the file's metadata is looked at. A changed file is re-read at
# most this long after it was written; an unchanged one is never re-read.
STAT_INTERVAL = 1.0


def parse_keys(text: str) -> frozenset[str]:
    """Keys from a keys file: one per line, ``#`` starts a comment.

    Blank lines are skipped; so are lines that are not a well-formed key,
    since no connection could ever present them.
    """
    keys = set()
    for line in text.splitlines():
        candidate = line.split("#", 1)[0].strip()
        if candidate and is_well_formed_key(candidate):
            keys.add(candidate)

    return frozenset(keys)


class KeysFileProvider:
    """Keys from ``RELAY_KEYS_FILE``, reloaded when the file changes.

    The file's size, mtime and inode are checked at most once a second, on a
    lookup; the file is read only when one of them moved. A file that
    vanishes or cannot be read keeps the last good set of keys, and says so
    in the log.
    """

    name = "static"

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._clock = clock
        self._keys: frozenset[str] = frozenset()
        self._signature: tuple[int, int, int] | None = None
        self._load(self._stat())
        self._checked_at = clock()

    def __repr__(self) -> str:
        return f"KeysFileProvider(path={str(self.path)!r}, keys={len(self._keys)})"

    @property
    def key_count(self) -> int:
        return len(self._keys)

    async def lookup(self, key: str) -> LicenseResult:
        self._reload_if_changed()
        if key in self._keys:
            return LicenseResult.active("listed in keys file")

        return LicenseResult.unknown("not in keys file")

    async def close(self) -> None:
        return None

    def _stat(self) -> tuple[int, int, int]:
        info = os.stat(self.path)
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _load(self, signature: tuple[int, int, int]) -> None:
        self._keys = parse_keys(self.path.read_text(encoding="utf-8"))
        self._signature = signature

    def _reload_if_changed(self) -> None:
        now = self._clock()
        if now - self._checked_at < STAT_INTERVAL:
            return

        self._checked_at = now
        try:
            signature = self._stat()
            if signature != self._signature:
                self._load(signature)
                log.info(
                    "keys_file.reloaded", path=str(self.path), keys=len(self._keys)
                )
        except OSError as exc:
            log.warning(
                "keys_file.unreadable",
                path=str(self.path),
                error=exc.strerror,
                keeping=len(self._keys),
            )
