"""Replies and events are schema instances on both ends, and SPEC.md §10 names their fields.

- every command has a reply schema and every handler is registered with it (the daemon's
  integration tests run with ``SIOVD_CHECK_REPLIES=1``, so each reply they provoke is decoded
  against it before it is sent);
- every event number has a schema, and the daemon's events encode to the bytes they always had;
- SPEC.md §10 has one table per reply/event schema (and per record inside one) with the same
  fields, types, nil-ness and presence.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import msgpack

from siov_protocol import Command, decode, encode, is_event
from siov_protocol.messages_iommu import FaultEvent, PageRequestEvent
from siov_protocol.replies import EVENTS, REPLIES, ShutdownEvent, event_message
from siovd.service.handlers import registry

SPEC = Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md"
RANGES = {(0, 0xFF): "u8", (0, 0xFFFF): "u16", (0, 0xFFFF_FFFF): "u32", (0, (1 << 64) - 1): "u64"}


def type_name(tp: Any, meta: Any) -> str:
    if get_origin(tp) in (types.UnionType, typing.Union):
        tp = next(a for a in get_args(tp) if a is not type(None))
    if tp is int:
        rng = meta.get("range")
        if rng is None:
            return "int"
        return RANGES.get(tuple(rng), f"int {rng[0]}..{rng[1]}")
    if get_origin(tp) is list:
        (arg,) = get_args(tp)
        return f"[{type_name(arg, {})}]"
    if tp is dict or get_origin(tp) is dict:
        return "map"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return {str: "str", bytes: "bin", bool: "bool", float: "float", Any: "any"}[tp]


def rows(schema: type) -> list[tuple[str, str, str, str]]:
    """(field, type, nil, present) for each field of ``schema``, in order."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        nullable = get_origin(tp) in (types.UnionType, typing.Union) and type(None) in get_args(tp)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        present = "always" if required or f.metadata.get("nil") else "optional"
        out.append((f.name, type_name(tp, f.metadata), "yes" if nullable else "no", present))
    return out


def documented_schemas() -> list[type]:
    """Every reply and event schema, and every record schema nested in one."""
    seen: list[type] = []
    todo = [*REPLIES.values(), *EVENTS.values()]
    while todo:
        schema = todo.pop(0)
        if schema in seen:
            continue
        seen.append(schema)
        for tp in typing.get_type_hints(schema).values():
            for arg in (tp, *get_args(tp), *(a for t in get_args(tp) for a in get_args(t))):
                if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                    todo.append(arg)
    return seen


def spec_tables() -> dict[str, list[tuple[str, ...]]]:
    text = SPEC.read_text()
    section = text[text.index("## 10. Reply and event fields") :]
    tables: dict[str, list[tuple[str, ...]]] = {}
    for block in re.split(r"^#### ", section, flags=re.M)[1:]:
        name = block.split("\n", 1)[0].strip().strip("`")
        lines = [ln for ln in block.splitlines() if ln.startswith("| `")]
        tables[name] = [
            tuple(cell.strip().strip("`") for cell in ln.strip("|").split("|")[:4]) for ln in lines
        ]
    return tables


def test_every_command_has_a_reply_schema_and_every_event_one() -> None:
    commands = [c for c in Command if not is_event(c)]
    assert sorted(REPLIES) == sorted(commands)
    assert sorted(EVENTS) == sorted(c for c in Command if is_event(c))
    for command, handler in registry.handlers.items():
        assert handler.reply is REPLIES[command], handler.command.name


def test_spec_names_the_same_fields_as_the_schemas() -> None:
    tables = spec_tables()
    schemas = documented_schemas()
    assert sorted(tables) == sorted(s.__name__ for s in schemas)
    for schema in schemas:
        assert tables[schema.__name__] == rows(schema), schema.__name__


