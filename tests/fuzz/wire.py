"""The fuzzers' side of the wire: an independent framer, one connection's exchange, accounting.

Nothing here uses :mod:`siov_protocol.connection`: the fuzzers must not trust the code they
test. The wire constants and framing are the tests' raw client's (:mod:`tests.rawclient`).
:func:`frame_stream` reads a byte stream the way SPEC.md §4 says the daemon must, and so
predicts, for any bytes a fuzzer sends, how many replies come back and where the daemon closes.
:func:`account` then checks that the daemon did exactly that.
"""

from __future__ import annotations

import array
import errno
import select
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tests.rawclient import (
    FLAG_ERROR,
    FLAG_NO_REPLY,
    HDR,
    HEADER_SIZE,
    KNOWN_FLAGS,
    TYPE_MASK,
    TYPE_REPLY,
)

EVENT_BASE = 0x200
MAX_MSG_SIZE = 1 << 20  # the daemon's protocol.max_msg_size (default)

#: What an error reply to garbage may say. EIO is absent on purpose: it means a handler crashed.
ALLOWED_ERRNOS = frozenset(
    {
        errno.EINVAL,
        errno.ERANGE,
        errno.ENOSYS,
        errno.EPROTO,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.EEXIST,
        errno.EBUSY,
        errno.ENOSPC,
        errno.EFAULT,
        errno.EMSGSIZE,
        errno.ENOTSUP,
        errno.EOPNOTSUPP,
        errno.ENODEV,
        errno.EOVERFLOW,
        errno.ENOMEM,
        errno.EAGAIN,
        # PAGE_REQUEST routed back to the requesting connection, which cannot answer while
        # its own request waits (SPEC §8.19): refused at once, so every frame is answered
        errno.EDEADLK,
        # a reserved region over mappings, or a map into one (iommufd's answer, SPEC §8.16)
        errno.EADDRINUSE,
        # TRANSLATE of a device fenced after an ATS invalidation time-out (SPEC §8.21)
        errno.ETIMEDOUT,
    }
)


# ---- the oracle --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Framed:
    """One message as the daemon frames it. ``bad`` is the errno of a bad header, else None."""

    offset: int
    msg_id: int
    command: int
    size: int
    flags: int
    bad: int | None = None

    @property
    def wants_reply(self) -> bool:
        # A bad header is always answered: the reply says why the connection ends.
        return self.bad is not None or not self.flags & FLAG_NO_REPLY

    @property
    def reply_key(self) -> tuple[int, int]:
        return (self.msg_id, 0 if self.bad is not None else self.command)


def header_errno(size: int, flags: int, max_msg_size: int = MAX_MSG_SIZE) -> int | None:
    """SPEC §4: the errno of a bad header, in the order the checks apply; None if it frames."""
    if size < HEADER_SIZE:
        return errno.EINVAL
    if size > max_msg_size:
        return errno.EMSGSIZE
    if flags & TYPE_MASK not in (0, TYPE_REPLY) or flags & ~KNOWN_FLAGS:
        return errno.EINVAL
    if flags & TYPE_MASK == TYPE_REPLY:
        return errno.EPROTO  # the daemon never sends a command that expects a reply
    return None


def frame_stream(stream: bytes, max_msg_size: int = MAX_MSG_SIZE) -> tuple[list[Framed], int]:
    """Frame ``stream`` as the daemon must: the messages it sees, and how many bytes it uses.

    The list ends at the first bad header (the daemon answers it and closes) or where a
    message is incomplete (the daemon waits for the rest).
    """
    out: list[Framed] = []
    pos = 0
    while len(stream) - pos >= HEADER_SIZE:
        msg_id, command, size, flags, _ = HDR.unpack_from(stream, pos)
        bad = header_errno(size, flags, max_msg_size)
        if bad is not None:
            out.append(Framed(pos, msg_id, command, size, flags, bad))
            return out, pos + HEADER_SIZE
        if len(stream) - pos < size:
            break
        out.append(Framed(pos, msg_id, command, size, flags))
        pos += size
    return out, pos


