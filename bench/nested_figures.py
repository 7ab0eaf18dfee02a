"""Figures of nested translation (model/iommu/nested.py), measured in-process:
``python bench/nested_figures.py [NAME ...]``.

- ``nested_miss_vs_hit``: the miss path of a nested domain (failed lookup, a 4-level stage-1
  walk whose every table is read through a 4-level stage-2 walk, the leaf's output through
  stage 2, insert) against an IOTLB hit on the nested domain's tag.
- ``nested_hit_vs_dict``: that hit against a bare dict lookup of a tuple key, like
  ``iotlb_hit_vs_dict``: the combined translation is cached once, so a hit costs the same.
"""

from __future__ import annotations

import os
import random
import statistics
import struct
import sys
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Figure, figure
from bench.iommu_figures import PAGE, RUNS, RW, GiB, MiB, World, _loop_time
from siovd.model.iommu import Iotlb
from siovd.model.iommu.iotlb import make_tag, new_entry
from siovd.model.iommu.nested import alloc_nested, combine
from siovd.model.iommu.pagetable import walk

PAGES = 4096  # 16 MiB of 4 KiB stage-1 pages
IOVA = 0x4000_0000


def _nested_world() -> tuple[World, Any, list[int]]:
    """Stage 2: 40 MiB of guest-physical memory in 4 KiB pages (phys off a 2 MiB line); stage 1:
    16 MiB at IOVA in 4 KiB pages, tables at guest-physical 0..."""
    world = World()
    region = world.region(48 * MiB)
    io = world.iommu
    parent = io.domain_alloc(1, "mdev")
    parent.nest_parent = True
    io.map(1, parent.id, 0, region.base + PAGE, 40 * MiB, RW)
    view = region.buf

    def put(gpa: int, index: int, value: int) -> None:
        struct.pack_into("<Q", view, gpa + PAGE + 8 * index, value)  # gpa g is phys base+4K+g

    root, pdpt, pd = 0x1000, 0x2000, 0x3000
    put(root, 0, pdpt | 7)
    put(pdpt, 1, pd | 7)
    for t in range(PAGES // 512):  # 8 leaf tables at 0x10000.., data at 8 MiB..
        pt = 0x10000 + t * PAGE
        put(pd, t, pt | 7)
        for i in range(512):
            put(pt, i, (8 * MiB + (t * 512 + i) * PAGE) | 7)
    nested = alloc_nested(io.facade, 1, parent.id, root, 48, 0)
    iovas = [IOVA + p * PAGE for p in range(PAGES)]
    random.Random(3).shuffle(iovas)
    return world, nested, iovas


def _measure() -> tuple[float, float, float]:
    world, nested, iovas = _nested_world()
    try:
        parent = nested.nest_of
        locate, root = nested.locate, nested.root
        iotlb = Iotlb(8192)
        tag = make_tag(nested.id, 1)
        plain: dict[tuple[int, int, int], list[Any]] = {}

        def misses(xs: list[int]) -> None:
            lookup, insert = iotlb.lookup, iotlb.insert
            for iova in xs:
                if lookup(tag, iova) is None:
                    s1 = walk(locate, root, 4, iova, False)
                    assert not isinstance(s1, int)
                    result = combine(parent, iova, s1, False)
                    assert not isinstance(result, int)
                    pbase, size, flags, level = result
                    insert(tag, iova, level, new_entry(pbase, size, flags))

        def hits(xs: list[int]) -> None:
            lookup = iotlb.lookup
            for iova in xs:
                lookup(tag, iova)

        def bare(xs: list[int]) -> None:
            get = plain.get
            for iova in xs:
                get((tag, iova >> 12, 1))

        def empty(xs: list[int]) -> None:
            for _ in xs:
                pass

        def one() -> tuple[float, float, float]:
            iotlb.invalidate_all()
            t_empty = _loop_time(empty, iovas, 1)
            t_miss = _loop_time(misses, iovas, 1) - t_empty  # fills the IOTLB
            assert iotlb.entries() == len(iovas)
            if not plain:
                for iova in iovas:
                    plain[(tag, iova >> 12, 1)] = [iova + GiB, PAGE, 7, 0, None]
            t_hit = (_loop_time(hits, iovas, 10) - 10 * t_empty) / 10
            t_dict = (_loop_time(bare, iovas, 10) - 10 * t_empty) / 10
            n = len(iovas)
            return t_miss / n, t_hit / n, t_dict / n

        samples = [one() for _ in range(RUNS)]
        return tuple(statistics.median(s[i] for s in samples) for i in range(3))  # type: ignore[return-value]
    finally:
        world.close()


def nested_miss_vs_hit() -> Figure:
    miss, hit, _ = _measure()
    return figure(
        "nested_miss_vs_hit",
        miss / hit,
        "x",
        hit * 1e9,
        ">= 20",
        f"two-stage miss (stage-1 walk, each table and the leaf through stage 2, insert) "
        f"{miss * 1e9:.0f} ns, hit {hit * 1e9:.0f} ns (baseline column, ns)",
    )


def nested_hit_vs_dict() -> Figure:
    _, hit, base = _measure()
    return figure(
        "nested_hit_vs_dict",
        hit / base,
        "x",
        base * 1e9,
        "<= 4",
        f"nested hit {hit * 1e9:.0f} ns, dict lookup {base * 1e9:.0f} ns (baseline column, ns)",
    )


FIGURES: dict[str, Callable[[], Figure]] = {
    "nested_miss_vs_hit": nested_miss_vs_hit,
    "nested_hit_vs_dict": nested_hit_vs_dict,
}


def main(names: list[str]) -> int:
    for name in names or list(FIGURES):
        r = FIGURES[name]()
        print(f"{r['name']}: {r['value']:.3g} {r['unit']} (target {r['target']}) {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
