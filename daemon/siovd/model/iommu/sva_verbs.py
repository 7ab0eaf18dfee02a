"""SVA binding (``iommu_sva_bind_device`` / ``iommu_sva_unbind_device``): a fresh global PASID
of a device translates through a client process's own address space
(:mod:`~siovd.model.iommu.sva`). Mixed into :class:`~siovd.model.iommu.Iommu`."""

from __future__ import annotations

import errno

from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu.base import IommuBase
from siovd.model.iommu.domain import DomainType
from siovd.model.iommu.pasid import PASID_LIMIT
from siovd.model.iommu.sva import AddressSpace, SvaDomain


class SvaVerbs(IommuBase):
    def sva_bind(self, owner: int, device: Device, mm: AddressSpace) -> SvaDomain:
        """``iommu_sva_bind_device``: a fresh global PASID of ``device`` now translates
        through ``mm``. The caller has checked that ``owner`` may use the device.

        The PASID comes from the global allocator (like an mdev's default PASID), so it is
        free on every device; PASIDs a client attaches itself are numbered per device and
        never collide with it (``attach_pasid`` refuses a number already in the group)."""
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
