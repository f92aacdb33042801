"""Writing one frame to many sockets from several threads at once.

Almost all of a broadcast's time is spent in the kernel, one ``write()`` per
client. CPython lets go of the GIL for the length of each ``os.write``, so
two threads can be inside the kernel at the same time: on a 2-core machine
a restock reached 10,000 clients in about 110 ms with two threads against
140 ms with one (``make bench``; the README has the numbers).

The pool only writes; what to write where is the hub's decision. It is given
file descriptors whose transports have nothing waiting, so the bytes land in
order, and it hands back every socket the kernel did not take all of (full,
or broken) with how much it did take. The caller gives the rest to the
transport, which buffers it or finds the error and closes, as usual.

While the pool writes, the event loop's thread is one of its writers and
nothing else runs on the loop, so no transport writes the same sockets.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence

# Below this many sockets per thread, handing work to another thread costs
# more than it saves: the loop's thread writes them all itself.
SOCKETS_PER_THREAD_AT_LEAST = 256

Unsent = list[tuple[int, int]]
"""``(position in the fds given, bytes the kernel took)`` per short write."""


def write_each(fds: Sequence[int], data: bytes, start: int, stop: int) -> Unsent:
    """``os.write`` ``data`` to ``fds[start:stop]``; the short writes."""
    write = os.write
    size = len(data)
    unsent: Unsent = []
    for position in range(start, stop):
        try:
            sent = write(fds[position], data)
        except OSError:  # full (EAGAIN) or broken: the transport takes over
            sent = 0
        if sent != size:
            unsent.append((position, sent))

    return unsent


_Job = tuple[Sequence[int], bytes, int, int]
_Result = Unsent | BaseException


class SendPool:
    """``threads`` writers: the caller's own thread and ``threads - 1``
    helpers, started on first use and parked on a queue between writes."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("a send pool needs at least one thread")
        self.threads = threads
        self._inboxes: list[queue.SimpleQueue[_Job | None]] = []
        self._results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        self._helpers: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"SendPool(threads={self.threads})"

    def writers_for(self, sockets: int) -> int:
        """How many threads share a write to ``sockets`` sockets."""
        return max(1, min(self.threads, sockets // SOCKETS_PER_THREAD_AT_LEAST))

    def write(self, fds: Sequence[int], data: bytes) -> Unsent:
        """Write ``data`` to every fd; return the short writes."""
        writers = self.writers_for(len(fds))
        if writers == 1:
            return write_each(fds, data, 0, len(fds))
        self._start_helpers()
        share = -(-len(fds) // writers)  # ceiling division
        for index, inbox in enumerate(self._inboxes[: writers - 1], start=1):
            inbox.put((fds, data, index * share, min(len(fds), (index + 1) * share)))
        try:
            unsent = write_each(fds, data, 0, share)
        finally:
            # Every helper must be done before the loop runs again, even if
            # a writer failed: only then may a transport touch these sockets.
            results = [self._results.get() for _ in range(writers - 1)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
            unsent.extend(result)

        return unsent

    def close(self) -> None:
        """Stop the helpers; a later :meth:`write` starts them again."""
        for inbox in self._inboxes:
            inbox.put(None)
        for helper in self._helpers:
            helper.join()
        self._inboxes.clear()
        self._helpers.clear()

    def _start_helpers(self) -> None:
        while len(self._helpers) < self.threads - 1:
            inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
            helper = threading.Thread(
                target=self._serve,
                args=(inbox,),
                name=f"relay-send-{len(self._helpers) + 1}",
                daemon=True,
            )
            helper.start()
            self._inboxes.append(inbox)
            self._helpers.append(helper)

    def _serve(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        while (job := inbox.get()) is not None:
            try:
                self._results.put(write_each(*job))
            except BaseException as error:  # handed to the waiting caller
                self._results.put(error)
