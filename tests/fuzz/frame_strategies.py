"""Hypothesis strategies for whole frames: header fields, bodies of every kind, fds.

Bodies are drawn from the handlers' schemas (valid ones, and valid ones with one field of a
wrong type), from arbitrary msgpack, raw bytes and known-hostile encodings. Headers are sound
unless the batch ends with a breaker, which SPEC §4 says must be answered and then closed.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from siov_protocol.schema import encode
from siovd.service.handlers import registry
from tests.fuzz import corpus
from tests.rawclient import HDR, HEADER_SIZE, body
from tests.strategies import for_schema

FD_KINDS = 4  # pipe, memfd, socket, /dev/null: see runner.make_fds


@dataclass(frozen=True)
class FuzzFrame:
    data: bytes
    fd_kinds: tuple[int, ...] = ()


msgpack_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
msgpack_value = st.recursive(
    msgpack_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _schema_body(command: int) -> st.SearchStrategy[dict[str, Any]]:
    return for_schema(registry.handlers[command].schema).map(encode)


_valid_bodies = {c: _schema_body(c) for c in corpus.COMMANDS}


def wrong_field_body(command: int) -> st.SearchStrategy[dict[str, Any]]:
    return _wrong_field_body(command)


@st.composite
def _wrong_field_body(draw: st.DrawFn, command: int) -> dict[str, Any]:
    """A valid body with one field (existing or not) set to an arbitrary value."""
    base = dict(draw(_valid_bodies[command]))
    names = [f.name for f in dataclasses.fields(registry.handlers[command].schema)]
    if names and draw(st.booleans()):
        name = draw(st.sampled_from(names))
    else:
        name = draw(st.text(max_size=8))
    base[name] = draw(msgpack_value)
    return base


def _payloads(command: int | None) -> st.SearchStrategy[bytes]:
    """Bodies for ``command`` (None: a number no handler serves)."""
    kinds: list[st.SearchStrategy[bytes]] = []
    if command is not None:
        valid = _valid_bodies[command].map(body)
        kinds += [valid, valid, valid, wrong_field_body(command).map(body)]
    kinds += [
        st.dictionaries(st.text(max_size=10), msgpack_value, max_size=6).map(body),
        msgpack_value.map(body),
        st.binary(max_size=64),
        st.integers(0, 1 << 32).map(lambda seed: corpus.hostile_payloads(random.Random(seed))),
    ]
    return st.one_of(*kinds)


_payloads_by_command = {c: _payloads(c) for c in corpus.COMMANDS}
_other_payloads = _payloads(None)


@st.composite
def fuzz_frames(draw: st.DrawFn) -> FuzzFrame:
    """A frame whose header frames soundly, with any body, maybe with fds."""
    command = draw(
        st.one_of(
            st.sampled_from(corpus.COMMANDS),
            st.sampled_from(corpus.ALL_NUMBERS),
            st.integers(0, 0xFFFF),
        )
    )
    payload = draw(_payloads_by_command.get(command, _other_payloads))
    msg_id = draw(st.integers(0, 0xFFFF))
    flags = draw(st.sampled_from(corpus.SOUND_FLAGS))
    error = draw(st.sampled_from([0, 0, 1, 0xFFFF_FFFF]))
    kinds: tuple[int, ...] = ()
    if draw(st.integers(0, 19)) == 0:
        kinds = tuple(draw(st.lists(st.integers(0, FD_KINDS - 1), min_size=1, max_size=10)))
    data = HDR.pack(msg_id, command, HEADER_SIZE + len(payload), flags, error) + payload
    return FuzzFrame(data, kinds)


@st.composite
def breakers(draw: st.DrawFn) -> bytes:
    """A header the daemon cannot frame past, or one whose size lies about what follows."""
    msg_id = draw(st.integers(0, 0xFFFF))
    command = draw(st.sampled_from(corpus.ALL_NUMBERS))
    size = draw(
        st.one_of(
            st.integers(0, HEADER_SIZE - 1),
            st.integers((1 << 20) + 1, 0xFFFF_FFFF),
            st.integers(HEADER_SIZE, 200),
        )
    )
    flags = draw(st.one_of(st.sampled_from(corpus.BAD_FLAGS), st.integers(0, 0xFFFF_FFFF)))
    tail = draw(st.binary(max_size=64))
    return HDR.pack(msg_id, command, size, flags, 0) + tail


@dataclass(frozen=True)
class Batch:
    role: str | None  # "user", "admin", or None: VERSION only, never authenticated
    frames: list[FuzzFrame]
    breaker: bytes | None


batches = st.builds(
    Batch,
    role=st.sampled_from(["user", "user", "user", "admin", None]),
    frames=st.lists(fuzz_frames(), min_size=5, max_size=40),
    breaker=st.one_of(st.none(), st.none(), breakers()),
)
