"""A device TLB: the translation cache an ATS-capable device (DSA has one) keeps in front of
the IOMMU.

It caches what the IOTLB resolved for one requester (device, PASID), one entry per page (per
2 MiB frame of a larger page), and answers a range that lies inside one entry without asking
the IOMMU. Invalidation is conservative: whenever the IOTLB invalidates or evicts anything
(its ``generation`` moves), the whole device TLB is dropped, so the device never sees a
translation the IOMMU no longer has; it can only be stale where the IOTLB itself is (lazy
unmap, a user-managed table not yet invalidated), as a device TLB on hardware would.

Only accesses an entry allows are cached: writes need the page writable and already dirty,
so the first write still walks and sets D. Hits are counted in the IOMMU's ``devtlb_hits``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from siovd.model.device import Device
from siovd.model.dma import DmaFault
from siovd.model.iommu.domain import DomainType
from siovd.model.iommu.iotlb import make_tag
from siovd.model.iommu.pagetable import PTE_D, PTE_RW
from siovd.model.iommu.translate import IommuDmaSpace, resolve
from siovd.model.memory import Region

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu

_FRAME: Final = 1 << 21
_RW_D: Final = PTE_RW | PTE_D
#: Entries kept before the cache starts over (a device TLB is small).
CAPACITY: Final = 1024

# An entry: (first iova, end iova, iova of region offset 0, writes allowed, region)
_Entry = tuple[int, int, int, bool, Region]


class DevTlbDmaSpace:
    """A :class:`siovd.model.dma.DmaSpace` for one requester, with a device TLB."""

    __slots__ = (
        "_entries",
        "_generation",
        "_iommu",
        "_iotlb",
        "_walker",
        "device",
        "native",
        "pasid",
    )

    def __init__(self, iommu: Iommu, device: Device, pasid: int) -> None:
        self._iommu = iommu
        self._iotlb = iommu.iotlb
        self._walker = IommuDmaSpace(iommu, device, pasid)
        self.device = device
        self.pasid = pasid
        self._entries: dict[int, _Entry] = {}
        self._generation = self._iotlb.generation
        #: The executor's native copy of the entries: [the stamp it is valid for, the copy,
        #: whether it holds every entry] (siovd.model.accel.fastpath), or None.
        self.native: list[object] | None = None

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        if self._generation == self._iotlb.generation:
            entry = self._entries.get(~(iova >> 21))
            if entry is None or not entry[0] <= iova < iova + length <= entry[1]:
                entry = self._entries.get(iova >> 12)
            if entry is not None:
                lo, hi, base, writable, region = entry
                # (iova < iova + length: an empty range goes the long way, which says so)
                if lo <= iova < iova + length <= hi and (writable or not write) and region.alive:
                    self._iommu.devtlb_hits += 1
                    start = iova - base
                    if region.writable:
                        return [region.buf[start : start + length]], None
                    return [region.buf[start : start + length].toreadonly()], None
        else:
            self._entries.clear()
            self._generation = self._iotlb.generation
        views, fault = self._walker.runs(iova, length, write)
        if views and len(self._entries) < CAPACITY:
            self._fill(iova)
        return views, fault

    def hit_entry(self, iova: int, length: int, write: bool) -> tuple[int, _Entry] | None:
        """The entry (and its key) :meth:`runs` would answer ``[iova, iova + length)`` from
        without asking the IOMMU, or None (for the executor's native page cache)."""
        if self._generation != self._iotlb.generation:
            return None
        key = ~(iova >> 21)
        entry = self._entries.get(key)
        if entry is None or not entry[0] <= iova < iova + length <= entry[1]:
            key = iova >> 12
            entry = self._entries.get(key)
        if entry is None:
            return None
        lo, hi, _, writable, region = entry
        if lo <= iova < iova + length <= hi and (writable or not write) and region.alive:
            return key, entry
        return None

    @property
    def iommu(self) -> Iommu:
        return self._iommu

    @property
    def walker(self) -> IommuDmaSpace:
        """Where a miss goes: the IOMMU's own path for this requester."""
        return self._walker

    def cached(self) -> list[tuple[int, _Entry]]:
        """Every entry with its key (for the executor's native page cache)."""
        return list(self._entries.items())

    @property
    def full(self) -> bool:
        """A miss fills nothing now (until an invalidation or eviction drops the entries)."""
        return self._generation == self._iotlb.generation and len(self._entries) >= CAPACITY

    def _fill(self, iova: int) -> None:
        """Cache the IOTLB's entry for ``iova``'s page, clipped to its region."""
        domain, tag_pasid = resolve(self.device, self.pasid)
        if domain is None or domain.type is not DomainType.PAGING:
            return
        cached = self._iotlb.peek(make_tag(domain.id, tag_pasid), iova)
        if cached is None:
            return
        phys_base, size, flags = cached[0], cached[1], cached[2]
        region: Region | None = cached[4]
        if region is None or not region.alive or region.owner != domain.owner:
            return
        page_lo = iova & ~(size - 1)
        # iova x is at offset x - base of the region; keep the part of the page inside the
        # region (a large page may span regions).
        base = page_lo - (phys_base - region.base)
        lo = max(page_lo, base)
        hi = min(page_lo + size, base + region.size)
        if size > 4096:  # one entry per 2 MiB frame
            frame = iova & ~(_FRAME - 1)
            lo, hi = max(lo, frame), min(hi, frame + _FRAME)
            key = ~(iova >> 21)
        else:
            key = iova >> 12
        if not lo <= iova < hi:
            return
        writable = bool(flags & PTE_RW) and flags & _RW_D == _RW_D and region.writable
        self._entries[key] = (lo, hi, base, writable, region)
