"""The connection state machine (siov_protocol.state), on both ends, without a socket."""

from __future__ import annotations

import errno

import pytest

from siov_protocol import (
    BadMessage,
    Command,
    Connection,
    LocalProtocolError,
    Message,
    Phase,
    RemoteProtocolError,
    Side,
    encode,
)
from siov_protocol.header import HEADER
from siov_protocol.messages import Capabilities, VersionReply


def version_reply(auth: str = "none", max_msg_size: int = 1 << 20, max_fds: int = 8) -> dict:
    caps = Capabilities(max_msg_size=max_msg_size, max_fds=max_fds)
    reply = VersionReply(major=1, minor=0, capabilities=caps, server="t", auth=auth)
    return encode(reply)


def handshake(auth: str = "none", **limits: int) -> tuple[Connection, Connection]:
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    msg_id, data = client.send_command(Command.VERSION, {"major": 1, "minor": 0})
    server.receive_data(data)
    assert isinstance(server.next_event(), Message)
    client.receive_data(server.send_reply(msg_id, Command.VERSION, version_reply(auth, **limits)))
    assert isinstance(client.next_event(), Message)
    return client, server


def test_server_refuses_by_phase_with_the_errnos_of_spec() -> None:
    state = Connection(Side.SERVER).state
    assert state.phase is Phase.AWAIT_VERSION
    assert state.refusal(Command.PING) == (
        errno.EPROTO,
        "PING before VERSION: negotiate the version first",
    )
    assert state.refusal(Command.AUTH)[0] == errno.EPROTO  # type: ignore[index]
    assert state.refusal(Command.VERSION) is None
    assert state.repeat_refusal(Command.VERSION) is None


def test_version_reply_moves_both_ends_and_sets_the_limits() -> None:
    client, server = handshake("key", max_msg_size=8192, max_fds=3)
    for state in (client.state, server.state):
        assert state.phase is Phase.AWAIT_AUTH and state.auth == "key"
        assert (state.limits.max_msg_size, state.limits.max_fds) == (8192, 3)
    assert server.state.refusal(Command.PING) == (
        errno.EACCES,
        "PING before AUTH: authenticate first",
    )
    assert server.state.repeat_refusal(Command.VERSION) == (
        errno.EINVAL,
        "VERSION was already negotiated on this connection",
    )
    assert client.max_msg_size == 8192  # the client reads no more than was agreed
    msg_id, data = client.send_command(Command.AUTH, {})
    server.receive_data(data)
    assert isinstance(server.next_event(), Message)
    client.receive_data(server.send_reply(msg_id, Command.AUTH, {"identity": "x", "role": "user"}))
    assert isinstance(client.next_event(), Message)
    assert client.state.ready and server.state.ready
    assert server.state.repeat_refusal(Command.AUTH) == (
        errno.EINVAL,
        "this connection is already authenticated",
    )


def test_auth_none_goes_straight_to_ready() -> None:
    client, server = handshake("none")
    assert client.state.ready and server.state.ready


def test_an_error_reply_to_version_leaves_the_phase() -> None:
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    msg_id, _ = client.send_command(Command.VERSION, {"major": 9, "minor": 0})
    client.receive_data(server.send_error(msg_id, Command.VERSION, errno.ENOTSUP, "major 9"))
    event = client.next_event()
    assert isinstance(event, Message) and event.is_error
    assert client.state.phase is Phase.AWAIT_VERSION is server.state.phase
    client.send_command(Command.VERSION, {"major": 1, "minor": 0})  # may try again


def test_the_client_refuses_locally_and_records_nothing() -> None:
    client = Connection(Side.CLIENT)
    with pytest.raises(LocalProtocolError) as info:
        client.send_command(Command.PING)
    assert info.value.errno == errno.EPROTO and "before VERSION" in info.value.message
    client, server = handshake("none", max_msg_size=4096, max_fds=2)
    with pytest.raises(LocalProtocolError) as info:
        client.send_command(Command.MEM_REGISTER, {"size": 4096}, n_fds=3)
    assert info.value.errno == errno.EINVAL and "max_fds 2" in info.value.message
    with pytest.raises(LocalProtocolError) as info:
        client.send_command(Command.PING, {"payload": bytes(5000)}, msg_id=77)
    assert info.value.errno == errno.EMSGSIZE and "max_msg_size 4096" in info.value.message
    with pytest.raises(LocalProtocolError) as info:
        client.send_command(Command.VERSION, {"major": 1, "minor": 0})
    assert info.value.errno == errno.EINVAL
    # nothing went on record: a reply to msg_id 77 answers no command
    client.receive_data(server.send_reply(77, Command.PING, {}))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_the_reply_size_rule_leaves_the_state_alone() -> None:
    _, server = handshake("none", max_msg_size=4096)
    with pytest.raises(LocalProtocolError) as info:
        server.send_reply(1, Command.PING, {"payload": bytes(5000)})
    assert info.value.errno == errno.EMSGSIZE
    assert "exceeds the negotiated max_msg_size 4096" in info.value.message
    assert server.state.ready and server.state.error is None
    assert server.send_reply(1, Command.PING, {"payload": b"ok"})


def test_the_daemon_sends_only_events() -> None:
    _, server = handshake()
    with pytest.raises(LocalProtocolError):
        server.send_command(Command.PING, no_reply=True)
    server.send_command(Command.EVENT_FAULT, {"iova": 0}, no_reply=True)


def test_a_remote_protocol_error_latches() -> None:
    server = Connection(Side.SERVER)
    server.receive_data(HEADER.pack(3, Command.PING, 8, 0, 0))
    with pytest.raises(RemoteProtocolError) as first:
        server.next_event()
    assert first.value.msg_id == 3 and first.value.errno == errno.EINVAL
    assert server.state.phase is Phase.CLOSED and server.state.error is first.value
    with pytest.raises(RemoteProtocolError) as again:
        server.next_event()
    assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        server.send_command(Command.EVENT_FAULT, {}, no_reply=True)


def test_a_bad_version_reply_is_the_daemons_fault() -> None:
    client = Connection(Side.CLIENT)
    msg_id, _ = client.send_command(Command.VERSION, {"major": 1, "minor": 0})
    client.receive_data(HEADER.pack(msg_id, Command.VERSION, 16, 1, 0))  # an empty body
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.errno == errno.EPROTO and "VERSION reply" in info.value.message
    assert client.state.phase is Phase.CLOSED


def test_end_of_stream_closes() -> None:
    client, _ = handshake()
    client.receive_data(b"")
    assert client.state.phase is Phase.CLOSED
    with pytest.raises(LocalProtocolError) as info:
        client.send_command(Command.PING)
    assert info.value.errno == errno.ENOTCONN


def test_a_bad_body_is_not_a_protocol_error() -> None:
    server = Connection(Side.SERVER)
    server.receive_data(HEADER.pack(1, Command.PING, 17, 0, 0) + b"\xc1")
    assert isinstance(server.next_event(), BadMessage)
    assert server.state.error is None and server.state.phase is Phase.AWAIT_VERSION
