"""Nested translation against a plain model (model/iommu/nested.py): random stage-2 maps and
unmaps of guest-physical pages (read-only or writable), stage-1 leaf edits (each followed by its
HWPT_INVALIDATE, as a correct guest driver does), IOTLB invalidations, and translations that
must always equal the composition of the two stages: a stage-2 change needs no invalidation by
anyone, and no translation is ever stale."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from siovd.model.iommu.faults import FR_FS_NOT_PRESENT, FR_SM_WRITE
from siovd.model.iommu.nested import alloc_nested, invalidate
from tests.unit.iommu_env import PAGE, RO, RW, Env

IOVA = 0x4000_0000  # PML4[0] -> PDPT[1] -> PD[0] -> PT[0..63]
ROOT, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
TABLE_PAGES = 8  # guest-physical 0..0x8000, always mapped by stage 2
DATA_GPA = 0x10_0000  # guest-physical data pages: DATA_GPA + j * PAGE
SLOTS = 4  # IOVA pages with a stage-1 leaf slot (few: rules collide often)
DATA = 4  # data pages
PHYS_DATA = 64  # physical page (in the region) of data page 0


class NestedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.env = Env(iotlb_entries=8)
        self.io = self.env.iommu
        self.region = self.env.region(1, 128 * PAGE)
        self.parent = self.io.domain_alloc(1, "mdev")
        self.parent.nest_parent = True
        # tables: guest-physical g is physical region page 1 + g (not 2 MiB-aligned: 4 KiB)
        self.io.map(1, self.parent.id, 0, self.region.base + PAGE, TABLE_PAGES * PAGE, RW)
        self.put(ROOT, 0, PDPT | 7)
        self.put(PDPT, 1, PD | 7)
        self.put(PD, 0, PT | 7)
        self.nested = alloc_nested(self.io.facade, 1, self.parent.id, ROOT, 48, 0)
        self.dev = self.env.mdev(1)
        self.io.attach_device(1, self.nested.id, self.dev)
        self.s1: dict[int, int] = {}  # slot -> data page
        self.s2: dict[int, bool] = {}  # data page -> writable

    def put(self, gpa: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.region.buf, PAGE + gpa + 8 * index, value)

    def teardown(self) -> None:
        self.env.bus.release_owner(1)
        self.env.close()

    @rule(j=st.integers(0, DATA - 1), writable=st.booleans())
    def s2_map(self, j: int, writable: bool) -> None:
        if j in self.s2:
            return
        phys = self.region.base + (PHYS_DATA + j) * PAGE
        self.io.map(1, self.parent.id, DATA_GPA + j * PAGE, phys, PAGE, RW if writable else RO)
        self.s2[j] = writable

    @rule(j=st.integers(0, DATA - 1))
    def s2_unmap(self, j: int) -> None:
        if self.s2.pop(j, None) is not None:
            assert self.io.unmap(1, self.parent.id, DATA_GPA + j * PAGE, PAGE) == PAGE
            # right after the unmap nothing that went through that stage-2 page translates
            for slot in range(SLOTS):
                self.translate(slot, 1, False)

    @rule(slot=st.integers(0, SLOTS - 1), j=st.one_of(st.none(), st.integers(0, DATA - 1)))
    def s1_set(self, slot: int, j: int | None) -> None:
        self.put(PT, slot, 0 if j is None else (DATA_GPA + j * PAGE) | 7)
        assert invalidate(self.io.facade, self.nested, [(IOVA + slot * PAGE, 1, 1)]) == 1
        if j is None:
            self.s1.pop(slot, None)
        else:
            self.s1[slot] = j
        self.translate(slot, 1, False)  # cached now: a later stage-2 change must drop it

    @rule(scope=st.sampled_from(["global", "domain"]))
    def flush(self, scope: str) -> None:
        self.io.iotlb_invalidate(1, scope, self.nested.id, None, 0, 0)

    @rule(slot=st.integers(0, SLOTS - 1), n=st.integers(1, 3), write=st.booleans())
    def translate(self, slot: int, n: int, write: bool) -> None:
        n = min(n, SLOTS - slot)
        runs, fault = self.io.translate(self.dev, 0, IOVA + slot * PAGE, n * PAGE, write)
        got = []
        for iova, phys, length, _prot, _size in runs:
            got += [(iova + k, phys + k) for k in range(0, length, PAGE)]
        want = []
        want_fault = None
        for s in range(slot, slot + n):
            j = self.s1.get(s)
            if j is None or j not in self.s2:
                want_fault = FR_FS_NOT_PRESENT  # stage 1 or stage 2 not present
                break
            if write and not self.s2[j]:
                want_fault = FR_SM_WRITE
                break
            want.append((IOVA + s * PAGE, self.region.base + (PHYS_DATA + j) * PAGE))
        assert got == want
        assert (fault.reason if fault is not None else None) == want_fault

    @invariant()
    def cache_bounded(self) -> None:
        assert len(self.io.iotlb) <= 8


NestedMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestNestedStateMachine = NestedMachine.TestCase

__all__ = ["TestNestedStateMachine"]
