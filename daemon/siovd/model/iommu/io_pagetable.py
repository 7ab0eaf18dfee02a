"""Map, unmap, lazy flushing and dirty tracking of a kernel-managed paging domain (iommufd's
io_pagetable: the areas a domain holds and the page table behind them).

Each verb is a *job*: its checks run when it is made (a refusal is an exception before anything
changed), and :meth:`Job.step` then does the work in slices under a
:class:`~siovd.model.budget.Budget`, returning True once done. ``Iommu.map`` and friends run a
job to its end in one call; the service runs it a budget at a time so a 64 GiB map in 4 KiB
pages never holds the event loop (SPEC §8.15).

What others observe while a job is part way (the choices, after iommufd):

* MAP reserves its IOVA range before the first entry is written (iommufd inserts the area,
  then fills the domain), so an overlapping MAP is ``EEXIST`` from the start. Entries appear
  in IOVA order: DMA to a page not yet written faults, as it would on hardware racing an
  ``IOMMU_IOAS_MAP`` that has not returned.
* UNMAP clears entries in IOVA order and invalidates the IOTLB once, after the last entry and
  before it answers (strict mode), so until then DMA may still reach a cleared page through a
  cached translation, exactly as between a PTE clear and the flush on hardware. The area stays
  reserved and its memory referenced until the flush: once the reply is sent nothing reaches
  the pages.
* A client's own requests are read one at a time: its next request runs after the job has
  finished, so a client never sees its own map half done. No other client can name the domain.
* A domain destroyed under a job (its device removed by the bus) ends it with ``ENODEV``.
"""

from __future__ import annotations

import errno
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from siovd.model.budget import Budget
from siovd.model.errors import SiovError
from siovd.model.iommu.areas import Area, first_fit
from siovd.model.iommu.domain import Domain
from siovd.model.iommu.pagetable import PAGE_SIZES, PROT_READ, PROT_WRITE, SIZE_1G, SIZE_2M
from siovd.model.iommu.reserved import busy_for_alloc, check_map_reserved
from siovd.model.memory import PAGE_SIZE

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu

U64: Final = 1 << 64
#: ``unmap(iova=0, size=UNMAP_ALL)`` removes every mapping, even from an empty domain.
UNMAP_ALL: Final = U64 - 1
#: One dirty-bitmap call covers at most this many pages (a 1 MiB bitmap, 32 GiB of IOVA).
MAX_DIRTY_PAGES: Final = 1 << 23
#: IOVA one step of a dirty read covers: 512 entries of 4 KiB pages. Reading an entry (a
#: Python call per leaf) costs about four times writing one, and is charged so.
STEP_BYTES: Final = 2 << 20
DIRTY_COST: Final = 4
#: Entries one step of a map or an unmap writes, at most (and then to the table's end).
STEP_ENTRIES: Final = 2048


def entry_cost(size: int) -> int:
    """Budget charged for ``size`` bytes of IOVA: the bytes of 4 KiB entries it can take
    (a step of large pages costs what its entries cost, at least one)."""
    return min(max(size >> 9, 8), (STEP_ENTRIES + 512) * 8)


class Job(Protocol):
    def step(self, budget: Budget) -> bool:
        """Work until done (True) or the budget is spent (False: call again)."""
        ...


def run_to_end(job: Job) -> None:
    while not job.step(Budget()):
        pass


def check_alive(iommu: Iommu, domain: Domain) -> None:
    if not iommu.holds(domain):
        raise SiovError(errno.ENODEV, f"domain {domain.id} was destroyed during the request")


# -- map -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapQuota:
    """What one owner may hold over all its domains (``limits.*``); checked in one place,
    :class:`MapJob`, before anything changes. Each is ``ENOSPC`` naming its limit."""

    mappings: int = 1 << 62
    mapped_bytes: int = 1 << 62
    page_table_pages: int = 1 << 62


def tables_bound(iova: int, phys: int, size: int, levels: int) -> int:
    """At most how many new table pages a map can need: a leaf table per 2 MiB block it
    touches with 4 KiB pages, a directory per 1 GiB block, and so on up (tables that exist
    already make it fewer)."""

    def blocks(shift: int) -> int:
        return ((iova + size - 1) >> shift) - (iova >> shift) + 1

    # 2 MiB-aligned iova and phys: 4 KiB leaves at most in the tail
    tail = 1 if size & (SIZE_2M - 1) else 0
    small = blocks(21) if (iova | phys) & (SIZE_2M - 1) else tail
    upper = sum(blocks(30 + 9 * k) for k in range(levels - 2))
    return small + upper


def owner_usage(iommu: Iommu, owner: int) -> tuple[int, int, int]:
    """(mappings, mapped bytes, page-table pages) of ``owner``'s domains."""
    mappings = mapped = tables = 0
    for domain in iommu.domains(owner):
        mappings += len(domain.areas)
        mapped += domain.mapped_bytes
        if domain.pt is not None:
            tables += domain.pt.table_pages
    return mappings, mapped, tables


