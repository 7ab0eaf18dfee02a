"""MEM_REGISTER, MEM_UNREGISTER, MEM_LIST: client memory passed by fd.

The memfd is sealed, checked and mapped by :mod:`siovd.model.memfd` (which says why each
rule keeps the daemon safe); the region owns the mapping.
"""

from __future__ import annotations

import errno

import structlog

from siov_protocol import Command
from siov_protocol.messages import EMPTY, Empty, ListRequest
from siov_protocol.messages_iommu import MemRegion, MemRegister
from siov_protocol.replies import MemListReply, MemRegionInfo
from siovd.model.errors import SiovError
from siovd.model.memfd import seal_and_map
from siovd.model.memory import Region
from siovd.model.owner import HOST
from siovd.service.fds import discard
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


def region_info(region: Region) -> MemRegionInfo:
    return MemRegionInfo(
        region=region.id,
        phys=region.base,
        size=region.size,
        access=region.access,
        mapped=region.map_count,
        owner=region.owner,
    )


@registry.command(Command.MEM_REGISTER, MemRegister, max_fds=1)
def mem_register(ctx: Context, req: MemRegister) -> MemRegionInfo:
    if len(ctx.fds) != 1:
        raise SiovError(errno.EINVAL, "MEM_REGISTER needs exactly one fd (the memory)")
    if req.access not in ("rw", "ro"):
        raise SiovError(errno.EINVAL, f"access: {req.access!r} is not 'rw' or 'ro'")
    daemon, session = ctx.daemon, ctx.session
    limit = daemon.config.limits.memory_regions
    mine = daemon.memory.regions(session.id)
    if len(mine) >= limit:
        raise SiovError(errno.ENOSPC, f"limit reached: limits.memory_regions = {limit}")
    have, limit = sum(r.size for r in mine), daemon.config.limits.memory_bytes
    if have + req.size > limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.memory_bytes = {limit} ({have} registered, {req.size} asked)",
        )
    # The same over every connection of the caller's uid.
    ids = {s.id for s in daemon.uid_sessions(session.uid)}
    theirs = [r for r in daemon.memory.regions(None) if r.owner in ids]
    limit = daemon.config.limits.uid_memory_regions
    if len(theirs) >= limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.uid_memory_regions = {limit} (uid {session.uid})",
        )
    have, limit = sum(r.size for r in theirs), daemon.config.limits.uid_memory_bytes
    if have + req.size > limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.uid_memory_bytes = {limit} "
            f"(uid {session.uid}: {have} registered, {req.size} asked)",
        )
    fd = ctx.fds.pop()
    try:
        mapping = seal_and_map(fd, req.size, req.offset, req.access)
    finally:
        discard([fd])  # the mapping keeps the memory; the fd is not needed (nor held) any more
    region = daemon.memory.add_mapping(mapping, session.id, req.access)
    log.info("memory registered", region=region.id, phys=hex(region.base), size=region.size)
    return region_info(region)


@registry.command(Command.MEM_UNREGISTER, MemRegion)
def mem_unregister(ctx: Context, req: MemRegion) -> Empty:
    ctx.daemon.memory.remove_region(req.region, ctx.session.id)
    ctx.daemon.close_dead_mappings()
    log.info("memory unregistered", region=req.region)
    return EMPTY


@registry.command(Command.MEM_LIST, ListRequest)
def mem_list(ctx: Context, req: ListRequest) -> MemListReply:
    regions = ctx.daemon.memory.regions(ctx.session.list_filter(req.all))
    return MemListReply(regions=[region_info(r) for r in regions if r.owner != HOST])
