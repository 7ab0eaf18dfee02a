"""The DMA path: requester → PASID-table entry → IOTLB → page walk on a miss.

A translation of a range returns physically contiguous *runs*, so a large copy costs a lookup
per page at most (one per 2 MiB page, when the domain has them) and a handful of memoryviews,
never one view per 4 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from siovd.model.device import Device
from siovd.model.dma import DmaFault
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.faults import (
    FR_FS_ACCESS,
    FR_FS_NOT_PRESENT,
    FR_PASID_ENTRY_NOT_PRESENT,
    FR_SM_WRITE,
)
from siovd.model.iommu.iotlb import E_HITS, E_REF, make_tag, new_entry
from siovd.model.iommu.nested import combine
from siovd.model.iommu.pagetable import PROT_READ, PROT_WRITE, PTE_D, PTE_RW, walk
from siovd.model.memory import Region

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu

_RW_D = PTE_RW | PTE_D


@dataclass(slots=True)
class Run:
    """``length`` bytes at ``iova`` translating to contiguous ``phys`` inside ``region``,
    through leaves of ``page_size`` bytes (4 KiB, 2 MiB, 1 GiB; 0 under an identity domain,
    which has no page table). Neighbouring leaves of different sizes are separate runs."""

    iova: int
    phys: int
    length: int
    region: Region
    prot: int
    page_size: int = 0

    def view(self) -> memoryview:
        off = self.phys - self.region.base
        view = self.region.buf[off : off + self.length]
        return view if self.region.writable else view.toreadonly()


@dataclass(slots=True)
class Failure:
    iova: int
    reason: int
    domain: Domain | None


def resolve(device: Device, pasid: int) -> tuple[Domain | None, int]:
    """The domain the PASID-table entry for ``(device, pasid)`` points at, and the PASID that
    tags the request in the IOTLB.

    PASID 0 and an mdev's default PASID both go through the group's current domain
    (RID2PASID): attaching a domain to the mdev is all it takes, as Joerg Roedel proposed.
    """
    group = device.group
    if group is None or not device.alive:
        return None, pasid
    if pasid == 0 or pasid == device.default_pasid:
        return group.domain, device.default_pasid
    if pasid >= device.max_pasids:
        return None, pasid
    return group.pasids.get(pasid), pasid


def translate_runs(
    iommu: Iommu,
    device: Device,
    pasid: int,
    iova: int,
    length: int,
    write: bool,
    max_runs: int | None = None,
    max_pages: int | None = None,
) -> tuple[list[Run], Failure | None]:
    """Translate ``[iova, iova + length)``; stop at the first address that does not translate,
    or (without a failure) where a run past ``max_runs`` would begin or after ``max_pages``
    page lookups (each is a walk on a miss: the bound keeps one request short)."""
    if length <= 0:
        return [], None
    domain, tag_pasid = resolve(device, pasid)
    if domain is None:
        return [], Failure(iova, FR_PASID_ENTRY_NOT_PRESENT, None)
    limit = max_runs if max_runs is not None else -1
    dtype = domain.type
    if dtype is DomainType.PAGING:
        pages = max_pages if max_pages is not None else -1
        return _paging(iommu, domain, tag_pasid, iova, length, write, limit, pages)
    if dtype is DomainType.IDENTITY:
        return _identity(iommu, domain, iova, length, write, limit)
    # VT-d blocks a PASID by clearing its entry's present bit.
    return [], Failure(iova, FR_PASID_ENTRY_NOT_PRESENT, domain)


def _identity(
    iommu: Iommu, domain: Domain, iova: int, length: int, write: bool, max_runs: int
) -> tuple[list[Run], Failure | None]:
    """iova == phys, but only inside memory of the domain's owner."""
    region_of = iommu.memory.region_of
    owner = domain.owner
    runs: list[Run] = []
    pos, end = iova, iova + length
    while pos < end and len(runs) != max_runs:
        region = region_of(pos)
        if region is None or region.owner != owner:
            return runs, Failure(pos, FR_FS_NOT_PRESENT, domain)
        if write and not region.writable:
            return runs, Failure(pos, FR_SM_WRITE, domain)
        n = min(end, region.base + region.size) - pos
        prot = PROT_READ | (PROT_WRITE if region.writable else 0)
        runs.append(Run(pos, pos, n, region, prot))
        pos += n
    return runs, None


