"""Passing fds with SCM_RIGHTS: the socket edge the daemon and the SDK share.

This is the one module of :mod:`siov_protocol` that touches a socket, and it keeps no state:
it turns the ancillary data of ``recvmsg`` into fds, and makes the one non-blocking
``sendmsg`` both sides try before they fall back to waiting for room. Framing and the
connection's rules stay in :mod:`.connection` and :mod:`.state`, which never see a socket.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Iterable, Sequence

#: Linux carries at most 253 fds on one message (SCM_MAX_FD); a receiver takes them all and
#: then judges them against what was negotiated.
MAX_FDS_PER_MESSAGE = 253
#: The ancillary buffer for ``recvmsg`` that holds :data:`MAX_FDS_PER_MESSAGE` fds.
ANC_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)


def fds_from_ancillary(anc: Iterable[tuple[int, int, bytes]]) -> list[int]:
    """The fds of every SCM_RIGHTS record in ``recvmsg``'s ancillary data, in order.

    A record cut short by MSG_CTRUNC may end mid-fd: the partial bytes are ignored (the
    kernel has already closed the fds that did not fit).
    """
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


def rights(fds: Sequence[int]) -> list[tuple[int, int, array.array[int]]]:
    """Ancillary data for ``sendmsg`` carrying ``fds`` (none for an empty sequence)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def send_nowait(sock: socket.socket, data: bytes | memoryview, fds: Sequence[int] = ()) -> int:
    """One ``sendmsg`` on a non-blocking socket; returns the bytes it took (0 when full).

    The fds ride on the first byte that goes out, so a caller that gets a short count must
    send the rest without them. Errors other than a full buffer are raised.
    """
    try:
        if not fds:  # the common case: no ancillary data to build or parse
            return sock.send(data)
        return sock.sendmsg([data], rights(fds))
    except BlockingIOError:
        return 0


def recv_nowait(
    sock: socket.socket, view: memoryview, anc_space: int = ANC_SPACE
) -> tuple[int, list[tuple[int, int, bytes]], int] | None:
    """One ``recvmsg_into`` on a non-blocking socket into ``view``: ``(bytes, ancillary data,
    msg flags)``, or None when nothing is there yet.

    Into a buffer the caller keeps, because ``recvmsg(n)`` allocates ``n`` bytes every call
    and shrinks them to what arrived: for a 256 KiB buffer and a 16-byte message that costs
    more than the system call (measured: ~25 us against ~3 us).
    """
    try:
        n, anc, flags, _ = sock.recvmsg_into([view], anc_space)
    except BlockingIOError:
        return None
    return n, anc, flags


def close_fds(fds: Iterable[int]) -> None:
    """Close fds this side owns and will not use, ignoring ones already gone."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
