"""Interrupt remapping (SPEC §8.22): the caller's remapping table, its entries, IEC
invalidation, and an mdev vector's MSI message. Thin: validate, call
siovd.model.iommu.irq_remap, reply. Delivery itself is in service/accel_runtime.py."""

from __future__ import annotations

import errno

from siov_protocol import Command
from siov_protocol.messages_iommu_ext import (
    IrClearEntry,
    IrInvalidateIec,
    IrSetEntry,
    IrTableSet,
    SetMsiRemap,
)
from siov_protocol.replies import IrEntryReply, IrInvalidateReply, IrTableReply, MsiRemapReply
from siovd.model.accel import MDEV_IRQ_COUNT
from siovd.model.errors import SiovError
from siovd.model.iommu import irq_remap
from siovd.service.handlers.registry import Context, registry


def _table(ctx: Context) -> irq_remap.IrTable:
    table = ctx.daemon.accel_runtime.ir_tables.get(ctx.session.id)
    if table is None:
        raise SiovError(errno.ENOENT, "no interrupt remapping table: IR_TABLE_SET first")
    return table


def _check_vector(vector: int) -> None:
    if vector >= MDEV_IRQ_COUNT:
        raise SiovError(errno.EINVAL, f"vector {vector}: an mdev has 0..{MDEV_IRQ_COUNT - 1}")


@registry.command(Command.IR_TABLE_SET, IrTableSet)
def ir_table_set(ctx: Context, req: IrTableSet) -> IrTableReply:
    """A new table replaces the old one (and its IEC: the IRTA write is a global flush)."""
    tables = ctx.daemon.accel_runtime.ir_tables
    if req.entries == 0:
        tables.pop(ctx.session.id, None)
    else:
        tables[ctx.session.id] = irq_remap.IrTable(req.entries)
    return IrTableReply(entries=req.entries)


@registry.command(Command.IR_SET_ENTRY, IrSetEntry)
def ir_set_entry(ctx: Context, req: IrSetEntry) -> IrEntryReply:
    table = _table(ctx)
    _check_vector(req.vector)
    if req.source is not None:
        ctx.daemon.accel_runtime.state(ctx.session, req.source)  # ENOENT: not the caller's
    entry = irq_remap.IrEntry(
        present=req.present,
        vector=req.vector,
        dest_id=req.dest_id,
        source=req.source,
        fpd=req.fpd,
        rsvd=req.rsvd,
    )
    table.set_entry(req.index, entry)
    return IrEntryReply(index=req.index, cached=req.index in table.iec)


@registry.command(Command.IR_CLEAR_ENTRY, IrClearEntry)
def ir_clear_entry(ctx: Context, req: IrClearEntry) -> IrEntryReply:
    table = _table(ctx)
    if not table.clear_entry(req.index):
        raise SiovError(errno.ENOENT, f"entry {req.index} is not set")
    return IrEntryReply(index=req.index, cached=req.index in table.iec)


@registry.command(Command.IR_INVALIDATE_IEC, IrInvalidateIec)
def ir_invalidate_iec(ctx: Context, req: IrInvalidateIec) -> IrInvalidateReply:
    return IrInvalidateReply(dropped=_table(ctx).invalidate(req.index, req.mask))


@registry.command(Command.DEVICE_SET_MSI_REMAP, SetMsiRemap)
def device_set_msi_remap(ctx: Context, req: SetMsiRemap) -> MsiRemapReply:
    """Any address is accepted, as a device's MSI-X table takes any write: a request that is
    not in remappable format faults at each interrupt (0x20, 0x25), as on hardware."""
    state = ctx.daemon.accel_runtime.state(ctx.session, req.device)
    _check_vector(req.vector)
    if req.address is None:
        if req.data:
            raise SiovError(errno.EINVAL, "data needs an address")
        state.msi[req.vector] = None
        return MsiRemapReply(vector=req.vector, index=None)
    state.msi[req.vector] = (req.address, req.data)
    try:
        index: int | None = irq_remap.decode_msi(req.address, req.data)
    except irq_remap.IrBlocked:
        index = None
    return MsiRemapReply(vector=req.vector, index=index)
