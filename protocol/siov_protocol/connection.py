"""The sans-IO connection: bytes and fds in, messages out; messages in, bytes out.

Nothing here touches a socket. The caller feeds what ``recvmsg`` gave it with
:meth:`Connection.receive_data` and pulls events with :meth:`Connection.next_event`, and asks
:meth:`Connection.send_command`, :meth:`~Connection.send_reply` or :meth:`~Connection.send_error`
for the bytes of a message before writing them (with their fds) itself.

What may be sent or received in which phase, and the negotiated limits, are the state
machine's (:mod:`.state`); each Connection holds one as :attr:`Connection.state` and consults
it on every message.

Framing rules (SPEC.md "Framing"):

* a bad header (size < 16, size > the maximum, unknown type, a reply we never asked for)
  breaks the framing: :class:`RemoteProtocolError`, latched by the state machine, and the
  connection is over;
* a bad body (not msgpack, not a map, too deep, too many fds) costs one :class:`BadMessage`; the
  framing survives and the next message decodes normally. Each body is decoded on its own with
  ``msgpack.unpackb`` and limits, never with a shared streaming ``Unpacker`` (msgpack < 1.2.1
  crashed on reuse after an error, CVE-2026-57585, and maintainers call reuse unsupported).
"""

from __future__ import annotations

import enum
import errno
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from .commands import is_event
from .errors import LocalProtocolError
from .header import (
    FLAG_ERROR,
    FLAG_NO_REPLY,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAX_MSG_ID,
    TYPE_COMMAND,
    TYPE_MASK,
    TYPE_REPLY,
)
from .state import DEFAULT_MAX_FDS, DEFAULT_MAX_MSG_SIZE, HANDSHAKE, ConnectionState, Side

__all__ = [
    "DEFAULT_MAX_FDS",
    "DEFAULT_MAX_MSG_SIZE",
    "NEED_DATA",
    "BadMessage",
    "Connection",
    "Event",
    "Message",
    "Side",
    "decode_body",
    "encode_body",
]

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack

#: A packer's buffer starts at 256 KiB and grows to the largest body it packed; past this
#: size the connection takes a new packer rather than keep the grown one.
PACKER_KEEP = 256 << 10

MAX_DEPTH = 32  # nesting of maps/arrays in a body; msgpack's own limit is 1024


class NeedData(enum.Enum):
    """Sentinel: no complete message buffered yet."""

    NEED_DATA = "need_data"


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Message:
    """One whole, well-formed message."""

    msg_id: int
    command: int
    flags: int
    error: int
    body: dict[str, Any]
    fds: tuple[int, ...] = ()

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == TYPE_REPLY

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & FLAG_NO_REPLY)


_new_object = object.__new__


def slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The setter of a slots class's field, which bypasses a frozen class's ``__setattr__``
    (for building a fresh instance only)."""
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


_set_msg_id = slot_setter(Message, "msg_id")
_set_command = slot_setter(Message, "command")
_set_flags = slot_setter(Message, "flags")
_set_error = slot_setter(Message, "error")
_set_body = slot_setter(Message, "body")
_set_fds = slot_setter(Message, "fds")


def _message(
    msg_id: int, command: int, flags: int, error: int, body: dict[str, Any], fds: tuple[int, ...]
) -> Message:
    """``Message(...)``, built through its slots: a frozen dataclass's ``__init__`` goes
    through ``object.__setattr__`` per field, more than half a microsecond a message."""
    msg = _new_object(Message)
    _set_msg_id(msg, msg_id)
    _set_command(msg, command)
    _set_flags(msg, flags)
    _set_error(msg, error)
    _set_body(msg, body)
    _set_fds(msg, fds)
    return msg


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message whose header framed correctly but whose body cannot be used.

    The receiver answers it with an error reply (``errno`` and ``reason``) and closes ``fds``.
    """

    msg_id: int
    command: int
    flags: int
    errno: int
    reason: str
    fds: tuple[int, ...] = ()


Event = Message | BadMessage | NeedData


def _depth_ok(obj: Any, limit: int) -> bool:
    if isinstance(obj, dict):  # the common flat body: no container inside, nothing to walk
        for value in obj.values():
            if isinstance(value, dict | list):
                break
        else:
            return limit > 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth >= limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


