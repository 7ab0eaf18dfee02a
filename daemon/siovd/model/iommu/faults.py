"""Fault reasons (VT-d numbering) and the record a failed translation leaves behind."""

from __future__ import annotations

from dataclasses import dataclass

from siovd.model.dma import DmaOrigin
from siovd.model.iommu.irq_remap import IR_REASON_NAMES

# VT-d scalable-mode fault reasons (spec numbering, as QEMU's VTDFaultReason transcribes it).
FR_PASID_ENTRY_NOT_PRESENT = 0x59  # no PASID-table entry (also how a PASID is blocked)
FR_FS_ACCESS = 0x70  # a first-stage table or output page outside the domain owner's memory
FR_FS_NOT_PRESENT = 0x71  # first-stage entry with P=0 (or no memory under an identity domain)
FR_FS_RESERVED = 0x72  # reserved bit set in a first-stage entry
FR_NON_CANONICAL = 0x80  # input address not canonical for the table depth
FR_US_PRIVILEGE = 0x81  # a user request met an entry with U/S=0
FR_SM_WRITE = 0x85  # write through a read-only translation
FR_AD_UPDATE = 0x91  # the walker could not set an A or D bit

REASON_NAMES: dict[int, str] = {
    FR_PASID_ENTRY_NOT_PRESENT: "PASID entry not present",
    FR_FS_ACCESS: "first-stage access failure",
    FR_FS_NOT_PRESENT: "first-stage entry not present",
    FR_FS_RESERVED: "reserved bit in first-stage entry",
    FR_NON_CANONICAL: "non-canonical address",
    FR_US_PRIVILEGE: "user/supervisor privilege",
    FR_SM_WRITE: "write permission",
    FR_AD_UPDATE: "accessed/dirty update failed",
    **IR_REASON_NAMES,  # interrupt remapping, 0x20-0x26 (model/iommu/irq_remap.py)
}


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One failed translation, as the IOMMU reports it to the domain's owner.

    ``device`` is the requester's UUID; ``pasid`` is 0 for a request without PASID;
    ``domain`` is the domain the request reached, or ``None`` when no entry led to one;
    ``origin`` names the descriptor whose DMA faulted (``None`` for an emulator's own
    DMA_READ/DMA_WRITE).
    """

    device: str
    pasid: int
    iova: int
    write: bool
    reason: int
    domain: int | None
    origin: DmaOrigin | None = None

    @property
    def reason_name(self) -> str:
        return REASON_NAMES.get(self.reason, f"reason {self.reason:#x}")
