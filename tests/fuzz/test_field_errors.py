"""Every field of every command, given every wrong type, gets EINVAL naming the field.

Systematic rather than random: for each command the daemon registers (so commands added later
are covered too), a body valid in every other field carries one field set to a value of the
wrong type (EINVAL), to a number just outside its range (ERANGE), or to text one character
too long (ERANGE). Then each known-hostile msgpack encoding, and each field of the nested
VERSION capabilities. The connection stays usable throughout.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import types
import typing
from collections.abc import Iterator
from typing import Any, get_args, get_origin

import msgpack
import pytest

from siov_protocol import Command
from siovd.service.handlers import registry
from tests.conftest import DaemonProcess
from tests.fuzz import corpus
from tests.rawclient import RawClient

#: A value of each wire type, by the Python types a schema field may accept.
SAMPLES: dict[str, Any] = {
    "int": 7,
    "float": 1.5,
    "bool": True,
    "str": "text",
    "bytes": b"bin",
    "list": [1],
    "map": {"k": 1},
    "nil": None,
}


def accepted(tp: Any) -> set[str]:
    """The wire types a field of type ``tp`` accepts."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return set().union(*(accepted(a) for a in get_args(tp)))
    if tp is type(None):
        return {"nil"}
    if tp is bool:
        return {"bool"}
    if tp is int:
        return {"int"}
    if tp is float:
        return {"int", "float"}
    if tp is str:
        return {"str"}
    if tp is bytes:
        return {"bytes"}
    if origin is list:
        return {"list"}
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return {"map"}
    if tp is Any:
        return set(SAMPLES)
    raise TypeError(f"no wire types known for {tp!r}")


def full_body(schema: type) -> dict[str, Any]:
    """Every field present and valid."""
    rng = random.Random(1)
    values = corpus.Values()
    return {
        name: corpus.value_for(tp, meta, name, rng, values)
        for name, tp, meta, _ in corpus.schema_fields(schema)
    }


def cases() -> Iterator[tuple[str, int, dict[str, Any], int, str]]:
    """(id, command, body, errno, words the message must contain)."""
    for command, handler in sorted(registry.handlers.items()):
        name = handler.command.name
        base = full_body(handler.schema)
        for field, tp, meta, _ in corpus.schema_fields(handler.schema):
            for wire, sample in SAMPLES.items():
                if wire in accepted(tp):
                    continue
                body = {**base, field: sample}
                yield f"{name}.{field}={wire}", command, body, errno.EINVAL, f"{field}: expected"
            if get_origin(tp) in (types.UnionType, typing.Union):
                tp = next(a for a in get_args(tp) if a is not type(None))
            if tp is int and meta.get("range"):
                lo, hi = meta["range"]
                for bad in (lo - 1, hi + 1):
                    if -(1 << 63) <= bad < 1 << 64:
                        body = {**base, field: bad}
                        yield f"{name}.{field}={bad:#x}", command, body, errno.ERANGE, field
            # (a field longer than a message can be is bounded by the message size: SPEC §4)
            if tp in (str, bytes) and meta.get("max_len") is not None and meta["max_len"] < 1 << 19:
                long = "x" * (meta["max_len"] + 1)
                body = {**base, field: long if tp is str else long.encode()}
                yield f"{name}.{field}=long", command, body, errno.ERANGE, f"{field}: longer"
        yield f"{name}.unknown", command, {**base, "bogus": 1}, errno.EINVAL, "bogus: unknown"


CASES = list(cases())


@pytest.fixture(scope="module")
def client(siovd_proc: DaemonProcess) -> Iterator[RawClient]:
    c = RawClient(siovd_proc.path)
    c.negotiate()  # auth "none": an admin, so admin-only commands reach their decoder too
    yield c
    c.close()


@pytest.mark.parametrize(
    ("command", "body", "err", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_field_errors(
    client: RawClient, command: int, body: dict[str, Any], err: int, words: str
) -> None:
    reply = client.request(command, body)
    assert reply.is_error and reply.error == err, (errno.errorcode.get(reply.error), reply.body)
    assert words in reply.body["message"], reply.body


def test_every_command_and_field_is_covered() -> None:
    names = {c[0].split(".")[0] for c in CASES}
    assert names == {h.command.name for h in registry.handlers.values()}
    assert len(CASES) > 300


CAPABILITY_CASES = [
    ("max_msg_size", "big"),
    ("max_msg_size", 4095),
    ("max_fds", 254),
    ("max_fds", [1]),
    ("page_sizes", 4096),
    ("page_sizes", ["4096"]),
    ("features", "events"),
    ("features", [1]),
]


@pytest.mark.parametrize(("field", "value"), CAPABILITY_CASES)
def test_nested_capabilities_are_named_with_dots(
    siovd_proc: DaemonProcess, field: str, value: Any
) -> None:
    c = RawClient(siovd_proc.path)
    try:
        caps = {field: value}
        reply = c.request(Command.VERSION, {"major": 1, "minor": 0, "capabilities": caps})
        assert reply.is_error and reply.error in (errno.EINVAL, errno.ERANGE), reply
        assert f"capabilities.{field}" in reply.body["message"], reply.body
        c.negotiate()  # refused, not negotiated: the connection can still negotiate
    finally:
        c.close()


def hostile() -> list[bytes]:
    """Each known-hostile encoding once (the generator draws them at random)."""
    out: list[bytes] = []
    for seed in range(400):
        data = corpus.hostile_payloads(random.Random(seed))
        if data not in out:
            out.append(data)
    return out


def test_hostile_msgpack_is_einval_and_the_connection_lives(client: RawClient) -> None:
    payloads = hostile()
    assert len(payloads) > 30
    for payload in payloads:
        msg_id, data = client.frame(Command.PING, payload)
        client.send_raw(data)
        reply = client.recv()
        assert reply.msg_id == msg_id
        if not reply.is_error:  # only a body that decodes to a PING request may succeed
            assert msgpack.unpackb(payload, raw=False, strict_map_key=True) in (
                {},
                {"payload": b""},
            )
            continue
        assert reply.error == errno.EINVAL, (payload[:40], reply.body)
    assert client.request(Command.PING, {"payload": b"alive"}).body == {"payload": b"alive"}
