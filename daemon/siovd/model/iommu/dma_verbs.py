"""DMA through the IOMMU: a device's DMA space for one PASID, ATS-like translation for external
emulators, byte reads and writes, and fault reporting. Mixed into
:class:`~siovd.model.iommu.Iommu`."""

from __future__ import annotations

import errno

from siovd.model.device import Device
from siovd.model.dma import DmaFault
from siovd.model.errors import SiovError
from siovd.model.iommu.base import IommuBase, TranslatedRun
from siovd.model.iommu.devtlb import DevTlbDmaSpace
from siovd.model.iommu.faults import FaultRecord
from siovd.model.iommu.sva import SvaDmaSpace, sva_domain
from siovd.model.iommu.translate import Failure, IommuDmaSpace, translate_runs


class DmaVerbs(IommuBase):
    # -- DMA ---------------------------------------------------------------------------------

    def dma_space(
        self, device: Device, pasid: int = 0, *, devtlb: bool = False
    ) -> IommuDmaSpace | DevTlbDmaSpace | SvaDmaSpace:
        """The DMA view of ``device`` tagged with ``pasid`` (0: no PASID). ``devtlb`` puts a
        device TLB in front (an ATS device's translation cache, see :mod:`.devtlb`)."""
        if sva_domain(device, pasid) is not None:
            return SvaDmaSpace(self.facade, device, pasid)  # no device TLB: the process's own
        if devtlb:
            return DevTlbDmaSpace(self.facade, device, pasid)
        return IommuDmaSpace(self.facade, device, pasid)

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
            self.fault_origin() if self.fault_origin is not None else None,
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
        """ATS-like translation: the contiguous runs ``(iova, phys, length, prot,
        page_size)`` of the translated prefix, and the fault that ended it. At most
        ``max_runs`` runs and ``max_pages`` page lookups: past either, the prefix ends with no
        fault.

        A failed translation request is not a DMA fault (PCIe ATS: the translation completion
        says "no access" and the IOMMU records nothing): it is answered to the requester only,
        with no fault record and no event to the owner, and counted ``translate_failures``.
        The runs are physical addresses in the daemon's space: what a translation cache holds
        and what a debugger wants to see. Only the daemon can reach that memory; an emulator
        moves data with :meth:`dma_read`/:meth:`dma_write`."""
        if sva_domain(device, pasid) is not None:
            raise SiovError(
                errno.EOPNOTSUPP,
                f"PASID {pasid} of device {device.uuid} is bound to a process's address space "
                "(SVA): it translates to no physical memory; use DMA_READ/DMA_WRITE",
            )
        runs, failure = translate_runs(
            self.facade, device, pasid, iova, length, write, max_runs, max_pages
        )
        out = [(r.iova, r.phys, r.length, r.prot, r.page_size) for r in runs]
        if failure is None:
            return out, None
        self.translate_failures += 1
        return out, DmaFault(failure.iova, write, failure.reason, pasid)

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
