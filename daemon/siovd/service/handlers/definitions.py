"""Persistent mdev definitions, mdevctl style: define, undefine, start, stop, list.

A definition survives daemon restarts (the state directory's ``mdevs.json``). Starting one
creates its mdev with its UUID, owned by the host: a client takes it with DEVICE_CLAIM (no
token) and gives it back when it leaves. ``start = auto`` definitions start with the daemon.
"""

from __future__ import annotations

import errno
from typing import Any

import structlog

from siov_protocol import Command
from siov_protocol.messages_defs import MdevDefine, MdevDefinitionRef, MdevListDefined
from siovd.host.definitions import Definition, DefinitionStore, dumpjson
from siovd.model.errors import SiovError
from siovd.model.owner import HOST
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


def _store(ctx: Context) -> DefinitionStore:
    if ctx.daemon.definitions is None:
        raise SiovError(errno.EOPNOTSUPP, "this daemon runs without a state directory")
    return ctx.daemon.definitions


def _describe(ctx: Context, definition: Definition) -> dict[str, Any]:
    running = {d.uuid: d for d in ctx.daemon.bus.host_mdevs()}
    device = running.get(definition.uuid)
    return {
        "uuid": definition.uuid,
        "parent": definition.parent,
        **definition.config_json(),
        "running": device is not None,
        "claimed": device is not None and device.owner != HOST,
    }


@registry.command(Command.MDEV_DEFINE, MdevDefine, admin=True)
def mdev_define(ctx: Context, req: MdevDefine) -> dict[str, Any]:
    store = _store(ctx)
    if req.config is not None:
        if req.mdev_type is not None or req.attrs:
            raise SiovError(errno.EINVAL, "config: give either config or mdev_type/attrs, not both")
        definition = store.define_config(req.parent, req.config, req.uuid)
    else:
        if req.mdev_type is None:
            raise SiovError(errno.EINVAL, "mdev_type: missing (or give config)")
        definition = store.define(
            req.uuid, req.parent, req.mdev_type, start=req.start, attrs=req.attrs
        )
    log.info("mdev defined", mdev=definition.uuid, parent=definition.parent)
    return _describe(ctx, definition)


@registry.command(Command.MDEV_UNDEFINE, MdevDefinitionRef, admin=True)
def mdev_undefine(ctx: Context, req: MdevDefinitionRef) -> dict[str, Any]:
    store = _store(ctx)
    definition = store.get(req.uuid)
    if any(d.uuid == definition.uuid for d in ctx.daemon.bus.host_mdevs()):
        raise SiovError(errno.EBUSY, f"mdev {req.uuid} is running: stop it first")
    store.undefine(req.uuid, req.parent)
    log.info("mdev undefined", mdev=req.uuid)
    return {}


@registry.command(Command.MDEV_START, MdevDefinitionRef, admin=True)
def mdev_start(ctx: Context, req: MdevDefinitionRef) -> dict[str, Any]:
    _store(ctx)
    device = ctx.daemon.start_definition(req.uuid)
    log.info("mdev started", mdev=req.uuid)
    return ctx.daemon.bus.describe(device)


@registry.command(Command.MDEV_STOP, MdevDefinitionRef, admin=True)
def mdev_stop(ctx: Context, req: MdevDefinitionRef) -> dict[str, Any]:
    ctx.daemon.bus.stop_host_mdev(req.uuid)
    log.info("mdev stopped", mdev=req.uuid)
    return {}


@registry.command(Command.MDEV_LIST_DEFINED, MdevListDefined)
def mdev_list_defined(ctx: Context, req: MdevListDefined) -> dict[str, Any]:
    store = _store(ctx)
    if req.uuid is not None:
        definition = store.get(req.uuid)
        return {"definitions": [_describe(ctx, definition)], "config": definition.config_json()}
    definitions = store.list(req.parent)
    return {
        "definitions": [_describe(ctx, d) for d in definitions],
        "dumpjson": dumpjson(definitions),
    }
