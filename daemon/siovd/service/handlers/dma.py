"""DMA_READ, DMA_WRITE, TRANSLATE: an external emulator's DMA through the IOMMU.

Only the session that registered a device may DMA as it: the requester is the emulator, even
after another client has claimed the device to own its domains.
"""

from __future__ import annotations

import errno

from siov_protocol import Command
from siov_protocol.messages_iommu import DmaRead, DmaWrite, Translate
from siov_protocol.replies import (
    DmaReadReply,
    DmaWriteReply,
    TranslateFault,
    TranslateReply,
    TranslateRun,
)
from siov_protocol.schema import encode
from siovd.model.dma import DmaFault
from siovd.model.errors import SiovError
from siovd.model.iommu.faults import REASON_NAMES
from siovd.model.iommu.translate import resolve
from siovd.service.handlers.registry import Context, registry

#: An encoded run is at most this long (a map of five u64 fields); REPLY_SLACK covers the rest
#: of a TRANSLATE reply (header, ``translated``, ``fault``).
RUN_BYTES = 64
REPLY_SLACK = 256
#: Page lookups one TRANSLATE may do (64 MiB of 4 KiB pages, 32 GiB of 2 MiB ones): a single
#: request walking gigabytes page by page would hold up every other client.
TRANSLATE_MAX_PAGES = 16384


def fault_info(fault: DmaFault) -> TranslateFault:
    return TranslateFault(
        iova=fault.iova,
        write=fault.write,
        reason=fault.reason,
        pasid=fault.pasid,
        reason_name=REASON_NAMES.get(fault.reason, ""),
    )


def fault_error(what: str, fault: DmaFault, done: int) -> SiovError:
    """EFAULT whose error body carries ``fault`` (SPEC §5): the fields, not just the text."""
    name = REASON_NAMES.get(fault.reason, "")
    return SiovError(
        errno.EFAULT,
        f"DMA {what} faulted at iova {fault.iova:#x} after {done} bytes "
        f"(reason {fault.reason:#x}{': ' + name if name else ''})",
        detail={"fault": {**encode(fault_info(fault)), "done": done}},
    )


@registry.command(Command.DMA_READ, DmaRead)
def dma_read(ctx: Context, req: DmaRead) -> DmaReadReply:
    limit = ctx.session.max_msg_size - 64
    if req.length > limit:
        raise SiovError(errno.EMSGSIZE, f"length {req.length} exceeds what one reply carries")
    device = ctx.daemon.bus.emulated_device(ctx.session.id, req.device)
    data, fault = ctx.daemon.iommu.dma_read(device, req.pasid, req.iova, req.length)
    if fault is not None:
        raise fault_error("read", fault, len(data))
    return DmaReadReply(data=data)


@registry.command(Command.DMA_WRITE, DmaWrite)
def dma_write(ctx: Context, req: DmaWrite) -> DmaWriteReply:
    device = ctx.daemon.bus.emulated_device(ctx.session.id, req.device)
    written, fault = ctx.daemon.iommu.dma_write(device, req.pasid, req.iova, req.data)
    if fault is not None:
        raise fault_error("write", fault, written)
    return DmaWriteReply(written=written)


@registry.command(Command.TRANSLATE, Translate)
def translate(ctx: Context, req: Translate) -> TranslateReply:
    # The registrant translates as its device; an admin may translate any device (debugging).
    bus = ctx.daemon.bus
    if ctx.session.is_admin:
        device = bus.device(None, req.device)
    else:
        device = bus.emulated_device(ctx.session.id, req.device)
    # One reply carries the runs: as many as fit the negotiated message size, no more.
    max_runs = max(1, (ctx.session.max_msg_size - REPLY_SLACK) // RUN_BYTES)
    # An ATS translation request that fails is answered here only: no fault record, no
    # EVENT_FAULT to the owner (SPEC 8.7), whoever asked. Only the device itself (its
    # emulator or owner) is fenced after an ATS time-out and has what it learns remembered.
    foreign = ctx.session.id not in (device.registrant, device.owner)
    devtlb = ctx.daemon.iommu.atc
    if not foreign:
        devtlb.check_not_fenced(device.uuid)  # ETIMEDOUT after an ATS time-out (SPEC §8.21)
    runs, fault = ctx.daemon.iommu.translate(
        device, req.pasid, req.iova, req.length, req.write, max_runs, TRANSLATE_MAX_PAGES
    )
    domain, _tag = resolve(device, req.pasid)
    if not foreign and domain is not None and ctx.session.id == device.registrant:
        # the device may cache what it was told: remember it, to invalidate it on change
        devtlb.record(device.uuid, req.pasid, domain.id, [(r[0], r[2]) for r in runs])
    return TranslateReply(
        runs=[
            TranslateRun(iova=i, phys=p, length=n, prot=prot, page_size=size)
            for i, p, n, prot, size in runs
        ],
        translated=sum(run[2] for run in runs),
        fault=fault_info(fault) if fault is not None else None,
    )
