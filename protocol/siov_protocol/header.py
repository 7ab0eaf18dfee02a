"""The 16-byte message header, vfio-user layout (qemu docs/interop/vfio-user.rst).

``msg_id u16, command u16, size u32 (whole message), flags u32, error u32``, little-endian.
:class:`~siov_protocol.connection.Message` carries a decoded header's fields and answers
``is_reply``/``is_error``/``no_reply`` from them; this module only names the layout and bits.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<HHIII")
HEADER_SIZE = HEADER.size  # 16

TYPE_MASK = 0x0F
TYPE_COMMAND = 0x0
TYPE_REPLY = 0x1
FLAG_NO_REPLY = 0x10
FLAG_ERROR = 0x20
KNOWN_FLAGS = TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR

MAX_MSG_ID = 0xFFFF
