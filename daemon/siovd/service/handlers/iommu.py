"""Domains, attach (plain and per PASID), map/unmap, dirty tracking, IOTLB invalidation."""

from __future__ import annotations

import errno
from typing import Any

import structlog

from siov_protocol import Command
from siov_protocol.messages import Empty, ListRequest
from siov_protocol.messages_iommu import (
    AttachDevice,
    DetachDevice,
    DirtyBitmap,
    DomainAlloc,
    DomainRef,
    IotlbEntries,
    IotlbInvalidate,
    IovaToPhys,
    Map,
    PasidAttach,
    PasidDetach,
    Unmap,
)
from siov_protocol.replies import (
    DeviceDescription,
    DirtyBitmapReply,
    DomainInfo,
    DomainListReply,
    InvalidateReply,
    IotlbEntriesReply,
    IotlbEntry,
    IovaToPhysReply,
    MapReply,
)
from siovd.model.errors import SiovError
from siovd.model.iommu import dirty, nested
from siovd.model.iommu.io_pagetable import MapQuota
from siovd.model.iommu.iotlb import E_FLAGS, E_HITS, E_PHYS, E_REF, E_SIZE
from siovd.model.iommu.pagetable import PTE_D, PTE_RW
from siovd.service import ats
from siovd.service.handlers.bus import describe
from siovd.service.handlers.registry import Context, Deferred, registry, typed

log = structlog.get_logger("siovd")


@registry.command(Command.DOMAIN_ALLOC, DomainAlloc)
def domain_alloc(ctx: Context, req: DomainAlloc) -> DomainInfo:
    daemon, owner = ctx.daemon, ctx.session.id
    if req.dirty_tracking:  # EOPNOTSUPP before anything is allocated (iommu_ext.py)
        dirty.check_alloc(req.type, req.user_managed)
    if req.nest_parent:
        nested.check_parent_alloc(req.type, req.user_managed)
    domain = daemon.iommu.domain_alloc(
        owner,
        req.bus,
        req.type,
        levels=req.levels,
        user_managed=req.user_managed,
        lazy=req.lazy,
        pt_root_phys=req.pt_root,
        max_domains=daemon.config.limits.domains,
    )
    domain.dirty_capable = req.dirty_tracking
    domain.nest_parent = req.nest_parent
    log.info("domain allocated", domain=domain.id, type=req.type, user_managed=req.user_managed)
    return DomainInfo(**domain.info())  # type: ignore[arg-type]


@registry.command(Command.DOMAIN_FREE, DomainRef)
def domain_free(ctx: Context, req: DomainRef) -> Empty:
    ctx.daemon.iommu.domain_free(ctx.session.id, req.domain)
    log.info("domain freed", domain=req.domain)
    return Empty()


@registry.command(Command.DOMAIN_LIST, ListRequest)
def domain_list(ctx: Context, req: ListRequest) -> DomainListReply:
    domains = ctx.daemon.iommu.domains(ctx.session.list_filter(req.all))
    return DomainListReply(domains=[DomainInfo(**d.info()) for d in domains])  # type: ignore[arg-type]


@registry.command(Command.ATTACH_DEVICE, AttachDevice)
def attach_device(ctx: Context, req: AttachDevice) -> DeviceDescription | Deferred:
    owner = ctx.session.id
    device = ctx.daemon.bus.device(owner, req.device)
    ctx.daemon.iommu.attach_device(owner, req.domain, device)
    log.info("device attached", mdev=device.uuid, domain=req.domain, pasid=device.default_pasid)
    pasids = {0, device.default_pasid}
    return ats.then_reply(
        ctx, lambda: ats.device_changed(ctx, device.uuid, pasids), describe(ctx, device)
    )


@registry.command(Command.DETACH_DEVICE, DetachDevice)
def detach_device(ctx: Context, req: DetachDevice) -> DeviceDescription | Deferred:
    owner = ctx.session.id
    device = ctx.daemon.bus.device(owner, req.device)
    domain = req.domain
    if domain is None:
        if device.group is None:
            raise SiovError(errno.ENODEV, f"device {device.uuid} has no IOMMU group")
        domain = device.group.domain.id
    ctx.daemon.iommu.detach_device(owner, domain, device)
    log.info("device detached", mdev=device.uuid, domain=domain)
    pasids = {0, device.default_pasid}
    return ats.then_reply(
        ctx, lambda: ats.device_changed(ctx, device.uuid, pasids), describe(ctx, device)
    )


@registry.command(Command.ATTACH_PASID, PasidAttach)
def attach_pasid(ctx: Context, req: PasidAttach) -> Empty:
    owner = ctx.session.id
    device = ctx.daemon.bus.device(owner, req.device)
    ctx.daemon.iommu.attach_pasid(owner, req.domain, device, req.pasid)
    log.info("pasid attached", mdev=device.uuid, pasid=req.pasid, domain=req.domain)
    return Empty()


@registry.command(Command.REPLACE_PASID, PasidAttach)
def replace_pasid(ctx: Context, req: PasidAttach) -> Empty | Deferred:
    owner = ctx.session.id
    device = ctx.daemon.bus.device(owner, req.device)
    ctx.daemon.iommu.replace_pasid(owner, req.domain, device, req.pasid)
    log.info("pasid replaced", mdev=device.uuid, pasid=req.pasid, domain=req.domain)
    return ats.then_reply(ctx, lambda: ats.device_changed(ctx, device.uuid, {req.pasid}), Empty())


