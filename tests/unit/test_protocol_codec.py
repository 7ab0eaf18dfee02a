"""The sans-IO codec: round trips, framing, and hostile bytes."""

from __future__ import annotations

import errno
import importlib
import pkgutil

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import siov_protocol
from siov_protocol import (
    NEED_DATA,
    BadMessage,
    Command,
    Connection,
    FieldError,
    LocalProtocolError,
    Message,
    ProtocolError,
    Side,
    decode,
    encode,
)
from siov_protocol.header import HEADER
from siov_protocol.messages import Capabilities, VersionReply, VersionRequest
from tests.strategies import for_schema, schema_classes

SCHEMA_MODULES = [
    importlib.import_module(f"siov_protocol.{m.name}")
    for m in pkgutil.iter_modules(siov_protocol.__path__)
]
SCHEMAS = sorted(
    {
        cls
        for mod in SCHEMA_MODULES
        for cls in schema_classes(mod)
        if mod.__name__ != "siov_protocol.header"
        and not cls.__name__.startswith("_")
        and cls.__module__.startswith("siov_protocol.messages")
    },
    key=lambda c: c.__name__,
)


def pair() -> tuple[Connection, Connection]:
    """A client and a server past VERSION (auth "none"): every command may be sent."""
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    msg_id, data = client.send_command(Command.VERSION, {"major": 1, "minor": 0})
    server.receive_data(data)
    assert isinstance(server.next_event(), Message)
    caps = Capabilities()
    reply = VersionReply(major=1, minor=0, capabilities=caps, server="test", auth="none")
    client.receive_data(server.send_reply(msg_id, Command.VERSION, encode(reply)))
    assert isinstance(client.next_event(), Message)
    assert client.state.ready and server.state.ready
    return client, server


def pipe(body: dict[str, object], command: int = Command.PING) -> Message:
    client, server = pair()
    _, data = client.send_command(command, body)
    server.receive_data(data)
    event = server.next_event()
    assert isinstance(event, Message)
    return event


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_every_schema_round_trips(schema: type) -> None:
    @settings(max_examples=60, deadline=None)
    @given(for_schema(schema))
    def check(value: object) -> None:
        body = pipe(encode(value)).body
        assert decode(schema, body) == value

    check()


def test_there_are_schemas_to_test() -> None:
    assert len(SCHEMAS) >= 8


@given(st.binary(max_size=4096))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for role in Side:
        conn = Connection(role, max_msg_size=4096)
        conn.receive_data(data)
        try:
            while conn.next_event() is not NEED_DATA:
                pass
        except ProtocolError as exc:
            assert exc.errno in (errno.EINVAL, errno.EMSGSIZE, errno.EPROTO)


@given(
    st.dictionaries(st.text(max_size=5), st.integers(-(1 << 63), (1 << 64) - 1)), st.integers(0, 80)
)
@settings(max_examples=200, deadline=None)
def test_truncated_frames_wait_for_data(body: dict[str, int], cut: int) -> None:
    _, data = pair()[0].send_command(Command.PING, body)
    server = pair()[1]
    cut = min(cut, len(data) - 1)
    server.receive_data(data[:cut])
    assert server.next_event() is NEED_DATA
    server.receive_data(data[cut:])
    event = server.next_event()
    assert isinstance(event, Message) and event.body == body


def test_many_frames_in_one_chunk_and_fds_follow_their_message() -> None:
    client, server = pair()
    _, a = client.send_command(Command.PING, {"n": 1})
    _, b = client.send_command(Command.MEM_REGISTER, {"n": 2})
    _, c = client.send_command(Command.PING, {"n": 3})
    # What Linux hands a reader when a, then b with fds, then c were each sent on their own:
    # a is glued in front of b, the read ends with b (the data that carried fds), c comes next.
    server.receive_data(a[:5])
    server.receive_data(a[5:] + b, [7, 8])
    server.receive_data(c)
    events = [server.next_event() for _ in range(3)]
    assert [e.body["n"] for e in events if isinstance(e, Message)] == [1, 2, 3]
    assert [e.fds for e in events if isinstance(e, Message)] == [(), (7, 8), ()]
    assert server.next_event() is NEED_DATA


def test_fds_stay_with_their_message_through_a_real_socket() -> None:
    """Regression: fds went to the message *before* theirs when the kernel glued it in front.

    The reader here is the daemon's: large ``recvmsg`` calls fed to the connection.
    """
    import array
    import os
    import socket

    a, b = socket.socketpair()
    client, server = pair()
    r, w = os.pipe()
    try:
        frames = [client.send_command(Command.PING, {"n": i})[1] for i in range(40)]
        with_fd = client.send_command(Command.MEM_REGISTER, {"n": 40})[1]
        a.sendall(b"".join(frames))
        a.sendmsg([with_fd], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        a.sendall(client.send_command(Command.PING, {"n": 41})[1])
        a.close()
        got: list[Message] = []
        while True:
            data, anc, _, _ = b.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 8))
            fds = [fd for _, _, raw in anc for fd in array.array("i", raw)]
            server.receive_data(data, fds)
            while isinstance(event := server.next_event(), Message):
                got.append(event)
            if not data:
                break
        assert [m.body["n"] for m in got] == list(range(42))
        carried = {m.body["n"]: m.fds for m in got if m.fds}
        assert list(carried) == [40] and len(carried[40]) == 1
        os.close(carried[40][0])
    finally:
        b.close()
        os.close(r)
        os.close(w)


