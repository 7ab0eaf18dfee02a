"""Interrupt remapping for mdev MSI-X (VT-d §5.1): each client's interrupt remapping table (IRT)
and the interrupt entry cache (IEC) in front of it.

A vector in remappable format names a handle; the IOMMU reads the entry for it (through the IEC)
and delivers to the entry's ``vector`` if the entry is present, well-formed and its source-id
check passes (SVT/SQ/SID, simplified to "which device may use it"). Otherwise the interrupt is
blocked and, unless the entry sets FPD, recorded as a fault with the VT-d IR reason.

The IEC is what makes this faithful: a lookup fills it from the table and later lookups read the
cached copy, so a changed or cleared entry keeps being used until an IEC invalidation (global or
index with mask, VT-d §6.5.2.7) drops it. Only present entries are cached (VT-d §6.2.4: hardware
caches valid translations only).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Final

from siovd.model.errors import SiovError

# VT-d interrupt-remapping fault reasons, as QEMU's hw/i386/intel_iommu_internal.h names them
# (VTD_FR_IR_*), the VT-d specification's interrupt-remapping fault conditions (§7.1).
FR_IR_REQ_RSVD: Final = 0x20  # reserved fields set in the interrupt request (address not 0xFEE)
FR_IR_INDEX_OVER: Final = 0x21  # interrupt index beyond the table size
FR_IR_ENTRY_P: Final = 0x22  # present bit clear in the entry
FR_IR_ROOT_INVAL: Final = 0x23  # no interrupt remapping table (IRTA not programmed)
FR_IR_IRTE_RSVD: Final = 0x24  # reserved fields set in a present entry
FR_IR_REQ_COMPAT: Final = 0x25  # compatibility-format request while those are blocked
FR_IR_SID_ERR: Final = 0x26  # source-id validation failed

IR_REASON_NAMES: Final[dict[int, str]] = {
    FR_IR_REQ_RSVD: "interrupt request reserved field set",
    FR_IR_INDEX_OVER: "interrupt index beyond table size",
    FR_IR_ENTRY_P: "interrupt remapping entry not present",
    FR_IR_ROOT_INVAL: "interrupt remapping table not set",
    FR_IR_IRTE_RSVD: "reserved field set in interrupt remapping entry",
    FR_IR_REQ_COMPAT: "compatibility-format interrupt blocked",
    FR_IR_SID_ERR: "interrupt source-id validation failed",
}

#: IRTA.S: the table holds 2^(S+1) entries, S at most 15 (VT-d §11.4.9.6).
MAX_ENTRIES: Final = 1 << 16
#: The MSI address of a remappable-format request (VT-d §5.1.2.2): bits 31:20 are 0xFEE,
#: 19:5 handle[14:0], 4 the interrupt format (1 = remappable), 3 SHV, 2 handle[15].
MSI_ADDR_HEAD: Final = 0xFEE
MSI_FORMAT_REMAP: Final = 1 << 4
MSI_SHV: Final = 1 << 3
#: The largest IEC invalidation mask (IM is 5 bits in the descriptor, an index range 2^IM).
MAX_IEC_MASK: Final = 16


@dataclass(frozen=True, slots=True)
class IrEntry:
    """One interrupt remapping table entry, the fields siov models. ``source`` is the device
    UUID allowed to use it (``None``: no source-id check, SVT=0); ``rsvd`` stands for the
    entry's reserved bits (non-zero is a 0x24 fault at use, as hardware checks at lookup)."""

    present: bool
    vector: int
    dest_id: int
    source: str | None = None
    fpd: bool = False
    rsvd: int = 0


@dataclass(frozen=True, slots=True)
class Remapped:
    """A delivered interrupt: to ``vector`` of the device, for ``dest_id``."""

    vector: int
    dest_id: int
    index: int


@dataclass(frozen=True, slots=True)
class IrFault:
    """A blocked interrupt. ``record`` is False when the entry's FPD suppressed the record."""

    reason: int
    index: int
    record: bool = True

    @property
    def reason_name(self) -> str:
        return IR_REASON_NAMES[self.reason]


