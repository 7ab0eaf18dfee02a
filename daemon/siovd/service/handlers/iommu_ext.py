"""IOMMU extensions (SPEC §8.16-§8.20): reserved regions and IOVA ranges, dirty-tracking control,
hardware information. Thin: validate, call the model (siovd.model.iommu.reserved, ...), reply."""

from __future__ import annotations

import errno
from typing import Any

import structlog
import trio

from siov_protocol import Command
from siov_protocol.messages_iommu_ext import (
    AllowIovas,
    GetDirtyBitmap,
    GetHwInfo,
    HwptInvalidate,
    IovaRanges,
    NestedAlloc,
    PageRequestMsg,
    ResvAdd,
    ResvRegions,
    SetDirtyTracking,
    UnmapDirty,
)
from siovd.model.budget import Budget
from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu import dirty, hwinfo, nested, pri, reserved
from siovd.model.iommu.prq import PageAnswer, PageRequest, PageRequestQueue
from siovd.service import ats
from siovd.service.handlers.registry import Context, Deferred, registry, typed

log = structlog.get_logger("siovd")


def _device(ctx: Context, uuid: str, look: bool = False) -> Device:
    """The device for its owner or for the emulator that registered it (ENOENT otherwise);
    with ``look``, any device for an admin (read-only queries, as TRANSLATE)."""
    bus, me = ctx.daemon.bus, ctx.session.id
    if look and ctx.session.is_admin:
        return bus.device(None, uuid)
    try:
        return bus.device(me, uuid)
    except SiovError:
        return bus.emulated_device(me, uuid)


def _regions(device: Device) -> list[dict[str, Any]]:
    return [
        {"start": start, "last": last, "type": kind}
        for start, last, kind in reserved.device_regions(device)
    ]


@registry.command(Command.DEVICE_RESV_REGIONS, ResvRegions)
@typed
def device_resv_regions(ctx: Context, req: ResvRegions) -> dict[str, Any]:
    return {"regions": _regions(_device(ctx, req.device, look=True))}


@registry.command(Command.DEVICE_RESV_ADD, ResvAdd)
@typed
def device_resv_add(ctx: Context, req: ResvAdd) -> dict[str, Any]:
    device = _device(ctx, req.device)
    reserved.add_device_region(device, req.start, req.last, req.type)
    log.info("reserved region added", mdev=device.uuid, start=hex(req.start), type=req.type)
    return {"regions": _regions(device)}


@registry.command(Command.IOVA_RANGES, IovaRanges)
@typed
def iova_ranges(ctx: Context, req: IovaRanges) -> dict[str, Any]:
    owner = None if ctx.session.is_admin else ctx.session.id  # an admin may look at any
    domain = ctx.daemon.iommu.paging_domain(owner, req.domain)
    ranges = reserved.iova_ranges(domain, req.num_iovas)
    return {
        "num_iovas": len(ranges),
        "iova_alignment": 4096,
        "ranges": [{"start": start, "last": last} for start, last in ranges],
    }


@registry.command(Command.ALLOW_IOVAS, AllowIovas)
@typed
def allow_iovas(ctx: Context, req: AllowIovas) -> dict[str, Any]:
    domain = ctx.daemon.iommu.paging_domain(ctx.session.id, req.domain)
    reserved.allow_iovas(domain, [(r.start, r.last) for r in req.ranges])
    log.info("allowed iovas set", domain=req.domain, ranges=len(req.ranges))
    return {}


# -- dirty tracking (model/iommu/dirty.py) ---------------------------------------------------


def _check_bitmap_fits(ctx: Context, size: int, page_size: int) -> None:
    """Refuse before reading (and clearing) D bits a reply could not carry."""
    fits = (ctx.session.max_msg_size - 64) * 8
    if page_size > 0 and size // page_size > fits:
        raise SiovError(
            errno.EMSGSIZE,
            f"a bitmap of {size // page_size} bits does not fit one reply "
            f"(max_msg_size {ctx.session.max_msg_size}: at most {fits})",
        )


@registry.command(Command.SET_DIRTY_TRACKING, SetDirtyTracking)
@typed
def set_dirty_tracking(ctx: Context, req: SetDirtyTracking) -> Deferred:
    iommu = ctx.daemon.iommu
    domain = iommu.paging_domain(ctx.session.id, req.domain)
    job = dirty.SetTrackingJob(iommu, domain, req.enable)

    def finish() -> dict[str, Any]:
        log.info("dirty tracking", domain=req.domain, enable=req.enable)
        return {"enabled": domain.dirty_on}

    return Deferred(job, finish)


