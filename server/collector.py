"""Python's garbage collector, set up for tens of thousands of connections.

Each connection leaves dozens of long-lived objects (coroutines, tasks,
Sanic's request and protocol objects), and a full collection walks all of
them: with 10,000 clients one took about 500 ms on the bench machine, and a
restock that arrives meanwhile waits. CPython runs a full collection only
after the long-lived objects grew by a quarter (a reconnect storm, heavy
churn), so it is rare; :class:`PauseWatch` logs each long one, so that an
operator can tell a late restock from a slow network.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("server.collector")

OLDEST_GENERATION = 2
REPORTED_PAUSE = 0.05  # seconds: a full collection this long gets a WARNING


def tune_garbage_collector() -> None:
    """Fewer collections while thousands of clients connect at once.

    With the default threshold (700) young collections keep rescanning the
    connections' objects during a reconnect storm: on the bench, 10,000
    connects took 6-9 s by default and 3.5-6.5 s with this setting (noisy
    2-core machine). Objects made at start-up are frozen out of collection
    altogether. Cycles among connection objects are still collected, in
    larger batches.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    PauseWatch().install()


class PauseWatch:
    """A ``gc.callbacks`` hook: one WARNING per full collection that took
    ``REPORTED_PAUSE`` or more."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._started: float | None = None

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != OLDEST_GENERATION:
            return
        if phase == "start":
            self._started = self.clock()
            return
        if self._started is None:
            return
        seconds = self.clock() - self._started
        self._started = None
        if seconds >= REPORTED_PAUSE:
            log.warning(
                "gc.long_pause",
                ms=round(seconds * 1000, 1),
                collected=info["collected"],
            )
