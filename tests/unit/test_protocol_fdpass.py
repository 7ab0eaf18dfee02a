"""siov_protocol.fdpass: the non-blocking send and receive both ends use for every frame."""

from __future__ import annotations

import os
import socket

from siov_protocol.fdpass import fds_from_ancillary, recv_nowait, send_nowait


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_recv_nowait_on_an_empty_socket_is_none() -> None:
    a, b = _pair()
    with a, b:
        assert recv_nowait(b, memoryview(bytearray(64))) is None


def test_recv_nowait_fills_the_callers_buffer_and_returns_the_fds() -> None:
    a, b = _pair()
    r, w = os.pipe()
    try:
        with a, b:
            assert send_nowait(a, b"hello", [r]) == 5
            buf = bytearray(64)
            got = recv_nowait(b, memoryview(buf))
            assert got is not None
            size, anc, flags = got
            assert (size, bytes(buf[:size]), flags) == (5, b"hello", 0)
            fds = fds_from_ancillary(anc)
            assert len(fds) == 1
            os.write(w, b"x")
            assert os.read(fds[0], 1) == b"x"  # the same pipe, passed over
            os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_recv_nowait_reports_end_of_stream_as_zero_bytes() -> None:
    a, b = _pair()
    with b:
        a.close()
        assert recv_nowait(b, memoryview(bytearray(64))) == (0, [], 0)


def test_send_nowait_without_fds_sends_plain_bytes() -> None:
    a, b = _pair()
    with a, b:
        assert send_nowait(a, memoryview(b"abc")) == 3
        got = recv_nowait(b, memoryview(bytearray(8)))
        assert got is not None and got[0] == 3 and got[1] == []