def test_events_keep_their_wire_bytes() -> None:
    """The daemon used to build these maps by hand: the schema's encoding is byte-identical."""
    fault = FaultEvent(
        device="d", pasid=0, iova=0x1000, reason=0x71, write=True, reason_name="x", domain=None
    )
    command, body = event_message(fault)
    assert command == Command.EVENT_FAULT
    old = {"device": "d", "pasid": 0, "iova": 0x1000, "reason": 0x71, "write": True}
    old |= {"reason_name": "x", "domain": None}
    # The descriptor that faulted (nil here: an emulator's own DMA has none).
    old |= {"wq": None, "opcode": None, "completion_addr": None, "batch_index": None}
    assert msgpack.packb(body) == msgpack.packb(old)
    request = PageRequestEvent(request=3, device="d", pasid=5, iova=0, write=False, domain=None)
    old = {"request": 3, "device": "d", "pasid": 5, "iova": 0, "write": False, "domain": None}
    assert msgpack.packb(event_message(request)[1]) == msgpack.packb(old)
    assert event_message(ShutdownEvent(grace_s=2.0)) == (Command.EVENT_SHUTDOWN, {"grace_s": 2.0})
    assert decode(FaultEvent, body) == fault


def test_replies_handlers_return_as_instances_keep_their_wire_bytes() -> None:
    """Handlers that return schema instances encode to the maps they used to build."""
    from siov_protocol.messages_accel import RegionInfo, SubmitReply
    from siov_protocol.replies import DeviceDescription, DirtyBitmapReply, MapReply

    pairs = [
        (MapReply(iova=0x1000, size=4096), {"iova": 0x1000, "size": 4096}),
        (
            SubmitReply(accepted=1, retry=0, dropped=0, results=b"\x00"),
            {"accepted": 1, "retry": 0, "dropped": 0, "results": b"\x00"},
        ),
        (
            RegionInfo(index=2, flags=3, size=4096, offset=0),
            {"index": 2, "flags": 3, "size": 4096, "offset": 0},
        ),
        (
            DirtyBitmapReply(bitmap=b"\x01", page_size=4096, pages=8),
            {"bitmap": b"\x01", "page_size": 4096, "pages": 8},
        ),
    ]
    described = {
        "uuid": "u",
        "bus": "mdev",
        "parent": None,  # an emulator's device: nil, and present
        "type_id": None,
        "name": "nic",
        "group_id": 1,
        "domain_id": 2,
        "default_domain_id": 2,
        "default_pasid": 0,
        "pasid_bits": 20,
        "external": True,
    }
    pairs.append((DeviceDescription(**described), {**described, "claimed": False}))
    for instance, old in pairs:
        assert msgpack.packb(encode(instance)) == msgpack.packb(old), instance


