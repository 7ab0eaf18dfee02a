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
from collections.abc import Sequence
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

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == TYPE_REPLY

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


class Refused(Exception):
    """An error reply where the test wanted success; ``errno`` and ``message`` are the reply's."""

    def __init__(self, reply: RawReply) -> None:
        super().__init__(f"errno {reply.error}: {reply.body.get('message')}")
        self.errno = reply.error
        self.message = str(reply.body.get("message", ""))


def send_all(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """All of ``data``, the fds (if any) with its first byte."""
    if fds:
        sent = sock.sendmsg([data], rights(list(fds)))
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def is_event(reply: RawReply) -> bool:
    """Events arrive between replies, unasked (SPEC 7: type command, flag no-reply, id from
    0x200); an error reply to an unknown id such as 0x7777 is still a reply."""
    command_type = reply.flags & TYPE_MASK == 0
    return command_type and bool(reply.flags & FLAG_NO_REPLY) and reply.command >= 0x200


class RawClient(_Ids):
    """Blocking, for a daemon in another process.

    ``negotiate=True`` sends VERSION (with ``capabilities``) before returning; a refusal
    raises :class:`Refused`. ``rcvbuf`` sets SO_RCVBUF before the connect. :meth:`reply`
    and :meth:`request` set events aside in :attr:`events`; :meth:`recv` returns whatever
    comes next.
    """

    def __init__(
        self,
        path: str,
        timeout: float = 5.0,
        *,
        negotiate: bool = False,
        capabilities: dict[str, Any] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.events: list[RawReply] = []
        try:
            if rcvbuf is not None:  # a small one makes a client that reads little look stuck
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(path)
            if negotiate:
                self.negotiate(capabilities)
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes, fds: Sequence[int] | None = None) -> None:
        send_all(self.sock, data, fds or ())

    def send(
        self, command: int, body: Any = None, fds: Sequence[int] | None = None, **kw: Any
    ) -> int:
        payload = b"" if body is None else msgpack.packb(body)
        msg_id, data = self.frame(command, payload, **kw)
        self.send_raw(data, fds)
        return msg_id

    def recv(self) -> RawReply:
        head = recv_exact(self.sock, HEADER_SIZE)
        return _reply(head, recv_exact(self.sock, HDR.unpack(head)[2] - HEADER_SIZE))

    def reply(self) -> RawReply:
        """The next message that is not an event."""
        while is_event(got := self.recv()):
            self.events.append(got)
        return got

    def request(
        self, command: int, body: Any = None, fds: Sequence[int] | None = None, **kw: Any
    ) -> RawReply:
        msg_id = self.send(command, body, fds, **kw)
        reply = self.reply()
        assert reply.msg_id == msg_id
        return reply

    def call(
        self, command: int, body: Any = None, fds: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """One request; its reply body, or :class:`Refused` for an error reply."""
        reply = self.request(command, body, fds)
        if reply.is_error:
            raise Refused(reply)
        return reply.body

    def negotiate(self, capabilities: dict[str, Any] | None = None) -> RawReply:
        """VERSION 1.0 (with ``capabilities`` when given); :class:`Refused` if refused."""
        fields: dict[str, Any] = {"major": 1, "minor": 0}
        if capabilities is not None:
            fields["capabilities"] = capabilities
        reply = self.request(Command.VERSION, fields)
        if reply.is_error:
            raise Refused(reply)
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
    async def connect(cls, path: str, rcvbuf: int | None = None) -> AsyncRawClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(path)
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

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
