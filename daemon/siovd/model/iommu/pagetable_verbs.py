"""The io_pagetable verbs of :class:`~siovd.model.iommu.Iommu`: map, unmap, lazy flushing,
dirty tracking, table reaping and software lookups. The jobs that do the work a budget at a
time are in :mod:`siovd.model.iommu.io_pagetable`."""

from __future__ import annotations

import errno
from collections.abc import Collection

from siovd.model.budget import Budget
from siovd.model.errors import SiovError
from siovd.model.iommu.areas import Area
from siovd.model.iommu.base import REAP_INLINE, REAP_STEP, IommuBase
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.io_pagetable import (
    DirtyJob,
    MapJob,
    MapQuota,
    UnmapJob,
    areas_to_unmap,
    run_to_end,
)
from siovd.model.iommu.pagetable import (
    PAGE_SIZES,
    PageTable,
    Translation,
    walk,
)


class PagetableVerbs(IommuBase):
    # -- map / unmap -------------------------------------------------------------------------

    def _paging(self, owner: int | None, domain_id: int) -> Domain:
        domain = self.domain(owner, domain_id)
        if domain.type is not DomainType.PAGING:
            raise SiovError(errno.EINVAL, f"domain {domain_id} is not a paging domain")
        if domain.user_managed:
            raise SiovError(
                errno.EOPNOTSUPP, f"domain {domain_id} is user-managed: write its page table"
            )
        return domain

    def paging_domain(self, owner: int | None, domain_id: int) -> Domain:
        """A kernel-managed paging domain of ``owner`` (``None``: anyone's): ``ENOENT``,
        ``EINVAL`` (not paging), ``EOPNOTSUPP`` (user-managed), as MAP answers."""
        return self._paging(owner, domain_id)

    def map(
        self,
        owner: int,
        domain_id: int,
        iova: int | None,
        phys: int,
        size: int,
        prot: int,
        page_sizes: Collection[int] = PAGE_SIZES,
    ) -> int:
        """Map ``[phys, phys + size)`` at ``iova`` (chosen when ``None``); return the IOVA.

        iommufd rules: ``EINVAL`` for a zero size, an unaligned iova/phys/size, bad ``prot``
        or an IOVA outside the lower canonical half; ``EOVERFLOW`` if the range wraps;
        ``EEXIST`` if it overlaps a mapping; ``ENOSPC`` when no IOVA is free.

        Memory: the caller may map only memory it owns. Memory of another client and memory
        that does not exist both give ``EFAULT`` (iommufd's answer for pages it cannot pin),
        so a map cannot be used to probe the physical space. Writable mappings of a
        read-only region are ``EFAULT`` too.
        """
        job = self.map_job(owner, domain_id, iova, phys, size, prot, page_sizes=page_sizes)
        run_to_end(job)
        return job.iova

    def map_job(
        self,
        owner: int,
        domain_id: int,
        iova: int | None,
        phys: int,
        size: int,
        prot: int,
        quota: MapQuota | None = None,
        page_sizes: Collection[int] = PAGE_SIZES,
    ) -> MapJob:
        """:meth:`map` as a job (see :mod:`siovd.model.iommu.io_pagetable`): checked (the
        owner's ``quota`` too) and reserved now, written a budget at a time, in leaves of
        ``page_sizes`` (the sizes the client negotiated)."""
        domain = self._paging(owner, domain_id)
        return MapJob(self.facade, domain, iova, phys, size, prot, owner, quota, page_sizes)

    def unmap(self, owner: int, domain_id: int, iova: int, size: int) -> int:
        """Unmap whole earlier mappings inside ``[iova, iova + size)``; return the bytes.

        iommufd rules: a range that would split a mapping is ``ENOENT`` (and nothing is
        unmapped: unlike the kernel, which stops at the split, this is all or nothing); a
        range with no mapping is ``ENOENT``; ``iova=0, size=UNMAP_ALL`` (or 2**64) unmaps
        everything and succeeds on an empty domain. ``EINVAL`` for a zero size or bad
        alignment, ``EOVERFLOW`` if the range wraps.

        In strict mode the IOTLB is invalidated before this returns; in lazy mode the flush
        is queued (see :meth:`flush_lazy`).
        """
        job = self.unmap_job(owner, domain_id, iova, size)
        run_to_end(job)
        return job.unmapped

    def unmap_job(self, owner: int, domain_id: int, iova: int, size: int) -> UnmapJob:
        domain = self._paging(owner, domain_id)
        return UnmapJob(self.facade, domain, areas_to_unmap(domain, iova, size))

    def _unmap_areas(self, domain: Domain, areas: list[Area]) -> int:
        job = UnmapJob(self.facade, domain, areas)
        run_to_end(job)
        return job.unmapped

    def _retire_table(self, pt: PageTable) -> None:
        """A table no walk can reach any more goes back to the pool: at once when small,
        else by :meth:`reap`, a budget at a time."""
        if pt.table_pages <= REAP_INLINE:
            pt.destroy()
        else:
            self._reaping.append(pt)
            self.wake_reaper()

    @property
    def reaping(self) -> int:
        """Table pages of destroyed domains not yet given back."""
        return sum(pt.table_pages for pt in self._reaping)

    def reap(self, budget: Budget) -> bool:
        """Give back tables of destroyed domains until ``budget`` is spent; True when none
        is left."""
        while self._reaping:
            if self._reaping[0].destroy_step(REAP_STEP):
                self._reaping.pop(0)
            elif budget.charge(REAP_STEP * 8):
                return False
        return True

    def holds(self, domain: Domain) -> bool:
        """Whether ``domain`` is still one of this IOMMU's (not destroyed)."""
        return self._domains.get(domain.id) is domain

    def retire_unmapped(self, domain: Domain, areas: list[Area]) -> None:
        """The entries of ``areas`` are cleared: they leave the domain, and their IOTLB
        entries go now (strict) or with the next lazy flush; then their memory may go."""
        for area in areas:
            domain.areas.remove(area)
        if domain.lazy:
            domain.lazy_pending.extend(areas)
            self._lazy_pending += len(areas)
            if self._lazy_pending > self.lazy_flush_threshold:
                self.flush_lazy()
        else:
            self._retire(domain, areas)

    def _retire(self, domain: Domain, areas: list[Area]) -> None:
        """The IOTLB forgets the areas; then their memory may go."""
        for child in domain.nested_children:  # their entries went through this stage 2
            self.iotlb.invalidate_domain(child.id)
        if len(areas) > 64:
            self.iotlb.invalidate_domain(domain.id)
        else:
            for area in areas:
                self.iotlb.invalidate_span(domain.id, None, area.iova, area.size)
        self._drop_areas(domain, areas)

    def _drop_areas(self, domain: Domain, areas: list[Area]) -> None:
        for area in areas:
            for region in area.regions:
                region.map_count -= 1

    def flush_lazy(self) -> int:
        """Flush every queued lazy unmap (the server's timer calls this; so does a full
        queue). Returns the areas flushed."""
        flushed = 0
        for domain in list(self._domains.values()):
            flushed += self._flush_domain(domain)
        if flushed:
            self.lazy_flushes += 1
        return flushed

    def flush_domain(self, domain: Domain) -> int:
        return self._flush_domain(domain)

    def _flush_domain(self, domain: Domain) -> int:
        pending = domain.lazy_pending
        if not pending:
            return 0
        domain.lazy_pending = []
        self._lazy_pending -= len(pending)
        self.lazy_flushed_areas += len(pending)
        self._retire(domain, pending)
        return len(pending)

    # -- queries -----------------------------------------------------------------------------

    def iova_to_phys(self, owner: int, domain_id: int, iova: int) -> int | None:
        """Software lookup (no A/D update). Identity → ``iova``; blocked or unmapped → ``None``."""
        found = self.leaf(owner, domain_id, iova)
        return None if found is None else found[0]

    def leaf(self, owner: int, domain_id: int, iova: int) -> tuple[int, int] | None:
        """``(phys, leaf size)`` of the entry translating ``iova`` (no A/D update): 4 KiB,
        2 MiB or 1 GiB; an identity domain has no table and its size is 0. Blocked or
        unmapped → ``None``."""
        domain = self.domain(owner, domain_id)
        if domain.type is DomainType.IDENTITY:
            return iova, 0
        if domain.type is DomainType.BLOCKED or domain.locate is None or iova < 0:
            return None
        result = walk(domain.locate, domain.root, domain.levels, iova, False, set_ad=False)
        if isinstance(result, int):
            return None
        return result[0] + (iova & (result[1] - 1)), result[1]

    def walk(self, owner: int, domain_id: int, iova: int) -> Translation | int:
        """The leaf translating ``iova`` (no A/D update), or the fault reason."""
        domain = self.domain(owner, domain_id)
        if domain.locate is None:
            raise SiovError(errno.EINVAL, f"domain {domain_id} has no page table")
        return walk(domain.locate, domain.root, domain.levels, iova, False, set_ad=False)

    def dirty_bitmap(self, owner: int, domain_id: int, iova: int, size: int, clear: bool) -> bytes:
        """One bit per 4 KiB page of ``[iova, iova + size)`` (bit *i* is byte i//8, bit i%8):
        set where the leaf's D bit is. A dirty large page marks all its pages in range.
        ``clear`` clears the D bits read and invalidates their IOTLB entries, so the next
        write sets D again (a cached entry would otherwise remember it as dirty)."""
        job = self.dirty_job(owner, domain_id, iova, size, clear)
        run_to_end(job)
        return bytes(job.bitmap)

    def dirty_job(self, owner: int, domain_id: int, iova: int, size: int, clear: bool) -> DirtyJob:
        return DirtyJob(self.facade, self._paging(owner, domain_id), iova, size, clear)