def decode_msi(address: int, data: int) -> int:
    """The interrupt index of a remappable-format MSI (address, data); a :class:`IrFault`
    reason (raised as :class:`IrBlocked`) for a request that is not one."""
    if address >> 20 != MSI_ADDR_HEAD:
        raise IrBlocked(IrFault(FR_IR_REQ_RSVD, 0))
    if not address & MSI_FORMAT_REMAP:
        raise IrBlocked(IrFault(FR_IR_REQ_COMPAT, 0))
    handle = ((address >> 5) & 0x7FFF) | (((address >> 2) & 1) << 15)
    if address & MSI_SHV:
        handle += data & 0xFFFF  # VT-d: index = handle + subhandle when SHV is set
    return handle


class IrBlocked(Exception):
    """A request the IOMMU blocks; carries the fault."""

    def __init__(self, fault: IrFault) -> None:
        super().__init__(fault.reason_name)
        self.fault = fault


def msi_address(handle: int, shv: bool = False) -> int:
    """The remappable-format MSI address for ``handle`` (what a VMM programs into the vector)."""
    return (
        (MSI_ADDR_HEAD << 20)
        | ((handle & 0x7FFF) << 5)
        | MSI_FORMAT_REMAP
        | (MSI_SHV if shv else 0)
        | (((handle >> 15) & 1) << 2)
    )


class IrTable:
    """One client's interrupt remapping table and its IEC."""

    def __init__(self, entries: int) -> None:
        check_size(entries)
        self.size = entries
        self.entries: dict[int, IrEntry] = {}
        self.iec: dict[int, IrEntry] = {}
        self.iec_hits = 0
        self.iec_misses = 0

    def set_entry(self, index: int, entry: IrEntry) -> None:
        """Write an entry in memory; a cached copy stays until invalidated."""
        self._check_index(index)
        self.entries[index] = entry

    def clear_entry(self, index: int) -> bool:
        """Clear an entry (P=0) in memory; whether one was set."""
        self._check_index(index)
        return self.entries.pop(index, None) is not None

    def invalidate(self, index: int | None, mask: int = 0) -> int:
        """IEC invalidation: all (``index`` None) or the 2^mask entries from ``index`` (aligned).
        Returns how many cached entries were dropped."""
        if index is None:
            if mask:
                raise SiovError(errno.EINVAL, "a global IEC invalidation takes no mask")
            dropped = len(self.iec)
            self.iec.clear()
            return dropped
        if mask > MAX_IEC_MASK:
            raise SiovError(errno.EINVAL, f"mask {mask}: at most {MAX_IEC_MASK}")
        if index & ((1 << mask) - 1):
            raise SiovError(
                errno.EINVAL, f"index {index:#x} is not aligned to 2^{mask} (VT-d IIDX)"
            )
        self._check_index(index)
        gone = [i for i in self.iec if index <= i < index + (1 << mask)]
        for i in gone:
            del self.iec[i]
        return len(gone)

    def lookup(self, index: int, source: str) -> Remapped:
        """Remap an interrupt with ``index`` from device ``source``; :class:`IrBlocked` if the
        IOMMU blocks it."""
        if index >= self.size:
            raise IrBlocked(IrFault(FR_IR_INDEX_OVER, index))
        entry = self.iec.get(index)
        if entry is not None:
            self.iec_hits += 1
        else:
            self.iec_misses += 1
            entry = self.entries.get(index)
            if entry is None or not entry.present:
                raise IrBlocked(IrFault(FR_IR_ENTRY_P, index))
            self.iec[index] = entry
        record = not entry.fpd
        if entry.rsvd:
            raise IrBlocked(IrFault(FR_IR_IRTE_RSVD, index, record))
        if entry.source is not None and entry.source != source:
            raise IrBlocked(IrFault(FR_IR_SID_ERR, index, record))
        return Remapped(entry.vector, entry.dest_id, index)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise SiovError(errno.EINVAL, f"index {index}: the table has {self.size} entries")


def check_size(entries: int) -> None:
    """IRTA.S: a power of two from 2 to 2^16 entries."""
    if not 2 <= entries <= MAX_ENTRIES or entries & (entries - 1):
        raise SiovError(
            errno.EINVAL, f"{entries} entries: a power of two from 2 to {MAX_ENTRIES} (IRTA.S)"
        )


def remap(table: IrTable | None, address: int, data: int, source: str) -> Remapped:
    """Deliver a device's MSI (address, data) through ``table``: :class:`IrBlocked` if not."""
    index = decode_msi(address, data)
    if table is None:
        raise IrBlocked(IrFault(FR_IR_ROOT_INVAL, index))
    return table.lookup(index, source)
