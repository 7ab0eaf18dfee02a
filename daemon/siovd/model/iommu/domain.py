"""Domains: one translation each (paging, identity or blocked), and who uses it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from siovd.model.iommu.areas import Area, AreaMap
from siovd.model.iommu.pagetable import Locate, PageTable, level_shift
from siovd.model.memory import Region

if TYPE_CHECKING:
    from siovd.model.iommu.group import Group


class DomainType(enum.StrEnum):
    PAGING = "paging"
    IDENTITY = "identity"
    BLOCKED = "blocked"
    SVA = "sva"  # a process's address space (siovd.model.iommu.sva); only SVA_BIND makes one


@dataclass(eq=False)
class Domain:
    """An IOMMU domain.

    A paging domain is either kernel-managed (``pt`` is the daemon's table and the domain
    keeps areas) or user-managed (``root`` is in the owner's memory, ``root_region`` holds
    a reference to it, and the owner writes the entries).
    """

    id: int
    owner: int
    bus: str
    type: DomainType
    levels: int = 4
    user_managed: bool = False
    lazy: bool = False
    pt: PageTable | None = None
    root: int = 0
    root_region: Region | None = None
    locate: Locate | None = None
    areas: AreaMap = field(default_factory=AreaMap)
    #: Groups whose current (RID) domain this is.
    groups: set[Group] = field(default_factory=set)
    #: (group, PASID) pairs whose PASID-table entry points here.
    pasid_users: set[tuple[Group, int]] = field(default_factory=set)
    #: The group this is the default domain of, if any.
    default_of: Group | None = None
    #: Lazy mode: unmapped areas whose IOTLB flush is still queued (their regions stay
    #: referenced and their IOVAs unavailable until then, as with Linux's flush queue).
    lazy_pending: list[Area] = field(default_factory=list)
    #: ALLOW_IOVAS: (start, last) ranges auto-IOVA must come from; empty = anywhere
    #: (model/iommu/reserved.py).
    allowed: list[tuple[int, int]] = field(default_factory=list)
    #: Allocated with ``dirty_tracking`` (iommufd ``IOMMU_HWPT_ALLOC_DIRTY_TRACKING``): D is
    #: set only while ``dirty_on`` (model/iommu/dirty.py). Other domains set D always, as a
    #: VT-d first-stage walker does.
    dirty_capable: bool = False
    dirty_on: bool = False
    #: Nesting (model/iommu/nested.py): a parent's stage 2 serves its nested domains.
    nest_parent: bool = False
    nest_of: Domain | None = None
    s1_flags: int = 0
    nested_children: set[Domain] = field(default_factory=set)

    @property
    def attached(self) -> bool:
        return bool(self.groups or self.pasid_users)

    @property
    def sets_dirty(self) -> bool:
        """Whether a write through this domain sets the leaf's D bit."""
        return self.dirty_on or not self.dirty_capable

    @property
    def kernel_managed(self) -> bool:
        return self.type is DomainType.PAGING and not self.user_managed

    @property
    def aperture_end(self) -> int:
        """IOVAs below this translate: the lower canonical half (47 or 56 bits)."""
        return 1 << (level_shift(self.levels) + 8)

    @property
    def mapped_bytes(self) -> int:
        return self.pt.mapped_bytes if self.pt is not None else 0

    def info(self) -> dict[str, object]:
        """What a client is told about its domain."""
        return {
            "domain_id": self.id,
            "type": str(self.type),
            "bus": self.bus,
            "levels": self.levels,
            "user_managed": self.user_managed,
            "lazy": self.lazy,
            "pt_root_phys": self.root if self.user_managed else None,
            "default_of_group": self.default_of.id if self.default_of is not None else None,
            "groups": sorted(g.id for g in self.groups),
            "pasids": sorted((d.uuid, pasid) for g, pasid in self.pasid_users for d in g.devices),
            "mapped_bytes": self.mapped_bytes,
            "areas": len(self.areas),
        }
