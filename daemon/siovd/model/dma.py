"""The contract between the IOMMU and anything that does DMA through it.

A :class:`DmaSpace` is one requester's view of memory: a device tagged with one PASID. The
accelerator and external emulators only ever see this interface, so the IOMMU can change how it
translates without them knowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DmaFault:
    """A failed translation: what the IOMMU reports and a fault record is made from.

    ``reason`` uses VT-d numbering (0x71 first-stage entry not present, 0x85 write permission,
    0x59 PASID entry not present, ...); ``write`` says whether the access was a write.
    """

    iova: int
    write: bool
    reason: int
    pasid: int


@dataclass(frozen=True, slots=True)
class DmaOrigin:
    """Which piece of work a DMA belongs to, so a fault record can name it: the WQ, the
    descriptor's opcode and completion-record address, and its index when it sits in a batch
    (``None`` for the batch descriptor itself or a lone descriptor). Nine faults at one address
    differ by these."""

    wq: str
    opcode: int
    completion_addr: int
    batch_index: int | None = None


class DmaSpace(Protocol):
    """One requester (device, PASID) translating addresses through the IOMMU."""

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        """Translate ``[iova, iova + length)`` into memoryviews over physical memory.

        The views cover a prefix of the range in order; their lengths add up to the number of
        bytes that translated. When that is less than ``length`` the fault describes the first
        address that did not translate. A range that translates whole costs a handful of views
        (one per physically contiguous run), not one per 4 KiB page.
        """
        ...
