"""Typed message bodies: frozen dataclasses validated field by field.

A schema is a frozen dataclass whose fields say their type; bounds and defaults live in the
field metadata (:func:`u`, :func:`text`). :func:`decode` turns a msgpack map into an instance
or raises :class:`FieldError` naming the first bad field:

* a missing required field, a value of the wrong type, or an unknown field: ``EINVAL``;
* a number outside its declared range, or a text/bytes value over its declared length:
  ``ERANGE``.

:func:`encode` goes the other way and leaves out optional fields equal to ``None``; a
required field, or one declared ``nil=True``, is sent as msgpack nil (the peer learns "none",
not "absent").
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import types
import typing
import warnings
from typing import Any, TypeVar, get_args, get_origin

from .errors import FieldError

T = TypeVar("T")

U8 = (0, 0xFF)
U16 = (0, 0xFFFF)
U32 = (0, 0xFFFF_FFFF)
U64 = (0, 0xFFFF_FFFF_FFFF_FFFF)


def u(
    lo: int = 0,
    hi: int = U64[1],
    *,
    default: Any = dataclasses.MISSING,
    doc: str = "",
    nil: bool = False,
) -> Any:
    """An integer field bounded to ``[lo, hi]``; ``nil``: encoded as nil when None."""
    meta = {"range": (lo, hi), "doc": doc, "nil": nil}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def text(
    max_len: int = 4096, *, default: Any = dataclasses.MISSING, doc: str = "", nil: bool = False
) -> Any:
    """A str or bytes field of at most ``max_len`` characters/bytes; ``nil`` as for :func:`u`."""
    meta = {"max_len": max_len, "doc": doc, "nil": nil}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def items(max_len: int = 4096, *, default_factory: Any = None, doc: str = "") -> Any:
    """A list field of at most ``max_len`` entries."""
    meta = {"max_len": max_len, "doc": doc}
    if default_factory is None:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default_factory=default_factory, metadata=meta)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    tp: Any
    required: bool
    default: Any
    range: tuple[int, int] | None
    max_len: int | None
    nil: bool  # encoded as nil when None


_cache: dict[type, tuple[_Field, ...]] = {}
_names: dict[type, frozenset[str]] = {}  # each schema's field names, for the unknown-field check


def _fields(cls: type) -> tuple[_Field, ...]:
    spec = _cache.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory
            else:
                default = None
            out.append(
                _Field(
                    f.name,
                    hints[f.name],
                    required,
                    default,
                    f.metadata.get("range"),
                    f.metadata.get("max_len"),
                    bool(f.metadata.get("nil")),
                )
            )
        spec = tuple(out)
        _cache[cls] = spec
        _names[cls] = frozenset(f.name for f in spec)
    return spec


def _check(value: Any, tp: Any, f: _Field, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        last: FieldError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, f, path)
            except FieldError as exc:
                last = exc
        assert last is not None
        raise last
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise FieldError(errno.EINVAL, path, f"expected a bool, got {type(value).__name__}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(errno.EINVAL, path, f"expected an integer, got {type(value).__name__}")
        if f.range is not None and not f.range[0] <= value <= f.range[1]:
            lo, hi = f.range
            raise FieldError(errno.ERANGE, path, f"{value} is outside [{lo:#x}, {hi:#x}]")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(errno.EINVAL, path, f"expected a number, got {type(value).__name__}")
        return float(value)
    if tp is str or tp is bytes:
        if not isinstance(value, tp):
            raise FieldError(
                errno.EINVAL, path, f"expected {tp.__name__}, got {type(value).__name__}"
            )
        if f.max_len is not None and len(value) > f.max_len:
            raise FieldError(errno.ERANGE, path, f"longer than {f.max_len}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise FieldError(errno.EINVAL, path, f"{value!r} is not one of {allowed}") from None
    if origin is list:
        if not isinstance(value, list):
            raise FieldError(errno.EINVAL, path, f"expected an array, got {type(value).__name__}")
        if f.max_len is not None and len(value) > f.max_len:
            raise FieldError(errno.ERANGE, path, f"more than {f.max_len} entries")
        (arg,) = get_args(tp)
        inner = dataclasses.replace(f, max_len=None) if arg in (str, bytes) else f
        return [_check(v, arg, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise FieldError(errno.EINVAL, path, f"expected a map, got {type(value).__name__}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise FieldError(errno.EINVAL, path, f"expected a map, got {type(value).__name__}")
        return _decode(tp, value, path + ".")
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in a schema, not input


def _decode(cls: type[T], body: dict[str, Any], prefix: str) -> T:
    spec = _fields(cls)
    if not body.keys() <= _names[cls]:
        known = _names[cls]
        for key in body:
            if key not in known:
                raise FieldError(errno.EINVAL, prefix + str(key), "unknown field")
    kwargs: dict[str, Any] = {}
    for f in spec:
        if f.name in body:
            kwargs[f.name] = _check(body[f.name], f.tp, f, prefix + f.name)
        elif f.required:
            raise FieldError(errno.EINVAL, prefix + f.name, "missing")
    return cls(**kwargs)


class _Slow(Exception):
    """A value the fast decoder does not vouch for: :func:`_decode` judges the whole body."""


_SLOW = _Slow()
_NO_FAST = object()  # a field type the fast decoder leaves to _decode
#: Per schema: ``(names, fields)`` with each field ``(name, required, checker)``, or None
#: when some field's type has no fast checker.
_fast: dict[type, tuple[frozenset[str], tuple[tuple[str, bool, Any], ...]] | None] = {}
#: Per schema: the instance an empty body decodes to, when that is one shareable value
#: (no required field, no default_factory); a schema absent here is decoded each time.
_empty: dict[type, Any] = {}
_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset)


def _fast_checker(tp: Any, f: _Field) -> Any:
    """A function that returns what :func:`_check` returns for a plainly valid value and
    raises :class:`_Slow` for anything else (then _check decides, with its exact error).
    It accepts only values _check accepts unchanged (exact builtin types, in range)."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1 or len(args) + 1 != len(get_args(tp)):
            return _NO_FAST  # only "X | None"
        inner = _fast_checker(args[0], f)
        if inner is _NO_FAST:
            return _NO_FAST

        def optional(value: Any) -> Any:
            return None if value is None else inner(value)

        return optional
    if tp is Any:
        return lambda value: value
    if tp is bool:

        def boolean(value: Any) -> Any:
            if type(value) is not bool:
                raise _SLOW
            return value

        return boolean
    if tp is int:
        if f.range is None:

            def integer(value: Any) -> Any:
                if type(value) is not int:
                    raise _SLOW
                return value

            return integer
        lo, hi = f.range

        def bounded(value: Any) -> Any:
            if type(value) is not int or not lo <= value <= hi:
                raise _SLOW
            return value

        return bounded
    if tp is float:

        def number(value: Any) -> Any:
            kind = type(value)
            if kind is float:
                return value
            if kind is int:
                return float(value)
            raise _SLOW

        return number
    if tp is str or tp is bytes:
        limit = f.max_len

        def sized(value: Any) -> Any:
            if type(value) is not tp or (limit is not None and len(value) > limit):
                raise _SLOW
            return value

        return sized
    if origin is list:
        (arg,) = get_args(tp)
        inner_field = dataclasses.replace(f, max_len=None) if arg in (str, bytes) else f
        element = _fast_checker(arg, inner_field)
        if element is _NO_FAST:
            return _NO_FAST
        limit = f.max_len

        def array(value: Any) -> Any:
            if type(value) is not list or (limit is not None and len(value) > limit):
                raise _SLOW
            return [element(v) for v in value]

        return array
    if origin is dict or tp is dict:

        def mapping(value: Any) -> Any:
            if type(value) is not dict:
                raise _SLOW
            return value

        return mapping
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if _fast_spec(tp) is None:
            return _NO_FAST

        def record(value: Any) -> Any:
            if type(value) is not dict:
                raise _SLOW
            return _fast_decode(tp, value)

        return record
    if isinstance(tp, type) and issubclass(tp, enum.Enum):

        def member(value: Any) -> Any:
            try:
                return tp(value)
            except Exception:
                raise _SLOW from None

        return member
    return _NO_FAST  # unions of several types: _check's


