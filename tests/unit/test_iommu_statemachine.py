"""Random map / unmap / attach / detach / invalidate / translate against a plain model.

The model is a dict of pages per domain plus the attach state. In strict mode no translation
may ever be stale, nothing outside a mapping may translate, every errno matches the rule, and
every fault carries the right reason.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from siovd.model.errors import SiovError
from siovd.model.iommu import UNMAP_ALL
from siovd.model.iommu.faults import FR_FS_NOT_PRESENT, FR_PASID_ENTRY_NOT_PRESENT, FR_SM_WRITE
from tests.unit.iommu_env import PAGE, RO, RW, Env

WINDOW = 0x4000_0000  # 1 GiB-aligned: 2 MiB leaves happen when phys agrees
WINDOW_PAGES = 1024
REGION_PAGES = 2048
PASIDS = (5, 6)

pages = st.one_of(st.integers(0, WINDOW_PAGES - 1), st.sampled_from([0, 511, 512]))
counts = st.one_of(st.integers(1, 24), st.sampled_from([512, 513, 1024]))
phys_pages = st.one_of(st.integers(0, REGION_PAGES - 1), st.sampled_from([0, 512, 1024]))


@dataclass
class ModelDomain:
    id: int
    areas: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # iova→size,phys,w

    def page(self, iova: int) -> tuple[int, bool] | None:
        for start, (size, phys, writable) in self.areas.items():
            if start <= iova < start + size:
                return phys + (iova - start), writable
        return None

    def overlaps(self, iova: int, size: int) -> bool:
        return any(s < iova + size and iova < s + sz for s, (sz, _, _) in self.areas.items())


class IommuMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.env = Env(iotlb_entries=32)  # small: evictions happen all the time
        self.dev = self.env.mdev(1)
        self.region = self.env.region(1, REGION_PAGES * PAGE)
        self.io = self.env.iommu
        default = self.env.default_domain(self.dev)
        self.domains = [ModelDomain(default)] + [
            ModelDomain(self.io.domain_alloc(1, "mdev").id) for _ in range(2)
        ]
        self.rid = self.domains[0]
        self.pasids: dict[int, ModelDomain] = {}

    def teardown(self) -> None:
        self.env.bus.release_owner(1)
        self.env.close()

    def call(self, fn: Callable[..., object], *args: object) -> tuple[object, int | None]:
        """Run ``fn``; its result and None, or None and the errno it refused with."""
        try:
            return fn(*args), None
        except SiovError as e:
            return None, e.errno

    # -- mappings ----------------------------------------------------------------------------

    @rule(
        d=st.integers(0, 2),
        page=pages,
        n=counts,
        pphys=phys_pages,
        writable=st.booleans(),
        auto=st.booleans(),
    )
    def map(self, d: int, page: int, n: int, pphys: int, writable: bool, auto: bool) -> None:
        dom = self.domains[d]
        iova = None if auto else WINDOW + page * PAGE
        size = n * PAGE
        phys = self.region.base + pphys * PAGE
        got, err = self.call(self.io.map, 1, dom.id, iova, phys, size, RW if writable else RO)
        expected: int | None = None
        if iova is not None and dom.overlaps(iova, size):
            expected = errno.EEXIST  # the overlap is checked before the memory
        elif pphys + n > REGION_PAGES:
            expected = errno.EFAULT
        assert err == expected, (err, expected)
        if err is None:
            assert isinstance(got, int)
            if iova is None:
                assert got % (size & -size) == 0 and not dom.overlaps(got, size)
            dom.areas[got] = (size, phys, writable)

    @rule(d=st.integers(0, 2), page=pages, n=counts)
    def unmap(self, d: int, page: int, n: int) -> None:
        dom = self.domains[d]
        iova, size = WINDOW + page * PAGE, n * PAGE
        got, err = self.call(self.io.unmap, 1, dom.id, iova, size)
        inside = [s for s, (sz, _, _) in dom.areas.items() if iova <= s and s + sz <= iova + size]
        split = [
            s
            for s, (sz, _, _) in dom.areas.items()
            if s < iova + size and iova < s + sz and s not in inside
        ]
        if split or not inside:
            assert err == errno.ENOENT
            return
        assert err is None and got == sum(dom.areas[s][0] for s in inside)
        for s in inside:
            self.check_gone(dom, s, dom.areas.pop(s)[0])

    @precondition(lambda self: any(d.areas for d in self.domains))
    @rule(data=st.data())
    def unmap_area(self, data: st.DataObject) -> None:
        """Unmap exactly one existing mapping (random ranges mostly split or miss)."""
        dom = data.draw(st.sampled_from([d for d in self.domains if d.areas]))
        start = data.draw(st.sampled_from(sorted(dom.areas)))
        size = dom.areas.pop(start)[0]
        assert self.io.unmap(1, dom.id, start, size) == size
        self.check_gone(dom, start, size)

    def check_gone(self, dom: ModelDomain, start: int, size: int) -> None:
        """Right after an unmap, every requester reaching the domain faults there."""
        routes = [0] if self.rid is dom else []
        routes += [p for p, d in self.pasids.items() if d is dom]
        for pasid in routes:
            for iova in (start, start + size - PAGE):
                page = (iova - WINDOW) // PAGE
                if 0 <= page < WINDOW_PAGES:
                    self.translate(pasid, page, 1, 0, False)

    @rule(d=st.integers(0, 2))
    def unmap_all(self, d: int) -> None:
        dom = self.domains[d]
        assert self.io.unmap(1, dom.id, 0, UNMAP_ALL) == sum(a[0] for a in dom.areas.values())
        dom.areas.clear()

    # -- attach ------------------------------------------------------------------------------

    @rule(d=st.integers(1, 2))
    def attach_device(self, d: int) -> None:
        dom = self.domains[d]
        _, err = self.call(self.io.attach_device, 1, dom.id, self.dev)
        if self.rid is not self.domains[0]:
            assert err == errno.EBUSY
        else:
            assert err is None
            self.rid = dom

    @rule(d=st.integers(0, 2))
    def detach_device(self, d: int) -> None:
        dom = self.domains[d]
        _, err = self.call(self.io.detach_device, 1, dom.id, self.dev)
        if self.rid is not dom:
            assert err == errno.EINVAL
        else:
            assert err is None
            self.rid = self.domains[0]

    @rule(d=st.integers(0, 2), pasid=st.sampled_from(PASIDS))
    def attach_pasid(self, d: int, pasid: int) -> None:
        _, err = self.call(self.io.attach_pasid, 1, self.domains[d].id, self.dev, pasid)
        if pasid in self.pasids:
            assert err == errno.EBUSY
        else:
            assert err is None
            self.pasids[pasid] = self.domains[d]

    @rule(d=st.integers(0, 2), pasid=st.sampled_from(PASIDS))
    def replace_pasid(self, d: int, pasid: int) -> None:
        _, err = self.call(self.io.replace_pasid, 1, self.domains[d].id, self.dev, pasid)
        if pasid not in self.pasids:
            assert err == errno.EINVAL
        else:
            assert err is None
            self.pasids[pasid] = self.domains[d]

    @rule(pasid=st.sampled_from(PASIDS))
    def detach_pasid(self, pasid: int) -> None:
        self.io.detach_pasid(1, None, self.dev, pasid)
        self.pasids.pop(pasid, None)

    @rule(scope=st.sampled_from(["global", "domain", "range"]), d=st.integers(0, 2))
    def invalidate(self, scope: str, d: int) -> None:
        self.io.iotlb_invalidate(1, scope, self.domains[d].id, None, WINDOW, 9)

    # -- translation -------------------------------------------------------------------------

    @rule(
        pasid=st.sampled_from([0, -1, *PASIDS, 7]),
        page=pages,
        n=st.one_of(st.integers(1, 40), st.just(600)),
        off=st.sampled_from([0, 100]),
        write=st.booleans(),
    )
    def translate(self, pasid: int, page: int, n: int, off: int, write: bool) -> None:
        if pasid == -1:
            pasid = self.dev.default_pasid
        dom = self.rid if pasid in (0, self.dev.default_pasid) else self.pasids.get(pasid)
        iova = WINDOW + page * PAGE + off
        length = n * PAGE - off
        faults_before = len(self.env.faults)
        runs, fault = self.io.translate(self.dev, pasid, iova, length, write)
        # Expected per-page outcome up to the first fault.
        expected: list[tuple[int, int, bool]] = []
        want_fault: tuple[int, int] | None = None
        if dom is None:
            want_fault = (iova, FR_PASID_ENTRY_NOT_PRESENT)
        else:
            pos = iova
            while pos < iova + length:
                hit = dom.page(pos & ~(PAGE - 1))
                if hit is None:
                    want_fault = (pos, FR_FS_NOT_PRESENT)
                    break
                if write and not hit[1]:
                    want_fault = (pos, FR_SM_WRITE)
                    break
                n_here = min(PAGE - (pos & (PAGE - 1)), iova + length - pos)
                expected.append((pos, hit[0] + (pos & (PAGE - 1)), hit[1]))
                pos += n_here
        got: list[tuple[int, int, bool]] = []
        for run_iova, phys, run_len, prot, _size in runs:
            p = run_iova
            while p < run_iova + run_len:
                got.append((p, phys + (p - run_iova), bool(prot & 2)))
                p = (p & ~(PAGE - 1)) + PAGE
        assert got == expected
        # Runs are merged: neighbours are never physically contiguous with the same prot.
        for (i1, p1, l1, r1, s1), (i2, p2, _, r2, s2) in itertools.pairwise(runs):
            assert i1 + l1 == i2
            assert p1 + l1 != p2 or r1 != r2 or s1 != s2
            assert s1 == s2 == PAGE  # this machine maps 4 KiB pages only
        if want_fault is None:
            assert fault is None and len(self.env.faults) == faults_before
        else:
            assert fault is not None and (fault.iova, fault.reason) == want_fault
            # An ATS translation request: answered to the requester, no fault record.
            assert len(self.env.faults) == faults_before

    @precondition(lambda self: any(d.areas for d in self.domains))
    @rule(data=st.data(), write=st.booleans())
    def translate_mapped(self, data: st.DataObject, write: bool) -> None:
        """Translate inside (and a little past) a mapping that some requester can reach."""
        routes = [(0, self.rid), *list(self.pasids.items())]
        pasid, dom = data.draw(st.sampled_from(routes))
        if not dom.areas:
            return
        start = data.draw(st.sampled_from(sorted(dom.areas)))
        size = dom.areas[start][0]
        first = data.draw(st.integers(0, size // PAGE - 1))
        n = data.draw(st.integers(1, 8))
        page = (start - WINDOW) // PAGE + first
        if 0 <= page < WINDOW_PAGES:
            self.translate(pasid, page, n, 0, write)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def bookkeeping_matches(self) -> None:
        areas = sum(len(d.areas) for d in self.domains)
        assert self.region.map_count == areas
        for d in self.domains:
            real = self.io.domain(1, d.id)
            assert real.mapped_bytes == sum(a[0] for a in d.areas.values())
        assert len(self.io.iotlb) <= 32


IommuMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestIommuStateMachine = IommuMachine.TestCase

__all__ = ["TestIommuStateMachine"]
