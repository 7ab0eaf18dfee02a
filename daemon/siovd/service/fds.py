"""Closing what clients hand over, where a close cannot stall the event loop.

A file descriptor received from a client can be anything, and the last ``close()`` of some
kinds blocks: a TCP socket with ``SO_LINGER`` on and unsent data waits up to the linger time
the client chose (socket(7)); a FUSE file waits for its server to answer FLUSH; an NFS file
flushes over the network. So the daemon never closes a client's fd on the loop thread unless
its kind is known to close at once:

* ``anon_inode:`` (eventfd and friends) and ``pipe:``: closed inline;
* ``socket:``: ``SO_LINGER`` is switched off first (the kernel then finishes sending in the
  background and close returns at once), then closed inline;
* everything else (regular files, memfds, devices, FUSE): handed to a few closer threads.

The kind is read with ``readlink(/proc/self/fd/N)``, which asks no file system driver anything
(``fstat`` on a FUSE file may wait for its server). Closer threads are bounded
(:data:`MAX_THREADS`); a close that never returns holds one of them, and STATS counts them
(``daemon.fd_closes_queued``, ``daemon.fd_closes_slow``).
"""

from __future__ import annotations

import array
import contextlib
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

#: Closer threads at most; one starts whenever every running one is busy.
MAX_THREADS = 8
#: A close in a closer thread that takes longer than this is counted as slow.
SLOW_CLOSE_S = 0.1
_LINGER_OFF = struct.pack("ii", 0, 0)


def _kind(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _linger_off(fd: int) -> None:
    """Make a socket's close return at once, whatever SO_LINGER its sender set."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        finally:
            sock.detach()


class Closer:
    """Closes discarded fds without blocking the caller; counts what it did."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for work
        self._untaken = 0  # work queued that no thread has taken yet
        self.queued = 0  # handed to the threads and not yet done
        self.closed_inline = 0
        self.closed_in_thread = 0
        self.slow = 0
        self.failed = 0
        self.worst_s = 0.0

    def discard(self, fds: Iterable[int]) -> None:
        """Close every fd of ``fds`` (received from a client) without blocking."""
        for fd in fds:
            kind = _kind(fd)
            if kind.startswith("socket:"):
                _linger_off(fd)
            if kind.startswith(("anon_inode:", "pipe:", "socket:")):
                with contextlib.suppress(OSError):
                    os.close(fd)
                self.closed_inline += 1
            else:
                self.defer(_closer(fd))

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` (a close, an unmap) in a closer thread."""
        with self._lock:
            self.queued += 1
            self._untaken += 1
            start = self._untaken > self._idle and self._threads < MAX_THREADS
            if start:
                self._threads += 1
        if start:
            threading.Thread(target=self._run, name="siovd-closer", daemon=True).start()
        self._queue.put(work)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            work = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._untaken -= 1
            if work is None:
                return
            start = time.monotonic()
            failed = False
            try:
                work()
            except Exception:  # a close of a closed fd, an unmap whose buffer is still exported
                failed = True
            took = time.monotonic() - start
            with self._lock:
                self.failed += failed
                self.queued -= 1
                self.closed_in_thread += 1
                self.worst_s = max(self.worst_s, took)
                if took > SLOW_CLOSE_S:
                    self.slow += 1

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until nothing is queued (for tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.queued:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "fd_closes_inline": self.closed_inline,
            "fd_closes_deferred": self.closed_in_thread,
            "fd_closes_queued": self.queued,
            "fd_closes_slow": self.slow,
            "fd_closes_failed": self.failed,
            "fd_close_worst_ms": round(self.worst_s * 1000, 3),
            "closer_threads": self._threads,
        }


def fds_in(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of SCM_RIGHTS ancillary data."""
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


_ANC_SIZE = socket.CMSG_SPACE(253 * 4)  # SCM_MAX_FD fds: the most one skb carries


def drain_and_close(fd: int, closer: Closer | None = None) -> None:
    """Close a client's Unix socket and everything still queued on it, without the queue's
    fds being released in the caller's task.

    Fds in flight on a socket whose last close frees them get their final fput in the task that
    closes it (and a recv() without room for them frees them the same way), so a lingering TCP
    socket queued on a connection would block whoever closes it. This runs in a closer thread:
    no more data may come (SHUT_RD: the peer's sends fail), what is queued is received and its
    fds discarded like any other, then the socket is closed.
    """
    sock = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        sock.setblocking(False)
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(65536, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            (closer or CLOSER).discard(fds_in(anc))
            if not data and not anc:
                break
    finally:
        sock.close()


def _closer(fd: int) -> Callable[[], None]:
    def close() -> None:
        os.close(fd)

    return close


#: The daemon's one closer: every fd a client hands over and the daemon discards goes here.
CLOSER = Closer()


def discard(fds: Iterable[int]) -> None:
    CLOSER.discard(fds)


def retire(fd: int) -> None:
    """Hand a client connection's socket fd to a closer thread (:func:`drain_and_close`)."""
    CLOSER.defer(lambda: drain_and_close(fd))
