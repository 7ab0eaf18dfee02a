"""The closer: what a client hands over is closed without blocking the caller."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import time

from siovd.service.fds import INLINE_MAX, Closer
from tests.helpers import settle


def test_lingering_tcp_socket_closes_at_once() -> None:
    """SO_LINGER on with unsent data would make close() wait; the closer turns it off first."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.setblocking(False)
    try:
        while True:
            client.send(b"x" * 65536)
    except BlockingIOError:
        pass
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 30))
    closer = Closer()
    start = time.monotonic()
    closer.discard([client.detach()])
    took = time.monotonic() - start
    assert took < 5, f"the close lingered {took:.1f} s"  # liveness: it would be 30 s
    assert closer.closed_inline == 1 and closer.queued == 0
    peer.close()
    server.close()


def test_files_close_in_a_closer_thread_and_eventfds_inline() -> None:
    closer = Closer()
    with tempfile.TemporaryFile() as fh:
        fd = os.dup(fh.fileno())
        efd = os.eventfd(0)
        closer.discard([fd, efd])
        assert closer.wait_idle(10)
        stats = closer.stats()
        assert stats["fd_closes_inline"] == 1 and stats["fd_closes_deferred"] == 1
        for gone in (fd, efd):
            try:
                os.fstat(gone)
            except OSError:
                continue
            # The number may be reused by now only if something else opened it; nothing did.
            raise AssertionError(f"fd {gone} is still open")


def test_deferred_work_that_blocks_holds_one_thread_only() -> None:
    closer = Closer()
    gate = __import__("threading").Event()
    closer.defer(gate.wait)
    done: list[int] = []
    closer.defer(lambda: done.append(1))
    settle(lambda: bool(done), "work queued behind a blocked close runs")
    assert done == [1], "work queued behind a blocked close never ran"
    assert closer.stats()["closer_threads"] == 2
    gate.set()
    assert closer.wait_idle(10)


def test_a_socket_stuffed_with_fds_is_drained_before_its_close() -> None:
    """Fds queued on a socket are released by whoever closes it; draining first takes them out
    as ordinary discards (here: eventfds, closed inline), a message at a time when limited."""
    import array

    from siovd.service.fds import drain_and_close, shut_and_drain

    a, b = socket.socketpair()
    spare = [os.eventfd(0) for _ in range(8)]
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", spare))]
    for _ in range(3):
        b.sendmsg([b"\0"], anc)
    for fd in spare:
        os.close(fd)
    closer = Closer()
    assert shut_and_drain(a.fileno(), limit=1, closer=closer) is False
    assert closer.closed_inline == 8
    try:
        b.send(b"more")  # SHUT_RD: the peer can queue nothing new
        raise AssertionError("a send after SHUT_RD went through")
    except OSError:
        pass
    drain_and_close(a.detach())  # the rest, as a closer thread does it
    b.close()


def test_a_batch_of_253_fds_costs_the_caller_at_most_inline_max() -> None:
    """One message can carry 253 fds: the caller judges and closes the first INLINE_MAX, and
    a closer thread the rest in one job (linger off, then close), so the loop's work per
    message stays bounded; every fd is closed either way and counted once."""
    fds = [os.eventfd(0) for _ in range(253)]
    closer = Closer()
    closer.discard(fds)
    assert closer.closed_inline == INLINE_MAX
    assert closer.wait_idle()
    assert closer.closed_in_thread == 253 - INLINE_MAX
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} is still open")
