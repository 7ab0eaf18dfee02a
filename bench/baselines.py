"""The baselines the figures compare against, kept out of the daemon's code.

:class:`QemuPolicyIotlb` is QEMU intel-iommu's IOTLB policy (1024 entries, flush everything
when full) on top of siov's IOTLB, and :func:`run_inprocess` runs descriptors straight through
the executor with no queue, engine task or socket: the ceiling the daemon's path is held to.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from siov_protocol.dsa import DSA_COMP_STATUS_MASK
from siovd.model.accel import Completed, Executor, WorkItem, WorkQueue, embedded_default
from siovd.model.accel.results import SUCCESS
from siovd.model.dma import DmaSpace
from siovd.model.iommu import Iotlb


class QemuPolicyIotlb(Iotlb):
    """QEMU intel-iommu's policy: 1024 entries, and an insert into a full table flushes it all."""

    def __init__(self, capacity: int = 1024) -> None:
        super().__init__(capacity)

    def _make_room(self) -> None:
        self.generation += 1
        self.evictions += len(self._map)
        self._map.clear()
        self._by_tag.clear()
        self._domains.clear()


def run_inprocess(
    descriptors: Iterable[bytes],
    dma: DmaSpace,
    wq: WorkQueue | None = None,
    pasid: int = 0,
) -> int:
    """Execute ``descriptors`` one after the other against ``dma`` under ``wq``'s limits (a
    dedicated WQ of the embedded default device when None), without queueing. Returns how
    many completed with SUCCESS."""
    if wq is None:
        wq = embedded_default().wqs[0]
    run = Executor().run
    ok = 0
    for number, raw in enumerate(descriptors):
        outcome = run(WorkItem(wq, raw, pasid, number, None, None), dma)
        if isinstance(outcome, Completed) and outcome.raw[0] & DSA_COMP_STATUS_MASK == SUCCESS:
            ok += 1
    return ok


#: The copy loop's span: large enough that it streams from memory as the daemon's copies do.
COPYLOOP_SPAN = 64 << 20
COPYLOOP_CHUNK = 4096


def copyloop_4k_per_s(seconds: float = 0.5) -> float:
    """The bare interpreter's small-copy rate: 4 KiB memoryview slice copies walking 64 MiB
    (source to destination), as many passes as fit in ``seconds``; copies per second. What a
    4 KiB MEMMOVE through siov is compared with: the same copy, none of the descriptor work."""
    src = memoryview(bytearray(b"\x5a" * COPYLOOP_SPAN))
    dst = memoryview(bytearray(COPYLOOP_SPAN))
    offsets = range(0, COPYLOOP_SPAN, COPYLOOP_CHUNK)
    chunk = COPYLOOP_CHUNK
    clock = time.perf_counter
    copies = 0
    start = clock()
    while True:
        for off in offsets:
            dst[off : off + chunk] = src[off : off + chunk]
        copies += len(offsets)
        elapsed = clock() - start
        if elapsed >= seconds:
            return copies / elapsed
