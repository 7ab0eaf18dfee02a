"""Persistent mdev definitions, mdevctl style: define, modify, undefine, start, stop, list.

A definition survives daemon restarts (the state directory's ``mdevs.json``) and is keyed by
parent and UUID, as mdevctl keys them. Starting one creates its mdev with its UUID, owned by the
host, and writes its attributes in order (a failed write fails the start and removes the mdev,
as mdevctl's start does); a client takes it with DEVICE_CLAIM (no token) and gives it back when
it leaves. ``start = auto`` definitions start with the daemon. A transient start creates such an
mdev from a parent, type and attributes without any definition.
"""

from __future__ import annotations

import errno

import structlog

from siov_protocol import Command
from siov_protocol.messages import EMPTY, Empty
from siov_protocol.messages_defs import (
    MdevDefine,
    MdevDefinitionRef,
    MdevListDefined,
    MdevSetAttrs,
    MdevStart,
)
from siov_protocol.replies import (
    DefinitionInfo,
    DefinitionRef,
    DeviceDescription,
    ListDefinedReply,
    MdevDefineReply,
    UndefineReply,
)
from siovd.host.definitions import (
    Definition,
    DefinitionStore,
    attrs_from_json,
    canonical_uuid,
    definition_from_config,
    definitions_from_dumpjson,
    dumpjson,
    make_definition,
)
from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.owner import HOST
from siovd.service.handlers.bus import describe
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


def _store(ctx: Context) -> DefinitionStore:
    if ctx.daemon.definitions is None:
        raise SiovError(errno.EOPNOTSUPP, "this daemon runs without a state directory")
    return ctx.daemon.definitions


def _running(ctx: Context) -> dict[str, Device]:
    return {d.uuid: d for d in ctx.daemon.bus.host_mdevs()}


def _describe(ctx: Context, definition: Definition) -> DefinitionInfo:
    device = _running(ctx).get(definition.uuid)
    running = device is not None and device.parent == definition.parent
    return DefinitionInfo(
        uuid=definition.uuid,
        parent=definition.parent,
        mdev_type=definition.mdev_type,
        start=definition.start,
        attrs=definition.attrs_json(),
        running=running,
        claimed=running and device is not None and device.owner != HOST,
    )


def _new_uuid_or(uuid: str | None) -> str:
    import uuid as uuidlib

    return uuid if uuid is not None else str(uuidlib.uuid4())


def _one(req: MdevDefine) -> Definition:
    if req.parent is None:
        raise SiovError(errno.EINVAL, "parent: missing (mdevctl: No parent specified)")
    if req.config is not None:
        if req.mdev_type is not None or req.attrs:
            raise SiovError(errno.EINVAL, "config: give either config or mdev_type/attrs, not both")
        return definition_from_config(_new_uuid_or(req.uuid), req.parent, req.config)
    if req.mdev_type is None:
        raise SiovError(errno.EINVAL, "mdev_type: missing (or give config)")
    return make_definition(_new_uuid_or(req.uuid), req.parent, req.mdev_type, req.start, req.attrs)


@registry.command(Command.MDEV_DEFINE, MdevDefine, admin=True)
def mdev_define(ctx: Context, req: MdevDefine) -> MdevDefineReply:
    store = _store(ctx)
    if req.definitions is not None:
        if req.config is not None or req.mdev_type is not None or req.attrs or req.replace:
            raise SiovError(
                errno.EINVAL, "definitions: give the list alone (parent and uuid may filter it)"
            )
        wanted = definitions_from_dumpjson(req.definitions)
        if req.parent is not None:
            wanted = [d for d in wanted if d.parent == req.parent]
        if req.uuid is not None:
            key = canonical_uuid(req.uuid)
            wanted = [d for d in wanted if d.uuid == key]
        if not wanted:
            raise SiovError(errno.ENOENT, "definitions: no entry matches the parent/uuid given")
        added = store.add_many(wanted)
        log.info("mdevs defined", count=len(added))
        return MdevDefineReply(definitions=[_describe(ctx, d) for d in added])
    definition = _one(req)
    if req.replace:
        store.replace(definition)
        log.info("mdev modified", mdev=definition.uuid, parent=definition.parent)
    else:
        store.add(definition)
        log.info("mdev defined", mdev=definition.uuid, parent=definition.parent)
    return MdevDefineReply.one(_describe(ctx, definition))