@registry.command(Command.GET_DIRTY_BITMAP, GetDirtyBitmap)
@typed
def get_dirty_bitmap(ctx: Context, req: GetDirtyBitmap) -> Deferred:
    iommu = ctx.daemon.iommu
    domain = iommu.paging_domain(ctx.session.id, req.domain)
    job = dirty.DirtyReadJob(
        iommu, domain, req.iova, req.size, req.page_size, req.no_clear
    )  # checks only; nothing read yet
    _check_bitmap_fits(ctx, req.size, req.page_size)

    def finish() -> dict[str, Any]:
        return {
            "bitmap": bytes(job.bitmap),
            "page_size": req.page_size,
            "pages": req.size // req.page_size,
        }

    return Deferred(job, finish)


@registry.command(Command.UNMAP_DIRTY, UnmapDirty)
@typed
def unmap_dirty(ctx: Context, req: UnmapDirty) -> Deferred:
    iommu = ctx.daemon.iommu
    domain = iommu.paging_domain(ctx.session.id, req.domain)
    job = dirty.UnmapDirtyJob(
        iommu, domain, req.iova, req.size, req.page_size
    )  # checks only; nothing read yet
    _check_bitmap_fits(ctx, req.size, req.page_size)

    def finish(outcome: ats.Outcome) -> dict[str, Any]:
        ctx.daemon.close_dead_mappings()
        return {
            "unmapped": job.unmap.unmapped,
            "bitmap": bytes(job.read.bitmap),
            "page_size": req.page_size,
            "pages": req.size // req.page_size,
            **outcome.fields(),
        }

    return ats.deferred(ctx, job, lambda: ats.unmapped(ctx, req.domain, req.iova, req.size), finish)


# -- hardware information (model/iommu/hwinfo.py) ---------------------------------------------


@registry.command(Command.GET_HW_INFO, GetHwInfo)
@typed
def get_hw_info(ctx: Context, req: GetHwInfo) -> dict[str, Any]:
    device = _device(ctx, req.device, look=True)
    if req.flags:
        raise SiovError(errno.EOPNOTSUPP, f"GET_HW_INFO flags {req.flags:#x}: none are defined")
    return hwinfo.hw_info(device.pasid_bits, req.data_len)


# -- page requests from any device (model/iommu/pri.py) ----------------------------------------


def _raise(ctx: Context, device: Device, req: PageRequestMsg) -> tuple[Any, dict[str, Any]]:
    iommu = ctx.daemon.iommu
    perm = pri.perm_of(req.read, req.write, req.exec, req.priv)
    request, domain, pages = pri.raise_request(
        iommu.pri, iommu.prq, device, req.pasid, req.iova, perm, req.grpid, req.last, ctx.session.id
    )
    if not req.last:
        return None, {"request": None, "queued": True}
    if request is None:
        # No route (or the submitter's queue is full): the IOMMU answers Invalid Request.
        return None, {"request": None, "code": PageAnswer.INVALID, "by_iommu": True}
    assert domain is not None
    owner = ctx.daemon.sessions.get(request.owner)
    if owner is not None:
        owner.push_event(
            Command.EVENT_PAGE_REQUEST,
            {
                "request": request.id,
                "device": device.uuid,
                "pasid": request.pasid,
                "iova": request.iova,
                "write": request.write,
                "domain": domain.id if domain.id else None,
                "pasid_valid": req.pasid is not None,
                "grpid": req.grpid,
                "perm": perm,
                "pages": [{"iova": a, "perm": p} for a, p in pages],
                "last": True,
            },
        )
    return request, {"request": request.id}


