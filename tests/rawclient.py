"""A deliberately dumb client for tests: frames bytes by hand, so it can send anything."""

from __future__ import annotations

import array
import socket
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from siov_protocol import Command

HDR = struct.Struct("<HHIII")


@dataclass
class RawReply:
    msg_id: int
    command: int
    flags: int
    error: int
    body: dict[str, Any]

    @property
    def is_error(self) -> bool:
        return bool(self.flags & 0x20)


class RawClient:
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.next_id = 1

    def close(self) -> None:
        self.sock.close()

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
        size = HDR.size + len(payload) if size is None else size
        return msg_id, HDR.pack(msg_id, command, size, flags, 0) + payload

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            self.sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            self.sock.sendall(data)

    def send(self, command: int, body: Any = None, fds: list[int] | None = None, **kw: Any) -> int:
        payload = b"" if body is None else msgpack.packb(body)
        msg_id, data = self.frame(command, payload, **kw)
        self.send_raw(data, fds)
        return msg_id

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the daemon")
            buf += chunk
        return buf

    def recv(self) -> RawReply:
        msg_id, command, size, flags, error = HDR.unpack(self._recv_exact(HDR.size))
        payload = self._recv_exact(size - HDR.size)
        body = msgpack.unpackb(payload, raw=False) if payload else {}
        return RawReply(msg_id, command, flags, error, body)

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
