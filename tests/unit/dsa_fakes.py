"""A fake DMA space for accelerator tests: a bytearray seen through a page table.

Pages are 4 KiB. By default every page of the backing memory is mapped at the identity
address; tests make pages fault (not present, or read-only) and can remap them. Views of
physically contiguous pages are merged into one run, as the IOMMU does.
"""

from __future__ import annotations

from siov_protocol.dsa import CompletionRecord
from siovd.model.accel import Blocked, Completed, Executor, SubmitResult, embedded_default
from siovd.model.dma import DmaFault

PAGE = 4096
NOT_PRESENT = 0x71  # VT-d: first-stage entry not present
WRITE_DENIED = 0x85  # VT-d: write to a read-only page


class FakeDma:
    def __init__(self, size: int = 1 << 20, pasid: int = 1, identity: bool = True) -> None:
        self.mem = bytearray(size)
        self.view = memoryview(self.mem)
        self.pasid = pasid
        # iova page number -> (physical page number, writable)
        self.pages: dict[int, tuple[int, bool]] = {}
        if identity:
            for pfn in range(size // PAGE):
                self.pages[pfn] = (pfn, True)
        self.calls = 0

    def unmap(self, iova: int, length: int = PAGE) -> None:
        for page in range(iova // PAGE, (iova + length - 1) // PAGE + 1):
            self.pages.pop(page, None)

    def map(self, iova: int, phys: int, length: int = PAGE, writable: bool = True) -> None:
        for i in range(-(-length // PAGE)):
            self.pages[iova // PAGE + i] = (phys // PAGE + i, writable)

    def protect(self, iova: int, length: int = PAGE) -> None:
        for page in range(iova // PAGE, (iova + length - 1) // PAGE + 1):
            phys, _ = self.pages[page]
            self.pages[page] = (phys, False)

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        self.calls += 1
        views: list[memoryview] = []
        run_start = -1
        run_len = 0
        pos = iova
        end = iova + length
        while pos < end:
            entry = self.pages.get(pos // PAGE)
            if entry is None or (write and not entry[1]):
                reason = NOT_PRESENT if entry is None else WRITE_DENIED
                if run_len:
                    views.append(self.view[run_start : run_start + run_len])
                return views, DmaFault(pos, write, reason, self.pasid)
            step = min(PAGE - pos % PAGE, end - pos)
            phys = entry[0] * PAGE + pos % PAGE
            if run_len and run_start + run_len == phys:
                run_len += step
            else:
                if run_len:
                    views.append(self.view[run_start : run_start + run_len])
                run_start, run_len = phys, step
            pos += step
        if run_len:
            views.append(self.view[run_start : run_start + run_len])
        return views, None


class Rig:
    """An embedded-default device, a fake DMA space and an executor, for running one
    descriptor at a time through the real submit / take / execute path."""

    CR = 0xF000  # a completion record slot in page 15

    def __init__(self, size: int = 1 << 20, *, bof: bool = True) -> None:
        self.device = embedded_default()
        self.dwq = self.device.wqs[0]
        self.swq = self.device.wqs[1]
        if not bof:
            for wq in (self.dwq, self.swq):
                wq.disable()
                wq.configure({"block_on_fault": 0})
                wq.enable()
        self.dma = FakeDma(size)
        self.executor = Executor()
        self.asked: list[int] = []

    def dma_for(self, pasid: int) -> FakeDma:
        self.asked.append(pasid)
        return self.dma

    def start(
        self, desc: bytes, *, shared: bool = False, pasid: int = 1, irq_count: int | None = None
    ) -> Completed | Blocked:
        wq = self.swq if shared else self.dwq
        assert (
            wq.submit(desc, pasid if shared else None, irq_count=irq_count) == SubmitResult.ACCEPTED
        )
        item = self.device.engines[0].take()
        assert item is not None
        return self.executor.execute(item, self.dma_for)

    def run(
        self, desc: bytes, *, shared: bool = False, pasid: int = 1, irq_count: int | None = None
    ) -> Completed:
        """Submit, execute, and retire; the outcome must be Completed."""
        outcome = self.start(desc, shared=shared, pasid=pasid, irq_count=irq_count)
        assert isinstance(outcome, Completed), outcome
        outcome.item.wq.retire(outcome.item)
        return outcome

    def record(self, addr: int = CR) -> CompletionRecord:
        return CompletionRecord.unpack(self.dma.mem[addr : addr + 32])

    def put(self, addr: int, data: bytes) -> None:
        self.dma.mem[addr : addr + len(data)] = data

    def get(self, addr: int, length: int) -> bytes:
        return bytes(self.dma.mem[addr : addr + length])