@registry.command(Command.DETACH_PASID, PasidDetach)
def detach_pasid(ctx: Context, req: PasidDetach) -> Empty | Deferred:
    owner = ctx.session.id
    device = ctx.daemon.bus.device(owner, req.device)
    ctx.daemon.iommu.detach_pasid(owner, req.domain, device, req.pasid)
    log.info("pasid detached", mdev=device.uuid, pasid=req.pasid)
    return ats.then_reply(ctx, lambda: ats.device_changed(ctx, device.uuid, {req.pasid}), Empty())


@registry.command(Command.MAP, Map)
def map_(ctx: Context, req: Map) -> Deferred:
    daemon, owner = ctx.daemon, ctx.session.id
    limits = daemon.config.limits
    quota = MapQuota(limits.mappings, limits.mapped_bytes, limits.page_table_pages)
    job = daemon.iommu.map_job(
        owner,
        req.domain,
        req.iova,
        req.phys,
        req.size,
        req.prot,
        quota,
        page_sizes=ctx.session.page_sizes,
    )

    def finish() -> MapReply:
        log.debug("mapped", domain=req.domain, iova=hex(job.iova), size=req.size, prot=req.prot)
        return MapReply(iova=job.iova, size=req.size)

    return Deferred(job, finish)


@registry.command(Command.UNMAP, Unmap)
@typed
def unmap(ctx: Context, req: Unmap) -> Deferred:
    job = ctx.daemon.iommu.unmap_job(ctx.session.id, req.domain, req.iova, req.size)

    def finish(outcome: ats.Outcome) -> dict[str, Any]:
        log.debug("unmapped", domain=req.domain, iova=hex(req.iova), bytes=job.unmapped)
        ctx.daemon.close_dead_mappings()
        return {"unmapped": job.unmapped, **outcome.fields()}

    # strict: devices that cached a translation there drop it before the reply (SPEC §8.21)
    return ats.deferred(ctx, job, lambda: ats.unmapped(ctx, req.domain, req.iova, req.size), finish)


@registry.command(Command.IOVA_TO_PHYS, IovaToPhys)
def iova_to_phys(ctx: Context, req: IovaToPhys) -> IovaToPhysReply:
    found = ctx.daemon.iommu.leaf(ctx.session.id, req.domain, req.iova)
    if found is None:
        raise SiovError(errno.ENOENT, f"iova {req.iova:#x} is not mapped in domain {req.domain}")
    return IovaToPhysReply(phys=found[0], page_size=found[1])


@registry.command(Command.IOTLB_ENTRIES, IotlbEntries)
def iotlb_entries(ctx: Context, req: IotlbEntries) -> IotlbEntriesReply:
    # The domain's owner, or an admin (who may look at any client's domain, as siovctl does).
    owner = None if ctx.session.is_admin else ctx.session.id
    cached = ctx.daemon.iommu.iotlb_cached(owner, req.domain, req.pasid)
    start = (req.start_pasid, req.start_iova)
    rows = [row for row in cached if (row[0], row[1]) >= start]
    shown = rows[: req.max_entries]
    rest = rows[req.max_entries] if len(rows) > req.max_entries else None
    entries = [
        IotlbEntry(
            pasid=pasid,
            iova=iova,
            page_size=entry[E_SIZE],
            phys=entry[E_PHYS],
            writable=bool(entry[E_FLAGS] & PTE_RW),
            dirty=bool(entry[E_FLAGS] & PTE_D),
            hits=entry[E_HITS],
            referenced=bool(entry[E_REF]),
        )
        for pasid, iova, entry in shown
    ]
    return IotlbEntriesReply(
        entries=entries,
        total=len(cached),
        next_pasid=rest[0] if rest is not None else None,
        next_iova=rest[1] if rest is not None else None,
    )


@registry.command(Command.DIRTY_BITMAP, DirtyBitmap)
def dirty_bitmap(ctx: Context, req: DirtyBitmap) -> Deferred:
    # Refuse before reading (and maybe clearing) D bits a reply could not carry.
    fits = (ctx.session.max_msg_size - 64) * 8
    if req.size // 4096 > fits:
        raise SiovError(
            errno.EMSGSIZE,
            f"a bitmap of {req.size // 4096} pages does not fit one reply "
            f"(max_msg_size {ctx.session.max_msg_size}: at most {fits} pages)",
        )
    job = ctx.daemon.iommu.dirty_job(ctx.session.id, req.domain, req.iova, req.size, req.clear)

    def finish() -> DirtyBitmapReply:
        return DirtyBitmapReply(bitmap=bytes(job.bitmap), page_size=4096, pages=req.size // 4096)

    return Deferred(job, finish)


@registry.command(Command.IOTLB_INVALIDATE, IotlbInvalidate)
def iotlb_invalidate(ctx: Context, req: IotlbInvalidate) -> InvalidateReply | Deferred:
    pasid = req.pasid
    if req.device is not None:
        # A device-relative invalidation: its requests without PASID carry its default PASID.
        device = ctx.daemon.bus.device(ctx.session.id, req.device)
        if pasid is None:
            pasid = device.default_pasid
    dropped = ctx.daemon.iommu.iotlb_invalidate(
        ctx.session.id, req.scope, req.domain, pasid, req.iova or 0, req.am
    )
    reply = InvalidateReply(invalidated=dropped)
    if req.scope == "range" and req.domain is not None:
        size = 4096 << req.am
        return ats.then_reply(
            ctx, lambda: ats.unmapped(ctx, req.domain or 0, req.iova or 0, size), reply
        )
    # a flush also flushes device TLBs (Linux: iommu_flush_dev_iotlb after the IOTLB flush)
    scope = None if req.domain is None else {req.domain}
    return ats.then_reply(ctx, lambda: ats.domains_changed(ctx, scope), reply)