@registry.command(Command.MDEV_UNDEFINE, MdevDefinitionRef, admin=True)
def mdev_undefine(ctx: Context, req: MdevDefinitionRef) -> UndefineReply:
    store = _store(ctx)
    found = store.find(req.uuid, req.parent)
    running = _running(ctx)
    for definition in found:
        device = running.get(definition.uuid)
        if device is not None and device.parent == definition.parent:
            raise SiovError(errno.EBUSY, f"mdev {definition.uuid} is running: stop it first")
    gone = store.undefine(req.uuid, req.parent)
    log.info("mdev undefined", mdev=req.uuid, count=len(gone))
    return UndefineReply(undefined=[DefinitionRef(uuid=d.uuid, parent=d.parent) for d in gone])


@registry.command(Command.MDEV_START, MdevStart, admin=True)
def mdev_start(ctx: Context, req: MdevStart) -> DeviceDescription:
    daemon = ctx.daemon
    if req.mdev_type is not None or req.config is not None:
        # transient: fully specified by parent and type (mdevctl start -p -t / --jsonfile)
        if req.parent is None:
            raise SiovError(errno.EINVAL, "parent: a transient start needs parent and type")
        if req.config is not None:
            if req.mdev_type is not None or req.attrs:
                raise SiovError(errno.EINVAL, "config: give either config or mdev_type/attrs")
            definition = definition_from_config(_new_uuid_or(req.uuid), req.parent, req.config)
        else:
            assert req.mdev_type is not None
            definition = make_definition(
                _new_uuid_or(req.uuid), req.parent, req.mdev_type, attrs=req.attrs
            )
        device = daemon.start_mdev(
            definition.parent, definition.mdev_type, definition.uuid, definition.attrs
        )
    else:
        if req.uuid is None:
            raise SiovError(errno.EINVAL, "uuid: missing (or give parent and mdev_type)")
        if req.attrs:
            raise SiovError(errno.EINVAL, "attrs: only with a transient start (mdev_type)")
        _store(ctx)
        device = daemon.start_definition(req.uuid, req.parent)
    log.info("mdev started", mdev=device.uuid)
    return describe(ctx, device)


@registry.command(Command.MDEV_STOP, MdevDefinitionRef, admin=True)
def mdev_stop(ctx: Context, req: MdevDefinitionRef) -> Empty:
    ctx.daemon.bus.stop_host_mdev(req.uuid)
    log.info("mdev stopped", mdev=req.uuid)
    return EMPTY


@registry.command(Command.MDEV_SET_ATTRS, MdevSetAttrs, admin=True)
def mdev_set_attrs(ctx: Context, req: MdevSetAttrs) -> Empty:
    """Write attributes of a running mdev in order; the first failure stops (the earlier
    writes stay, as sysfs writes do)."""
    for name, value in attrs_from_json(req.attrs):
        try:
            ctx.daemon.bus.set_mdev_attr(req.uuid, name, value)
        except SiovError as exc:
            raise SiovError(
                exc.errno, f"mdev {req.uuid}: attribute {name}={value!r}: {exc.message}"
            ) from None
    return EMPTY


@registry.command(Command.MDEV_LIST_DEFINED, MdevListDefined)
def mdev_list_defined(ctx: Context, req: MdevListDefined) -> ListDefinedReply:
    store = _store(ctx)
    definitions = store.find(req.uuid, req.parent)
    config = None
    if req.uuid is not None:
        if not definitions:
            store.get(req.uuid, req.parent)  # raises ENOENT naming it
        if len(definitions) == 1:
            config = definitions[0].config_json()  # mdevctl: one device, its config
    return ListDefinedReply(
        definitions=[_describe(ctx, d) for d in definitions],
        dumpjson=dumpjson(definitions),
        config=config,
    )
