"""Which connected keys are re-checked when, and what a fresh answer does."""

from __future__ import annotations

import random

import pytest

from licensing import LicenseResult
from server.closecodes import CloseCode
from server.recheck import RecheckSchedule, recheck_verdict, tick_for

INTERVAL = 900.0


class FixedRandom:
    """A stand-in for random.random that returns the values it is given."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (LicenseResult.active("status active"), None),
        (LicenseResult.inactive("status canceled"), CloseCode.LICENSE_INACTIVE),
        (LicenseResult.unknown(), CloseCode.BAD_KEY),
        (LicenseResult.unavailable("provider answered 503"), None),
    ],
    ids=["active", "inactive", "unknown", "unavailable"],
)
def test_verdict_closes_only_on_a_definite_no(result, code):
    """Inactive is 4403, unknown 4401; an outage closes nobody."""
    assert recheck_verdict(result) == code


def test_a_new_connection_is_not_due_at_once():
    schedule = RecheckSchedule(INTERVAL, rng=FixedRandom(0.0))

    assert schedule.due(["a"], now=0.0) == []
    assert schedule.due(["a"], now=INTERVAL - 1) == []
    assert schedule.due(["a"], now=INTERVAL) == ["a"]


def test_first_recheck_falls_in_the_second_half_of_the_interval():
    """rng 1.0 puts it at half the interval, rng 0.0 at the full interval."""
    early = RecheckSchedule(INTERVAL, rng=FixedRandom(0.999999))
    early.due(["a"], now=0.0)

    assert early.due(["a"], now=INTERVAL / 2 - 1) == []
    assert early.due(["a"], now=INTERVAL / 2 + 1) == ["a"]


def test_later_rechecks_come_at_most_one_interval_apart():
    schedule = RecheckSchedule(INTERVAL, rng=FixedRandom(0.0))
    schedule.due(["a"], now=0.0)
    schedule.due(["a"], now=INTERVAL)

    assert schedule.due(["a"], now=2 * INTERVAL - 1) == []
    assert schedule.due(["a"], now=2 * INTERVAL) == ["a"]


def test_later_rechecks_are_not_earlier_than_nine_tenths():
    schedule = RecheckSchedule(INTERVAL, rng=FixedRandom(0.0, 0.999999))
    schedule.due(["a"], now=0.0)
    schedule.due(["a"], now=INTERVAL)

    assert schedule.due(["a"], now=INTERVAL + 0.9 * INTERVAL - 1) == []
    assert schedule.due(["a"], now=INTERVAL + 0.9 * INTERVAL + 1) == ["a"]


def test_a_crowd_that_connected_together_is_spread_out():
    """1,000 clients seen in one tick are re-checked over half an interval."""
    rng = random.Random(7)
    schedule = RecheckSchedule(INTERVAL, rng=rng.random)
    owners = [f"owner-{n}" for n in range(1000)]
    schedule.due(owners, now=0.0)
    per_minute = []
    for minute in range(16):
        per_minute.append(len(schedule.due(owners, now=(minute + 1) * 60.0)))

    first_round = per_minute[:15]
    assert sum(first_round) == 1000
    assert max(first_round) < 200, per_minute
    assert sum(per_minute[:7]) == 0, "nothing before half the interval"


def test_gone_connections_are_forgotten():
    schedule = RecheckSchedule(INTERVAL, rng=FixedRandom(0.0))
    schedule.due(["a", "b"], now=0.0)

    due = schedule.due(["b"], now=INTERVAL)

    assert due == ["b"] and len(schedule) == 1


def test_a_connection_seen_late_gets_its_own_interval():
    schedule = RecheckSchedule(INTERVAL, rng=FixedRandom(0.0))
    schedule.due(["a"], now=0.0)
    schedule.due(["a", "b"], now=100.0)

    assert schedule.due(["a", "b"], now=INTERVAL) == ["a"]
    assert schedule.due(["a", "b"], now=INTERVAL + 100.0) == ["b"]


@pytest.mark.parametrize(
    ("interval", "tick"), [(900.0, 5.0), (60.0, 3.0), (1.0, 0.05), (0.1, 0.05)]
)
def test_tick_keeps_to_the_interval_without_spinning(interval, tick):
    assert tick_for(interval) == pytest.approx(tick)
