"""The device TLB in front of the IOMMU: it answers what the IOTLB resolved and never outlives
it (strict unmap, attach changes, evictions), and is stale exactly where the IOTLB is (lazy)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from siovd.model.device import Device
from siovd.model.iommu import Iotlb
from siovd.model.iommu.devtlb import CAPACITY
from siovd.model.iommu.faults import FR_FS_NOT_PRESENT, FR_SM_WRITE
from tests.unit.iommu_env import PAGE, RO, RW, Env, MiB, env

__all__ = ["env"]

M2 = 2 * MiB


def setup(env: Env, size: int = 8 * MiB) -> tuple[Device, int, int]:
    dev = env.mdev(1)
    return dev, env.default_domain(dev), env.region(1, size).base


def test_a_hit_skips_the_iotlb_and_gives_the_same_memory(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x4000_0000, base, M2, RW)
    space = env.iommu.dma_space(dev, dev.default_pasid, devtlb=True)
    env.memory.view(base + 0x1234, 4)[:] = b"abcd"
    views, fault = space.runs(0x4000_1234, 4, False)  # miss: walk, IOTLB, device TLB fill
    assert fault is None and bytes(views[0]) == b"abcd"
    before = env.iommu.stats()
    views, fault = space.runs(0x4010_0000, 4096, False)  # same 2 MiB page: a device TLB hit
    assert fault is None and len(views) == 1 and len(views[0]) == 4096
    after = env.iommu.stats()
    assert after["iotlb_hits"] == before["iotlb_hits"]
    assert after["iotlb_misses"] == before["iotlb_misses"]
    assert after["devtlb_hits"] == before["devtlb_hits"] + 1
    views[0][:2] = b"zz"  # views are the memory itself
    assert env.memory.view(base + 0x10_0000, 2).tobytes() == b"zz"
    # a range past the page goes the long way and still comes back whole
    views, fault = space.runs(0x4000_0000, M2, False)
    assert fault is None and sum(map(len, views)) == M2


def test_strict_unmap_and_attach_changes_are_seen_at_once(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, PAGE, RW)
    space = env.iommu.dma_space(dev, dev.default_pasid, devtlb=True)
    for _ in range(2):
        assert space.runs(0x10_0000, 8, False)[1] is None
    env.iommu.unmap(1, dom, 0x10_0000, PAGE)
    _, fault = space.runs(0x10_0000, 8, False)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT
    # attach another domain: the old translation is gone with the PASID entry's flush
    env.iommu.map(1, dom, 0x10_0000, base, PAGE, RW)
    assert space.runs(0x10_0000, 8, False)[1] is None
    other = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.attach_device(1, other, dev)
    _, fault = space.runs(0x10_0000, 8, False)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT


def test_lazy_unmap_is_stale_until_the_flush_as_the_iotlb_is() -> None:
    env = Env(lazy_flush_threshold=100)
    try:
        dev, _, base = setup(env)
        lazy = env.iommu.domain_alloc(1, "mdev", lazy=True).id
        env.iommu.attach_device(1, lazy, dev)
        space = env.iommu.dma_space(dev, dev.default_pasid, devtlb=True)
        plain = env.iommu.dma_space(dev, dev.default_pasid)
        env.iommu.map(1, lazy, 0x10_0000, base, PAGE, RW)
        space.runs(0x10_0000, 8, False)
        env.iommu.unmap(1, lazy, 0x10_0000, PAGE)
        assert space.runs(0x10_0000, 8, False)[1] is None  # the stale window...
        assert plain.runs(0x10_0000, 8, False)[1] is None  # ...is the IOTLB's own
        env.iommu.flush_lazy()
        assert space.runs(0x10_0000, 8, False)[1] is not None
    finally:
        env.close()


def test_the_first_write_walks_and_sets_dirty(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, PAGE, RW)
    env.iommu.map(1, dom, 0x20_0000, base + PAGE, PAGE, RO)  # a read-only mapping
    space = env.iommu.dma_space(dev, dev.default_pasid, devtlb=True)
    space.runs(0x10_0000, 8, False)  # cached for reads
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, PAGE, False) == b"\x00"
    assert space.runs(0x10_0000, 8, True)[1] is None
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, PAGE, True) == b"\x01"
    space.runs(0x10_0000, 8, True)  # D was cleared (and flushed): it is set again
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, PAGE, False) == b"\x01"
    assert space.runs(0x20_0000, 8, False)[1] is None
    assert space.runs(0x20_0000, 8, False)[1] is None  # a hit, for reads only
    _, fault = space.runs(0x20_0000, 8, True)
    assert fault is not None and fault.reason == FR_SM_WRITE


def test_evictions_and_a_full_device_tlb() -> None:
    env = Env(iotlb=Iotlb(16))
    try:
        dev, dom, base = setup(env, 8 * MiB)
        env.iommu.map(1, dom, 0, base, 8 * MiB, RW)
        env.iommu.unmap(1, dom, 0, 8 * MiB)
        # an IOVA not congruent to the memory modulo 2 MiB: only 4 KiB pages
        env.iommu.map(1, dom, 0x100_1000, base, (CAPACITY + 8) * PAGE, RW)
        space = env.iommu.dma_space(dev, dev.default_pasid, devtlb=True)
        for page in range(CAPACITY + 8):
            views, fault = space.runs(0x100_1000 + page * PAGE, 16, True)
            assert fault is None
            views[0][:8] = page.to_bytes(8, "little")
        for page in range(CAPACITY + 8):
            assert env.memory.view(base + page * PAGE, 8).tobytes() == page.to_bytes(8, "little")
        assert env.iommu.stats()["iotlb_evictions"] > 0
    finally:
        env.close()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["map", "unmap", "read", "write", "invalidate"]),
            st.integers(0, 15),
            st.integers(0, 4095),
        ),
        max_size=60,
    )
)
@settings(max_examples=80, deadline=None)
def test_a_device_tlb_answers_like_the_iommu(ops: list[tuple[str, int, int]]) -> None:
    """Random maps, unmaps, flushes and accesses: with and without a device TLB the same
    accesses translate (strict mode: nothing is ever stale)."""
    env = Env(iotlb=Iotlb(32))
    try:
        dev, dom, base = setup(env, 2 * MiB)
        space = env.iommu.dma_space(dev, dev.default_pasid, devtlb=True)
        plain = env.iommu.dma_space(dev, dev.default_pasid)
        mapped: set[int] = set()
        for op, page, offset in ops:
            iova = 0x10_0000 + page * PAGE
            if op == "map" and page not in mapped:
                env.iommu.map(1, dom, iova, base + page * PAGE, PAGE, RW if page % 3 else RO)
                mapped.add(page)
            elif op == "unmap" and page in mapped:
                env.iommu.unmap(1, dom, iova, PAGE)
                mapped.discard(page)
            elif op == "invalidate":
                env.iommu.iotlb_invalidate(1, "domain", dom)
            elif op in ("read", "write"):
                write = op == "write"
                length = min(64, PAGE - offset)
                got, got_fault = space.runs(iova + offset, length, write)
                want, want_fault = plain.runs(iova + offset, length, write)
                assert (got_fault is None) == (want_fault is None)
                assert [bytes(v) for v in got] == [bytes(v) for v in want]
                if got_fault is not None and want_fault is not None:
                    assert got_fault.reason == want_fault.reason
                ok = page in mapped and (not write or page % 3)
                assert (got_fault is None) == bool(ok)
    finally:
        env.close()
