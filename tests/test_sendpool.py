"""The send pool writes one frame to many real sockets, from several threads."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
from collections.abc import Iterator

import pytest

from server.sendpool import SOCKETS_PER_THREAD_AT_LEAST, SendPool

FRAME = b"\x81\x05hello"


@pytest.fixture(scope="module", autouse=True)
def enough_open_files() -> None:
    """Two writers' worth of socket pairs needs more than 1,024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * SOCKETS_PER_THREAD_AT_LEAST + 64
    if soft < wanted <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


def socket_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(1.0)
        pairs.append((ours, theirs))
    return pairs


@pytest.fixture
def pairs(
    request: pytest.FixtureRequest,
) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = socket_pairs(request.param)
    yield made
    for ours, theirs in made:
        ours.close()
        theirs.close()


def helper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("relay-send-")]


@pytest.mark.parametrize("pairs", [2 * SOCKETS_PER_THREAD_AT_LEAST + 10], indirect=True)
def test_two_writers_reach_every_socket_exactly_once(pairs):
    pool = SendPool(threads=2)
    try:
        unsent = pool.write([ours.fileno() for ours, _ in pairs], FRAME)
        names = helper_threads()
    finally:
        pool.close()

    assert unsent == []
    assert pool.writers_for(len(pairs)) == 2
    assert names == ["relay-send-1"]
    for _, theirs in pairs:
        assert theirs.recv(64) == FRAME
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(64)  # written once, not twice
    assert helper_threads() == []  # close() stopped the helper


@pytest.mark.parametrize("pairs", [SOCKETS_PER_THREAD_AT_LEAST + 10], indirect=True)
def test_too_few_sockets_to_share_are_written_by_the_caller_alone(pairs):
    pool = SendPool(threads=2)

    assert pool.writers_for(len(pairs)) == 1
    assert pool.write([ours.fileno() for ours, _ in pairs], FRAME) == []
    assert helper_threads() == []
    assert all(theirs.recv(64) == FRAME for _, theirs in pairs)


@pytest.mark.parametrize("pairs", [1], indirect=True)
def test_a_full_socket_is_handed_back_with_what_the_kernel_took(pairs):
    [(full, peer)] = pairs
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB, more than the socket holds

    [(position, sent)] = SendPool(threads=1).write([full.fileno()], big)

    assert position == 0
    assert 0 < sent < len(big)
    peer.setblocking(False)
    received = b""
    with contextlib.suppress(BlockingIOError):
        while len(received) < len(big):
            received += peer.recv(1 << 16)
    assert received == big[:sent]


@pytest.mark.parametrize("pairs", [3], indirect=True)
def test_a_broken_socket_is_handed_back_untouched_and_the_rest_are_written(pairs):
    pairs[1][1].close()  # the peer went away
    pool = SendPool(threads=1)

    unsent = pool.write([ours.fileno() for ours, _ in pairs], FRAME)

    assert unsent == [(1, 0)]
    assert pairs[0][1].recv(64) == FRAME
    assert pairs[2][1].recv(64) == FRAME


def test_a_pool_needs_a_thread():
    with pytest.raises(ValueError, match="at least one thread"):
        SendPool(threads=0)
