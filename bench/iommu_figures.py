"""Figures of the IOMMU model, measured in-process: ``python bench/iommu_figures.py [NAME ...]``.

Each figure sets its value against a baseline measured in the same run (medians of several
runs), so a noisy machine moves both sides together:

- ``iotlb_hit_vs_dict``: an IOTLB hit against a bare dict lookup of a tuple key (per-op
  costs, the empty loop subtracted from both).
- ``iotlb_miss_vs_hit``: the miss path (failed lookup, 4-level walk in physical memory,
  insert) against a hit.
- ``iotlb_hit_rate_4096`` / ``..._qemu_policy``: hit rate of the DMA path on a 4096-page
  working set (half random, half looping accesses), with the default IOTLB and with QEMU's
  1024-entry flush-all policy.
- ``map_1g_4k_s``, ``unmap_1g_4k_s``, ``map_1g_2m_s``: one map/unmap call of 1 GiB in
  4 KiB or 2 MiB pages, against filling a dict with as many entries.
- ``pt_bytes_per_4k_page``: page-table bytes per mapped 4 KiB page for that 1 GiB map.
"""

from __future__ import annotations

import gc
import mmap
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.baselines import QemuPolicyIotlb
from bench.common import Figure, figure
from bench.common import median_of as median
from siovd.model.bus import Bus
from siovd.model.device import Device
from siovd.model.iommu import Iommu, Iotlb
from siovd.model.iommu.iotlb import make_tag, new_entry
from siovd.model.iommu.pagetable import PROT_READ, PROT_WRITE, walk
from siovd.model.memory import PhysicalMemory, Region
from siovd.model.testparent import SiovTestParent

RW = PROT_READ | PROT_WRITE
PAGE = 4096
MiB = 1 << 20
GiB = 1 << 30
RUNS = 7


@contextmanager
def no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class World:
    """One IOMMU, one mdev, and owner 1's memory."""

    def __init__(self, iotlb: Iotlb | None = None) -> None:
        self.memory = PhysicalMemory()
        self.iommu = Iommu(self.memory, iotlb=iotlb)
        self.bus = Bus(self.iommu)
        self.bus.add_parent(SiovTestParent())
        self.dev: Device = self.bus.create_mdev(1, "siov_test", "siov_test-1")
        assert self.dev.group is not None
        self.domain = self.dev.group.default_domain.id
        self._maps: list[mmap.mmap] = []

    def region(self, size: int) -> Region:
        m = mmap.mmap(-1, size)
        self._maps.append(m)
        return self.memory.add_region(memoryview(m), 1)

    def close(self) -> None:
        self.bus.release_owner(1)
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass


# -- IOTLB cost ------------------------------------------------------------------------------


def _loop_time(body: Callable[[list[int]], None], iovas: list[int], reps: int) -> float:
    with no_gc():
        t0 = time.perf_counter()
        for _ in range(reps):
            body(iovas)
        return time.perf_counter() - t0


def iotlb_hit_vs_dict() -> Figure:
    iotlb = Iotlb(8192)
    tag = make_tag(1, 1)
    plain: dict[tuple[int, int, int], list[Any]] = {}
    iovas = [page * PAGE for page in range(4096)]
    for iova in iovas:
        entry = [iova + GiB, PAGE, 0x7, 0, None, 0]
        iotlb.insert(tag, iova, 1, entry)
        plain[(tag, iova >> 12, 1)] = entry
    random.Random(1).shuffle(iovas)
    reps = 50

    def empty(xs: list[int]) -> None:
        for _ in xs:
            pass

    def bare(xs: list[int]) -> None:
        get = plain.get
        for iova in xs:
            get((tag, iova >> 12, 1))

    def hits(xs: list[int]) -> None:
        lookup = iotlb.lookup
        for iova in xs:
            lookup(tag, iova)

    n = reps * len(iovas)

    def one() -> tuple[float, float]:
        t_empty = _loop_time(empty, iovas, reps)
        t_dict = _loop_time(bare, iovas, reps) - t_empty
        t_hit = _loop_time(hits, iovas, reps) - t_empty
        return t_hit / n, t_dict / n

    samples = [one() for _ in range(RUNS)]
    hit = statistics.median(s[0] for s in samples)
    base = statistics.median(s[1] for s in samples)
    return figure(
        "iotlb_hit_vs_dict",
        hit / base,
        "x",
        base * 1e9,
        "<= 4",
        f"hit {hit * 1e9:.0f} ns, dict lookup {base * 1e9:.0f} ns (baseline column, ns)",
    )