def test_the_replies_once_built_as_maps_keep_their_wire_bytes() -> None:
    """INFO, STATS, TRANSLATE, WQ_OPEN, MEM_REGISTER, accel config and the definitions were
    dict literals in their handlers: their instances pack to the same bytes, key order too."""
    from siov_protocol.messages import InfoConfig, InfoReply, SessionIdentity, StatsReply
    from siov_protocol.replies import (
        AccelConfigEngineReply,
        AccelLoadConfigReply,
        DefinitionInfo,
        DefinitionRef,
        ListDefinedReply,
        MdevDefineReply,
        MemRegionInfo,
        TranslateFault,
        TranslateReply,
        TranslateRun,
        UndefineReply,
        WqOpenReply,
    )

    config = {
        "auth": "none",
        "default_domain": "paging",
        "iotlb_entries": 512,
        "lazy_flush_ms": 10.0,
        "lazy_flush_threshold": 64,
        "page_request_timeout_s": 5.0,
        "max_msg_size": 1 << 20,
        "max_fds": 16,
    }
    info = {"version": "0.1", "uptime_s": 1.5, "pid": 7, "socket": "/s", "config": config}
    info |= {"counts": {"clients": 1}, "protocol": "1.0"}
    info |= {"session": {"id": 3, "identity": "me", "role": "admin"}}
    stats = {"daemon": {"requests": 1}, "iommu": {}, "accel": {}, "sva": {}, "vfio_user": {}}
    stats |= {"session": {"requests": 1}, "uid": {"connections": 1}}
    fault = {"iova": 0x2000, "write": False, "reason": 4, "pasid": 0, "reason_name": "x"}
    definition = {"uuid": "u", "parent": "p", "mdev_type": "t", "start": "auto"}
    definition |= {"attrs": [{"a": "1"}], "running": False, "claimed": False}
    one = DefinitionInfo(**definition)
    pairs: list[tuple[object, dict[str, object]]] = [
        (
            InfoReply(
                version="0.1",
                uptime_s=1.5,
                pid=7,
                socket="/s",
                config=InfoConfig(**config),  # type: ignore[arg-type]
                counts={"clients": 1},
                protocol="1.0",
                session=SessionIdentity(id=3, identity="me", role="admin"),
            ),
            info,
        ),
        (
            StatsReply(
                daemon={"requests": 1},
                iommu={},
                accel={},
                sva={},
                vfio_user={},
                session={"requests": 1},
                uid={"connections": 1},
            ),
            stats,
        ),
        (
            TranslateReply(
                runs=[TranslateRun(iova=0x1000, phys=0x9000, length=4096, prot=3, page_size=4096)],
                translated=4096,
                fault=TranslateFault(**fault),  # type: ignore[arg-type]
            ),
            {
                "runs": [
                    {"iova": 0x1000, "phys": 0x9000, "length": 4096, "prot": 3, "page_size": 4096}
                ],
                "translated": 4096,
                "fault": fault,
            },
        ),
        (
            TranslateReply(runs=[], translated=0, fault=None),
            {"runs": [], "translated": 0, "fault": None},
        ),
        (
            WqOpenReply(handle=1, pasid=2, mode="shared", size=16, wq="wq0.1", domain=4),
            {"handle": 1, "pasid": 2, "mode": "shared", "size": 16, "wq": "wq0.1", "domain": 4},
        ),
        (
            MemRegionInfo(region=1, phys=0x1000, size=4096, access="rw", mapped=0, owner=2),
            {"region": 1, "phys": 0x1000, "size": 4096, "access": "rw", "mapped": 0, "owner": 2},
        ),
        (AccelConfigEngineReply(dev="dsa0", group_id=-1), {"dev": "dsa0", "group_id": -1}),
        (
            AccelLoadConfigReply(devices=[{"dev": "dsa0"}], messages=["m"], enabled=[]),
            {"devices": [{"dev": "dsa0"}], "messages": ["m"], "enabled": []},
        ),
        (MdevDefineReply.one(one), definition),
        (MdevDefineReply(definitions=[one]), {"definitions": [definition]}),
        (
            UndefineReply(undefined=[DefinitionRef(uuid="u", parent="p")]),
            {"undefined": [{"uuid": "u", "parent": "p"}]},
        ),
        (
            ListDefinedReply(definitions=[one], dumpjson=[], config=None),
            {"definitions": [definition], "dumpjson": []},
        ),
    ]
    for instance, old in pairs:
        assert msgpack.packb(encode(instance)) == msgpack.packb(old), instance
        assert decode(type(instance), old) == instance
    assert MdevDefineReply.one(one).single() == one


def test_a_typed_reply_still_answers_its_keys_with_a_warning() -> None:
    """0.x compatibility: reply["field"], .get and `in` work and name the attribute to use."""
    import pytest

    from siov_protocol.replies import MapReply
    from siov_protocol.schema import RecordKeyWarning, plain

    reply = MapReply(iova=0x1000, size=4096)
    with pytest.warns(RecordKeyWarning, match=r"use \.iova"):
        assert reply["iova"] == 0x1000
    with pytest.warns(RecordKeyWarning):
        assert reply.get("nothing", 5) == 5
    with pytest.warns(RecordKeyWarning):
        assert "size" in reply
    with pytest.warns(RecordKeyWarning), pytest.raises(KeyError):
        reply["nothing"]
    assert plain([reply]) == [{"iova": 0x1000, "size": 4096}]
