"""mdevctl's output, for ``siovctl list``, ``list --defined`` and ``types``.

The shapes and lines of mdevctl (src/main.rs list_command, types_command; src/mdev.rs to_text,
to_json, fmt_attrs): ``--dumpjson`` lists are ``[{parent: [{uuid: config}]}]`` and
``[{parent: [{type: info}]}]`` (``[]`` when empty), parents in sorted order, devices sorted by
UUID, pretty-printed as serde_json does (two spaces, no final newline); a ``-u`` listing that
finds exactly one device prints that device's config alone. Text lines are
``UUID PARENT TYPE auto|manual`` with `` (active)`` or `` (defined)``, and with ``-v`` the
attributes as ``  Attrs:`` then ``    @{N}: {"name":"value"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True)
class Mdev:
    """One device as mdevctl lists it."""

    uuid: str
    parent: str
    mdev_type: str
    start: str = "manual"
    attrs: list[dict[str, str]] = field(default_factory=list)
    #: the other state: "running" for a definition, "defined" for a running device
    other: bool = False

    def config(self) -> Json:
        return {"mdev_type": self.mdev_type, "start": self.start, "attrs": list(self.attrs)}


def pretty(value: Any) -> str:
    """serde_json::to_string_pretty (no final newline)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def _grouped(devices: Iterable[Mdev]) -> dict[str, list[Mdev]]:
    by_parent: dict[str, list[Mdev]] = {}
    for d in sorted(devices, key=lambda d: (d.parent, d.uuid)):
        by_parent.setdefault(d.parent, []).append(d)
    return by_parent


def dumpjson(devices: Iterable[Mdev], uuid: str | None = None) -> str:
    grouped = _grouped(devices)
    count = sum(len(v) for v in grouped.values())
    if uuid is not None and count <= 1:
        if count == 0:
            return pretty([])
        (only,) = (d for v in grouped.values() for d in v)
        return pretty(only.config())
    if not grouped:
        return pretty([])
    return pretty([{p: [{d.uuid: d.config()} for d in ds] for p, ds in grouped.items()}])


def text(devices: Iterable[Mdev], *, defined: bool, verbose: bool) -> str:
    out = []
    for ds in _grouped(devices).values():
        for d in ds:
            line = f"{d.uuid} {d.parent} {d.mdev_type} {d.start}"
            if d.other:
                line += " (active)" if defined else " (defined)"
            out.append(line + "\n")
            if verbose and d.attrs:
                out.append("  Attrs:\n")
                for i, attr in enumerate(d.attrs):
                    ((name, value),) = attr.items()
                    out.append(f'    @{{{i}}}: {{"{name}":"{value}"}}\n')
    return "".join(out)


def types_dumpjson(types: Iterable[Mapping[str, Any]]) -> str:
    by_parent: dict[str, list[Json]] = {}
    for t in sorted(types, key=lambda t: (str(t["parent"]), str(t["type_id"]))):
        info: Json = {
            "available_instances": t["available_instances"],
            "device_api": t["device_api"],
        }
        if t.get("name"):
            info["name"] = t["name"]
        if t.get("description"):
            info["description"] = t["description"]
        by_parent.setdefault(str(t["parent"]), []).append({str(t["type_id"]): info})
    return pretty([by_parent] if by_parent else [])


def types_text(types: Iterable[Mapping[str, Any]]) -> str:
    out = []
    last = None
    for t in sorted(types, key=lambda t: (str(t["parent"]), str(t["type_id"]))):
        if t["parent"] != last:
            out.append(f"{t['parent']}\n")
            last = t["parent"]
        out.append(f"  {t['type_id']}\n")
        out.append(f"    Available instances: {t['available_instances']}\n")
        out.append(f"    Device API: {t['device_api']}\n")
        if t.get("name"):
            out.append(f"    Name: {t['name']}\n")
        if t.get("description"):
            out.append(f"    Description: {t['description']}\n")
    return "".join(out)
