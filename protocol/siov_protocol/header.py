"""The 16-byte message header, vfio-user layout (qemu docs/interop/vfio-user.rst).

``msg_id u16, command u16, size u32 (whole message), flags u32, error u32``, little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<HHIII")
HEADER_SIZE = HEADER.size  # 16

TYPE_MASK = 0x0F
TYPE_COMMAND = 0x0
TYPE_REPLY = 0x1
FLAG_NO_REPLY = 0x10
FLAG_ERROR = 0x20
KNOWN_FLAGS = TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR

MAX_MSG_ID = 0xFFFF


@dataclass(frozen=True, slots=True)
class Header:
    msg_id: int
    command: int
    size: int
    flags: int
    error: int

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == TYPE_REPLY

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & FLAG_NO_REPLY)

    def pack(self) -> bytes:
        return HEADER.pack(self.msg_id, self.command, self.size, self.flags, self.error)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
        return cls(*HEADER.unpack_from(data, offset))