class MapJob:
    """MAP: checked and reserved when made, entries written by :meth:`step`."""

    def __init__(
        self,
        iommu: Iommu,
        domain: Domain,
        iova: int | None,
        phys: int,
        size: int,
        prot: int,
        owner: int,
        quota: MapQuota | None = None,
        page_sizes: Collection[int] = PAGE_SIZES,
    ) -> None:
        self.iommu = iommu
        self.domain = domain
        self.page_sizes = page_sizes
        self.size = size
        self.phys = phys
        self.prot = prot
        check_map_args(domain, iova, phys, size, prot)
        regions = iommu.memory.regions_in(owner, phys, size)
        if regions is None:
            raise SiovError(errno.EFAULT, f"physical range {phys:#x}+{size:#x} is not your memory")
        if prot & PROT_WRITE and not all(r.writable for r in regions):
            raise SiovError(errno.EFAULT, "a writable mapping of read-only memory")
        if iova is None:
            iova = alloc_iova(domain, size, phys)
        if quota is not None:
            check_quota(iommu, owner, quota, iova, phys, size, domain.levels)
        if domain.lazy_pending and any(
            a.iova < iova + size and iova <= a.last for a in domain.lazy_pending
        ):
            # The IOVA is still in the flush queue: flush before it is reused.
            iommu.flush_domain(domain)
        self.iova = iova
        # Reserve first (iommufd: the area goes in, then the domain is filled).
        domain.areas.add(Area(iova, size, phys, prot, tuple(regions)))
        for region in regions:
            region.map_count += 1
        self.done = 0

    def step(self, budget: Budget) -> bool:
        check_alive(self.iommu, self.domain)
        pt = self.domain.pt
        assert pt is not None
        while self.done < self.size:
            before = self.done
            self.done = pt.map_step(
                self.iova, self.phys, self.size, self.prot, before, STEP_ENTRIES, self.page_sizes
            )
            if self.done < self.size and budget.charge(entry_cost(self.done - before)):
                return False
        return True


def check_quota(
    iommu: Iommu, owner: int, quota: MapQuota, iova: int, phys: int, size: int, levels: int
) -> None:
    mappings, mapped, tables = owner_usage(iommu, owner)
    if mappings >= quota.mappings:
        raise SiovError(errno.ENOSPC, f"limit reached: limits.mappings = {quota.mappings}")
    if mapped + size > quota.mapped_bytes:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.mapped_bytes = {quota.mapped_bytes} "
            f"({mapped} mapped, {size} asked)",
        )
    need = tables_bound(iova, phys, size, levels)
    if tables + need > quota.page_table_pages:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.page_table_pages = {quota.page_table_pages} "
            f"({tables} in use, this map may need {need} more)",
        )


def check_map_args(domain: Domain, iova: int | None, phys: int, size: int, prot: int) -> None:
    """iommufd's refusals of a map, before anything is looked up."""
    if prot & ~(PROT_READ | PROT_WRITE) or not prot:
        raise SiovError(errno.EINVAL, f"prot {prot:#x}: use READ (1) and/or WRITE (2)")
    if size <= 0 or (phys | size) % PAGE_SIZE or (iova is not None and iova % PAGE_SIZE):
        raise SiovError(errno.EINVAL, "iova, phys and size must be 4 KiB-aligned and size non-zero")
    if phys < 0 or (iova is not None and iova < 0):
        raise SiovError(errno.EINVAL, "addresses are unsigned")
    if iova is not None:
        if iova + size > U64:
            raise SiovError(errno.EOVERFLOW, "iova + size wraps around 2**64")
        if iova + size > domain.aperture_end:
            raise SiovError(
                errno.EINVAL,
                f"iova range ends beyond the domain's aperture {domain.aperture_end:#x}",
            )
        check_map_reserved(domain, iova, size)  # EINVAL before EEXIST, as iopt_check_iova
        hit = domain.areas.intersecting(iova, iova + size - 1)
        if hit:
            # Name the mapping in the way (the first, and how many more), as unmap's split
            # error does.
            more = f" (and {len(hit) - 1} more)" if len(hit) > 1 else ""
            raise SiovError(
                errno.EEXIST,
                f"map {iova:#x}+{size:#x} overlaps the mapping {hit[0].iova:#x}+{hit[0].size:#x}"
                f"{more} in domain {domain.id}",
            )


