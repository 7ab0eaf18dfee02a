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


def decode(cls: type[T], body: dict[str, Any]) -> T:
    """Validate ``body`` against the schema ``cls``."""
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


def encode(obj: Any) -> dict[str, Any]:
    """A schema instance as a msgpack-ready map (``None`` fields left out unless ``nil``)."""
    out: dict[str, Any] = {}
    for f in _fields(type(obj)):
        value = getattr(obj, f.name)
        if value is not None:
            out[f.name] = _plain(value)
        elif f.required or f.nil:
            out[f.name] = None
    return out
