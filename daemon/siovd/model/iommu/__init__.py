"""The emulated IOMMU: per-PASID first-stage page tables, an IOTLB, groups and domains.

:class:`Iommu` is the facade the server and the bus use; the modules underneath each own one
kind of object (page table, IOTLB, domain, group, PASID space, the DMA path).
"""

from siovd.model.iommu.core import MAX_AM, Iommu
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.faults import FaultRecord
from siovd.model.iommu.group import Group
from siovd.model.iommu.io_pagetable import UNMAP_ALL
from siovd.model.iommu.iotlb import Iotlb
from siovd.model.iommu.pagetable import PROT_READ, PROT_WRITE, PageTable
from siovd.model.iommu.translate import IommuDmaSpace

__all__ = [
    "MAX_AM",
    "PROT_READ",
    "PROT_WRITE",
    "UNMAP_ALL",
    "Domain",
    "DomainType",
    "FaultRecord",
    "Group",
    "Iommu",
    "IommuDmaSpace",
    "Iotlb",
    "PageTable",
]
