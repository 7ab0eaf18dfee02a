"""A minimal blocking vfio-user client for tests: what QEMU's vfio-user-pci sends, by hand."""

from __future__ import annotations

import array
import socket
import struct
from typing import Any

from siov_protocol import vfio_user as vu


class VfioUserClient:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.framer = vu.Framer()
        self.next_id = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> VfioUserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = 0
    ) -> int:
        msg_id = self.next_id
        self.next_id = (self.next_id + 1) & 0xFFFF
        data = vu.pack_message(msg_id, cmd, payload, flags=flags)
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([data], anc)
        return msg_id

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> vu.Message:
        while True:
            for msg in self.framer.messages():
                return msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.framer.feed(data)

    def request(
        self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = 0
    ) -> vu.Message:
        msg_id = self.send(cmd, payload, fds, flags)
        msg = self.reply()
        assert msg.msg_id == msg_id and msg.command == cmd and msg.is_reply, msg
        return msg

    def ok(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> bytes:
        msg = self.request(cmd, payload, fds)
        assert not msg.flags & vu.FLAG_ERROR, f"command {cmd}: errno {msg.error_no}"
        return msg.payload

    def error(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> int:
        """The errno of an error reply (which carries only the header)."""
        msg = self.request(cmd, payload, fds)
        assert msg.flags & vu.FLAG_ERROR, f"command {cmd} succeeded"
        assert msg.payload == b""
        return msg.error_no

    # -- helpers ------------------------------------------------------------------------------

    def negotiate(self, caps: dict[str, Any] | None = None) -> vu.Version:
        body = vu.pack_version(0, 2, caps if caps is not None else {"max_msg_fds": 8})
        return vu.parse_version(self.ok(vu.Cmd.VERSION, body))

    def dma_map(self, addr: int, size: int, *, fd: int | None = None, offset: int = 0) -> None:
        flags = vu.DMA_READ_FLAG | vu.DMA_WRITE_FLAG
        payload = struct.pack("<IIQQQ", vu.DMA_MAP_SIZE, flags, offset, addr, size)
        self.ok(vu.Cmd.DMA_MAP, payload, () if fd is None else (fd,))

    def dma_unmap(self, addr: int, size: int, flags: int = 0) -> None:
        self.ok(vu.Cmd.DMA_UNMAP, struct.pack("<IIQQ", vu.DMA_UNMAP_SIZE, flags, addr, size))

    def read(self, region: int, offset: int, count: int) -> bytes:
        reply = self.ok(vu.Cmd.REGION_READ, vu.pack_region_access(offset, region, count))
        return reply[vu.REGION_ACCESS_SIZE :]

    def write(self, region: int, offset: int, data: bytes, *, posted: bool = False) -> None:
        payload = vu.pack_region_access(offset, region, len(data), data)
        if posted:
            self.send(vu.Cmd.REGION_WRITE, payload, flags=vu.FLAG_NO_REPLY)
        else:
            self.ok(vu.Cmd.REGION_WRITE, payload)

    def read32(self, region: int, offset: int) -> int:
        return int(struct.unpack("<I", self.read(region, offset, 4))[0])

    def write32(self, region: int, offset: int, value: int) -> None:
        self.write(region, offset, struct.pack("<I", value))