def decode_body(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode one body; raise ``ValueError`` with a reason the peer can read.

    The frame size bounds the body, and msgpack bounds every length by the input's size.
    """
    if not payload:
        return {}
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except msgpack.ExtraData:
        raise ValueError("body has bytes after its msgpack object") from None
    except (msgpack.UnpackException, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid msgpack ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise ValueError("body nests too deep") from None
    if not isinstance(body, dict):
        raise ValueError(f"body must be a map, not {type(body).__name__}")
    if not _depth_ok(body, MAX_DEPTH):
        raise ValueError(f"body nests deeper than {MAX_DEPTH} levels")
    return body


def encode_body(body: dict[str, Any] | None) -> bytes:
    if not body:
        return b""
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


class Connection:
    """One side of a siov connection, without I/O.

    ``role`` (a :class:`Side`) decides what may arrive: a server accepts only commands (a reply
    would answer a command it never sent), a client accepts replies to its outstanding commands
    and events.
    """

    def __init__(
        self,
        role: Side,
        *,
        max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
        max_fds: int = DEFAULT_MAX_FDS,
    ) -> None:
        self.role = role
        self.max_msg_size = max_msg_size
        self.max_fds = max_fds
        self._buf = bytearray()
        self._start = 0  # offset of the first unread byte in _buf
        self._stream_pos = 0  # stream offset of _buf[0]
        self._fds: deque[tuple[int, list[int]]] = deque()  # (offset of the last byte, fds)
        self._next_id = 0
        self._outstanding: set[int] = set()
        self.closed = False
        self.state = ConnectionState(role)
        #: The flags of the messages this side receives most: requests (server), replies
        #: (client); next_event lets their header through with fewer checks.
        self._plain_flags = TYPE_COMMAND if role is Side.SERVER else TYPE_REPLY
        #: One packer for this connection's bodies (msgpack resets it after a failed pack).
        self._pack = msgpack.Packer(use_bin_type=True).pack

    # ---- receiving -------------------------------------------------------------------------

    def receive_data(
        self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()
    ) -> None:
        """Buffer bytes (and the fds that came with them). ``b""`` means end of stream.

        The fds belong to the message holding the *last* byte of ``data``. Linux ends a stream
        read right after the data that carried fds, but glues data sent earlier in front of it
        (af_unix ``unix_stream_read_generic``), so the first byte may belong to an earlier
        message; the last byte is always in the one the fds rode on, provided its sender kept
        that ``sendmsg`` to one message (SPEC.md §1).
        """
        if fds:
            last = self._stream_pos + len(self._buf) + max(len(data), 1) - 1
            self._fds.append((last, list(fds)))
        if data:
            self._buf += data
        else:
            self.closed = True
            self.state.close()

    def _take_fds(self, end: int) -> tuple[int, ...]:
        taken: list[int] = []
        while self._fds and self._fds[0][0] < end:
            taken.extend(self._fds.popleft()[1])
        return tuple(taken)

    def held_fds(self) -> int:
        """How many received fds wait for their message's remaining bytes (not cleared)."""
        if not self._fds:
            return 0
        return sum(len(fds) for _, fds in self._fds)

    def pending_header(self) -> tuple[int, int] | None:
        """``(msg_id, command)`` of the message whose bytes are still arriving, once its
        header is in."""
        if len(self._buf) - self._start < HEADER_SIZE:
            return None
        msg_id, command = HEADER.unpack_from(self._buf, self._start)[:2]
        return msg_id, command

    def pending_fds(self) -> list[int]:
        """Fds received but not yet handed out with a message: the caller must close them."""
        out = [fd for _, fds in self._fds for fd in fds]
        self._fds.clear()
        return out

    def next_event(self) -> Event:
        state = self.state
        if state.error is not None:  # state.check_open(), inline: every message
            raise state.error
        buf, start = self._buf, self._start
        avail = len(buf) - start
        if avail < HEADER_SIZE:
            return NEED_DATA
        msg_id, command, size, flags, error = _unpack_header(buf, start)
        # The header every request (server) or plain reply (client) has passes at once; any
        # other is judged by _check_header.
        if (
            flags != self._plain_flags
            or not HEADER_SIZE <= size <= self.max_msg_size
            or (flags == TYPE_REPLY and msg_id not in self._outstanding)
        ):
            self._check_header(msg_id, command, size, flags)
        if avail < size:
            return NEED_DATA
        begin = start + HEADER_SIZE
        end = start + size
        # One copy (a bytearray slice); msgpack reads it as it reads bytes.
        payload = buf[begin:end] if end > begin else b""
        self._start = end
        fds = self._take_fds(self._stream_pos + end) if self._fds else ()
        self._compact()
        if flags & TYPE_MASK == TYPE_REPLY:
            self._outstanding.discard(msg_id)
        if len(fds) > self.max_fds:
            return BadMessage(
                msg_id,
                command,
                flags,
                errno.EINVAL,
                f"{len(fds)} fds on one message, more than the negotiated {self.max_fds}",
                fds,
            )
        if payload:
            try:
                body = decode_body(payload)
            except ValueError as exc:
                return BadMessage(msg_id, command, flags, errno.EINVAL, str(exc), fds)
        else:
            body = {}
        if command in HANDSHAKE and self.role is Side.CLIENT and flags == TYPE_REPLY:
            state.replied(command, body)
            self.max_msg_size = min(self.max_msg_size, state.limits.max_msg_size)
        return _message(msg_id, command, flags, error, body, fds)

    def _check_header(self, msg_id: int, command: int, size: int, flags: int) -> None:
        fail = self.state.remote_error
        if size < HEADER_SIZE:
            fail(errno.EINVAL, f"message size {size} is below the header", msg_id)
        if size > self.max_msg_size:
            fail(
                errno.EMSGSIZE,
                f"message size {size} exceeds the maximum {self.max_msg_size}",
                msg_id,
            )
        kind = flags & TYPE_MASK
        if kind not in (TYPE_COMMAND, TYPE_REPLY) or flags & ~KNOWN_FLAGS:
            fail(errno.EINVAL, f"unknown flags {flags:#x}", msg_id)
        if kind == TYPE_REPLY:
            if self.role is Side.SERVER or msg_id not in self._outstanding:
                fail(errno.EPROTO, f"reply {msg_id} answers no command that was sent", msg_id)
        elif self.role is Side.CLIENT and not is_event(command):
            fail(errno.EPROTO, f"command {command:#x} sent to a client", msg_id)

    def _compact(self) -> None:
        if self._start == len(self._buf):
            self._stream_pos += self._start
            self._buf.clear()
            self._start = 0
        elif self._start > 65536:
            self._stream_pos += self._start
            del self._buf[: self._start]
            self._start = 0

    # ---- sending ---------------------------------------------------------------------------

    def next_msg_id(self) -> int:
        """A msg_id no outstanding command uses (ids are 16 bits and wrap)."""
        if len(self._outstanding) > MAX_MSG_ID:
            raise LocalProtocolError(errno.EAGAIN, "every msg_id is in flight")
        while True:
            msg_id = self._next_id
            self._next_id = (self._next_id + 1) & MAX_MSG_ID
            if msg_id not in self._outstanding:
                return msg_id

    def send_command(
        self,
        command: int,
        body: dict[str, Any] | None = None,
        *,
        msg_id: int | None = None,
        no_reply: bool = False,
        n_fds: int = 0,
    ) -> tuple[int, bytes]:
        """Bytes of a command (``n_fds`` fds will ride on it); returns ``(msg_id, data)``.

        A reply is expected unless no_reply. The state machine must allow the command now:
        otherwise :class:`LocalProtocolError`, and nothing is recorded.
        """
        if msg_id is None:
            msg_id = self.next_msg_id()
        flags = TYPE_COMMAND | (FLAG_NO_REPLY if no_reply else 0)
        data = self._frame(msg_id, command, flags, 0, self._encode(body))
        self.state.check_send_command(command, len(data), n_fds)
        if not no_reply:
            self._outstanding.add(msg_id)
        return msg_id, data

    def send_reply(self, msg_id: int, command: int, body: dict[str, Any] | None = None) -> bytes:
        """Bytes of a successful reply. Larger than the negotiated ``max_msg_size``:
        :class:`LocalProtocolError` (``EMSGSIZE``); a VERSION or AUTH reply moves the state."""
        data = self._frame(msg_id, command, TYPE_REPLY, 0, self._encode(body))
        self.state.check_send_reply(len(data))
        if command in HANDSHAKE and body is not None:
            self.state.replied(command, body)
        return data

    def send_error(
        self,
        msg_id: int,
        command: int,
        err: int,
        message: str,
        detail: dict[str, Any] | None = None,
    ) -> bytes:
        """An error reply: the errno in the header, the human message in the body, and any
        structured ``detail`` fields beside it (SPEC §5)."""
        body = self._encode({**(detail or {}), "message": message})
        return self._frame(msg_id, command, TYPE_REPLY | FLAG_ERROR, err, body)

    def forget(self, msg_id: int) -> None:
        """Stop expecting a reply (the caller gave up waiting)."""
        self._outstanding.discard(msg_id)

    def _encode(self, body: dict[str, Any] | None) -> bytes:
        """:func:`encode_body` with this connection's packer (one fewer allocation a
        message); a packer that grew for a large body is dropped, not kept."""
        if not body:
            return b""
        data: bytes = self._pack(body)
        if len(data) > PACKER_KEEP:
            self._pack = msgpack.Packer(use_bin_type=True).pack
        return data

    @staticmethod
    def _frame(msg_id: int, command: int, flags: int, error: int, payload: bytes) -> bytes:
        return _pack_header(msg_id, command, HEADER_SIZE + len(payload), flags, error) + payload
