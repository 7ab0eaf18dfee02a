"""The IOMMU: groups, domains, PASID arrays, map/unmap, the IOTLB and fault delivery.

The rules and errnos are the kernel's: attach and PASID attach as ``drivers/iommu/iommu.c``
has them, map and unmap as iommufd's io_pagetable. Every method acting on an object takes the
caller's ``owner`` (session id); another owner's object is ``ENOENT``, exactly like one that
does not exist.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Collection

from siovd.model.device import Device
from siovd.model.dma import DmaFault
from siovd.model.errors import SiovError
from siovd.model.iommu.areas import Area, first_fit
from siovd.model.iommu.devtlb import DevTlbDmaSpace
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.faults import FaultRecord
from siovd.model.iommu.group import Group
from siovd.model.iommu.iotlb import Iotlb, make_tag
from siovd.model.iommu.pagetable import (
    PAGE_SIZES,
    PROT_READ,
    PROT_WRITE,
    SIZE_1G,
    PageTable,
    Translation,
    walk,
)
from siovd.model.iommu.pasid import PASID_LIMIT, PasidAllocator
from siovd.model.iommu.sva import AddressSpace, SvaDmaSpace, SvaDomain, sva_domain
from siovd.model.iommu.translate import Failure, IommuDmaSpace, translate_runs
from siovd.model.memory import PAGE_SIZE, PageTablePool, PhysicalMemory, Region
from siovd.model.owner import HOST

U64 = 1 << 64
#: ``unmap(iova=0, size=UNMAP_ALL)`` removes every mapping, even from an empty domain.
UNMAP_ALL = U64 - 1
#: VT-d's maximum address-mask value for page-selective invalidation.
MAX_AM = 18
#: One dirty-bitmap call covers at most this many pages (a 1 MiB bitmap, 32 GiB of IOVA).
MAX_DIRTY_PAGES = 1 << 23

FaultCallback = Callable[[int, FaultRecord], None]
TranslatedRun = tuple[int, int, int, int]  # (iova, phys, length, prot)


class Iommu:
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
    ) -> None:
        self.memory = memory
        self.pool = pool if pool is not None else PageTablePool(memory)
        self.iotlb = iotlb if iotlb is not None else Iotlb(iotlb_entries)
        self.default_domain_type = DomainType(default_domain)
        self.default_lazy = default_lazy
        self.lazy_flush_threshold = lazy_flush_threshold
        self.pasids = PasidAllocator()
        self.on_fault: FaultCallback | None = None
        self._buses: set[str] = set()
        self._internal_buses: set[str] = set()
        self._domains: dict[int, Domain] = {}
        self._groups: dict[int, Group] = {}
        self._next_domain = 1
        self._next_group = 1
        # The static blocking domain every group falls back to (never listed, never freed).
        self._blocking = Domain(0, HOST, "*", DomainType.BLOCKED)
        self._lazy_pending = 0
        self.faults = 0
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

    # -- domains -----------------------------------------------------------------------------

    def domain_alloc(
        self,
        owner: int,
        bus: str,
        type: str = "paging",
        levels: int = 4,
        user_managed: bool = False,
        lazy: bool = False,
        pt_root_phys: int | None = None,
    ) -> Domain:
        """A new domain for devices on ``bus`` (``iommu_domain_alloc(bus)``, Joerg's design).

        ``ENODEV`` if this IOMMU does not serve the bus; ``EINVAL`` for a bad type, depth or
        option mix; a user-managed domain needs ``pt_root_phys`` 4 KiB-aligned in the
        caller's own memory (``EFAULT`` otherwise, like any memory the caller does not own).
        """
        if bus not in self._buses:
            raise SiovError(errno.ENODEV, f"this IOMMU does not serve bus {bus!r}")
        try:
            dtype = DomainType(type)
        except ValueError:
            raise SiovError(errno.EINVAL, f"unknown domain type {type!r}") from None
        if dtype is DomainType.SVA:
            raise SiovError(errno.EINVAL, "an SVA domain is made by SVA_BIND, not allocated")
        if levels not in (4, 5):
            raise SiovError(errno.EINVAL, f"first-stage tables have 4 or 5 levels, not {levels}")
        if (user_managed or lazy) and dtype is not DomainType.PAGING:
            raise SiovError(errno.EINVAL, "only a paging domain can be user-managed or lazy")
        if user_managed and lazy:
            raise SiovError(errno.EINVAL, "a user-managed domain flushes by itself; no lazy mode")
        if user_managed != (pt_root_phys is not None):
            raise SiovError(
                errno.EINVAL, "pt_root_phys is given exactly when the domain is user-managed"
            )
        root_region: Region | None = None
        if pt_root_phys is not None:
            if pt_root_phys % PAGE_SIZE:
                raise SiovError(errno.EINVAL, "pt_root_phys must be 4 KiB-aligned")
            regions = self.memory.regions_in(owner, pt_root_phys, PAGE_SIZE)
            if regions is None:
                raise SiovError(errno.EFAULT, f"no memory of yours at {pt_root_phys:#x}")
            root_region = regions[0]
        return self._new_domain(owner, bus, dtype, levels, lazy, root_region, pt_root_phys)

    def _new_domain(
        self,
        owner: int,
        bus: str,
        dtype: DomainType,
        levels: int = 4,
        lazy: bool = False,
        root_region: Region | None = None,
        root: int | None = None,
    ) -> Domain:
        domain = Domain(self._next_domain, owner, bus, dtype, levels, lazy=lazy)
        if dtype is DomainType.PAGING:
            if root_region is not None and root is not None:
                domain.user_managed = True
                domain.root = root
                domain.root_region = root_region
                root_region.map_count += 1
                domain.locate = self._user_locator(owner)
            else:
                domain.pt = PageTable(self.memory, self.pool, levels)
                domain.root = domain.pt.root
                domain.locate = domain.pt.locate
        self._next_domain += 1
        self._domains[domain.id] = domain
        return domain

    def _user_locator(self, owner: int) -> Callable[[int], tuple[memoryview, int] | None]:
        """A walker may read a user-managed table only in its owner's memory."""
        region_of = self.memory.region_of

        def locate(table: int) -> tuple[memoryview, int] | None:
            region = region_of(table)
            if region is None or region.owner != owner:
                return None
            return region.q, (table - region.base) >> 3

        return locate

    def domain_free(self, owner: int, domain_id: int) -> None:
        """``EBUSY`` while the domain is attached anywhere or is a group's default domain."""
        domain = self.domain(owner, domain_id)
        if domain.default_of is not None:
            raise SiovError(
                errno.EBUSY,
                f"domain {domain_id} is the default domain of group {domain.default_of.id}",
            )
        if domain.attached:
            raise SiovError(errno.EBUSY, f"domain {domain_id} is attached")
        self._destroy(domain)

    def _destroy(self, domain: Domain) -> None:
        self._flush_domain(domain)
        if domain.pt is not None:
            self._drop_areas(domain, domain.areas.all())
            domain.pt.destroy()
        if domain.root_region is not None:
            domain.root_region.map_count -= 1
            domain.root_region = None
        self.iotlb.invalidate_domain(domain.id)
        del self._domains[domain.id]

    # -- probe / release (the bus notifier) --------------------------------------------------

    def probe_device(self, device: Device, alias: Device | None = None) -> Group:
        """``BUS_NOTIFY_ADD_DEVICE``: give the device a group and its default domain.

        One group per device (``generic_device_group``), unless the device is a requester-ID
        alias of ``alias``, whose group it joins (as ``pci_device_group`` does).
        """
        if device.bus not in self._buses and device.bus not in self._internal_buses:
            raise SiovError(errno.ENODEV, f"this IOMMU does not serve bus {device.bus!r}")
        if alias is not None:
            if alias.group is None:
                raise SiovError(errno.ENODEV, f"device {alias.uuid} has no IOMMU group")
            group = alias.group
            group.devices.append(device)
        else:
            default = self._new_domain(
                device.owner,
                device.bus,
                self.default_domain_type,
                lazy=self.default_lazy and self.default_domain_type is DomainType.PAGING,
            )
            group = Group(self._next_group, default, self._blocking, default, [device])
            self._next_group += 1
            default.default_of = group
            default.groups.add(group)
            self._groups[group.id] = group
        device.group = group
        return group

    def release_device(self, device: Device) -> None:
        """``BUS_NOTIFY_REMOVED_DEVICE``: take the device out of its group; the last device
        takes the group, its PASID array and its default domain with it."""
        group = device.group
        if group is None:
            return
        group.devices.remove(device)
        self.iotlb.invalidate_tag(make_tag(group.domain.id, device.default_pasid))
        if not group.devices:
            for pasid, bound in list(group.pasids.items()):
                self._set_pasid(group, pasid, None)
                if isinstance(bound, SvaDomain):
                    self.sva_unbind(bound)  # the binding goes with its device
            group.domain.groups.discard(group)
            default = group.default_domain
            default.default_of = None
            self._destroy(default)
            del self._groups[group.id]
        device.group = None
        device.alive = False

    def reset_group(self, group: Group) -> None:
        """Back to the state after probe: PASIDs detached, the default domain attached and
        empty. Used before a group changes owner."""
        for pasid in list(group.pasids):
            self._set_pasid(group, pasid, None)
        if group.domain is not group.default_domain:
            self._set_group_domain(group, group.default_domain)
        default = group.default_domain
        if default.pt is not None and len(default.areas):
            self._unmap_areas(default, default.areas.all())
        self._flush_domain(default)

    def transfer_group(self, group: Group, new_owner: int) -> None:
        """Give a group (its devices and default domain) to another owner, reset first."""
        self.reset_group(group)
        for device in group.devices:
            device.owner = new_owner
        group.default_domain.owner = new_owner
        self.iotlb.invalidate_domain(group.default_domain.id)

    # -- attach ------------------------------------------------------------------------------

    def attach_device(self, owner: int, domain_id: int, device: Device) -> None:
        """``iommu_attach_device``: the mdev's default PASID (and its RID) now translate
        through ``domain``.

        ``EINVAL`` unless the group has exactly one device; ``EBUSY`` if the group is on a
        domain other than its default or blocking one; ``EINVAL`` for a domain of another bus.
        """
        group = self._device_group(owner, device)
        domain = self.domain(owner, domain_id)
        if len(group.devices) != 1:
            raise SiovError(
                errno.EINVAL,
                f"group {group.id} has {len(group.devices)} devices; attach needs exactly one",
            )
        if group.domain is not group.default_domain and group.domain is not group.blocking_domain:
            raise SiovError(
                errno.EBUSY, f"group {group.id} is already attached to domain {group.domain.id}"
            )
        if domain.bus != device.bus:
            raise SiovError(
                errno.EINVAL,
                f"domain {domain_id} was allocated for bus {domain.bus!r}, "
                f"device {device.uuid} is on {device.bus!r}",
            )
        self._check_not_foreign_default(domain, group)
        self._set_group_domain(group, domain)

    @staticmethod
    def _check_not_foreign_default(domain: Domain, group: Group) -> None:
        """A default domain lives and dies with its group, so only that group may use it."""
        if domain.default_of is not None and domain.default_of is not group:
            raise SiovError(
                errno.EINVAL,
                f"domain {domain.id} is the default domain of group {domain.default_of.id}; "
                "allocate a domain to share one",
            )

    def detach_device(self, owner: int, domain_id: int, device: Device) -> None:
        """``iommu_detach_device``: the group returns to its default domain.

        ``EINVAL`` if the group is not on ``domain_id`` or has more than one device.
        """
        group = self._device_group(owner, device)
        domain = self.domain(owner, domain_id)
        if group.domain is not domain:
            raise SiovError(
                errno.EINVAL, f"device {device.uuid} is not attached to domain {domain_id}"
            )
        if len(group.devices) != 1:
            raise SiovError(errno.EINVAL, f"group {group.id} has more than one device")
        self._set_group_domain(group, group.default_domain)

    def _set_group_domain(self, group: Group, domain: Domain) -> None:
        old = group.domain
        if old is domain:
            return
        old.groups.discard(group)
        domain.groups.add(group)
        group.domain = domain
        # The PASID-cache and IOTLB flush a driver does when it rewrites an entry.
        for device in group.devices:
            self.iotlb.invalidate_tag(make_tag(old.id, device.default_pasid))

    def _check_pasid(self, device: Device, pasid: int) -> None:
        if pasid <= 0 or pasid >= min(device.max_pasids, PASID_LIMIT):
            raise SiovError(
                errno.EINVAL,
                f"PASID {pasid} is outside 1..{max(device.max_pasids, 1) - 1} "
                f"for device {device.uuid}",
            )

    def attach_pasid(self, owner: int, domain_id: int, device: Device, pasid: int) -> None:
        """``iommu_attach_device_pasid``: ``EINVAL`` for PASID 0, a PASID beyond the device's
        width or a domain of another bus; ``EBUSY`` if the PASID is attached (an mdev's
        default PASID always is, through its group's domain)."""
        group = self._device_group(owner, device)
        domain = self.domain(owner, domain_id)
        self._check_pasid(device, pasid)
        if domain.bus != device.bus:
            raise SiovError(errno.EINVAL, f"domain {domain_id} is for bus {domain.bus!r}")
        if pasid in group.pasids:
            raise SiovError(errno.EBUSY, f"PASID {pasid} of device {device.uuid} is attached")
        if any(d.default_pasid == pasid for d in group.devices):
            raise SiovError(
                errno.EBUSY, f"PASID {pasid} is the default PASID of device {device.uuid}"
            )
        self._check_not_foreign_default(domain, group)
        self._set_pasid(group, pasid, domain)

    def replace_pasid(self, owner: int, domain_id: int, device: Device, pasid: int) -> None:
        """``iommu_replace_device_pasid``: ``EINVAL`` if the PASID is not attached; on any
        failure the old domain stays."""
        group = self._device_group(owner, device)
        domain = self.domain(owner, domain_id)
        self._check_pasid(device, pasid)
        if domain.bus != device.bus:
            raise SiovError(errno.EINVAL, f"domain {domain_id} is for bus {domain.bus!r}")
        if pasid not in group.pasids:
            raise SiovError(errno.EINVAL, f"PASID {pasid} of device {device.uuid} is not attached")
        self._check_not_foreign_default(domain, group)
        self._set_pasid(group, pasid, domain)

    def detach_pasid(self, owner: int, domain_id: int | None, device: Device, pasid: int) -> None:
        """``iommu_detach_device_pasid``: a PASID that is not attached is left alone (no
        error, as iommufd). With ``domain_id``, ``EINVAL`` if the PASID is on another domain."""
        group = self._device_group(owner, device)
        domain = self.domain(owner, domain_id) if domain_id is not None else None
        current = group.pasids.get(pasid)
        if current is None:
            return
        if domain is not None and current is not domain:
            raise SiovError(
                errno.EINVAL, f"PASID {pasid} of device {device.uuid} is on another domain"
            )
        self._set_pasid(group, pasid, None)

    def _set_pasid(self, group: Group, pasid: int, domain: Domain | None) -> None:
        old = group.pasids.get(pasid)
        if old is domain:
            return
        if old is not None:
            old.pasid_users.discard((group, pasid))
            self.iotlb.invalidate_tag(make_tag(old.id, pasid))
        if domain is None:
            group.pasids.pop(pasid, None)
        else:
            group.pasids[pasid] = domain
            domain.pasid_users.add((group, pasid))

    # -- map / unmap -------------------------------------------------------------------------

    def _paging(self, owner: int, domain_id: int) -> Domain:
        domain = self.domain(owner, domain_id)
        if domain.type is not DomainType.PAGING:
            raise SiovError(errno.EINVAL, f"domain {domain_id} is not a paging domain")
        if domain.user_managed:
            raise SiovError(
                errno.EOPNOTSUPP, f"domain {domain_id} is user-managed: write its page table"
            )
        return domain

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
        domain = self._paging(owner, domain_id)
        if prot & ~(PROT_READ | PROT_WRITE) or not prot:
            raise SiovError(errno.EINVAL, f"prot {prot:#x}: use READ (1) and/or WRITE (2)")
        if size <= 0 or (phys | size) % PAGE_SIZE or (iova is not None and iova % PAGE_SIZE):
            raise SiovError(
                errno.EINVAL, "iova, phys and size must be 4 KiB-aligned and size non-zero"
            )
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
            if domain.areas.overlaps(iova, iova + size - 1):
                raise SiovError(
                    errno.EEXIST, f"iova {iova:#x}+{size:#x} overlaps an existing mapping"
                )
        regions = self.memory.regions_in(owner, phys, size)
        if regions is None:
            raise SiovError(errno.EFAULT, f"physical range {phys:#x}+{size:#x} is not your memory")
        if prot & PROT_WRITE and not all(r.writable for r in regions):
            raise SiovError(errno.EFAULT, "a writable mapping of read-only memory")
        if iova is None:
            iova = self._alloc_iova(domain, size, phys)
        elif domain.lazy_pending and any(
            a.iova < iova + size and iova <= a.last for a in domain.lazy_pending
        ):
            # The IOVA is still in the flush queue: flush before it is reused.
            self._flush_domain(domain)
        assert domain.pt is not None
        domain.pt.map(iova, phys, size, prot, page_sizes)
        domain.areas.add(Area(iova, size, phys, prot, tuple(regions)))
        for region in regions:
            region.map_count += 1
        return iova

    def _alloc_iova(self, domain: Domain, size: int, phys: int) -> int:
        """Auto-IOVA: aligned at least to the size's lowest set bit (iommufd), and to the
        physical alignment up to the size, so large pages stay possible."""
        low = size & -size
        phys_align = phys & -phys if phys else SIZE_1G
        align = max(low, min(1 << (size - 1).bit_length(), phys_align, SIZE_1G))
        busy = sorted(
            [(a.iova, a.last) for a in domain.areas.all()]
            + [(a.iova, a.last) for a in domain.lazy_pending]
        )
        iova = first_fit(busy, size, align, max(align, PAGE_SIZE), domain.aperture_end)
        if iova is None:
            raise SiovError(errno.ENOSPC, f"no free IOVA range of {size:#x} bytes")
        return iova

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
        domain = self._paging(owner, domain_id)
        if iova == 0 and size in (UNMAP_ALL, U64):
            return self._unmap_areas(domain, domain.areas.all())
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
                    f"unmap {iova:#x}+{size:#x} would split the mapping "
                    f"{area.iova:#x}+{area.size:#x}",
                )
        if not areas:
            raise SiovError(errno.ENOENT, f"nothing is mapped in {iova:#x}+{size:#x}")
        return self._unmap_areas(domain, areas)

    def _unmap_areas(self, domain: Domain, areas: list[Area]) -> int:
        assert domain.pt is not None
        total = 0
        for area in areas:
            domain.pt.unmap(area.iova, area.size)
            domain.areas.remove(area)
            total += area.size
        if domain.lazy:
            domain.lazy_pending.extend(areas)
            self._lazy_pending += len(areas)
            if self._lazy_pending > self.lazy_flush_threshold:
                self.flush_lazy()
        else:
            self._retire(domain, areas)
        return total

    def _retire(self, domain: Domain, areas: list[Area]) -> None:
        """The IOTLB forgets the areas; then their memory may go."""
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
        """``(phys, leaf size)`` of the page table entry translating ``iova`` (no A/D update):
        4 KiB, 2 MiB or 1 GiB; an identity domain has no table, its size is 0. Blocked or
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
        domain = self._paging(owner, domain_id)
        if size <= 0 or (iova | size) % PAGE_SIZE or iova < 0:
            raise SiovError(errno.EINVAL, "iova and size must be 4 KiB-aligned, size non-zero")
        if iova + size > U64:
            raise SiovError(errno.EOVERFLOW, "iova + size wraps around 2**64")
        if size >> 12 > MAX_DIRTY_PAGES:
            raise SiovError(
                errno.EINVAL, f"a dirty bitmap covers at most {MAX_DIRTY_PAGES} pages per call"
            )
        assert domain.pt is not None
        npages = size >> 12
        bitmap = bytearray((npages + 7) // 8)
        first = iova >> 12
        for leaf_iova, pg in domain.pt.read_dirty(iova, size, clear):
            lo = max(leaf_iova >> 12, first) - first
            hi = min((leaf_iova + pg) >> 12, first + npages) - first
            for bit in range(lo, hi):
                bitmap[bit >> 3] |= 1 << (bit & 7)
            if clear:
                self.iotlb.invalidate_span(domain.id, None, leaf_iova, pg)
        return bytes(bitmap)

    def iotlb_invalidate(
        self,
        owner: int | None,
        scope: str,
        domain_id: int | None = None,
        pasid: int | None = None,
        iova: int = 0,
        am: int = 0,
    ) -> int:
        """Invalidate the IOTLB the way a driver does; returns the entries dropped.

        ``global``: every domain of the caller (an admin, ``owner=None``: everything);
        ``domain``: one domain, all PASIDs; ``pasid``: one (domain, PASID) entry;
        ``range``: ``2**am`` 4 KiB pages from ``iova`` (aligned to that size, ``am`` ≤ 18),
        for one PASID or, with ``pasid=None``, all of them. PASID 0 is the RID.
        """
        if scope == "global":
            for sva in self.sva_domains(owner):
                if sva.mm is not None:
                    sva.mm.stale = True  # the mmu-notifier's flush: re-read the maps
            if owner is None:
                return self.iotlb.invalidate_all()
            return sum(self.iotlb.invalidate_domain(d.id) for d in self.domains(owner))
        if scope not in ("domain", "pasid", "range"):
            raise SiovError(errno.EINVAL, f"unknown invalidation scope {scope!r}")
        if domain_id is None:
            raise SiovError(errno.EINVAL, f"a {scope} invalidation needs a domain")
        domain = self.domain(owner, domain_id)
        if isinstance(domain, SvaDomain) and domain.mm is not None:
            domain.mm.stale = True
        if pasid is not None and not 0 <= pasid < PASID_LIMIT:
            raise SiovError(errno.EINVAL, f"PASID {pasid} is not a 20-bit PASID")
        if scope == "domain":
            return self.iotlb.invalidate_domain(domain.id)
        if scope == "pasid":
            if pasid is None:
                raise SiovError(errno.EINVAL, "a pasid invalidation needs a PASID")
            return self.iotlb.invalidate_tag(make_tag(domain.id, pasid))
        if not 0 <= am <= MAX_AM:
            raise SiovError(errno.EINVAL, f"address mask {am} is outside 0..{MAX_AM}")
        if iova < 0 or iova % (PAGE_SIZE << am):
            raise SiovError(errno.EINVAL, f"iova {iova:#x} is not aligned to 2**{am} pages")
        return self.iotlb.invalidate_range(domain.id, pasid, iova, am)

    # -- DMA ---------------------------------------------------------------------------------

    def dma_space(
        self, device: Device, pasid: int = 0, *, devtlb: bool = False
    ) -> IommuDmaSpace | DevTlbDmaSpace | SvaDmaSpace:
        """The DMA view of ``device`` tagged with ``pasid`` (0: no PASID). ``devtlb`` puts a
        device TLB in front (an ATS device's translation cache, see :mod:`.devtlb`)."""
        if sva_domain(device, pasid) is not None:
            return SvaDmaSpace(self, device, pasid)  # no device TLB: the process's own memory
        if devtlb:
            return DevTlbDmaSpace(self, device, pasid)
        return IommuDmaSpace(self, device, pasid)

    # -- SVA (siovd.model.iommu.sva) ---------------------------------------------------------

    def sva_bind(self, owner: int, device: Device, mm: AddressSpace) -> SvaDomain:
        """``iommu_sva_bind_device``: a fresh global PASID of ``device`` now translates
        through ``mm``. The caller has checked that ``owner`` may use the device."""
        group = device.group
        if group is None or not device.alive:
            raise SiovError(errno.ENODEV, f"device {device.uuid} has no IOMMU group")
        pasid = self.pasids.alloc()
        if pasid >= min(device.max_pasids, PASID_LIMIT):
            self.pasids.free(pasid)
            raise SiovError(errno.ENOSPC, f"no PASID left within device {device.uuid}'s width")
        domain = SvaDomain(self._next_domain, owner, device.bus, DomainType.SVA)
        domain.mm, domain.pasid, domain.device = mm, pasid, device
        self._next_domain += 1
        self._domains[domain.id] = domain
        self._set_pasid(group, pasid, domain)
        return domain

    def sva_unbind(self, domain: SvaDomain) -> None:
        """``iommu_sva_unbind_device``: detach the PASID, free it, close the process's fds."""
        for group, pasid in list(domain.pasid_users):
            self._set_pasid(group, pasid, None)
        if domain.id in self._domains:
            self._destroy(domain)
        if domain.pasid in self.pasids:
            self.pasids.free(domain.pasid)
        domain.pasid = 0
        if domain.mm is not None:
            domain.mm.close()

    def sva_domains(self, owner: int | None = None) -> list[SvaDomain]:
        return [
            d
            for d in self._domains.values()
            if isinstance(d, SvaDomain) and (owner is None or d.owner == owner)
        ]

    def report_fault(self, device: Device, pasid: int, write: bool, failure: Failure) -> DmaFault:
        """Count a failed translation and deliver its record to the owner."""
        domain = failure.domain
        record = FaultRecord(
            device.uuid,
            pasid,
            failure.iova,
            write,
            failure.reason,
            domain.id if domain is not None and domain.id else None,
        )
        self.faults += 1
        owner = domain.owner if domain is not None and domain.owner else device.owner
        if self.on_fault is not None:
            self.on_fault(owner, record)
        return DmaFault(failure.iova, write, failure.reason, pasid)

    def translate(
        self,
        device: Device,
        pasid: int,
        iova: int,
        length: int,
        write: bool,
        max_runs: int | None = None,
        max_pages: int | None = None,
    ) -> tuple[list[TranslatedRun], DmaFault | None]:
        """ATS-like translation for an emulator that copies by itself: the contiguous runs
        ``(iova, phys, length, prot)`` of the translated prefix, and the fault that ended it.
        At most ``max_runs`` runs and ``max_pages`` page lookups: past either, the prefix ends
        with no fault."""
        if sva_domain(device, pasid) is not None:
            raise SiovError(
                errno.EOPNOTSUPP,
                f"PASID {pasid} of device {device.uuid} is bound to a process's address space "
                "(SVA): it translates to no physical memory; use DMA_READ/DMA_WRITE",
            )
        runs, failure = translate_runs(
            self, device, pasid, iova, length, write, max_runs, max_pages
        )
        out = [(r.iova, r.phys, r.length, r.prot) for r in runs]
        if failure is None:
            return out, None
        return out, self.report_fault(device, pasid, write, failure)

    def dma_read(
        self, device: Device, pasid: int, iova: int, length: int
    ) -> tuple[bytes, DmaFault | None]:
        """Read through the IOMMU: the bytes of the translated prefix, and the fault if any."""
        views, fault = self.dma_space(device, pasid).runs(iova, length, False)
        return b"".join(views), fault

    def dma_write(
        self, device: Device, pasid: int, iova: int, data: bytes | bytearray | memoryview
    ) -> tuple[int, DmaFault | None]:
        """Write through the IOMMU: the bytes written before any fault, and the fault."""
        src = memoryview(data).cast("B")
        space = self.dma_space(device, pasid)
        views, fault = space.runs(iova, len(src), True)
        done = 0
        for view in views:
            n = len(view)
            view[:] = src[done : done + n]
            done += n
        if isinstance(space, SvaDmaSpace):
            space.flush()  # a process's memory: the bytes go back now
        return done, fault

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
            devtlb_hits=self.devtlb_hits,
            lazy_flushes=self.lazy_flushes,
            lazy_flushed_areas=self.lazy_flushed_areas,
            lazy_pending=self._lazy_pending,
            domains=len(self._domains),
            groups=len(self._groups),
            mapped_bytes=sum(d.mapped_bytes for d in self._domains.values()),
            page_table_pages=self.pool.pages_in_use,
            pasids_allocated=len(self.pasids),
        )
        return out
