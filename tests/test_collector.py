"""A long full garbage collection is logged; short and young ones are not."""

from __future__ import annotations

import gc

from structlog.testing import capture_logs

from server.collector import PauseWatch


class StepClock:
    """A clock that reads ``steps`` in turn."""

    def __init__(self, *steps: float) -> None:
        self.steps = list(steps)

    def __call__(self) -> float:
        return self.steps.pop(0)


def run(watch: PauseWatch, generation: int, collected: int = 0) -> None:
    watch("start", {"generation": generation, "collected": 0, "uncollectable": 0})
    info = {"generation": generation, "collected": collected, "uncollectable": 0}
    watch("stop", info)


def test_a_long_full_collection_is_one_warning():
    watch = PauseWatch(clock=StepClock(10.0, 10.5))
    with capture_logs() as logs:
        run(watch, generation=2, collected=391_253)

    assert logs == [
        {
            "event": "gc.long_pause",
            "log_level": "warning",
            "ms": 500.0,
            "collected": 391_253,
        }
    ]


def test_short_and_young_collections_say_nothing():
    watch = PauseWatch(clock=StepClock(1.0, 1.01))
    with capture_logs() as logs:
        run(watch, generation=2)  # 10 ms
        run(watch, generation=0)  # never timed
        run(watch, generation=1)

    assert logs == []


def test_installed_once_and_called_by_a_real_collection():
    readings: list[float] = []

    def clock() -> float:
        readings.append(float(len(readings)))
        return readings[-1]

    watch = PauseWatch(clock=clock)
    before = len(gc.callbacks)
    try:
        watch.install()
        watch.install()
        gc.collect()  # a full collection: start and stop are both timed
        installed = len(gc.callbacks) - before
    finally:
        gc.callbacks.remove(watch)

    assert installed == 1
    assert len(readings) == 2
