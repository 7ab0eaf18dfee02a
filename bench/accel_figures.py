"""Accelerator figures: the executor in process, against baselines measured in the same run.

``FIGURES`` maps a figure's name to a function returning ``{name, value, unit, baseline, target,
ok}``; run this file to print them as JSON lines. No socket is involved: these bound what the
daemon can reach end to end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import crc32c

from siov import dsa as sdk
from siovd.accel import Completed, Executor, WorkItem, embedded_default, run_inprocess
from siovd.dma import DmaFault

Figure = dict[str, Any]

MIB = 1 << 20


class FlatDma:
    """Identity translation over one bytearray: one view per range, as an IOMMU gives for a
    physically contiguous mapping."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)
        self.view = memoryview(self.mem)
        self.size = size
        self.view[:] = b"\x5a" * size  # touch every page before timing

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        end = iova + length
        if end <= self.size:
            return [self.view[iova:end]], None
        good = max(self.size - iova, 0)
        views = [self.view[iova : iova + good]] if good else []
        return views, DmaFault(iova + good, write, 0x71, 0)


def _best(run: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed runs, after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _figure(name: str, value: float, unit: str, baseline: Any, target: float) -> Figure:
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline,
        "target": target,
        "ok": value >= target,
    }


def desc_4k_inproc_per_s() -> Figure:
    """4 KiB MEMMOVE descriptors with a completion record each, through the executor (no
    queue, no socket). Baseline: the same descriptors through submit, engine take, execute and
    retire, the loop an engine task runs."""
    count = 20_000
    dma = FlatDma(16 * MIB)
    descs = [
        sdk.memmove(
            8 * MIB + (i % 512) * 4096, (i % 512) * 4096, 4096, completion=15 * MIB + (i % 512) * 32
        )
        for i in range(count)
    ]
    elapsed = _best(lambda: run_inprocess(descs, dma), 3)
    assert run_inprocess(descs[:10], dma) == 10

    device = embedded_default()
    wq = device.wqs[0]
    engine = device.engines[0]
    run = Executor().run

    def queued() -> None:
        for desc in descs:
            wq.submit(desc)
            item = engine.take()
            assert item is not None
            run(item, dma)
            wq.retire(item)

    queued_elapsed = _best(queued, 3)
    return _figure(
        "desc_4k_inproc_per_s",
        count / elapsed,
        "descriptors/s",
        {"queued_per_s": round(count / queued_elapsed)},
        150_000,
    )


def crcgen_64m_inproc_vs_crc32c() -> Figure:
    """CRCGEN over 64 MiB through the executor, as a fraction of crc32c's own speed."""
    size = 64 * MIB
    dma = FlatDma(size + MIB)
    desc = sdk.crcgen(0, size, completion=size)
    device = embedded_default()
    executor = Executor()
    item = WorkItem(device.wqs[0], desc, 0, 0, None, None)

    def through_executor() -> None:
        outcome = executor.run(item, dma)
        assert isinstance(outcome, Completed) and outcome.status == sdk.DSA_COMP_SUCCESS

    direct = _best(lambda: crc32c.crc32c(dma.view[:size]), 5)
    ours = _best(through_executor, 5)
    check = executor.run(item, dma)
    assert isinstance(check, Completed) and check.record.crc_val == crc32c.crc32c(dma.view[:size])
    return _figure(
        "crcgen_64m_inproc_vs_crc32c",
        direct / ours,
        "ratio",
        {"crc32c_GBps": round(size / direct / 1e9, 2)},
        0.8,
    )


def memmove_64m_inproc_vs_memcpy() -> Figure:
    """MEMMOVE of 64 MiB through the executor, as a fraction of a memoryview copy."""
    size = 64 * MIB
    dma = FlatDma(2 * size + MIB)
    desc = sdk.memmove(size, 0, size, completion=2 * size)
    device = embedded_default()
    executor = Executor()
    item = WorkItem(device.wqs[0], desc, 0, 0, None, None)
    view = dma.view

    def memcpy() -> None:
        view[size : 2 * size] = view[:size]

    def through_executor() -> None:
        outcome = executor.run(item, dma)
        assert isinstance(outcome, Completed) and outcome.status == sdk.DSA_COMP_SUCCESS

    direct = _best(memcpy, 5)
    ours = _best(through_executor, 5)
    return _figure(
        "memmove_64m_inproc_vs_memcpy",
        direct / ours,
        "ratio",
        {"memcpy_GBps": round(size / direct / 1e9, 2)},
        0.9,
    )


FIGURES: dict[str, Callable[[], Figure]] = {
    "desc_4k_inproc_per_s": desc_4k_inproc_per_s,
    "crcgen_64m_inproc_vs_crc32c": crcgen_64m_inproc_vs_crc32c,
    "memmove_64m_inproc_vs_memcpy": memmove_64m_inproc_vs_memcpy,
}


def main() -> None:
    for figure in FIGURES.values():
        print(json.dumps(figure()))


if __name__ == "__main__":
    main()
