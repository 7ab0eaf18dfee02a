"""Bad input over a real socket to a real siovd: each gets its exact errno, nothing else breaks.

The framing survives a bad body (the same connection keeps working); a bad header gets an error
reply naming it and then a close. Either way a second client never notices.
"""

from __future__ import annotations

import errno
import os

import msgpack
import pytest

from siov_protocol import Command
from tests.conftest import DaemonProcess
from tests.helpers import expect_error
from tests.rawclient import RawClient


@pytest.fixture
def client(siovd_proc: DaemonProcess) -> RawClient:
    c = RawClient(siovd_proc.path)
    c.negotiate()
    return c


@pytest.fixture
def bystander(siovd_proc: DaemonProcess) -> RawClient:
    c = RawClient(siovd_proc.path)
    c.negotiate()
    return c


def still_works(*clients: RawClient) -> None:
    for c in clients:
        reply = c.request(Command.PING, {"payload": b"ok"})
        assert not reply.is_error and reply.body == {"payload": b"ok"}


def test_unknown_command_is_enosys(client: RawClient, bystander: RawClient) -> None:
    expect_error(client.request(0x7777, {}), errno.ENOSYS, "unknown command 0x7777")
    still_works(client, bystander)


def test_body_not_a_map_is_einval(client: RawClient, bystander: RawClient) -> None:
    expect_error(client.request(Command.PING, [1, 2, 3]), errno.EINVAL, "body must be a map")
    still_works(client, bystander)


def test_body_not_msgpack_is_einval(client: RawClient, bystander: RawClient) -> None:
    msg_id, data = client.frame(Command.PING, b"\xc1\xc1\xc1")  # 0xc1 is never used
    client.send_raw(data)
    reply = client.recv()
    assert reply.msg_id == msg_id
    expect_error(reply, errno.EINVAL, "not valid msgpack")
    still_works(client, bystander)


def test_trailing_bytes_are_einval(client: RawClient) -> None:
    _, data = client.frame(Command.PING, msgpack.packb({}) + b"\x00")
    client.send_raw(data)
    expect_error(client.recv(), errno.EINVAL, "bytes after")
    still_works(client)


def test_missing_field_is_einval(client: RawClient, bystander: RawClient) -> None:
    # VERSION's major is required; a second VERSION is checked field by field first.
    expect_error(client.request(Command.VERSION, {"minor": 0}), errno.EINVAL, "major: missing")
    still_works(client, bystander)


def test_wrong_type_is_einval(client: RawClient, bystander: RawClient) -> None:
    reply = client.request(Command.PING, {"payload": 5})
    expect_error(reply, errno.EINVAL, "payload: expected bytes, got int")
    still_works(client, bystander)


def test_unknown_field_is_einval(client: RawClient) -> None:
    expect_error(client.request(Command.INFO, {"verbose": True}), errno.EINVAL, "verbose: unknown")
    still_works(client)


def test_value_out_of_range_is_erange(siovd_proc: DaemonProcess, bystander: RawClient) -> None:
    c = RawClient(siovd_proc.path)
    reply = c.request(Command.VERSION, {"major": 1, "minor": 70000})
    expect_error(reply, errno.ERANGE, "minor: 70000 is outside")
    c.negotiate()  # the connection is still usable, and still negotiates
    still_works(c, bystander)


def test_command_before_version_is_eproto(siovd_proc: DaemonProcess, bystander: RawClient) -> None:
    c = RawClient(siovd_proc.path)
    expect_error(c.request(Command.PING), errno.EPROTO, "before VERSION")
    expect_error(c.request(Command.INFO), errno.EPROTO, "before VERSION")
    c.negotiate()
    still_works(c, bystander)


def test_second_version_is_einval(client: RawClient) -> None:
    expect_error(client.request(Command.VERSION, {"major": 1, "minor": 0}), errno.EINVAL, "already")
    still_works(client)


def test_unsupported_major_is_enotsup(siovd_proc: DaemonProcess) -> None:
    c = RawClient(siovd_proc.path)
    expect_error(c.request(Command.VERSION, {"major": 9, "minor": 0}), errno.ENOTSUP, "major 9")
    c.negotiate()


