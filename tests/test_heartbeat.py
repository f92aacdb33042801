"""The heartbeat: one round per interval, spread in slices, silent clients out."""

from __future__ import annotations

from server.websocket import Heartbeat


class RecordingWebsocket:
    def __init__(self, answered: bool) -> None:
        self.answered = answered
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1
        self.answered = False


class FakeConnection:
    def __init__(self, answered: bool = True) -> None:
        self.websocket = RecordingWebsocket(answered)


async def test_a_round_is_spread_over_the_interval_in_slices():
    connections = [FakeConnection() for _ in range(600)]
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    heartbeat = Heartbeat(lambda: connections, 9.0, lambda c: None, sleep=sleep)
    heartbeat.SLICE = 200
    await heartbeat.beat()

    assert pauses == [3.0, 3.0, 3.0]
    assert all(c.websocket.pings == 1 for c in connections)


async def test_a_connection_silent_since_its_last_ping_is_dropped():
    quiet, lively = FakeConnection(), FakeConnection()
    dropped: list[FakeConnection] = []

    async def sleep(seconds: float) -> None:
        return None

    heartbeat = Heartbeat(lambda: [quiet, lively], 1.0, dropped.append, sleep=sleep)
    await heartbeat.beat()
    lively.websocket.answered = True  # its pong came in
    await heartbeat.beat()

    assert dropped == [quiet]
    assert lively.websocket.pings == 2


async def test_no_connections_still_waits_one_interval():
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    await Heartbeat(list, 10.0, lambda c: None, sleep=sleep).beat()

    assert pauses == [10.0]
