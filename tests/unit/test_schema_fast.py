"""The fast schema paths against the reference ones, on every schema of the protocol.

:func:`siov_protocol.schema.decode` takes per-field checkers built once per schema (and a
shared instance for an empty body) and leaves whatever they do not vouch for to the reference
:func:`~siov_protocol.schema._decode`; :func:`~siov_protocol.schema.encode` passes exact builtin
values through. Both must give what the reference gives: the same instance, or the same error
(errno, field, message); the same msgpack bytes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import siov_protocol
from siov_protocol import schema
from siov_protocol.errors import FieldError
from tests.strategies import for_schema, schema_classes

SCHEMAS = sorted(
    {
        cls
        for m in pkgutil.iter_modules(siov_protocol.__path__)
        for cls in schema_classes(importlib.import_module(f"siov_protocol.{m.name}"))
        if m.name.startswith(("messages", "replies")) and not cls.__name__.startswith("_")
    },
    key=lambda c: c.__name__,
)

#: Values of every kind a msgpack body can hold, near the bounds schemas declare.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 64), 1 << 65),
    st.sampled_from([0, 1, 0xFF, 0x100, 0xFFFF, 0x1_0000, 0xFFFF_FFFF, 1 << 32, (1 << 64) - 1]),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["", "x" * 4097, b"y" * 4097, "rw", "r", "none", "paging", "mdev"]),
)
wild = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def outcome(fn: Any) -> tuple[Any, ...]:
    try:
        value = fn()
    except FieldError as exc:
        return ("error", exc.errno, exc.field, exc.message)
    except TypeError as exc:
        return ("type", str(exc))
    return ("ok", type(value), value)


@st.composite
def bodies(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    """A valid body of ``cls``, then a few fields set to anything, dropped or added."""
    body = dict(schema.encode(draw(for_schema(cls))))
    names = sorted(schema._names[cls]) if cls in schema._names else list(body)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*names, "unknown"]) if names else st.just("unknown"))
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(wild)
    return body


#: An edge value: the field's own valid entries, repeated one past its max_len.
LONG_LIST = object()


def edges(cls: type) -> list[tuple[str, Any]]:
    """Values at and just past each field's declared bounds, and of near-miss types."""
    out: list[tuple[str, Any]] = []
    for f in schema._fields(cls):
        if f.range is not None:
            lo, hi = f.range
            out += [(f.name, v) for v in (lo - 1, lo, hi, hi + 1, True, float(lo))]
        if f.max_len is not None:
            n = f.max_len
            out += [(f.name, v) for v in ("a" * n, "a" * (n + 1), b"b" * n, b"b" * (n + 1))]
            out += [(f.name, [0] * n), (f.name, [0] * (n + 1)), (f.name, LONG_LIST)]
        out += [(f.name, v) for v in (None, 1, 1.5, False, "", b"", [], {})]
    return out or [("unknown", 1)]


def reference_encode(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in schema._fields(type(obj)):
        value = getattr(obj, f.name)
        if value is not None:
            out[f.name] = schema._plain(value)
        elif f.required or f.nil:
            out[f.name] = None
    return out


def test_there_are_schemas_to_test() -> None:
    assert len(SCHEMAS) >= 40


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_decode_is_the_reference_decode(cls: type) -> None:
    @settings(max_examples=40, deadline=None)
    @given(bodies(cls))
    def check(body: dict[str, Any]) -> None:
        fast = outcome(lambda: schema.decode(cls, body))
        assert fast == outcome(lambda: schema._decode(cls, body, ""))

    check()


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_decode_at_the_bounds_is_the_reference_decode(cls: type) -> None:
    cases = edges(cls)

    @settings(max_examples=max(30, len(cases)), deadline=None)
    @given(for_schema(cls), st.sampled_from(cases))
    def check(value: Any, edge: tuple[str, Any]) -> None:
        body = schema.encode(value)
        name, edge_value = edge
        if edge_value is LONG_LIST:
            entries = body.get(name)
            if not isinstance(entries, list) or not entries:
                return
            limit = next(f.max_len for f in schema._fields(cls) if f.name == name)
            assert limit is not None
            edge_value = entries[:1] * (limit + 1)
        body = {**body, name: edge_value}
        fast = outcome(lambda: schema.decode(cls, body))
        assert fast == outcome(lambda: schema._decode(cls, body, ""))

    check()


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_an_empty_body_decodes_as_the_reference_does_every_time(cls: type) -> None:
    first = outcome(lambda: schema.decode(cls, {}))
    assert first == outcome(lambda: schema._decode(cls, {}, ""))
    assert outcome(lambda: schema.decode(cls, {})) == first  # the shared instance, if any


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
def test_encode_is_the_reference_encode(cls: type) -> None:
    @settings(max_examples=30, deadline=None)
    @given(for_schema(cls))
    def check(value: Any) -> None:
        fast = schema.encode(value)
        assert msgpack.packb(fast, use_bin_type=True) == msgpack.packb(
            reference_encode(value), use_bin_type=True
        )

    check()


def test_encode_of_a_non_schema_is_a_type_error_each_time() -> None:
    """The server answers EIO for a handler that returns a map: encode must keep raising."""
    for _ in range(2):
        with pytest.raises(TypeError):
            schema.encode({"payload": b"x"})
