"""A device on a bus, as the bus and the IOMMU both see it.

The bus creates devices (mdevs from a parent, or devices an external emulator registers);
the IOMMU's probe path gives each one a group and fills in :attr:`Device.group`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from siovd.model.iommu.group import Group


@dataclass(eq=False)
class Device:
    uuid: str
    bus: str
    owner: int
    pasid_bits: int  # PASID width: the device may use PASIDs below 2**pasid_bits
    #: The PASID the parent tags this mdev's DMA with (from the global allocator); 0 for a
    #: device whose untagged requests go through its requester ID.
    default_pasid: int = 0
    parent: str | None = None  # mdev parent; None for an externally emulated device
    type_id: str | None = None
    name: str = ""
    registrant: int | None = None  # the session that registered an external device
    alias_of: str | None = None  # shares the requester ID (and so the group) of this device
    group: Group | None = None
    alive: bool = True
    #: Reserved regions beyond the MSI window every device has (model/iommu/reserved.py):
    #: (start, last, type) with type "direct" or "reserved".
    resv_regions: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def max_pasids(self) -> int:
        return 1 << self.pasid_bits if self.pasid_bits else 0

    @property
    def is_mdev(self) -> bool:
        return self.parent is not None
