"""Frames for the mutation fuzzer: valid bodies from the schemas, then hostile changes.

Everything is driven by one ``random.Random``, so a seed replays a run. Valid bodies come from
the handlers' own schema dataclasses (every command the daemon registers, including ones added
after this file was written); :class:`Values` steers them towards the ids of objects the
connection really owns, so valid frames reach deep into the handlers.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import random
import struct
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from siov_protocol import Command
from siovd.service.handlers import registry
from tests.fuzz.wire import MAX_MSG_SIZE
from tests.rawclient import HDR, HEADER_SIZE, body, frame

COMMANDS: list[int] = sorted(registry.handlers)
ALL_NUMBERS: list[int] = sorted({int(c) for c in Command} | {0, 2, 3, 0x104, 0x1FF, 0xFFFF})

#: Strings some fields expect; the rest are random.
KNOWN_TEXT: dict[str, list[str]] = {
    "parent": ["siov_test", "dsa0", "nope"],
    "type_id": ["siov_test-1", "dsa-1dwq", "dsa-1swq", "x"],
    "mdev_type": ["siov_test-1", "dsa-1dwq"],
    "scope": ["global", "domain", "pasid", "range", "all"],
    "type": ["paging", "identity", "blocked", "nested"],
    "bus": ["mdev", "pci", ""],
    "access": ["rw", "ro", "wo"],
    "start": ["auto", "manual", "never"],
    "client": ["fuzz"],
}

INTERESTING_INTS = [
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    20,
    21,
    52,
    4095,
    4096,
    4097,
    0x10_0000,
    0x20_0000,
    0x20_1000,
    0x4000_0000,
    0xFFFF,
    0x1_0000,
    (1 << 20) - 1,
    1 << 20,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 32,
    1 << 46,
    1 << 47,
    (1 << 48) - 4096,
    1 << 52,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 4096,
    (1 << 64) - 1,
]


@dataclass
class Values:
    """Ids and addresses a connection owns (from its prelude), for realistic valid bodies."""

    ints: list[int] = field(default_factory=list)
    uuids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def _uuidish(rng: random.Random, values: Values) -> str:
    roll = rng.random()
    if values.uuids and roll < 0.6:
        return rng.choice(values.uuids)
    if roll < 0.8:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    return rng.choice(["", "not-a-uuid", "0" * 36, "g" * 36, str(uuid.UUID(int=0))])


def _text(rng: random.Random, name: str, max_len: int | None, values: Values) -> str:
    if name in KNOWN_TEXT and rng.random() < 0.8:
        return rng.choice(KNOWN_TEXT[name])
    if name in ("uuid", "device"):
        return _uuidish(rng, values)
    if name == "token" and values.tokens and rng.random() < 0.5:
        return rng.choice(values.tokens)
    n = rng.randrange(0, min(max_len or 24, 24) + 1)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(n))


def _int(rng: random.Random, rng_range: tuple[int, int] | None, values: Values) -> int:
    lo, hi = rng_range or (0, (1 << 64) - 1)
    roll = rng.random()
    if values.ints and roll < 0.4:
        candidate = rng.choice(values.ints)
    elif roll < 0.8:
        candidate = rng.choice(INTERESTING_INTS)
    else:
        candidate = rng.randint(lo, min(hi, lo + (1 << rng.choice((4, 12, 21, 32, 64)))))
    return min(max(candidate, lo), hi)


def value_for(tp: Any, meta: dict[str, Any], name: str, rng: random.Random, values: Values) -> Any:
    """A value that passes the schema check for ``tp`` (given the field's metadata)."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        return value_for(rng.choice(args), meta, name, rng, values)
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return _int(rng, meta.get("range"), values)
    if tp is float:
        return rng.choice([0.0, 0.5, 1.0, 1e9])
    if tp is str:
        return _text(rng, name, meta.get("max_len"), values)
    if tp is bytes:
        limit = min(meta.get("max_len") or 64, 4096)
        n = rng.choice([0, 1, 8, 64, rng.randrange(0, limit + 1)])
        return rng.randbytes(min(n, limit))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return rng.choice(list(tp)).value
    if origin is list:
        (arg,) = get_args(tp)
        inner = {} if arg in (str, bytes) else meta
        return [value_for(arg, inner, name, rng, values) for _ in range(rng.randrange(0, 4))]
    if origin is dict or tp is dict:
        return {
            rng.choice(["mdev_type", "start", "attrs", "name", "value", "x"]): rng.choice(
                [0, "siov_test-1", "auto", [], {}, None]
            )
            for _ in range(rng.randrange(0, 4))
        }
    if tp is Any:
        return rng.choice([0, "x", b"x", [], {}, None, True])
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return valid_body(tp, rng, values)
    raise TypeError(f"no generator for schema type {tp!r}")


@functools.cache
def schema_fields(schema: type) -> list[tuple[str, Any, dict[str, Any], bool]]:
    """``(name, type, metadata, required)`` of each field of a schema dataclass."""
    hints = typing.get_type_hints(schema)
    return [
        (
            f.name,
            hints[f.name],
            dict(f.metadata),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(schema)
    ]


def valid_body(schema: type, rng: random.Random, values: Values) -> dict[str, Any]:
    """A body ``siov_protocol.decode`` accepts; optional fields are present about half the time."""
    out: dict[str, Any] = {}
    for name, tp, meta, required in schema_fields(schema):
        if required or rng.random() < 0.5:
            out[name] = value_for(tp, meta, name, rng, values)
    return out


# ---- hostile values and bodies -----------------------------------------------------------------

WRONG_TYPED: list[Any] = [
    None,
    True,
    False,
    -1,
    -(1 << 63),
    (1 << 64) - 1,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 70,
    "\u00e9\u0000",
    b"",
    b"\x00" * 40,
    [],
    [1, "a", None],
    {},
    {"a": {"b": {"c": []}}},
]


def wrong_value(rng: random.Random) -> Any:
    return rng.choice(WRONG_TYPED)


def _nest(depth: int, container: bytes, leaf: bytes = b"\xc0") -> bytes:
    return container * depth + leaf


#: A map of 4096 unknown keys.
WIDE_MAP = b"\xde\x10\x00" + b"".join(body(f"k{i}") + b"\xc0" for i in range(4096))


def hostile_payloads(rng: random.Random) -> bytes:
    """Raw msgpack that is malformed, enormous by declaration, or nested without end."""
    depth = rng.choice([31, 32, 33, 64, 1024, 1025, 20000])
    choices = [
        lambda: _nest(depth, b"\x91"),  # [[[...]]]
        lambda: b"\x81\xa7payload" + _nest(depth, b"\x81\xa1k"),  # {"payload": {"k": ...}}
        lambda: b"\x81\xa7payload" + _nest(depth, b"\x91"),
        lambda: b"\xdd\xff\xff\xff\xff",  # array32 of 2**32-1 entries, none present
        lambda: b"\xdf\xff\xff\xff\xff",  # map32
        lambda: b"\x81\xa4size\xdb\xff\xff\xff\xff" + b"x" * 8,  # str32 that never ends
        lambda: b"\x81\xa7payload\xc6\xff\xff\xff\xff" + b"x" * 8,  # bin32 that never ends
        lambda: b"\x81\xa4data\xc9\xff\xff\xff\xff\x01",  # ext32
        lambda: b"\x81\xa4size\xd5\xff\x00\x00",  # a timestamp of the wrong length
        lambda: b"\x81\xa4size\xd6\xff\x00\x00\x00\x01",  # a valid timestamp in an int field
        lambda: b"\x81\xa4size\xd4\x05\x00",  # fixext1 of an unknown type
        lambda: b"\x81\x01\x01",  # integer key
        lambda: b"\x81\xc4\x04size\x01",  # bin key
        lambda: b"\x81\xc0\x01",  # nil key
        lambda: b"\x81\x90\x01",  # array key
        lambda: b"\x81\xa4size\xa2\xff\xfe",  # invalid UTF-8
        lambda: b"\xa5hello",  # not a map
        lambda: b"\xc1",  # never-used byte
        lambda: b"\x80\x80",  # trailing object
        lambda: b"\x82\xa4size\x01\xa4size\x02",  # duplicate keys
        lambda: b"\xdc\xff\xff" + b"\xc0" * 65535,  # a big, legal array (not a map)
        lambda: WIDE_MAP,
        lambda: b"\x81\xa7payload\xcb" + struct.pack(">d", float("nan")),
        lambda: b"\x81\xa4size\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # int64 min
        lambda: rng.randbytes(rng.randrange(1, 64)),
    ]
    data: bytes = rng.choice(choices)()
    return data


def hostile_body(schema: type, rng: random.Random, values: Values) -> bytes:
    """A body for ``schema`` that the daemon must refuse field by field, or as a whole."""
    fields = [name for name, _, _, _ in schema_fields(schema)]
    base = valid_body(schema, rng, values)
    roll = rng.random()
    if fields and roll < 0.45:  # one field of the wrong type (or out of range)
        base[rng.choice(fields)] = wrong_value(rng)
    elif fields and roll < 0.55:  # one required-or-not field missing
        base.pop(rng.choice(fields), None)
    elif roll < 0.65:  # a field the command does not have
        base[rng.choice(["extra", "Size", "", "x" * 40])] = rng.choice([0, "x", None])
    elif roll < 0.75 and fields:  # text too long
        base[rng.choice(fields)] = "z" * rng.choice([65, 129, 257, 5000])
    else:
        return hostile_payloads(rng)
    return body(base)


# ---- frames and mutations ----------------------------------------------------------------------


def valid_frame(rng: random.Random, values: Values, msg_id: int) -> tuple[int, bytes]:
    command = rng.choice(COMMANDS)
    schema = registry.handlers[command].schema
    return command, frame(msg_id, command, body(valid_body(schema, rng, values)))


# A command, no-reply, the error bit: all framable.
SOUND_FLAGS = [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x20, 0x30]
BAD_FLAGS = [0x1, 0x11, 0x2, 0xF, 0x40, 0x80, 0x8000_0000, 0xFFFF_FFFF]


def set_header(
    data: bytes,
    *,
    msg_id: int | None = None,
    command: int | None = None,
    size: int | None = None,
    flags: int | None = None,
    error: int | None = None,
) -> bytes:
    m, c, s, f, e = HDR.unpack_from(data)
    return (
        HDR.pack(
            m if msg_id is None else msg_id,
            c if command is None else command,
            s if size is None else size,
            f if flags is None else flags,
            e if error is None else error,
        )
        + data[HEADER_SIZE:]
    )


def _with_payload(data: bytes, payload: bytes) -> bytes:
    m, c, _, f, e = HDR.unpack_from(data)
    return HDR.pack(m, c, HEADER_SIZE + len(payload), f, e) + payload


def mutate(data: bytes, rng: random.Random, donors: list[bytes], values: Values) -> bytes:
    """One hostile change to a valid frame that keeps its header sound: the daemon must answer
    it with an error (or a result) and go on reading the connection."""
    payload = data[HEADER_SIZE:]
    roll = rng.random()
    if roll < 0.15 and payload:  # flip bits in the body
        buf = bytearray(payload)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return _with_payload(data, bytes(buf))
    if roll < 0.27 and payload:  # overwrite bytes with interesting ones
        buf = bytearray(payload)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xC0, 0xDD])
        return _with_payload(data, bytes(buf))
    if roll < 0.35:  # truncate the body (the size follows)
        return _with_payload(data, payload[: rng.randrange(0, len(payload) + 1)])
    if roll < 0.41:  # append junk to the body
        return _with_payload(data, payload + rng.randbytes(rng.randrange(1, 32)))
    if roll < 0.49 and donors:  # splice: our head with another frame's tail
        other = rng.choice(donors)[HEADER_SIZE:]
        cut = rng.randrange(0, len(payload) + 1)
        return _with_payload(data, payload[:cut] + other[rng.randrange(0, len(other) + 1) :])
    if roll < 0.58:  # another command's number on this body
        return set_header(data, command=rng.choice([*ALL_NUMBERS, rng.randrange(0x10000)]))
    if roll < 0.62:
        return set_header(data, msg_id=rng.randrange(0x10000), error=rng.randrange(1 << 32))
    if roll < 0.68:
        return set_header(data, flags=rng.choice(SOUND_FLAGS))
    command = HDR.unpack_from(data)[1]
    handler = registry.handlers.get(command) or rng.choice(list(registry.handlers.values()))
    return _with_payload(data, hostile_body(handler.schema, rng, values))


def break_header(data: bytes, rng: random.Random) -> bytes:
    """A change that breaks the framing: the daemon answers once and closes (SPEC §4), or, for
    a size that lies, frames whatever follows as it says."""
    if rng.random() < 0.3:
        return set_header(data, flags=rng.choice(BAD_FLAGS))
    size = len(data)
    new = rng.choice(
        [
            size + 1,
            size - 1,
            size + rng.randrange(2, 64),
            max(0, size - rng.randrange(2, 64)),
            0,
            15,
            MAX_MSG_SIZE + 1,
            0xFFFF_FFFF,
        ]
    )
    return set_header(data, size=new)