def _paging(
    iommu: Iommu,
    domain: Domain,
    tag_pasid: int,
    iova: int,
    length: int,
    write: bool,
    max_runs: int,
    max_pages: int,
) -> tuple[list[Run], Failure | None]:
    iotlb = iommu.iotlb
    lookup = iotlb.lookup
    region_of = iommu.memory.region_of
    tag = make_tag(domain.id, tag_pasid)
    owner = domain.owner
    runs: list[Run] = []
    failure: Failure | None = None
    # The run being built, kept in locals: the loop runs once per page.
    r_iova = r_phys = r_len = r_prot = r_size = 0
    r_region: Region | None = None
    r_end = 0  # end of r_region
    pos, end = iova, iova + length
    while pos < end and max_pages:
        max_pages -= 1
        entry = lookup(tag, pos)
        if entry is None or (write and entry[2] & _RW_D != _RW_D):
            # Miss, or a write through an entry that is read-only or not yet dirty: walk (a
            # hardware walker sets D with a locked update, and re-checks permissions).
            assert domain.locate is not None
            tracks = domain.sets_dirty
            result = walk(domain.locate, domain.root, domain.levels, pos, write, True, tracks)
            if isinstance(result, int):
                failure = Failure(pos, result, domain)
                break
            if domain.nest_of is not None:  # stage 1 done: its output through stage 2
                result = combine(domain.nest_of, pos, result, write)
                if isinstance(result, int):
                    failure = Failure(pos, result, domain)
                    break
            pbase, size, flags, level = result
            if not tracks and flags & PTE_RW:
                flags |= PTE_D  # tracking off: writes need no walk to set D (dirty.py)
            entry = new_entry(pbase, size, flags, region_of(pbase))
            iotlb.insert(tag, pos, level, entry)
        else:
            pbase, size, flags = entry[0], entry[1], entry[2]
        off = pos & (size - 1)
        phys = pbase + off
        n = size - off
        if n > end - pos:
            n = end - pos
        region: Region | None = entry[4]
        if region is not r_region or phys >= r_end:
            if region is None or not region.alive or not region.base <= phys < region.end:
                # A large page over several regions, or memory replaced under a stale entry.
                region = region_of(phys)
                if region is None:
                    failure = Failure(pos, FR_FS_ACCESS, domain)
                    break
            if region.owner != owner:
                failure = Failure(pos, FR_FS_ACCESS, domain)
                break
        assert region is not None
        if phys + n > region.end:
            n = region.end - phys
        if flags & PTE_RW and region.writable:
            prot = PROT_READ | PROT_WRITE
        elif write:
            failure = Failure(pos, FR_SM_WRITE, domain)
            break
        else:
            prot = PROT_READ
        if region is r_region and phys == r_phys + r_len and prot == r_prot and size == r_size:
            r_len += n
        else:
            if r_region is not None:
                runs.append(Run(r_iova, r_phys, r_len, r_region, r_prot, r_size))
                if len(runs) == max_runs:
                    r_region = None  # full: end before this page, with no failure
                    break
            r_iova, r_phys, r_len, r_region, r_prot, r_size = pos, phys, n, region, prot, size
            r_end = region.end
        pos += n
    if r_region is not None:
        runs.append(Run(r_iova, r_phys, r_len, r_region, r_prot, r_size))
    return runs, failure


class IommuDmaSpace:
    """One requester (device, PASID): the :class:`siovd.model.dma.DmaSpace` the accelerator uses.

    The PASID-table entry is looked up on every call, so attach and detach take effect at
    once. Every failed translation is reported to the domain's owner as a fault record.
    """

    __slots__ = ("_iommu", "device", "pasid")

    def __init__(self, iommu: Iommu, device: Device, pasid: int) -> None:
        self._iommu = iommu
        self.device = device
        self.pasid = pasid

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        # Fast path: the range lies in one page whose IOTLB entry allows the access (a
        # descriptor's buffers and completion record usually do). It gives what the loop in
        # _paging would, one view and one counted hit; anything else takes the full path.
        device = self.device
        group = device.group
        if group is not None and length > 0:
            domain, tag_pasid = resolve(device, self.pasid)
            if domain is not None and domain.type is DomainType.PAGING:
                iotlb = self._iommu.iotlb
                entry = iotlb.peek(make_tag(domain.id, tag_pasid), iova)
                if entry is not None:
                    size = entry[1]
                    off = iova & (size - 1)
                    flags = entry[2]
                    region: Region | None = entry[4]
                    phys = entry[0] + off
                    if (
                        off + length <= size
                        and region is not None
                        and region.alive
                        and region.base <= phys
                        and phys + length <= region.end
                        and region.owner == domain.owner
                        and (not write or (flags & _RW_D == _RW_D and region.writable))
                    ):
                        entry[E_REF] = 1
                        entry[E_HITS] += 1
                        iotlb.hits += 1
                        start = phys - region.base
                        view = region.buf[start : start + length]
                        return [view if region.writable else view.toreadonly()], None
        runs, failure = translate_runs(self._iommu, self.device, self.pasid, iova, length, write)
        views = [run.view() for run in runs]
        if failure is None:
            return views, None
        return views, self._iommu.report_fault(self.device, self.pasid, write, failure)
