"""Domains and attach: allocation and freeing, the bus notifier (probe and release of a device,
its group and default domain), attach and detach of a device or of one PASID, with the kernel's
rules and errnos (``drivers/iommu/iommu.c``). Mixed into :class:`~siovd.model.iommu.Iommu`."""

from __future__ import annotations

import errno
from collections.abc import Callable

from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu.areas import AreaMap
from siovd.model.iommu.base import REAP_INLINE, IommuBase
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.group import Group
from siovd.model.iommu.iotlb import make_tag
from siovd.model.iommu.pagetable import (
    PageTable,
)
from siovd.model.iommu.pasid import PASID_LIMIT
from siovd.model.iommu.reserved import check_attach_reserved
from siovd.model.iommu.sva import SvaDomain
from siovd.model.memory import PAGE_SIZE, Region


class AttachVerbs(IommuBase):
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
        max_domains: int | None = None,
    ) -> Domain:
        """A new domain for devices on ``bus`` (``iommu_domain_alloc(bus)``, Joerg's design).

        ``ENOSPC`` when ``owner`` already holds ``max_domains`` (``limits.domains``, checked
        first); ``ENODEV`` if this IOMMU does not serve the bus; ``EINVAL`` for a bad type,
        depth or option mix; a user-managed domain needs ``pt_root_phys`` 4 KiB-aligned in the
        caller's own memory (``EFAULT`` otherwise, like any memory the caller does not own).
        """
        if max_domains is not None and len(self.domains(owner)) >= max_domains:
            raise SiovError(errno.ENOSPC, f"limit reached: limits.domains = {max_domains}")
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
        if domain.nested_children:  # nested.py: a parent lives as long as its nested domains
            raise SiovError(errno.EBUSY, f"domain {domain_id} is the parent of nested domains")
        self._destroy(domain)

    def _destroy(self, domain: Domain) -> None:
        self._flush_domain(domain)
        if domain.pt is not None:
            self._drop_areas(domain, domain.areas.all())
            self._retire_table(domain.pt)
        if domain.root_region is not None:
            domain.root_region.map_count -= 1
            domain.root_region = None
        if domain.nest_of is not None:
            domain.nest_of.nested_children.discard(domain)
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
        self._flush_domain(default)
        pt = default.pt
        if pt is not None and pt.table_pages > REAP_INLINE:
            # Emptying a big table entry by entry would hold the caller for seconds: the
            # domain gets a fresh table at once and the old one is freed a turn at a time.
            self._drop_areas(default, default.areas.all())
            default.areas = AreaMap()
            default.pt = PageTable(self.memory, self.pool, default.levels)
            default.root = default.pt.root
            default.locate = default.pt.locate
            self.iotlb.invalidate_domain(default.id)
            self._retire_table(pt)
        elif pt is not None and len(default.areas):
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
        check_attach_reserved(domain, group.devices)  # EADDRINUSE (reserved.py)
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
        check_attach_reserved(domain, group.devices)  # EADDRINUSE (reserved.py)
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
        check_attach_reserved(domain, group.devices)  # EADDRINUSE (reserved.py)
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
