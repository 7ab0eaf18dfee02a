"""The tests' one raw client: it frames bytes by hand, so it can send anything.

Nothing here uses :mod:`siov_protocol.connection`: a test that checks the daemon's framing
must not trust the code it tests. The wire constants and :func:`frame`/:func:`body` are the
fuzzers' too (``tests/fuzz/wire.py``); :class:`RawClient` talks over a blocking socket (to a
daemon in another process), :class:`AsyncRawClient` over a trio socket (to a daemon in the
test's own event loop), with the same methods.
"""

from __future__ import annotations

import array
import socket
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from siov_protocol import Command

HDR = struct.Struct("<HHIII")
HEADER_SIZE = HDR.size
TYPE_MASK = 0x0F
TYPE_REPLY = 0x1
FLAG_NO_REPLY = 0x10
FLAG_ERROR = 0x20
KNOWN_FLAGS = TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR


def frame(
    msg_id: int, command: int, payload: bytes = b"", flags: int = 0, size: int | None = None
) -> bytes:
    """One message: the header (``size`` as given, or the true one) and the payload."""
    size = HEADER_SIZE + len(payload) if size is None else size
    return HDR.pack(msg_id & 0xFFFF, command, size, flags, 0) + payload


def body(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def rights(fds: list[int] | tuple[int, ...]) -> list[tuple[int, int, array.array[int]]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the daemon")
        buf += chunk
    return buf


@dataclass
class RawReply:
    msg_id: int
    command: int
    flags: int
    error: int
    body: dict[str, Any]

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    def parts(self) -> tuple[int, int, dict[str, Any]]:
        """``(msg_id, errno, body)``."""
        return self.msg_id, self.error, self.body


def _reply(head: bytes, payload: bytes) -> RawReply:
    msg_id, command, _, flags, error = HDR.unpack(head)
    return RawReply(
        msg_id, command, flags, error, msgpack.unpackb(payload, raw=False) if payload else {}
    )


class _Ids:
    next_id = 1

    def frame(
        self,
        command: int,
        payload: bytes = b"",
        *,
        msg_id: int | None = None,
        flags: int = 0,
        size: int | None = None,
    ) -> tuple[int, bytes]:
        if msg_id is None:
            msg_id = self.next_id
            self.next_id = (self.next_id + 1) & 0xFFFF
        return msg_id, frame(msg_id, command, payload, flags, size)


class RawClient(_Ids):
    """Blocking, for a daemon in another process."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            self.sock.sendmsg([data], rights(fds))
        else:
            self.sock.sendall(data)

    def send(self, command: int, body: Any = None, fds: list[int] | None = None, **kw: Any) -> int:
        payload = b"" if body is None else msgpack.packb(body)
        msg_id, data = self.frame(command, payload, **kw)
        self.send_raw(data, fds)
        return msg_id

    def recv(self) -> RawReply:
        head = recv_exact(self.sock, HEADER_SIZE)
        return _reply(head, recv_exact(self.sock, HDR.unpack(head)[2] - HEADER_SIZE))

    def request(self, command: int, body: Any = None, **kw: Any) -> RawReply:
        msg_id = self.send(command, body, **kw)
        reply = self.recv()
        assert reply.msg_id == msg_id
        return reply

    def negotiate(self) -> RawReply:
        reply = self.request(Command.VERSION, {"major": 1, "minor": 0})
        assert not reply.is_error, reply
        return reply

    def is_closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False


class AsyncRawClient(_Ids):
    """The same over a trio socket, for a daemon running in the test's own event loop."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, path: str) -> AsyncRawClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(path)
        return cls(sock)

    async def send_raw(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        if fds:
            await self.sock.sendmsg([data], rights(fds))
        else:
            while data:
                data = data[await self.sock.send(data) :]

    async def send(self, command: int, fields: Any = None, fds: tuple[int, ...] = ()) -> int:
        msg_id, data = self.frame(command, b"" if fields is None else body(fields))
        await self.send_raw(data, fds)
        return msg_id

    async def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = await self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the daemon")
            data += chunk
        return data

    async def recv(self) -> RawReply:
        head = await self.recv_exact(HEADER_SIZE)
        return _reply(head, await self.recv_exact(HDR.unpack(head)[2] - HEADER_SIZE))

    async def call(self, command: int, fields: Any = None, fds: tuple[int, ...] = ()) -> Any:
        """One request; its reply body, which must not be an error."""
        await self.send(command, fields, fds)
        reply = await self.recv()
        assert not reply.is_error, reply
        return reply.body