def test_size_below_header_closes(client: RawClient, bystander: RawClient) -> None:
    msg_id, data = client.frame(Command.PING, size=8)
    client.send_raw(data)
    reply = client.recv()
    assert reply.msg_id == msg_id
    expect_error(reply, errno.EINVAL, "below the header")
    assert client.is_closed()
    still_works(bystander)


def test_size_above_max_closes(client: RawClient, bystander: RawClient) -> None:
    msg_id, data = client.frame(Command.PING, size=(1 << 20) + 1)
    client.send_raw(data)
    reply = client.recv()
    assert reply.msg_id == msg_id
    expect_error(reply, errno.EMSGSIZE, "exceeds the maximum")
    assert client.is_closed()
    still_works(bystander)


def test_reply_from_client_closes(client: RawClient, bystander: RawClient) -> None:
    client.send(Command.PING, {}, flags=0x1)
    expect_error(client.recv(), errno.EPROTO, "answers no command")
    assert client.is_closed()
    still_works(bystander)


def test_unknown_flags_close(client: RawClient) -> None:
    client.send(Command.PING, {}, flags=0x40)
    expect_error(client.recv(), errno.EINVAL, "unknown flags")
    assert client.is_closed()


def test_fds_on_a_command_taking_none_are_refused_and_closed(
    client: RawClient, bystander: RawClient
) -> None:
    r, w = os.pipe()
    try:
        client.send(Command.PING, {}, fds=[w])
        os.close(w)  # now only the daemon holds the write end
        expect_error(client.recv(), errno.EINVAL, "PING takes no file descriptors, got 1")
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # EOF: the daemon closed its copy
    finally:
        os.close(r)
    still_works(client, bystander)


def test_more_fds_than_negotiated_are_refused_and_closed(client: RawClient) -> None:
    pipes = [os.pipe() for _ in range(9)]
    try:
        client.send(Command.PING, {}, fds=[w for _, w in pipes])
        for _, w in pipes:
            os.close(w)
        expect_error(client.recv(), errno.EINVAL, "9 fds")
        for r, _ in pipes:
            os.set_blocking(r, False)
            assert os.read(r, 1) == b""
    finally:
        for r, _ in pipes:
            os.close(r)
    still_works(client)


def test_no_reply_flag_suppresses_the_reply(client: RawClient) -> None:
    client.send(Command.PING, {}, flags=0x10)
    # the next reply is for the next request, not for the no-reply PING
    msg_id = client.send(Command.PING, {})
    assert client.recv().msg_id == msg_id


def test_no_reply_flag_suppresses_error_replies_too(client: RawClient) -> None:
    # Regression: a no-reply message whose body failed to decode still got an error reply.
    _, bad_body = client.frame(Command.PING, b"\xc1", flags=0x10)
    _, unknown = client.frame(0x7777, msgpack.packb({}), flags=0x10)
    _, too_many_fds = client.frame(Command.PING, msgpack.packb({}), flags=0x10)
    client.send_raw(bad_body)
    client.send_raw(unknown)
    r, w = os.pipe()
    try:
        client.send_raw(too_many_fds, [w])
    finally:
        os.close(w)
    msg_id = client.send(Command.PING, {"payload": b"after"})
    reply = client.recv()
    assert reply.msg_id == msg_id and reply.body == {"payload": b"after"}, reply
    os.set_blocking(r, False)
    assert os.read(r, 1) == b""  # the refused fd was still closed
    os.close(r)


def test_split_and_coalesced_frames(client: RawClient) -> None:
    ids = []
    blob = b""
    for _ in range(50):
        msg_id, data = client.frame(Command.PING, msgpack.packb({"payload": b"x" * 100}))
        ids.append(msg_id)
        blob += data
    for i in range(0, len(blob), 7):  # byte dribble across frame boundaries
        client.send_raw(blob[i : i + 7])
    assert [client.recv().msg_id for _ in ids] == ids