def test_bad_body_keeps_framing() -> None:
    server = Connection(Side.SERVER)
    bad = HEADER.pack(1, Command.PING, 16 + 3, 0, 0) + b"\xc1\xc1\xc1"
    _, good = pair()[0].send_command(Command.PING, {"ok": True})
    server.receive_data(bad + good)
    first = server.next_event()
    assert isinstance(first, BadMessage) and first.errno == errno.EINVAL
    second = server.next_event()
    assert isinstance(second, Message) and second.body == {"ok": True}


def test_too_deep_body_is_bad_message() -> None:
    body: object = 1
    for _ in range(40):
        body = {"a": body}
    server = Connection(Side.SERVER)
    server.receive_data(HEADER.pack(1, Command.PING, 0, 0, 0)[:0] + _frame(msgpack.packb(body)))
    event = server.next_event()
    assert isinstance(event, BadMessage) and "deeper" in event.reason


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(1, Command.PING, 16 + len(payload), 0, 0) + payload


def test_too_many_fds_is_bad_message() -> None:
    server = Connection(Side.SERVER, max_fds=2)
    server.receive_data(_frame(b""), [3, 4, 5])
    event = server.next_event()
    assert isinstance(event, BadMessage) and event.fds == (3, 4, 5)


@pytest.mark.parametrize(
    ("size", "flags", "err"),
    [
        (15, 0, errno.EINVAL),
        (0, 0, errno.EINVAL),
        (1 << 21, 0, errno.EMSGSIZE),
        (16, 0x2, errno.EINVAL),
        (16, 0x1, errno.EPROTO),
        (16, 0x80, errno.EINVAL),
    ],
)
def test_bad_headers_are_fatal(size: int, flags: int, err: int) -> None:
    server = Connection(Side.SERVER)
    server.receive_data(HEADER.pack(9, Command.PING, size, flags, 0))
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.errno == err and info.value.msg_id == 9


def test_client_accepts_only_its_replies_and_events() -> None:
    client, server = pair()
    msg_id, _ = client.send_command(Command.PING)
    client.receive_data(server.send_reply(msg_id, Command.PING, {}))
    assert isinstance(client.next_event(), Message)
    client.receive_data(server.send_reply(msg_id, Command.PING, {}))  # answered twice
    with pytest.raises(ProtocolError):
        client.next_event()
    other = Connection(Side.CLIENT)
    _, event = server.send_command(Command.EVENT_FAULT, {"iova": 1}, no_reply=True)
    other.receive_data(event)
    assert isinstance(other.next_event(), Message)
    other.receive_data(HEADER.pack(0, Command.PING, 16, 0x10, 0))  # a server never sends this
    with pytest.raises(LocalProtocolError):
        server.send_command(Command.PING, {}, no_reply=True)
    with pytest.raises(ProtocolError):
        other.next_event()


def test_msg_ids_skip_outstanding_ones() -> None:
    client = pair()[0]
    first, _ = client.send_command(Command.PING)
    seen = {first}
    for _ in range(0xFFFF):
        msg_id, _ = client.send_command(Command.PING)
        assert msg_id not in seen
        seen.add(msg_id)
    with pytest.raises(ProtocolError):
        client.send_command(Command.PING)


def test_error_reply_carries_errno_and_message() -> None:
    client, server = pair()
    msg_id, _ = client.send_command(Command.PING)
    client.receive_data(server.send_error(msg_id, Command.PING, errno.EBUSY, "attached"))
    event = client.next_event()
    assert isinstance(event, Message)
    assert event.is_error and event.error == errno.EBUSY and event.body == {"message": "attached"}


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(FieldError) as info:
        decode(VersionRequest, {"major": 1, "minor": 0, "capabilities": {"max_fds": "x"}})
    assert info.value.field == "capabilities.max_fds" and info.value.errno == errno.EINVAL
    with pytest.raises(FieldError) as info:
        decode(VersionRequest, {"major": 1, "minor": 0, "capabilities": {"max_fds": 254}})
    assert info.value.errno == errno.ERANGE
    with pytest.raises(FieldError) as info:
        decode(Capabilities, {"page_sizes": [1] * 9})
    assert info.value.errno == errno.ERANGE
    with pytest.raises(FieldError) as info:
        decode(VersionRequest, {"major": True, "minor": 0})
    assert info.value.errno == errno.EINVAL