def _fast_spec(cls: type) -> tuple[frozenset[str], tuple[tuple[str, bool, Any], ...]] | None:
    if cls in _fast:
        return _fast[cls]
    _fast[cls] = None  # a schema that contains itself is left to _decode
    spec = _fields(cls)
    checkers = []
    for f in spec:
        check = _fast_checker(f.tp, f)
        if check is _NO_FAST:
            return None
        checkers.append((f.name, f.required, check))
    built = (_names[cls], tuple(checkers))
    _fast[cls] = built
    if not any(f.required for f in spec) and all(
        isinstance(f.default, _IMMUTABLE) for f in dataclasses.fields(cls)
    ):
        try:
            _empty[cls] = _decode(cls, {}, "")
        except (FieldError, TypeError):
            pass
    return built


def _fast_decode(cls: type[T], body: dict[str, Any]) -> T:
    """:func:`_decode` for a body of plainly valid values; raises :class:`_Slow` otherwise."""
    fast = _fast[cls]
    assert fast is not None
    names, checkers = fast
    if not body.keys() <= names:
        raise _SLOW
    kwargs: dict[str, Any] = {}
    for name, required, check in checkers:
        if name in body:
            kwargs[name] = check(body[name])
        elif required:
            raise _SLOW
    return cls(**kwargs)