def alloc_iova(domain: Domain, size: int, phys: int) -> int:
    """Auto-IOVA: aligned at least to the size's lowest set bit (iommufd), and to the
    physical alignment up to the size, so large pages stay possible."""
    low = size & -size
    phys_align = phys & -phys if phys else SIZE_1G
    align = max(low, min(1 << (size - 1).bit_length(), phys_align, SIZE_1G))
    busy = sorted(
        [(a.iova, a.last) for a in domain.areas.all()]
        + [(a.iova, a.last) for a in domain.lazy_pending]
        + busy_for_alloc(domain)
    )
    iova = first_fit(busy, size, align, max(align, PAGE_SIZE), domain.aperture_end)
    if iova is None:
        raise SiovError(errno.ENOSPC, f"no free IOVA range of {size:#x} bytes")
    return iova


# -- unmap ---------------------------------------------------------------------------------------


class UnmapJob:
    """UNMAP of whole areas: entries cleared by :meth:`step`, one flush at the end."""

    def __init__(self, iommu: Iommu, domain: Domain, areas: list[Area]) -> None:
        self.iommu = iommu
        self.domain = domain
        self.areas = areas
        self.index = 0  # the area being cleared
        self.done = 0  # bytes of it cleared
        self.unmapped = 0

    def step(self, budget: Budget) -> bool:
        check_alive(self.iommu, self.domain)
        pt = self.domain.pt
        assert pt is not None
        while self.index < len(self.areas):
            area = self.areas[self.index]
            before = self.done
            self.done, _ = pt.unmap_step(area.iova, area.size, before, STEP_ENTRIES)
            length = self.done - before
            if self.done >= area.size:
                self.index += 1
                self.done = 0
            if self.index < len(self.areas) and budget.charge(entry_cost(length)):
                return False
        self.iommu.retire_unmapped(self.domain, self.areas)
        self.unmapped = sum(area.size for area in self.areas)
        return True


def areas_to_unmap(domain: Domain, iova: int, size: int) -> list[Area]:
    """The whole areas ``[iova, iova + size)`` covers, or the iommufd refusal."""
    if iova == 0 and size in (UNMAP_ALL, U64):
        return domain.areas.all()
    if size <= 0 or (iova | size) % PAGE_SIZE or iova < 0:
        raise SiovError(errno.EINVAL, "iova and size must be 4 KiB-aligned and size non-zero")
    if iova + size > U64:
        raise SiovError(errno.EOVERFLOW, "iova + size wraps around 2**64")
    last = iova + size - 1
    areas = domain.areas.intersecting(iova, last)
    for area in areas:
        if area.iova < iova or area.last > last:
            raise SiovError(
                errno.ENOENT,
                f"unmap {iova:#x}+{size:#x} would split the mapping {area.iova:#x}+{area.size:#x}",
            )
    if not areas:
        raise SiovError(errno.ENOENT, f"nothing is mapped in {iova:#x}+{size:#x}")
    return areas


# -- dirty tracking ------------------------------------------------------------------------------


class DirtyJob:
    """DIRTY_BITMAP: the D bits of ``[iova, iova + size)`` read (and maybe cleared) a step at
    a time; a page a device dirties after its step was read shows in the next call, as with
    iommufd's read-and-clear walk, which is not atomic over the range either."""

    def __init__(self, iommu: Iommu, domain: Domain, iova: int, size: int, clear: bool) -> None:
        if size <= 0 or (iova | size) % PAGE_SIZE or iova < 0:
            raise SiovError(errno.EINVAL, "iova and size must be 4 KiB-aligned, size non-zero")
        if iova + size > U64:
            raise SiovError(errno.EOVERFLOW, "iova + size wraps around 2**64")
        if size >> 12 > MAX_DIRTY_PAGES:
            raise SiovError(
                errno.EINVAL, f"a dirty bitmap covers at most {MAX_DIRTY_PAGES} pages per call"
            )
        self.iommu = iommu
        self.domain = domain
        self.iova = iova
        self.size = size
        self.clear = clear
        self.bitmap = bytearray(((size >> 12) + 7) // 8)
        self.done = 0

    def step(self, budget: Budget) -> bool:
        check_alive(self.iommu, self.domain)
        pt = self.domain.pt
        assert pt is not None
        bitmap = self.bitmap
        first = self.iova >> 12
        npages = self.size >> 12
        iotlb = self.iommu.iotlb
        while self.done < self.size:
            length = min(self.size - self.done, STEP_BYTES)
            begin = self.iova + self.done
            for leaf_iova, pg in pt.read_dirty(begin, length, self.clear):
                if leaf_iova < begin and self.done:
                    continue  # a large leaf an earlier step already read whole
                lo = max(leaf_iova >> 12, first) - first
                hi = min((leaf_iova + pg) >> 12, first + npages) - first
                for bit in range(lo, hi):
                    bitmap[bit >> 3] |= 1 << (bit & 7)
                if self.clear:
                    iotlb.invalidate_span(self.domain.id, None, leaf_iova, pg)
            self.done += length
            if self.done < self.size and budget.charge(entry_cost(length) * DIRTY_COST):
                return False
        return True
