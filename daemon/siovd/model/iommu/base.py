"""What every part of the IOMMU shares: its state, declared once.

:class:`~siovd.model.iommu.Iommu` is a thin facade made of one mixin per kind of object and its
verbs (:mod:`~siovd.model.iommu.attach`, :mod:`~siovd.model.iommu.pagetable_verbs` with the jobs
of :mod:`~siovd.model.iommu.io_pagetable`, :mod:`~siovd.model.iommu.invalidate`,
:mod:`~siovd.model.iommu.dma_verbs`, :mod:`~siovd.model.iommu.sva_verbs`); ``Iommu.__init__``
sets what is declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from siovd.model.dma import DmaOrigin
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.faults import FaultRecord
from siovd.model.iommu.group import Group
from siovd.model.iommu.iotlb import Iotlb
from siovd.model.iommu.pagetable import PageTable
from siovd.model.iommu.pasid import PasidAllocator
from siovd.model.iommu.prq import PageRequestQueue
from siovd.model.memory import PageTablePool, PhysicalMemory

if TYPE_CHECKING:
    from siovd.model.device import Device
    from siovd.model.iommu.areas import Area
    from siovd.model.iommu.core import Iommu
    from siovd.model.iommu.sva import SvaDomain

#: A table with more pages than this is freed by ``Iommu.reap``, not in the call that retires
#: it; each step of that gives back ``REAP_STEP`` pages.
REAP_INLINE = 256
REAP_STEP = 256
FaultCallback = Callable[[int, FaultRecord], None]
TranslatedRun = tuple[int, int, int, int, int]  # (iova, phys, length, prot, page_size)


class IommuBase:
    """The IOMMU's state (set by ``Iommu.__init__``) and the verbs its parts use of each
    other (declared for the type checker; each is defined in exactly one part)."""

    memory: PhysicalMemory
    pool: PageTablePool
    iotlb: Iotlb
    default_domain_type: DomainType
    default_lazy: bool
    lazy_flush_threshold: int
    pasids: PasidAllocator
    prq: PageRequestQueue
    on_fault: FaultCallback | None
    fault_origin: Callable[[], DmaOrigin | None] | None
    wake_reaper: Callable[[], None]
    faults: int
    translate_failures: int
    devtlb_hits: int
    lazy_flushes: int
    lazy_flushed_areas: int
    _buses: set[str]
    _internal_buses: set[str]
    _domains: dict[int, Domain]
    _groups: dict[int, Group]
    _next_domain: int
    _next_group: int
    _blocking: Domain
    _lazy_pending: int
    _reaping: list[PageTable]

    @property
    def facade(self) -> Iommu:
        """This object as the :class:`~siovd.model.iommu.Iommu` it always is (for the jobs and
        DMA spaces, which take the whole facade)."""
        return self  # type: ignore[return-value]

    if TYPE_CHECKING:
        # lookup (core)
        def domain(self, owner: int | None, domain_id: int) -> Domain: ...
        def domains(self, owner: int | None = None) -> list[Domain]: ...
        def _device_group(self, owner: int, device: Device) -> Group: ...

        # attach
        def _set_group_domain(self, group: Group, domain: Domain) -> None: ...
        def _set_pasid(self, group: Group, pasid: int, domain: Domain | None) -> None: ...
        def _destroy(self, domain: Domain) -> None: ...
        def reset_group(self, group: Group) -> None: ...

        # page tables
        def _flush_domain(self, domain: Domain) -> int: ...
        def _drop_areas(self, domain: Domain, areas: list[Area]) -> None: ...
        def _retire_table(self, pt: PageTable) -> None: ...
        def _unmap_areas(self, domain: Domain, areas: list[Area]) -> int: ...
        def flush_lazy(self) -> int: ...

        # SVA
        def sva_unbind(self, domain: SvaDomain) -> None: ...
        def sva_domains(self, owner: int | None = None) -> list[SvaDomain]: ...