def decode(cls: type[T], body: dict[str, Any]) -> T:
    """Validate ``body`` against the schema ``cls``.

    Most bodies take a fast path (per-field checkers built once per schema, the shared
    instance of an empty body); whatever it does not vouch for is judged by :func:`_decode`,
    so the result and every error are the same either way.
    """
    if not body:
        empty = _empty.get(cls)
        if empty is not None:
            return empty  # type: ignore[no-any-return]
    fast = _fast[cls] if cls in _fast else _fast_spec(cls)
    if fast is not None:
        try:
            return _fast_decode(cls, body)
        except _Slow:
            pass
    return _decode(cls, body, "")


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class RecordKeyWarning(DeprecationWarning):
    """``reply["field"]`` on a typed reply: use ``reply.field``."""


class Record:
    """Base of reply and event schemas: attributes are the API. ``record["field"]`` and
    ``record.get("field")`` still work, with a :class:`RecordKeyWarning`, for one release
    (0.x) while code written against the map replies moves to attributes."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        warnings.warn(
            f"{type(self).__name__}[{key!r}]: use .{key} (replies are typed objects now)",
            RecordKeyWarning,
            stacklevel=2,
        )
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        warnings.warn(
            f"{type(self).__name__}.get({key!r}): use .{key} (replies are typed objects now)",
            RecordKeyWarning,
            stacklevel=2,
        )
        return getattr(self, key, default)

    def __contains__(self, key: object) -> bool:
        warnings.warn(
            f"{key!r} in {type(self).__name__}: use the attribute (replies are typed objects now)",
            RecordKeyWarning,
            stacklevel=2,
        )
        return isinstance(key, str) and getattr(self, key, None) is not None


def plain(value: Any) -> Any:
    """``value`` as maps and lists (for JSON, printing, comparing with literals): every
    :class:`Record` inside it becomes the map it is sent as."""
    if isinstance(value, Record):
        return encode(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def required() -> Any:
    """A required field with no bounds (a bool, a map, a list of records)."""
    return dataclasses.field()


def nil(*, default: Any = dataclasses.MISSING) -> Any:
    """A field of any other kind (a map, a bool, ...) encoded as nil when None."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"nil": True})
    return dataclasses.field(default=default, metadata={"nil": True})


#: Values :func:`_plain` returns unchanged (exact types: a subclass, an enum, goes through it).
_PLAIN_TYPES = frozenset((bool, int, float, str, bytes))
#: Per schema: ``(name, sent as nil when None)`` for each field, in order.
_encoding: dict[type, tuple[tuple[str, bool], ...]] = {}


def encode(obj: Any) -> dict[str, Any]:
    """A schema instance as a msgpack-ready map (``None`` fields left out unless ``nil``)."""
    cls = type(obj)
    spec = _encoding.get(cls)
    if spec is None:
        spec = tuple((f.name, f.required or f.nil) for f in _fields(cls))
        _encoding[cls] = spec
    out: dict[str, Any] = {}
    plain_types = _PLAIN_TYPES
    for name, keep_none in spec:
        value = getattr(obj, name)
        if value is not None:
            out[name] = value if type(value) in plain_types else _plain(value)
        elif keep_none:
            out[name] = None
    return out
