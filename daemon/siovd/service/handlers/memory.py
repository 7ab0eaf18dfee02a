"""MEM_REGISTER, MEM_UNREGISTER, MEM_LIST: client memory passed by fd.

The daemon maps the fd itself and closes it at once: the mapping is what it keeps. Before
mapping it seals the memfd against shrinking (F_SEAL_SHRINK), because a client that truncated
its file under the daemon's mapping would make the next DMA fault the whole daemon (SIGBUS).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Any

import structlog

from siov_protocol import Command
from siov_protocol.messages import ListRequest
from siov_protocol.messages_iommu import MemRegion, MemRegister
from siovd.model.errors import SiovError
from siovd.model.memory import PAGE_SIZE, Region
from siovd.model.owner import HOST
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


def region_info(region: Region) -> dict[str, Any]:
    return {
        "region": region.id,
        "phys": region.base,
        "size": region.size,
        "access": region.access,
        "mapped": region.map_count,
        "owner": region.owner,
    }


def _seal_and_map(fd: int, req: MemRegister) -> mmap.mmap:
    if req.offset % PAGE_SIZE or req.size % PAGE_SIZE:
        raise SiovError(errno.EINVAL, "offset and size must be multiples of 4 KiB")
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError as exc:
        raise SiovError(
            errno.EINVAL,
            f"memory must be a memfd that accepts F_SEAL_SHRINK ({exc.strerror})",
        ) from None
    length = os.fstat(fd).st_size
    if req.offset + req.size > length:
        raise SiovError(
            errno.EINVAL,
            f"offset {req.offset:#x} + size {req.size:#x} runs past the file's {length:#x} bytes",
        )
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if req.access == "rw" else 0)
    try:
        return mmap.mmap(fd, req.size, mmap.MAP_SHARED, prot, offset=req.offset)
    except OSError as exc:
        raise SiovError(exc.errno or errno.EINVAL, f"cannot map the fd: {exc.strerror}") from None


@registry.command(Command.MEM_REGISTER, MemRegister, max_fds=1)
def mem_register(ctx: Context, req: MemRegister) -> dict[str, Any]:
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
    fd = ctx.fds.pop()
    try:
        mapping = _seal_and_map(fd, req)
    finally:
        os.close(fd)  # the mapping keeps the memory; the fd is not needed any more
    try:
        region = daemon.memory.add_region(memoryview(mapping), session.id, req.access)
    except BaseException:
        mapping.close()
        raise
    daemon.mappings[region.id] = (region, mapping)
    log.info("memory registered", region=region.id, phys=hex(region.base), size=region.size)
    return region_info(region)


@registry.command(Command.MEM_UNREGISTER, MemRegion)
def mem_unregister(ctx: Context, req: MemRegion) -> dict[str, Any]:
    ctx.daemon.memory.remove_region(req.region, ctx.session.id)
    ctx.daemon.close_dead_mappings()
    log.info("memory unregistered", region=req.region)
    return {}


@registry.command(Command.MEM_LIST, ListRequest)
def mem_list(ctx: Context, req: ListRequest) -> dict[str, Any]:
    regions = ctx.daemon.memory.regions(ctx.session.list_filter(req.all))
    return {"regions": [region_info(r) for r in regions if r.owner != HOST]}