def iotlb_miss_vs_hit() -> Figure:
    world = World()
    try:
        region = world.region(32 * MiB)
        # 4 KiB pages (phys off a 2 MiB line) so every miss walks all 4 levels.
        world.iommu.map(1, world.domain, 0x4000_0000, region.base + PAGE, 16 * MiB, RW)
        dom = world.iommu.domain(1, world.domain)
        assert dom.locate is not None
        locate, root = dom.locate, dom.root
        iotlb = Iotlb(8192)
        tag = make_tag(dom.id, world.dev.default_pasid)
        iovas = [0x4000_0000 + page * PAGE for page in range(4096)]
        random.Random(2).shuffle(iovas)

        def misses(xs: list[int]) -> None:
            lookup, insert = iotlb.lookup, iotlb.insert
            for iova in xs:
                if lookup(tag, iova) is None:
                    result = walk(locate, root, 4, iova, False)
                    assert not isinstance(result, int)
                    pbase, size, flags, level = result
                    insert(tag, iova, level, new_entry(pbase, size, flags))

        def hits(xs: list[int]) -> None:
            lookup = iotlb.lookup
            for iova in xs:
                lookup(tag, iova)

        def empty(xs: list[int]) -> None:
            for _ in xs:
                pass

        def one() -> tuple[float, float]:
            iotlb.invalidate_all()
            t_empty = _loop_time(empty, iovas, 1)
            t_miss = _loop_time(misses, iovas, 1) - t_empty  # fills the IOTLB
            assert iotlb.entries() == len(iovas)
            t_hit = (_loop_time(hits, iovas, 10) - 10 * t_empty) / 10
            return t_miss / len(iovas), t_hit / len(iovas)

        samples = [one() for _ in range(RUNS)]
        miss = statistics.median(s[0] for s in samples)
        hit = statistics.median(s[1] for s in samples)

        # End to end through the DMA path, for the note.
        space = world.iommu.dma_space(world.dev, world.dev.default_pasid)

        def dma(xs: list[int]) -> None:
            runs = space.runs
            for iova in xs:
                runs(iova, 64, False)

        world.iommu.iotlb.invalidate_all()
        t_dma_miss = _loop_time(dma, iovas, 1) / len(iovas)
        t_dma_hit = _loop_time(dma, iovas, 1) / len(iovas)
        return figure(
            "iotlb_miss_vs_hit",
            miss / hit,
            "x",
            hit * 1e9,
            ">= 10",
            f"miss (lookup+4-level walk+insert) {miss * 1e9:.0f} ns, hit {hit * 1e9:.0f} ns "
            f"(baseline column, ns); whole DMA path for 64 B: miss {t_dma_miss * 1e9:.0f} ns, "
            f"hit {t_dma_hit * 1e9:.0f} ns",
        )
    finally:
        world.close()


# -- IOTLB hit rate --------------------------------------------------------------------------


def _trace(pages: int, length: int, seed: int) -> list[int]:
    """Half random accesses over the working set, half a loop over it, interleaved in blocks."""
    rng = random.Random(seed)
    out: list[int] = []
    loop_pos = 0
    while len(out) < length:
        for _ in range(256):
            out.append(rng.randrange(pages))
        for _ in range(256):
            out.append(loop_pos)
            loop_pos = (loop_pos + 1) % pages
    return out[:length]


def _hit_rate(iotlb: Iotlb) -> float:
    world = World(iotlb)
    try:
        region = world.region(16 * MiB + PAGE)
        world.iommu.map(1, world.domain, 0x4000_0000, region.base + PAGE, 16 * MiB, RW)
        space = world.iommu.dma_space(world.dev, world.dev.default_pasid)
        trace = _trace(4096, 200_000, seed=3)
        before = world.iommu.iotlb.stats()
        runs = space.runs
        for page in trace:
            _, fault = runs(0x4000_0000 + page * PAGE + 64, 64, False)
            assert fault is None
        after = world.iommu.iotlb.stats()
        hits = after["iotlb_hits"] - before["iotlb_hits"]
        misses = after["iotlb_misses"] - before["iotlb_misses"]
        return hits / (hits + misses)
    finally:
        world.close()


def iotlb_hit_rate_4096() -> Figure:
    rate = _hit_rate(Iotlb(8192))
    qemu = _hit_rate(QemuPolicyIotlb())
    return figure(
        "iotlb_hit_rate_4096",
        rate,
        "ratio",
        qemu,
        ">= 0.95",
        "default IOTLB (8192 entries, CLOCK); baseline: QEMU policy on the same trace",
    )


def iotlb_hit_rate_4096_qemu_policy() -> Figure:
    return figure(
        "iotlb_hit_rate_4096_qemu_policy",
        _hit_rate(QemuPolicyIotlb()),
        "ratio",
        _hit_rate(Iotlb(8192)),
        None,
        "QEMU intel-iommu policy: 1024 entries, flush all when full; baseline: default IOTLB",
    )


