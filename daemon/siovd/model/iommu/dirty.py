"""Dirty-tracking control (iommufd ``IOMMU_HWPT_SET_DIRTY_TRACKING`` and
``IOMMU_HWPT_GET_DIRTY_BITMAP``; VFIO's ``VFIO_IOMMU_UNMAP_DMA_FLAG_GET_DIRTY_BITMAP`` for the
bits collected on unmap).

A domain allocated with ``dirty_tracking`` (``IOMMU_HWPT_ALLOC_DIRTY_TRACKING``) starts with
tracking off and sets a leaf's D bit only while it is on, as VT-d second-stage tables do under
the PASID entry's SSADE bit; enabling clears every D bit first (``iopt_set_dirty_tracking``
calls ``iopt_clear_dirty_data``) and the IOTLB forgets the domain (cached entries let writes
through without setting D). A domain allocated without it keeps siov's first-stage behaviour,
D always set (the plain DIRTY_BITMAP of SPEC §8.6), and refuses the tracking verbs with
``EOPNOTSUPP`` (no ``dirty_ops``), as do identity, blocked and user-managed domains.

The errnos of GET_DIRTY_BITMAP follow ``iommufd_check_iova_range`` and the Intel driver:
``EOVERFLOW`` (the range wraps), ``EINVAL`` (``iova`` or the end not 4 KiB-aligned, ``page_size``
not a power of two ≥ 4 KiB, ``iova`` or the end not aligned to it, tracking off:
``intel_iommu_read_and_clear_dirty``), and the 2^23-page cap of a single call.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

from siovd.model.budget import Budget
from siovd.model.errors import SiovError
from siovd.model.iommu.areas import Area
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.io_pagetable import (
    DIRTY_COST,
    MAX_DIRTY_PAGES,
    STEP_BYTES,
    U64,
    UNMAP_ALL,
    UnmapJob,
    areas_to_unmap,
    check_alive,
    entry_cost,
)
from siovd.model.memory import PAGE_SIZE

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu

#: The largest bitmap unit: a 1 GiB page.
MAX_PAGE_SIZE: Final = 1 << 30


def check_alloc(type: str, user_managed: bool) -> None:
    """DOMAIN_ALLOC with ``dirty_tracking``: only a kernel-managed paging domain can track
    (``EOPNOTSUPP``, iommufd's answer for a flag the domain cannot honour)."""
    if type != DomainType.PAGING or user_managed:
        raise SiovError(
            errno.EOPNOTSUPP, "only a kernel-managed paging domain can track dirty pages"
        )


def tracking_domain(domain: Domain) -> Domain:
    if not domain.dirty_capable:
        raise SiovError(
            errno.EOPNOTSUPP,
            f"domain {domain.id} cannot track dirty pages: allocate it with dirty_tracking",
        )
    return domain


class SetTrackingJob:
    """Enable (D bits cleared first, a budget at a time) or disable tracking."""

    def __init__(self, iommu: Iommu, domain: Domain, enable: bool) -> None:
        self.iommu = iommu
        self.domain = tracking_domain(domain)
        self.enable = enable
        # Enabling an enabled domain clears nothing (the Intel driver returns early).
        self.areas: list[Area] = domain.areas.all() if enable and not domain.dirty_on else []
        self.index = 0
        self.done = 0

    def step(self, budget: Budget) -> bool:
        check_alive(self.iommu, self.domain)
        pt = self.domain.pt
        assert pt is not None
        while self.index < len(self.areas):
            area = self.areas[self.index]
            length = min(area.size - self.done, STEP_BYTES)
            pt.read_dirty(area.iova + self.done, length, True)
            self.done += length
            if self.done >= area.size:
                self.index += 1
                self.done = 0
            if self.index < len(self.areas) and budget.charge(entry_cost(length) * DIRTY_COST):
                return False
        if self.enable and not self.domain.dirty_on:
            self.iommu.iotlb.invalidate_domain(self.domain.id)
        self.domain.dirty_on = self.enable
        return True


def check_bitmap_range(iova: int, size: int, page_size: int) -> None:
    if size <= 0:
        raise SiovError(errno.EINVAL, "size must be non-zero")
    if iova + size > U64:
        raise SiovError(errno.EOVERFLOW, "iova + size wraps around 2**64")
    if (iova | size) % PAGE_SIZE:
        raise SiovError(errno.EINVAL, "iova and size must be 4 KiB-aligned")
    if page_size < PAGE_SIZE or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise SiovError(
            errno.EINVAL, f"page_size {page_size:#x}: a power of two from 4 KiB to 1 GiB"
        )
    if (iova | size) & (page_size - 1):
        raise SiovError(errno.EINVAL, f"iova and size must be aligned to page_size {page_size:#x}")
    if size >> 12 > MAX_DIRTY_PAGES:
        raise SiovError(
            errno.EINVAL, f"a dirty bitmap covers at most {MAX_DIRTY_PAGES} 4 KiB pages per call"
        )


class DirtyReadJob:
    """GET_DIRTY_BITMAP: one bit per ``page_size`` of ``[iova, iova + size)``, set where any
    leaf there is dirty; D cleared unless ``no_clear`` (and the IOTLB entries of cleared
    leaves dropped, so the next write sets D again)."""

    def __init__(
        self,
        iommu: Iommu,
        domain: Domain,
        iova: int,
        size: int,
        page_size: int,
        no_clear: bool,
        need_on: bool = True,
    ) -> None:
        tracking_domain(domain)
        check_bitmap_range(iova, size, page_size)
        if need_on and not domain.dirty_on:
            raise SiovError(errno.EINVAL, f"dirty tracking is off in domain {domain.id}")
        self.iommu = iommu
        self.domain = domain
        self.iova = iova
        self.size = size
        self.shift = page_size.bit_length() - 1
        self.clear = not no_clear
        self.bitmap = bytearray(((size >> self.shift) + 7) // 8)
        self.done = 0

    def step(self, budget: Budget) -> bool:
        check_alive(self.iommu, self.domain)
        pt = self.domain.pt
        assert pt is not None
        bitmap, shift = self.bitmap, self.shift
        first = self.iova >> shift
        units = self.size >> shift
        while self.done < self.size:
            length = min(self.size - self.done, STEP_BYTES)
            begin = self.iova + self.done
            for leaf_iova, pg in pt.read_dirty(begin, length, self.clear):
                lo = max(leaf_iova >> shift, first) - first
                hi = min((leaf_iova + pg - 1) >> shift, first + units - 1) - first
                for bit in range(lo, hi + 1):
                    bitmap[bit >> 3] |= 1 << (bit & 7)
                if self.clear:
                    self.iommu.iotlb.invalidate_span(self.domain.id, None, leaf_iova, pg)
            self.done += length
            if self.done < self.size and budget.charge(entry_cost(length) * DIRTY_COST):
                return False
        return True


class UnmapDirtyJob:
    """UNMAP_DIRTY: the D bits of whole mappings read, then the mappings unmapped (strict
    flush before the answer), VFIO's unmap with ``GET_DIRTY_BITMAP``. Works on any domain that
    tracks, whether tracking is on or off (bits set while it was on are kept until read)."""

    def __init__(self, iommu: Iommu, domain: Domain, iova: int, size: int, page_size: int) -> None:
        tracking_domain(domain)
        if iova == 0 and size in (UNMAP_ALL, U64):
            raise SiovError(errno.EINVAL, "UNMAP_DIRTY needs a bounded range for its bitmap")
        check_bitmap_range(iova, size, page_size)
        areas = areas_to_unmap(domain, iova, size)
        self.read = DirtyReadJob(iommu, domain, iova, size, page_size, False, need_on=False)
        self.unmap = UnmapJob(iommu, domain, areas)
        self.reading = True

    def step(self, budget: Budget) -> bool:
        if self.reading:
            if not self.read.step(budget):
                return False
            self.reading = False
        return self.unmap.step(budget)
