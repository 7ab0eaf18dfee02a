"""Nested translation (iommufd ``IOMMU_HWPT_ALLOC_NEST_PARENT`` + ``iommu_hwpt_vtd_s1``,
``IOMMU_HWPT_INVALIDATE`` with ``iommu_hwpt_vtd_s1_invalidate``; VT-d PGTT = 3).

A *nest parent* is a kernel-managed paging domain (the daemon's table: stage 2, guest-physical
to host-physical). A *nested* domain has a stage-1 table in the VT-d first-stage format rooted at
a guest-physical address (``pgtbl_addr``); every stage-1 table the walker reads, and every leaf's
output, is translated through the parent's stage 2. A stage-1 table pointer stage 2 does not
translate (or that lands outside the owner's memory) is fault reason 0x70 (first-stage paging
entry access failed); a leaf output stage 2 does not translate faults with stage 2's own reason.
Permissions intersect (a write needs both stages writable). The IOTLB caches the combined
translation under the nested domain's tag, at the smaller of the two page sizes; a stage-2 change
(an unmap in the parent) drops the IOTLB entries of every nested domain on it, and a stage-1
change is the owner's to invalidate (HWPT_INVALIDATE), as a guest driver must.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from siovd.model.errors import SiovError
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.pagetable import PTE_RW, Translation, walk
from siovd.model.memory import PAGE_SIZE

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu

# iommu_hwpt_vtd_s1 flags
VTD_S1_SRE: Final = 1 << 0
VTD_S1_EAFE: Final = 1 << 1
VTD_S1_WPE: Final = 1 << 2
VTD_S1_FLAGS: Final = VTD_S1_SRE | VTD_S1_EAFE | VTD_S1_WPE
# iommu_hwpt_vtd_s1_invalidate flags
VTD_INV_FLAGS_LEAF: Final = 1 << 0
U64_MAX: Final = (1 << 64) - 1
MAX_INVALIDATE_ENTRIES: Final = 4096


def check_parent_alloc(type: str, user_managed: bool) -> None:
    if type != DomainType.PAGING or user_managed:
        raise SiovError(
            errno.EOPNOTSUPP, "only a kernel-managed paging domain can be a nesting parent"
        )


def stage2(parent: Domain, gpa: int, write: bool) -> Translation | int:
    assert parent.locate is not None
    return walk(parent.locate, parent.root, parent.levels, gpa, write)


def nested_locator(
    iommu: Iommu, parent: Domain, owner: int
) -> Callable[[int], tuple[memoryview, int] | None]:
    """Stage-1 tables are read at guest-physical addresses: through stage 2 first."""
    region_of = iommu.memory.region_of

    def locate(table_gpa: int) -> tuple[memoryview, int] | None:
        result = stage2(parent, table_gpa, False)
        if isinstance(result, int):
            return None
        hpa = result[0] + (table_gpa & (result[1] - 1))
        region = region_of(hpa)
        if region is None or region.owner != owner:
            return None
        return region.q, (hpa - region.base) >> 3

    return locate


def alloc_nested(
    iommu: Iommu, owner: int, parent_id: int, pgtbl_addr: int, addr_width: int, flags: int
) -> Domain:
    """``IOMMU_HWPT_ALLOC`` of a nested domain: ``ENOENT`` (no parent), ``EINVAL`` (the parent
    is not a nest parent; ``pgtbl_addr`` not 4 KiB-aligned; ``addr_width`` not 48 or 57),
    ``EOPNOTSUPP`` (unknown ``flags``, as ``intel_iommu_domain_alloc_nested``)."""
    parent = iommu.domain(owner, parent_id)
    if flags & ~VTD_S1_FLAGS:
        raise SiovError(errno.EOPNOTSUPP, f"stage-1 flags {flags:#x}: only SRE, EAFE, WPE")
    if not parent.nest_parent:
        raise SiovError(
            errno.EINVAL, f"domain {parent_id} is not a nesting parent (alloc it nest_parent)"
        )
    if pgtbl_addr % PAGE_SIZE:
        raise SiovError(errno.EINVAL, "pgtbl_addr must be 4 KiB-aligned")
    if addr_width not in (48, 57):
        raise SiovError(errno.EINVAL, f"addr_width {addr_width}: 48 (4 levels) or 57 (5 levels)")
    levels = 4 if addr_width == 48 else 5
    domain = Domain(iommu._next_domain, owner, parent.bus, DomainType.PAGING, levels)
    domain.user_managed = True  # the owner writes stage 1; MAP/UNMAP are EOPNOTSUPP
    domain.root = pgtbl_addr
    domain.locate = nested_locator(iommu, parent, owner)
    domain.nest_of = parent
    domain.s1_flags = flags
    parent.nested_children.add(domain)
    iommu._next_domain += 1
    iommu._domains[domain.id] = domain
    return domain


def combine(parent: Domain, pos: int, s1: Translation, write: bool) -> Translation | int:
    """The stage-1 leaf ``s1`` for ``pos`` carried through stage 2: one translation at the
    smaller page size, permissions intersected; or stage 2's fault reason."""
    gbase, s1size, flags, _level = s1
    gpa = gbase + (pos & (s1size - 1))
    s2 = stage2(parent, gpa, write)  # A (and D on a write) set in stage 2 too
    if isinstance(s2, int):
        return s2
    hbase, s2size, flags2, _ = s2
    size = min(s1size, s2size)
    hpa = hbase + (gpa & (s2size - 1))
    page = hpa - (pos & (size - 1))
    rw = flags & flags2 & PTE_RW
    level = {1 << 12: 1, 1 << 21: 2, 1 << 30: 3}[size]
    return (page, size, (flags & ~PTE_RW) | rw, level)


def invalidate(iommu: Iommu, domain: Domain, entries: list[tuple[int, int, int]]) -> int:
    """``IOMMU_HWPT_INVALIDATE`` (VT-d stage 1): each ``(addr, npages, flags)`` drops the
    domain's IOTLB entries in ``[addr, addr + npages pages)`` (``addr 0, npages U64_MAX``: all).
    Entries are handled in order; the first bad one stops the array (``EINVAL``: not aligned,
    no pages, wraps; ``EOPNOTSUPP``: unknown flags) and the message says how many were done."""
    if domain.nest_of is None:
        raise SiovError(errno.EINVAL, f"domain {domain.id} is not a nested domain")
    done = 0
    for addr, npages, flags in entries:
        where = f"entry {done} ({done} handled)"
        if flags & ~VTD_INV_FLAGS_LEAF:
            raise SiovError(errno.EOPNOTSUPP, f"{where}: flags {flags:#x}: only LEAF (1)")
        if addr == 0 and npages == U64_MAX:
            iommu.iotlb.invalidate_domain(domain.id)
        else:
            if addr % PAGE_SIZE or npages == 0:
                raise SiovError(errno.EINVAL, f"{where}: addr 4 KiB-aligned, npages >= 1")
            if addr + npages * PAGE_SIZE > 1 << 64:
                raise SiovError(errno.EINVAL, f"{where}: the range wraps around 2**64")
            iommu.iotlb.invalidate_span(domain.id, None, addr, npages * PAGE_SIZE)
        done += 1
    return done