# -- map / unmap -----------------------------------------------------------------------------


def _dict_fill(n: int) -> float:
    def once() -> float:
        with no_gc():
            t0 = time.perf_counter()
            d = {}
            for i in range(n):
                d[i] = i
            return time.perf_counter() - t0

    return median(RUNS, once)


class _OneGiB:
    """A 1 GiB (+4 KiB) region, mapped and unmapped as a whole."""

    def __init__(self) -> None:
        self.world = World()
        self.region = self.world.region(GiB + 2 * MiB)

    def map(self, page_4k: bool) -> tuple[float, int]:
        # 4 KiB pages: iova 2 MiB-aligned, phys 4 KiB past a 2 MiB line.
        phys = self.region.base + (PAGE if page_4k else 0)
        with no_gc():
            t0 = time.perf_counter()
            self.world.iommu.map(1, self.world.domain, GiB, phys, GiB, RW)
            elapsed = time.perf_counter() - t0
        pt = self.world.iommu.domain(1, self.world.domain).pt
        assert pt is not None
        return elapsed, pt.table_bytes

    def unmap(self) -> float:
        with no_gc():
            t0 = time.perf_counter()
            assert self.world.iommu.unmap(1, self.world.domain, GiB, GiB) == GiB
            return time.perf_counter() - t0


def _map_unmap(page_4k: bool, runs: int = 5) -> tuple[float, float, int]:
    one = _OneGiB()
    try:
        maps, unmaps, table_bytes = [], [], 0
        for _ in range(runs):
            t, table_bytes = one.map(page_4k)
            maps.append(t)
            unmaps.append(one.unmap())
        return statistics.median(maps), statistics.median(unmaps), table_bytes
    finally:
        one.world.close()


def map_1g_4k_s() -> Figure:
    t_map, _, _ = _map_unmap(True)
    base = _dict_fill(GiB // PAGE)
    return figure(
        "map_1g_4k_s",
        t_map,
        "s",
        base,
        None,
        "one map call, 262144 leaves; baseline: filling a dict with 262144 entries",
    )


def unmap_1g_4k_s() -> Figure:
    _, t_unmap, _ = _map_unmap(True)
    base = _dict_fill(GiB // PAGE)
    return figure(
        "unmap_1g_4k_s",
        t_unmap,
        "s",
        base,
        None,
        "one unmap call (strict: IOTLB invalidated); baseline: dict fill, 262144 entries",
    )


def map_1g_2m_s() -> Figure:
    t_map, _, _ = _map_unmap(False)
    base = _dict_fill(GiB // (2 * MiB))
    return figure(
        "map_1g_2m_s",
        t_map,
        "s",
        base,
        None,
        "one map call, 512 PS leaves; baseline: filling a dict with 512 entries",
    )


def pt_bytes_per_4k_page() -> Figure:
    _, _, table_bytes = _map_unmap(True, runs=1)
    pages = GiB // PAGE
    leaf_only = (pages // 512) * PAGE / pages  # the 8 B/page the leaf tables cost
    return figure(
        "pt_bytes_per_4k_page",
        table_bytes / pages,
        "B/page",
        leaf_only,
        "<= 16",
        f"{table_bytes // PAGE} table pages for 1 GiB of 4 KiB pages; baseline: leaf tables only",
    )


FIGURES: dict[str, Callable[[], Figure]] = {
    "iotlb_hit_vs_dict": iotlb_hit_vs_dict,
    "iotlb_miss_vs_hit": iotlb_miss_vs_hit,
    "iotlb_hit_rate_4096": iotlb_hit_rate_4096,
    "iotlb_hit_rate_4096_qemu_policy": iotlb_hit_rate_4096_qemu_policy,
    "map_1g_4k_s": map_1g_4k_s,
    "unmap_1g_4k_s": unmap_1g_4k_s,
    "map_1g_2m_s": map_1g_2m_s,
    "pt_bytes_per_4k_page": pt_bytes_per_4k_page,
}


def main(names: list[str]) -> int:
    for name in names or list(FIGURES):
        t0 = time.perf_counter()
        r = FIGURES[name]()
        base = "-" if r["baseline"] is None else f"{r['baseline']:.4g}"
        ok = {True: "yes", False: "NO", None: "-"}[r["ok"]]
        print(
            f"{r['name']:34} {r['value']:10.4g} {r['unit']:6} base {base:>10} "
            f"target {r['target'] or '-':8} ok {ok:3} ({time.perf_counter() - t0:.1f} s)"
        )
        if r["note"]:
            print(f"    {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
