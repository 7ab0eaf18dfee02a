"""The baselines the figures compare against, kept out of the daemon's code.

:class:`QemuPolicyIotlb` is QEMU intel-iommu's IOTLB policy (1024 entries, flush everything
when full) on top of siov's IOTLB, and :func:`run_inprocess` runs descriptors straight through
the executor with no queue, engine task or socket, one call per descriptor, and
:func:`run_stream` hands the executor a whole stream of them at once (its native core then runs
them in runs, as the daemon's engines do): the ceilings the daemon's path is held to.
:func:`copyloop_4k_per_s` is the floor the executor is held to: Python's own loop of 4 KiB
copies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from siov_protocol.dsa import DSA_COMP_STATUS_MASK
from siovd.model.accel import Completed, Executor, WorkItem, WorkQueue, embedded_default
from siovd.model.accel.outcome import CompletedRun
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


def run_stream(
    descriptors: bytes,
    dma: DmaSpace,
    wq: WorkQueue | None = None,
    pasid: int = 0,
    executor: Executor | None = None,
) -> int:
    """Execute the 64-byte ``descriptors`` concatenated in one stream against ``dma``
    (:meth:`Executor.run_all`: no queue, no budget). Returns how many completed; their
    completion records say how (the caller checks them)."""
    if wq is None:
        wq = embedded_default().wqs[0]
    if executor is None:
        executor = Executor()
    done = 0
    for outcome in executor.run_all(wq, descriptors, dma, pasid):
        if type(outcome) is CompletedRun:
            done += outcome.count
        elif isinstance(outcome, Completed):
            done += 1
    return done


COPYLOOP_SPAN = 64 << 20


def copyloop_4k_per_s(repeat: int = 3) -> float:
    """4 KiB copies per second of a bare Python loop of memoryview slice assignments over
    64 MiB (touched, non-zero source and destination, so neither reads the shared zero page);
    best of ``repeat`` passes after a warm-up. What an executor doing no per-descriptor work
    of its own would reach in the interpreter (issue #16)."""
    src = memoryview(bytearray(b"\x5a" * COPYLOOP_SPAN))
    dst = memoryview(bytearray(b"\xa5" * COPYLOOP_SPAN))
    best = float("inf")
    for attempt in range(repeat + 1):
        start = time.perf_counter()
        for off in range(0, COPYLOOP_SPAN, 4096):
            dst[off : off + 4096] = src[off : off + 4096]
        if attempt:
            best = min(best, time.perf_counter() - start)
    assert dst[:4096] == src[:4096]
    return (COPYLOOP_SPAN // 4096) / best