# ---- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    msg_id: int
    command: int
    flags: int
    error: int
    body: dict[str, Any]

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == TYPE_REPLY

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)


def parse_replies(data: bytes) -> list[Received]:
    """Everything the daemon sent; the daemon's own framing must be perfect."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= HEADER_SIZE, f"daemon sent a torn header at byte {pos}"
        msg_id, command, size, flags, err = HDR.unpack_from(data, pos)
        assert HEADER_SIZE <= size <= len(data) - pos, f"daemon sent a bad size {size} at {pos}"
        payload = data[pos + HEADER_SIZE : pos + size]
        decoded = msgpack.unpackb(payload, raw=False) if payload else {}
        assert isinstance(decoded, dict), f"daemon sent a body that is not a map: {decoded!r}"
        out.append(Received(msg_id, command, flags, err, decoded))
        pos += size
    return out


# ---- one connection --------------------------------------------------------------------------


@dataclass
class Chunk:
    """Bytes written with one ``sendmsg``; ``fds`` ride on the first byte."""

    data: bytes
    fds: tuple[int, ...] = ()


@dataclass
class Plan:
    """What one fuzz connection sends after its prelude.

    ``tokens`` maps the stream offset of each well-formed PING (a bystander inside the fuzz
    stream) to its frame bytes: when the daemon frames a message there with those bytes, its
    payload must come back.
    """

    chunks: list[Chunk] = field(default_factory=list)
    tokens: dict[int, bytes] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)  # where each built frame begins
    size: int = 0
    frames: int = 0  # frames the generator built

    def add(self, data: bytes, fds: tuple[int, ...] = (), *, token: bool = False) -> None:
        if token:
            self.tokens[self.size] = data
        self.starts.append(self.size)
        if fds or not self.chunks or self.chunks[-1].fds or len(self.chunks[-1].data) > 65536:
            self.chunks.append(Chunk(data, fds))
        else:
            self.chunks[-1].data += data
        self.size += len(data)
        self.frames += 1

    @property
    def stream(self) -> bytes:
        return b"".join(c.data for c in self.chunks)


class DaemonHung(AssertionError):
    pass


def exchange(
    sock: socket.socket,
    chunks: Sequence[Chunk],
    *,
    replies_expected: int,
    expect_close: bool,
    deadline_s: float = 60.0,
) -> tuple[bytes, bool]:
    """Write every chunk while reading whatever comes back; return (bytes read, closed).

    Reading stops at EOF, or (when the daemon is not expected to close) once
    ``replies_expected`` replies have arrived. Writes stop when the daemon has closed. A
    daemon that neither answers nor closes within ``deadline_s`` is a hang: :class:`DaemonHung`.
    """
    sock.setblocking(False)
    fd = sock.fileno()
    received = bytearray()
    closed = False
    replies = 0
    scanned = 0  # bytes of ``received`` already counted into ``replies``
    queue = [(memoryview(c.data), c.fds) for c in chunks if c.data]
    deadline = time.monotonic() + deadline_s
    poller = select.poll()
    while True:
        writing = bool(queue) and not closed
        if not writing and (closed or (not expect_close and replies >= replies_expected)):
            break
        poller.register(fd, select.POLLIN | (select.POLLOUT if writing else 0))
        left = deadline - time.monotonic()
        if left <= 0:
            raise DaemonHung(
                f"no answer or close: {replies}/{replies_expected} replies, "
                f"{len(queue)} chunks unsent, close expected: {expect_close}"
            )
        events = poller.poll(min(left, 1.0) * 1000)
        for _, ev in events:
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    data = None
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if data == b"":
                    closed = True
                elif data:
                    received += data
                    while len(received) - scanned >= HEADER_SIZE:
                        size = HDR.unpack_from(received, scanned)[2]
                        if size < HEADER_SIZE or len(received) - scanned < size:
                            break
                        flags = HDR.unpack_from(received, scanned)[3]
                        replies += flags & TYPE_MASK == TYPE_REPLY
                        scanned += size
            if ev & select.POLLOUT and queue and not closed:
                view, fds = queue[0]
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                try:
                    sent = sock.sendmsg([view], anc)
                except BlockingIOError:
                    sent = 0
                except (BrokenPipeError, ConnectionResetError):
                    queue.clear()  # the daemon has closed; what is left is never read
                    continue
                if sent == len(view):
                    queue.pop(0)
                elif sent:
                    queue[0] = (view[sent:], ())
        poller.unregister(fd)
    return bytes(received), closed


# ---- accounting ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the fuzzers did, summed over connections."""

    connections: int = 0
    frames_built: int = 0  # frames the generators made
    frames_framed: int = 0  # frames the daemon saw (each answered, or no-reply by request)
    frames_unread: int = 0  # frames after a bad header: never read, the connection closed
    replies: int = 0
    error_replies: int = 0
    no_reply: int = 0
    closes: int = 0  # connections the daemon closed after a bad header
    events: int = 0
    tokens: int = 0  # bystander PINGs inside fuzz streams, each echoed
    fds_sent: int = 0
    errnos: Counter[int] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        for name in (
            "connections",
            "frames_built",
            "frames_framed",
            "frames_unread",
            "replies",
            "error_replies",
            "no_reply",
            "closes",
            "events",
            "tokens",
            "fds_sent",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errnos.update(other.errnos)


def expected_replies(framed: list[Framed]) -> int:
    return sum(f.wants_reply for f in framed)


def account(
    stream: bytes, frames_built: int, tokens: dict[int, bytes], data: bytes, closed: bool
) -> Tally:
    """Check one connection's replies against the oracle; return its tally.

    Every framed message is answered exactly once (matched by ``(msg_id, command)``, since
    replies may come out of order), except those sent with the no-reply flag; a bad header gets
    its errno and then the close; an error is never EIO and always carries a message; each
    intact token PING is echoed.
    """
    framed, _ = frame_stream(stream)
    got = parse_replies(data)
    replies = [r for r in got if r.is_reply]
    events = [r for r in got if not r.is_reply]
    for ev in events:
        assert ev.command >= EVENT_BASE and ev.flags & FLAG_NO_REPLY, f"not an event: {ev}"
    want = Counter(f.reply_key for f in framed if f.wants_reply)
    have = Counter((r.msg_id, r.command) for r in replies)
    assert have == want, (
        f"replies do not match frames: missing {dict(want - have)}, extra {dict(have - want)}"
    )
    bad = framed[-1] if framed and framed[-1].bad is not None else None
    if bad is not None:
        assert closed, "the daemon kept the connection after a bad header"
        answer = [r for r in replies if r.msg_id == bad.msg_id and r.command == 0]
        assert any(r.error == bad.bad for r in answer), (bad, answer)
    else:
        assert not closed, "the daemon closed a connection that sent no bad header"
    tally = Tally(connections=1, frames_built=frames_built, frames_framed=len(framed))
    tally.replies = len(replies)
    tally.events = len(events)
    tally.closes = int(closed)
    tally.no_reply = sum(not f.wants_reply for f in framed)
    for r in replies:
        if r.is_error:
            assert r.error in ALLOWED_ERRNOS, (errno.errorcode.get(r.error, r.error), r.body)
            assert isinstance(r.body.get("message"), str) and r.body["message"], r.body
            tally.error_replies += 1
            tally.errnos[r.error] += 1
    seen = {f.offset: f for f in framed if f.bad is None}
    echoes = Counter(
        bytes(r.body["payload"]) for r in replies if not r.is_error and "payload" in r.body
    )
    for offset, data_ in tokens.items():
        f = seen.get(offset)
        if f is None or stream[offset : offset + f.size] != data_:
            continue  # an earlier mutation swallowed it: the daemon never saw this PING
        payload = msgpack.unpackb(data_[HEADER_SIZE:], raw=False)["payload"]
        assert echoes[payload] >= 1, f"token PING at {offset} was not echoed"
        tally.tokens += 1
    return tally