class _AwaitAnswer:
    """PAGE_REQUEST's wait, as a :class:`Deferred` job: over when the owner answered, the
    device went, the owner left, or the deadline passed (no work, so the budget is unused)."""

    def __init__(self, prq: PageRequestQueue, request: PageRequest, deadline: float) -> None:
        self.prq = prq
        self.request = request
        self.deadline = deadline
        self.answered = trio.Event()
        request.wake = self.answered.set

    def step(self, budget: Budget) -> bool:
        request = self.request
        return (
            request.answer is not None or request.cancelled or trio.current_time() >= self.deadline
        )

    async def pause(self) -> None:
        try:
            with trio.move_on_at(self.deadline):
                await self.answered.wait()
        except BaseException:  # the requester's connection went: nothing is owed to it,
            self.prq.finish(self.request)  # and the owner's answer by its cookie is ENOENT
            raise


@registry.command(Command.PAGE_REQUEST, PageRequestMsg)
@typed
def page_request(ctx: Context, req: PageRequestMsg) -> dict[str, Any] | Deferred:
    """An emulator's PRI request: the reply is the owner's response (or the timeout's). The
    wait is a deferred reply: this connection waits, nobody else does."""
    device = ctx.daemon.bus.emulated_device(ctx.session.id, req.device)
    if req.last and _routes_to(device, req.pasid) == ctx.session.id:
        raise SiovError(
            errno.EDEADLK,
            f"the page request of {device.uuid} would go to this connection, which reads "
            "nothing while the request waits: answer it from another (or use TRIGGER_IOPF)",
        )
    request, reply = _raise(ctx, device, req)
    if request is None:
        return reply
    prq = ctx.daemon.iommu.prq
    deadline = trio.current_time() + ctx.daemon.config.iommu.page_request_timeout_s
    wait = _AwaitAnswer(prq, request, deadline)

    def finish() -> dict[str, Any]:
        timed_out = request.answer is None and not request.cancelled
        answer = prq.finish(request)
        reply["code"] = int(answer) if answer is not None else int(PageAnswer.INVALID)
        reply["timed_out"] = timed_out
        reply["cancelled"] = request.cancelled
        reply["owner_gone"] = request.owner_gone
        return reply

    return Deferred(wait, finish, wait.pause)


def _routes_to(device: Device, pasid: int | None) -> int | None:
    """The session a last request of ``device`` would be routed to, or None."""
    domain = pri.route(device, pasid)
    if domain is None:
        return None
    return domain.owner if domain.owner else device.owner


@registry.command(Command.TRIGGER_IOPF, PageRequestMsg)
@typed
def trigger_iopf(ctx: Context, req: PageRequestMsg) -> dict[str, Any]:
    """Fault injection (iommufd selftest TRIGGER_IOPF): raise a request for a device you own
    or emulate and return at once; the owner answers it by its cookie with PAGE_RESPONSE."""
    device = _device(ctx, req.device)
    request, reply = _raise(ctx, device, req)
    if request is not None:
        prq = ctx.daemon.iommu.prq
        request.wake = lambda: prq.finish(request) and None
    return reply


# -- nesting (model/iommu/nested.py) ------------------------------------------------------------


@registry.command(Command.NESTED_ALLOC, NestedAlloc)
@typed
def nested_alloc(ctx: Context, req: NestedAlloc) -> dict[str, Any]:
    daemon, owner = ctx.daemon, ctx.session.id
    limit = daemon.config.limits.domains
    if len(daemon.iommu.domains(owner)) >= limit:
        raise SiovError(errno.ENOSPC, f"limit reached: limits.domains = {limit}")
    domain = nested.alloc_nested(
        daemon.iommu, owner, req.parent, req.pgtbl_addr, req.addr_width, req.flags
    )
    log.info("nested domain allocated", domain=domain.id, parent=req.parent)
    return {**domain.info(), "parent": req.parent, "pgtbl_addr": req.pgtbl_addr}


@registry.command(Command.HWPT_INVALIDATE, HwptInvalidate)
@typed
def hwpt_invalidate(ctx: Context, req: HwptInvalidate) -> dict[str, Any] | Deferred:
    domain = ctx.daemon.iommu.domain(ctx.session.id, req.domain)
    entries = [(e.addr, e.npages, e.flags) for e in req.entries]
    done = nested.invalidate(ctx.daemon.iommu, domain, entries)

    def changes() -> list[Any]:
        out = []
        for addr, npages, _flags in entries[:done]:  # a stage-1 change reaches device TLBs too
            size = npages * 4096 if npages else (1 << 64) - addr
            out += ats.unmapped(ctx, domain.id, addr, size)
        return out

    return ats.then_reply(ctx, changes, {"entry_num": done})
