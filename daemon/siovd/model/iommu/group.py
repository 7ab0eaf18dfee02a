"""IOMMU groups: the unit of attach, with their PASID array."""

from __future__ import annotations

from dataclasses import dataclass, field

from siovd.model.device import Device
from siovd.model.iommu.domain import Domain


@dataclass(eq=False)
class Group:
    """Devices that cannot be isolated from each other (here: one device, or a device and its
    requester-ID aliases).

    ``domain`` translates requests without PASID (and an mdev's default PASID: RID2PASID);
    ``pasids`` is the group's PASID array, each entry pointing at a domain.
    """

    id: int
    default_domain: Domain
    blocking_domain: Domain
    domain: Domain
    devices: list[Device] = field(default_factory=list)
    pasids: dict[int, Domain] = field(default_factory=dict)

    @property
    def owner(self) -> int:
        return self.devices[0].owner if self.devices else 0

    def info(self) -> dict[str, object]:
        return {
            "group_id": self.id,
            "devices": [d.uuid for d in self.devices],
            "domain_id": self.domain.id,
            "default_domain_id": self.default_domain.id,
            "pasids": {pasid: dom.id for pasid, dom in sorted(self.pasids.items())},
        }
