"""Dirty tracking against a plain model (model/iommu/dirty.py): random maps, unmaps, writes
through the IOMMU, tracking on and off, bitmap reads with and without clearing at 4 KiB and
2 MiB granularity, unmaps that collect the bits, and IOTLB invalidations in between.

The model is a set of dirty pages: a write marks its page only while tracking is on, enabling
empties it, a clearing read empties what it read, an unmap forgets its pages.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from siovd.model.errors import SiovError
from siovd.model.iommu.dirty import DirtyReadJob, SetTrackingJob, UnmapDirtyJob
from siovd.model.iommu.io_pagetable import run_to_end
from tests.unit.iommu_env import PAGE, RW, Env

WINDOW = 0x4000_0000
WINDOW_PAGES = 1024  # 4 MiB: two 2 MiB bitmap units
REGION_PAGES = 2048
SIZE_2M = 2 << 20


class DirtyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.env = Env(iotlb_entries=16)
        self.io = self.env.iommu
        self.dev = self.env.mdev(1)
        self.region = self.env.region(1, REGION_PAGES * PAGE)
        self.domain = self.io.domain_alloc(1, "mdev")
        self.domain.dirty_capable = True  # what DOMAIN_ALLOC with dirty_tracking sets
        self.io.attach_device(1, self.domain.id, self.dev)
        self.areas: dict[int, int] = {}  # first page -> pages
        self.dirty: set[int] = set()
        self.on = False

    def teardown(self) -> None:
        self.env.bus.release_owner(1)
        self.env.close()

    def err(self, fn: Callable[[], object]) -> int | None:
        try:
            fn()
        except SiovError as e:
            return e.errno
        return None

    def mapped(self, page: int) -> bool:
        return any(s <= page < s + n for s, n in self.areas.items())

    @rule(page=st.integers(0, WINDOW_PAGES - 1), n=st.integers(1, 40), half=st.integers(0, 900))
    def map(self, page: int, n: int, half: int) -> None:
        n = min(n, WINDOW_PAGES - page)
        # an odd physical page: the leaves are 4 KiB, so D is per page as the model has it
        phys = self.region.base + (2 * half + 1) * PAGE
        overlap = any(s < page + n and page < s + m for s, m in self.areas.items())
        got = self.err(
            lambda: self.io.map(1, self.domain.id, WINDOW + page * PAGE, phys, n * PAGE, RW)
        )
        assert got == (errno.EEXIST if overlap else None)
        if got is None:
            self.areas[page] = n

    @precondition(lambda self: bool(self.areas))
    @rule(data=st.data(), collect=st.booleans())
    def unmap(self, data: st.DataObject, collect: bool) -> None:
        start = data.draw(st.sampled_from(sorted(self.areas)))
        n = self.areas.pop(start)
        pages = set(range(start, start + n))
        if collect:
            job = UnmapDirtyJob(self.io.facade, self.domain, WINDOW + start * PAGE, n * PAGE, PAGE)
            run_to_end(job)
            got = {start + i for i in range(n) if job.read.bitmap[i >> 3] >> (i & 7) & 1}
            assert got == self.dirty & pages
        else:
            self.io.unmap(1, self.domain.id, WINDOW + start * PAGE, n * PAGE)
        self.dirty -= pages

    @rule(page=st.integers(0, WINDOW_PAGES - 1), n=st.integers(1, 6))
    def write(self, page: int, n: int) -> None:
        n = min(n, WINDOW_PAGES - page)
        runs, fault = self.io.translate(self.dev, 0, WINDOW + page * PAGE, n * PAGE, True)
        done = sum(r[2] for r in runs) // PAGE
        ok = 0
        while ok < n and self.mapped(page + ok):
            ok += 1
        assert done == ok and (fault is None) == (ok == n)
        if self.on:
            self.dirty |= set(range(page, page + ok))

    @rule(enable=st.booleans())
    def set_tracking(self, enable: bool) -> None:
        run_to_end(SetTrackingJob(self.io.facade, self.domain, enable))
        if enable and not self.on:
            self.dirty.clear()
        self.on = enable
        assert self.domain.dirty_on is enable

    @rule(no_clear=st.booleans(), big=st.booleans())
    def read(self, no_clear: bool, big: bool) -> None:
        page_size = SIZE_2M if big else PAGE
        size = WINDOW_PAGES * PAGE

        def job() -> DirtyReadJob:
            return DirtyReadJob(self.io.facade, self.domain, WINDOW, size, page_size, no_clear)

        if not self.on:
            assert self.err(job) == errno.EINVAL
            return
        j = job()
        run_to_end(j)
        unit = page_size // PAGE
        got = {i for i in range(size // page_size) if j.bitmap[i >> 3] >> (i & 7) & 1}
        assert got == {p // unit for p in self.dirty}
        if not no_clear:
            self.dirty.clear()

    @rule(scope=st.sampled_from(["global", "domain", "range"]))
    def invalidate(self, scope: str) -> None:
        self.io.iotlb_invalidate(1, scope, self.domain.id, None, WINDOW, 9)

    @invariant()
    def d_bits_match(self) -> None:
        """The leaves' D bits are the model's dirty set, whatever the IOTLB holds."""
        pt = self.domain.pt
        assert pt is not None
        real = {
            (iova - WINDOW) // PAGE for iova, _ in pt.read_dirty(WINDOW, WINDOW_PAGES * PAGE, False)
        }
        assert real == self.dirty


DirtyMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDirtyStateMachine = DirtyMachine.TestCase

__all__ = ["TestDirtyStateMachine"]
