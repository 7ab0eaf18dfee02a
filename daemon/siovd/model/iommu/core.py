"""The IOMMU facade: :class:`Iommu` owns the state and the lookups; its verbs live with the
objects they act on, one mixin per file:

- :mod:`~siovd.model.iommu.attach`: domains, the bus notifier (probe/release), attach and
  detach of devices and PASIDs (``drivers/iommu/iommu.c``);
- :mod:`~siovd.model.iommu.pagetable_verbs` and :mod:`~siovd.model.iommu.io_pagetable`: map,
  unmap, lazy flushing, dirty tracking, as jobs a budget at a time (iommufd's io_pagetable);
- :mod:`~siovd.model.iommu.invalidate`: IOTLB invalidation;
- :mod:`~siovd.model.iommu.dma_verbs`: DMA spaces, translation for emulators, faults;
- :mod:`~siovd.model.iommu.prq`: page requests;
- :mod:`~siovd.model.iommu.sva_verbs`: SVA binding of a PASID to a process's address space
  (the binding itself: :mod:`~siovd.model.iommu.sva`).

The rules and errnos are the kernel's. Every method acting on an object takes the caller's
``owner`` (session id); another owner's object is ``ENOENT``, exactly like one that does not
exist.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from siovd.model.device import Device
from siovd.model.dma import DmaOrigin
from siovd.model.errors import SiovError
from siovd.model.iommu.ats import DeviceTlbs
from siovd.model.iommu.attach import AttachVerbs
from siovd.model.iommu.base import REAP_INLINE, REAP_STEP, FaultCallback, TranslatedRun
from siovd.model.iommu.dma_verbs import DmaVerbs
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.group import Group
from siovd.model.iommu.invalidate import MAX_AM, InvalidateVerbs
from siovd.model.iommu.iotlb import Iotlb
from siovd.model.iommu.pagetable import (
    PageTable,
)
from siovd.model.iommu.pagetable_verbs import PagetableVerbs
from siovd.model.iommu.pasid import PasidAllocator
from siovd.model.iommu.pri import PriState
from siovd.model.iommu.prq import PageRequestQueue
from siovd.model.iommu.sva_verbs import SvaVerbs
from siovd.model.memory import PageTablePool, PhysicalMemory
from siovd.model.owner import HOST

__all__ = ["MAX_AM", "REAP_INLINE", "REAP_STEP", "FaultCallback", "Iommu", "TranslatedRun"]


class Iommu(AttachVerbs, PagetableVerbs, InvalidateVerbs, DmaVerbs, SvaVerbs):
    """One emulated IOMMU serving one or more buses.

    ``on_fault(owner, record)`` is called for every failed translation, with the owner of
    the domain the request reached (or of the device, when no entry led to a domain).
    """

    def __init__(
        self,
        memory: PhysicalMemory,
        *,
        iotlb: Iotlb | None = None,
        iotlb_entries: int = 8192,
        default_domain: str = "paging",
        default_lazy: bool = False,
        lazy_flush_threshold: int = 250,
        pool: PageTablePool | None = None,
        blocked_limit: int = 1 << 20,
    ) -> None:
        self.memory = memory
        self.pool = pool if pool is not None else PageTablePool(memory)
        self.iotlb = iotlb if iotlb is not None else Iotlb(iotlb_entries)
        self.default_domain_type = DomainType(default_domain)
        self.default_lazy = default_lazy
        self.lazy_flush_threshold = lazy_flush_threshold
        self.pasids = PasidAllocator()
        #: Page requests waiting for their owners' answers (PRI / the PRQ).
        self.prq = PageRequestQueue(blocked_limit)
        #: Page-request groups of external devices still waiting for their last request (pri.py).
        self.pri = PriState()
        #: What external devices cached from TRANSLATE, and their pending invalidations (ats.py).
        self.atc = DeviceTlbs()
        self.on_fault: FaultCallback | None = None
        #: Asked at each fault which work the DMA belongs to (the accelerator's executor
        #: answers while it runs a descriptor).
        self.fault_origin: Callable[[], DmaOrigin | None] | None = None
        self._buses: set[str] = set()
        self._internal_buses: set[str] = set()
        self._domains: dict[int, Domain] = {}
        self._groups: dict[int, Group] = {}
        self._next_domain = 1
        self._next_group = 1
        # The static blocking domain every group falls back to (never listed, never freed).
        self._blocking = Domain(0, HOST, "*", DomainType.BLOCKED)
        self._lazy_pending = 0
        #: Page tables of destroyed domains still to give back (:meth:`reap`).
        self._reaping: list[PageTable] = []
        #: Called when :meth:`reap` has work: the service runs it a turn at a time.
        self.wake_reaper: Callable[[], None] = lambda: None
        self.faults = 0
        #: TRANSLATE requests answered with a fault (ATS: no fault record, no event).
        self.translate_failures = 0
        self.devtlb_hits = 0  # translations a device TLB answered without the IOTLB
        self.lazy_flushes = 0
        self.lazy_flushed_areas = 0

    def register_bus(self, bus: str) -> None:
        """Serve ``bus``: its devices are probed, domains may be allocated for it."""
        self._buses.add(bus)

    def register_internal_bus(self, bus: str) -> None:
        """Probe devices of ``bus`` (the DSA devices' own PCI functions, requesters of their
        char devices), but allocate no domain for it: clients never see that bus."""
        self._internal_buses.add(bus)

    # -- lookup ------------------------------------------------------------------------------

    def domain(self, owner: int | None, domain_id: int) -> Domain:
        domain = self._domains.get(domain_id)
        if domain is None or (owner is not None and domain.owner != owner):
            raise SiovError(errno.ENOENT, f"no domain {domain_id}")
        return domain

    def domains(self, owner: int | None = None) -> list[Domain]:
        return [d for d in self._domains.values() if owner is None or d.owner == owner]

    def group(self, owner: int | None, group_id: int) -> Group:
        group = self._groups.get(group_id)
        if group is None or (owner is not None and group.owner != owner):
            raise SiovError(errno.ENOENT, f"no group {group_id}")
        return group

    def groups(self, owner: int | None = None) -> list[Group]:
        return [g for g in self._groups.values() if owner is None or g.owner == owner]

    def _device_group(self, owner: int, device: Device) -> Group:
        if device.owner != owner or not device.alive:
            raise SiovError(errno.ENOENT, f"no device {device.uuid}")
        if device.group is None:
            raise SiovError(errno.ENODEV, f"device {device.uuid} has no IOMMU group")
        return device.group

    # -- lifecycle ---------------------------------------------------------------------------

    def release_owner(self, owner: int) -> None:
        """Free everything ``owner`` holds: its domains (detached first) and then its memory.

        The bus removes the owner's devices before calling this; a default domain whose
        device is still present is emptied instead of freed.
        """
        for sva in self.sva_domains(owner):
            self.sva_unbind(sva)
        mine = [d for d in self._domains.values() if d.owner == owner]
        for domain in mine:
            if domain.default_of is not None:
                continue
            for group in list(domain.groups):
                self._set_group_domain(group, group.default_domain)
            for group, pasid in list(domain.pasid_users):
                self._set_pasid(group, pasid, None)
            self._destroy(domain)
        for domain in mine:
            if domain.default_of is not None:
                self.reset_group(domain.default_of)
        self.memory.release_owner(owner)

    def stats(self) -> dict[str, int]:
        out = self.iotlb.stats()
        out.update(
            faults=self.faults,
            translate_failures=self.translate_failures,
            devtlb_hits=self.devtlb_hits,
            lazy_flushes=self.lazy_flushes,
            lazy_flushed_areas=self.lazy_flushed_areas,
            lazy_pending=self._lazy_pending,
            domains=len(self._domains),
            groups=len(self._groups),
            mapped_bytes=sum(d.mapped_bytes for d in self._domains.values()),
            page_table_pages=self.pool.pages_in_use,
            page_table_pages_reaping=self.reaping,
            pasids_allocated=len(self.pasids),
            ats_invalidations_sent=self.atc.sent,
            ats_invalidations_completed=self.atc.completed,
            ats_invalidation_timeouts=self.atc.timeouts,
            ats_invalidations_pending=len(self.atc.pending),
        )
        return out
