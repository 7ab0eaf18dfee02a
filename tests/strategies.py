"""Hypothesis strategies built from the protocol's schema dataclasses."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, get_args, get_origin

from hypothesis import strategies as st


def for_type(tp: Any, meta: Any) -> st.SearchStrategy[Any]:
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return st.one_of(*(for_type(a, meta) for a in get_args(tp)))
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo, hi = meta.get("range", (-(1 << 63), (1 << 64) - 1))
        return st.integers(lo, hi)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(max_size=min(meta.get("max_len", 64), 64))
    if tp is bytes:
        return st.binary(max_size=min(meta.get("max_len", 64), 64))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if origin is list:
        (arg,) = get_args(tp)
        return st.lists(
            for_type(arg, {} if arg in (str, bytes) else meta),
            max_size=min(meta.get("max_len", 8), 8),
        )
    if origin is dict or tp is dict:
        return st.dictionaries(st.text(max_size=8), st.integers(0, 100), max_size=4)
    if tp is Any:
        return st.integers(0, 100)
    if dataclasses.is_dataclass(tp):
        return for_schema(tp)
    raise TypeError(tp)


def for_schema(cls: Any) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: for_type(hints[f.name], f.metadata) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


def schema_classes(module: types.ModuleType) -> list[type]:
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    ]
