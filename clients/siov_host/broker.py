"""The portal broker: the other end of ``libsiov_portal.so``'s socket.

Each connection is one open WQ char device of one process. Its first message is OPEN with
that process's ``/proc/self/mem`` and ``/proc/self/maps`` fds; the broker opens a siov
connection of its own for it and sends WQ_OPEN with those fds, so the opener's consent goes
straight to the daemon. Then every trapped store arrives in program order: POSTED
(MOVDIR64B) becomes a no-reply WQ_SUBMIT, ENQ (ENQCMD) a WQ_SUBMIT whose result byte is the
answer (1 = retry: ZF=1). When the process closes the fd or exits, the socket closes and the
broker sends WQ_CLOSE and leaves: the daemon drains the opener's work and unbinds its PASID.

Wire format (little endian): ``u32 type, u32 length, payload``; see ``native/siov_portal.c``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

import trio

import siov
from siov.errors import SiovError
from siov_protocol.commands import Command
from siov_protocol.fdpass import fds_from_ancillary
from siov_protocol.replies import WqOpenReply

MSG_OPEN = 1
MSG_POSTED = 2
MSG_ENQ = 3
HEADER = struct.Struct("<II")
OPEN_REPLY = struct.Struct("<iIII")
ENQ_REPLY = struct.Struct("<iI")
MODES = {"dedicated": 0, "shared": 1}


class _Reader:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = bytearray()

    def has_posted(self) -> bool:
        """A whole POSTED message is already buffered (no waiting)."""
        if len(self.buf) < HEADER.size + 64:
            return False
        kind, length = HEADER.unpack_from(self.buf)
        return bool(kind == MSG_POSTED and length == 64)

    async def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            chunk = await self.sock.recv(max(65536, n))
            if not chunk:
                return None
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


async def _recv_open(sock: trio.socket.SocketType) -> tuple[int, int, list[int]]:
    data, ancdata, _flags, _addr = await sock.recvmsg(16, socket.CMSG_SPACE(2 * 4))
    fds = fds_from_ancillary(ancdata)
    if len(data) != 16:
        for fd in fds:
            os.close(fd)
        raise ValueError("short OPEN")
    kind, length, device, wq = struct.unpack("<IIII", data)
    if kind != MSG_OPEN or length != 8:
        for fd in fds:
            os.close(fd)
        raise ValueError("first message is not OPEN")
    return device, wq, list(fds)


class Broker:
    """Serves the preload library's connections on ``path`` for the siov daemon at
    ``siov_socket``. ``opened`` counts live opens (for tests and the launcher's log)."""

    def __init__(self, path: str, siov_socket: str | None) -> None:
        self.path = path
        self.siov_socket = siov_socket
        self.opened = 0
        self.forwarded = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with listener:
            await listener.bind(self.path)
            os.chmod(self.path, 0o666)
            listener.listen(128)
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._connection, conn)

    async def _connection(self, conn: trio.socket.SocketType) -> None:
        with conn:
            try:
                device, wq, fds = await _recv_open(conn)
            except (ValueError, OSError):
                return
            try:
                async with siov.connect(self.siov_socket, name="siov-run portal") as client:
                    try:
                        body = {"device": f"dsa{device}", "wq": wq}
                        reply: WqOpenReply = await client.call_typed(Command.WQ_OPEN, body, fds=fds)
                    except SiovError as exc:
                        await conn.send(OPEN_REPLY.pack(exc.errno or errno.EIO, 0, 0, 0))
                        return
                    finally:
                        for fd in fds:
                            os.close(fd)
                        fds = []
                    handle = reply.handle
                    mode = MODES.get(reply.mode, 0)
                    await conn.send(OPEN_REPLY.pack(0, reply.pasid, mode, reply.size))
                    self.opened += 1
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_answer_page_requests, client)
                            nursery.start_soon(_drain_events, client)
                            await self._forward(conn, client, handle, reply.size)
                            nursery.cancel_scope.cancel()
                        with trio.move_on_after(5):
                            await client.wq_close(handle)
                    finally:
                        self.opened -= 1
            except SiovError as exc:
                if fds:
                    for fd in fds:
                        os.close(fd)
                    await conn.send(OPEN_REPLY.pack(exc.errno or errno.EIO, 0, 0, 0))

    async def _forward(
        self, conn: trio.socket.SocketType, client: siov.Client, handle: int, size: int
    ) -> None:
        reader = _Reader(conn)
        # MOVDIR64Bs that have already arrived together go as one posted WQ_SUBMIT, in order,
        # at most half the WQ's size at a time: the daemon runs a message's descriptors before
        # it reads the next one, so a batch that fits never meets a full WQ on its own.
        batch_limit = max(1, size // 2)
        while True:
            header = await reader.exactly(HEADER.size)
            if header is None:
                return
            kind, length = HEADER.unpack(header)
            payload = await reader.exactly(length)
            if payload is None or length != 64 or kind not in (MSG_POSTED, MSG_ENQ):
                return
            self.forwarded += 1
            if kind == MSG_POSTED:
                batch = [payload]
                while len(batch) < batch_limit and reader.has_posted():
                    header = await reader.exactly(HEADER.size)
                    more = await reader.exactly(64)
                    assert header is not None and more is not None
                    batch.append(more)
                    self.forwarded += 1
                await client.wq_submit(handle, b"".join(batch), posted=True)
                continue
            try:
                results = await client.wq_submit(handle, payload)
                answer = ENQ_REPLY.pack(0, results[0] if results else 1)
            except SiovError as exc:
                answer = ENQ_REPLY.pack(exc.errno or errno.EIO, 1)
            await conn.send(answer)


async def _answer_page_requests(client: siov.Client) -> None:
    # With SVA the daemon has already re-read the process's maps before asking: the address
    # is in no mapping, which the kernel's IOPF handler answers Invalid Request.
    async for event in client.page_requests():
        await client.page_response(int(event.body["request"]), 1)


async def _drain_events(client: siov.Client) -> None:
    async for _event in client.events():
        pass
