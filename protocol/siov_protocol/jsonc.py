"""accel-config's file format: JSON as json-c reads and writes it.

accel-config reads its configuration files with json-c's ``json_tokener_parse``, which is not
strict: it takes a comma before a closing ``]`` or ``}`` and C comments (``/* */`` and ``//``),
and three of accel-config's own sample configs rely on the trailing commas. Python's ``json``
refuses both, so :func:`loads` removes them first (outside strings) and then parses strictly.

:func:`dumps` writes what ``json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY)``
writes, byte for byte: two-space indentation, ``"key":value`` with no space after the colon,
an empty array as ``[`` newline ``]``, and ``/`` escaped as ``\\/`` (json-c escapes it unless
asked not to).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "loads", "strip_relaxed"]


def strip_relaxed(text: str) -> str:
    """``text`` without comments and without trailing commas (outside strings)."""
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma = -1  # index in ``out`` of a comma that may turn out to be trailing
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            pending_comma = -1
            i = j + 1
            continue
        if c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in "]}" and pending_comma >= 0:
            out[pending_comma] = ""
        if c == ",":
            pending_comma = len(out)
        elif not c.isspace():
            pending_comma = -1
        out.append(c)
        i += 1
    return "".join(out)


def loads(text: str | bytes) -> Any:
    """Parse an accel-config file as json-c does (``ValueError`` when it does not parse)."""
    if isinstance(text, bytes):
        text = text.decode()
    return json.loads(strip_relaxed(text))


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).replace("/", "\\/")


def _dump(value: Any, level: int, out: list[str]) -> None:
    pad = "  " * (level + 1)
    if isinstance(value, dict):
        out.append("{\n")
        for k, (key, item) in enumerate(value.items()):
            if k:
                out.append(",\n")
            out.append(f"{pad}{_string(str(key))}:")
            _dump(item, level + 1, out)
        out.append(("\n" if value else "") + "  " * level + "}")
    elif isinstance(value, list):
        out.append("[\n")
        for k, item in enumerate(value):
            if k:
                out.append(",\n")
            out.append(pad)
            _dump(item, level + 1, out)
        out.append(("\n" if value else "") + "  " * level + "]")
    elif isinstance(value, str):
        out.append(_string(value))
    elif value is True or value is False:
        out.append("true" if value else "false")
    elif value is None:
        out.append("null")
    else:
        out.append(str(value))


def dumps(value: Any) -> str:
    """``value`` as json-c's pretty printer writes it (no final newline)."""
    out: list[str] = []
    _dump(value, 0, out)
    return "".join(out)
