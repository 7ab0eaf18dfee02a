"""Closing what clients hand over, where a close cannot stall the event loop.

A file descriptor received from a client can be anything, and the last ``close()`` of some
kinds blocks: a TCP socket with ``SO_LINGER`` on and unsent data waits up to the linger time
the client chose (socket(7)); a FUSE file waits for its server to answer FLUSH; an NFS file
flushes over the network. So the daemon never closes a client's fd on the loop thread unless
its kind is known to close at once:

* ``anon_inode:`` (eventfd and friends) and ``pipe:``: closed inline;
* ``socket:``: ``SO_LINGER`` is switched off first (the kernel then finishes sending in the
  background and close returns at once), then closed inline;
* everything else (regular files, memfds, devices, FUSE): handed to a few closer threads;
* past the first :data:`INLINE_MAX` of one batch (a message can carry 253): all handed to a
  closer thread as one job, whatever their kind, so the loop's share stays bounded.

The kind is read with ``readlink(/proc/self/fd/N)``, which asks no file system driver anything
(``fstat`` on a FUSE file may wait for its server). Closer threads are bounded
(:data:`MAX_THREADS`); a close that never returns holds one of them, and STATS counts them
(``daemon.fd_closes_queued``, ``daemon.fd_closes_slow``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from siov_protocol.fdpass import ANC_SPACE, fds_from_ancillary

#: Closer threads at most; one starts whenever every running one is busy.
MAX_THREADS = 8
#: Fds one discard() judges and closes on the caller's thread; the rest go to a closer thread.
INLINE_MAX = 32
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
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], int] | None] = queue.SimpleQueue()
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
        """Close every fd of ``fds`` (received from a client) without blocking. At most
        :data:`INLINE_MAX` are judged and closed here; the rest go to a closer thread in one
        job, so a message stuffed with 253 fds costs the loop a bounded amount of work."""
        fds = list(fds)
        if len(fds) > INLINE_MAX:
            rest = fds[INLINE_MAX:]
            fds = fds[:INLINE_MAX]
            self.defer(functools.partial(close_here, rest), len(rest))
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

    def defer(self, work: Callable[[], None], closes: int = 1) -> None:
        """Run ``work`` (a close, an unmap; ``closes`` of them) in a closer thread."""
        with self._lock:
            self.queued += 1
            self._untaken += 1
            start = self._untaken > self._idle and self._threads < MAX_THREADS
            if start:
                self._threads += 1
        if start:
            threading.Thread(target=self._run, name="siovd-closer", daemon=True).start()
        self._queue.put((work, closes))

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._untaken -= 1
            if job is None:
                return
            work, closes = job
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
                self.closed_in_thread += closes
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


_ANC_SIZE = ANC_SPACE  # SCM_MAX_FD fds: the most one skb carries


#: Queued messages a close drains on the caller's thread; the rest go to a closer thread.
DRAIN_INLINE = 1


def shut_and_drain(fd: int, limit: int | None = None, closer: Closer | None = None) -> bool:
    """Empty a client's Unix socket before its last close, without blocking; True when it is
    empty, False when ``limit`` messages were taken and more are queued.

    Fds in flight on a socket get their final release in whichever task frees them: the one
    that closes the socket with them still queued, or a recv() with no room for them. A
    lingering TCP socket queued on a connection would so block that task. SHUT_RD first (the
    peer's further sends fail with EPIPE, af_unix checks it under the socket lock), then what is
    queued is received (non-blocking, bounded by the socket buffer) and its fds are discarded
    like any other; a close then frees an empty socket, which never waits.
    """
    sock = socket.socket(fileno=fd)
    taken = 0
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        sock.setblocking(False)
        while limit is None or taken < limit:
            try:
                data, anc, _, _ = sock.recvmsg(65536, _ANC_SIZE)
            except OSError:  # EAGAIN: empty; anything else: nothing more to take
                return True
            taken += 1
            if limit is None:  # a closer thread's drain: close them right here, cheaply
                close_here(fds_from_ancillary(anc))
            else:
                (closer or CLOSER).discard(fds_from_ancillary(anc))
            if not data and not anc:
                return True
        return False
    finally:
        sock.detach()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.setsockopt.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]


def close_here(fds: Iterable[int]) -> None:
    """Close fds on this (closer) thread: SO_LINGER off first (a non-socket answers ENOTSOCK
    at once), then close; no per-fd Python objects, and the GIL is released in both calls."""
    for fd in fds:
        _libc.setsockopt(fd, socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF, len(_LINGER_OFF))
        with contextlib.suppress(OSError):
            os.close(fd)


def drain_and_close(fd: int) -> None:
    """The rest of :func:`shut_and_drain`, then the close: work for a closer thread."""
    try:
        shut_and_drain(fd)
    finally:
        os.close(fd)


def _closer(fd: int) -> Callable[[], None]:
    def close() -> None:
        os.close(fd)

    return close


#: The daemon's one closer: every fd a client hands over and the daemon discards goes here.
CLOSER = Closer()


def discard(fds: Iterable[int]) -> None:
    CLOSER.discard(fds)
