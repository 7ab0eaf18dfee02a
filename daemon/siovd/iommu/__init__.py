"""The emulated IOMMU: per-PASID first-stage page tables, an IOTLB, groups and domains.

:class:`Iommu` is the facade the server and the bus use; the modules underneath each own one
kind of object (page table, IOTLB, domain, group, PASID space, the DMA path).
"""

from siovd.iommu.core import MAX_AM, UNMAP_ALL, Iommu
from siovd.iommu.domain import Domain, DomainType
from siovd.iommu.faults import FaultRecord
from siovd.iommu.group import Group
from siovd.iommu.iotlb import Iotlb, QemuPolicyIotlb
from siovd.iommu.pagetable import PROT_READ, PROT_WRITE, PageTable
from siovd.iommu.translate import IommuDmaSpace

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
    "QemuPolicyIotlb",
]
