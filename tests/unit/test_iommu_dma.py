"""The DMA path: PASID entry → IOTLB → walk, runs, faults, strict/lazy/user-managed flushing."""

from __future__ import annotations

import errno

from siovd.model.device import Device
from siovd.model.iommu.faults import (
    FR_FS_ACCESS,
    FR_FS_NOT_PRESENT,
    FR_PASID_ENTRY_NOT_PRESENT,
    FR_SM_WRITE,
)
from siovd.model.iommu.pagetable import PTE_D
from tests.helpers import raises_errno
from tests.unit.iommu_env import PAGE, RO, RW, Env, MiB, UserPageTable, env

__all__ = ["env"]

M2 = 2 * MiB


def setup(env: Env, size: int = 8 * MiB) -> tuple[Device, int, int]:
    """An mdev of owner 1, its default domain, and a region base of owner 1."""
    dev = env.mdev(1)
    return dev, env.default_domain(dev), env.region(1, size).base


def test_contiguous_pages_come_back_as_one_view(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base + 0x3000, 4 * PAGE, RW)
    env.iommu.map(1, dom, 0x10_4000, base + 0x1000, PAGE, RW)  # phys goes backwards
    space = env.iommu.dma_space(dev, dev.default_pasid)
    views, fault = space.runs(0x10_0010, 5 * PAGE - 0x20, False)
    assert fault is None
    assert [len(v) for v in views] == [4 * PAGE - 0x10, PAGE - 0x10]
    views[0][:3] = b"abc"  # the views are the client's memory itself
    assert env.memory.view(base + 0x3010, 3).tobytes() == b"abc"


def test_a_2mib_page_is_one_lookup(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x4000_0000, base, M2, RW)
    space = env.iommu.dma_space(dev, dev.default_pasid)
    before = env.iommu.iotlb.stats()
    views, fault = space.runs(0x4000_0000, M2, True)
    assert fault is None and [len(v) for v in views] == [M2]
    after = env.iommu.iotlb.stats()
    assert after["iotlb_misses"] - before["iotlb_misses"] == 1
    assert after["iotlb_hits"] == before["iotlb_hits"]
    space.runs(0x4000_0000 + 12345, MiB, True)
    assert env.iommu.iotlb.stats()["iotlb_hits"] == after["iotlb_hits"] + 1


def test_faults_carry_the_vtd_reason_and_reach_the_owner(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, 2 * PAGE, RW)
    env.iommu.map(1, dom, 0x20_0000, base, PAGE, RO)
    space = env.iommu.dma_space(dev, dev.default_pasid)
    views, fault = space.runs(0x10_0000, 3 * PAGE, False)
    assert sum(map(len, views)) == 2 * PAGE  # the translated prefix
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT
    assert fault.iova == 0x10_2000 and not fault.write and fault.pasid == dev.default_pasid
    owner, record = env.faults[-1]
    assert owner == 1
    assert (record.device, record.iova, record.reason, record.domain) == (
        dev.uuid,
        0x10_2000,
        FR_FS_NOT_PRESENT,
        dom,
    )
    _, fault = space.runs(0x20_0000, 8, True)
    assert fault is not None and fault.reason == FR_SM_WRITE and fault.write
    assert env.iommu.stats()["faults"] == 2


def test_pasid_without_entry_and_blocked_domain(env: Env) -> None:
    dev, _, _ = setup(env)
    views, fault = env.iommu.dma_space(dev, 42).runs(0x1000, 8, False)
    assert views == [] and fault is not None and fault.reason == FR_PASID_ENTRY_NOT_PRESENT
    assert env.faults[-1][1].domain is None and env.faults[-1][0] == 1
    blocked = env.iommu.domain_alloc(1, "mdev", "blocked").id
    env.iommu.attach_pasid(1, blocked, dev, 42)
    _, fault = env.iommu.dma_space(dev, 42).runs(0x1000, 8, False)
    assert fault is not None and fault.reason == FR_PASID_ENTRY_NOT_PRESENT
    assert env.faults[-1][1].domain == blocked
    _, fault = env.iommu.dma_space(dev, 1 << 20).runs(0, 8, False)  # beyond any width
    assert fault is not None and fault.reason == FR_PASID_ENTRY_NOT_PRESENT


def test_identity_domain_translates_own_memory_only(env: Env) -> None:
    dev, _, base = setup(env, 2 * MiB)
    theirs = env.region(2, 2 * MiB)
    ro = env.region(1, 2 * MiB, access="ro")
    ident = env.iommu.domain_alloc(1, "mdev", "identity").id
    env.iommu.attach_device(1, ident, dev)
    space = env.iommu.dma_space(dev, dev.default_pasid)
    assert env.iommu.dma_write(dev, 0, base + 8, b"xyz") == (3, None)
    assert env.memory.view(base + 8, 3).tobytes() == b"xyz"
    _, fault = space.runs(theirs.base, 8, False)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT
    _, fault = space.runs(0, 8, False)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT
    views, fault = space.runs(ro.base, 8, False)
    assert fault is None and views[0].readonly
    _, fault = space.runs(ro.base, 8, True)
    assert fault is not None and fault.reason == FR_SM_WRITE


def test_translate_returns_runs_with_prot(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, 2 * PAGE, RW)
    env.iommu.map(1, dom, 0x10_2000, base + 2 * PAGE, PAGE, RO)
    runs, fault = env.iommu.translate(dev, 0, 0x10_0000, 4 * PAGE, False)
    assert runs == [
        (0x10_0000, base, 2 * PAGE, RW, PAGE),
        (0x10_2000, base + 2 * PAGE, PAGE, RO, PAGE),  # same contiguity, other prot: a new run
    ]
    assert fault is not None and fault.iova == 0x10_3000
    assert env.iommu.translate_failures == 1 and env.iommu.faults == 0  # ATS: no fault record


def test_dma_write_stops_at_the_fault(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, PAGE, RW)
    done, fault = env.iommu.dma_write(dev, 0, 0x10_0FFC, b"12345678")
    assert done == 4 and fault is not None and fault.iova == 0x10_1000
    assert env.memory.view(base + 0xFFC, 4).tobytes() == b"1234"
    data, fault = env.iommu.dma_read(dev, 0, 0x10_0FFC, 8)
    assert data == b"1234" and fault is not None


def test_strict_unmap_leaves_nothing_stale(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, 4 * PAGE, RW)
    space = env.iommu.dma_space(dev, dev.default_pasid)
    space.runs(0x10_0000, 4 * PAGE, False)  # fill the IOTLB
    assert env.iommu.iotlb.entries() == 4
    env.iommu.unmap(1, dom, 0x10_0000, 4 * PAGE)
    assert env.iommu.iotlb.entries() == 0
    _, fault = space.runs(0x10_0000, 8, False)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT


def test_lazy_unmap_has_a_stale_window_until_the_flush() -> None:
    env = Env(lazy_flush_threshold=3)
    try:
        dev, _, base = setup(env)
        lazy = env.iommu.domain_alloc(1, "mdev", lazy=True).id
        env.iommu.attach_device(1, lazy, dev)
        region = env.memory.region_of(base)
        assert region is not None
        space = env.iommu.dma_space(dev, dev.default_pasid)
        env.iommu.map(1, lazy, 0x10_0000, base, PAGE, RW)
        space.runs(0x10_0000, 8, False)
        env.iommu.unmap(1, lazy, 0x10_0000, PAGE)
        assert env.iommu.iova_to_phys(1, lazy, 0x10_0000) is None  # the table is clear...
        views, fault = space.runs(0x10_0000, 8, False)  # ...but the IOTLB still translates
        assert fault is None and len(views) == 1
        with raises_errno(errno.EBUSY):
            env.memory.remove_region(region.id, 1)  # the memory waits for the flush
        assert env.iommu.stats()["lazy_pending"] == 1
        assert env.iommu.flush_lazy() == 1
        _, fault = space.runs(0x10_0000, 8, False)
        assert fault is not None and fault.reason == FR_FS_NOT_PRESENT
        assert env.iommu.stats()["lazy_flushes"] == 1
        # Passing the threshold flushes by itself.
        for i in range(4):
            env.iommu.map(1, lazy, 0x20_0000 + i * PAGE, base, PAGE, RW)
        for i in range(4):
            env.iommu.unmap(1, lazy, 0x20_0000 + i * PAGE, PAGE)
        stats = env.iommu.stats()
        assert stats["lazy_flushes"] == 2 and stats["lazy_pending"] == 0
        assert stats["lazy_flushed_areas"] == 5
        env.memory.remove_region(region.id, 1)
    finally:
        env.close()


def test_lazy_map_over_a_queued_iova_flushes_first(env: Env) -> None:
    dev, _, base = setup(env)
    lazy = env.iommu.domain_alloc(1, "mdev", lazy=True).id
    env.iommu.attach_device(1, lazy, dev)
    env.memory.view(base + PAGE, 4)[:] = b"new!"
    env.iommu.map(1, lazy, 0x10_0000, base, PAGE, RW)
    assert env.iommu.dma_read(dev, 0, 0x10_0000, 4)[1] is None
    env.iommu.unmap(1, lazy, 0x10_0000, PAGE)
    # Auto-IOVA never hands out a queued range.
    assert env.iommu.map(1, lazy, None, base, PAGE, RW) != 0x10_0000
    env.iommu.map(1, lazy, 0x10_0000, base + PAGE, PAGE, RW)
    assert env.iommu.dma_read(dev, 0, 0x10_0000, 4) == (b"new!", None)


def test_user_managed_table_is_stale_until_the_client_invalidates(env: Env) -> None:
    dev = env.mdev(1)
    tables = env.region(1, 2 * MiB)
    data = env.region(1, 4 * MiB)
    upt = UserPageTable(env.memory, tables)
    d = env.iommu.domain_alloc(1, "mdev", user_managed=True, pt_root_phys=upt.root).id
    env.iommu.attach_device(1, d, dev)
    data.buf[0:4] = b"old."
    data.buf[M2 : M2 + 4] = b"new."
    upt.map(0x10_0000, data.base)
    assert env.iommu.dma_read(dev, 0, 0x10_0000, 4) == (b"old.", None)
    upt.map(0x10_0000, data.base + M2)  # the client rewrites its entry...
    assert env.iommu.dma_read(dev, 0, 0x10_0000, 4) == (b"old.", None)  # ...stale, as on HW
    assert env.iommu.iotlb_invalidate(1, "range", d, dev.default_pasid, 0x10_0000, 0) == 1
    assert env.iommu.dma_read(dev, 0, 0x10_0000, 4) == (b"new.", None)
    upt.unmap(0x10_0000)
    assert env.iommu.dma_read(dev, 0, 0x10_0000, 4)[1] is None  # still cached
    env.iommu.iotlb_invalidate(1, "domain", d)
    _, fault = env.iommu.dma_read(dev, 0, 0x10_0000, 4)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT
    # The walker set A and D in the client's own entries.
    upt.map(0x20_0000, data.base)
    env.iommu.dma_write(dev, 0, 0x20_0000, b"w")
    assert upt.entry(0x20_0000) & PTE_D
    # A leaf into another client's memory does not translate.
    theirs = env.region(2, 2 * MiB)
    upt.map(0x30_0000, theirs.base)
    _, fault = env.iommu.dma_read(dev, 0, 0x30_0000, 4)
    assert fault is not None and fault.reason == FR_FS_ACCESS
    with raises_errno(errno.EBUSY):
        env.memory.remove_region(tables.id, 1)  # the root pins its region


def test_dirty_bitmap_read_and_clear(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, 16 * PAGE, RW)
    for page in (1, 5, 9):
        env.iommu.dma_write(dev, 0, 0x10_0000 + page * PAGE + 7, b"d")
    env.iommu.dma_read(dev, 0, 0x10_0000 + 3 * PAGE, 8)  # a read does not dirty
    want = bytes([(1 << 1) | (1 << 5), 1 << 1])
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, 16 * PAGE, clear=False) == want
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, 16 * PAGE, clear=True) == want
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, 16 * PAGE, clear=False) == bytes(2)
    # The clear invalidated the IOTLB, so the next write sets D again.
    env.iommu.dma_write(dev, 0, 0x10_0000 + PAGE, b"d")
    assert env.iommu.dirty_bitmap(1, dom, 0x10_0000, 16 * PAGE, clear=False) == bytes([2, 0])
    # An unaligned window, and a dirty 2 MiB page marks every page of it in the window.
    env.iommu.map(1, dom, 0x4000_0000, base + M2, M2, RW)
    env.iommu.dma_write(dev, 0, 0x4000_0000, b"x")
    bitmap = env.iommu.dirty_bitmap(1, dom, 0x4000_0000 - 4 * PAGE, 12 * PAGE, clear=False)
    assert bitmap == bytes([0xF0, 0x0F])
    with raises_errno(errno.EINVAL):
        env.iommu.dirty_bitmap(1, dom, 0x10_0001, PAGE, clear=False)
    with raises_errno(errno.EINVAL):
        env.iommu.dirty_bitmap(1, dom, 0x10_0000, 0, clear=False)
    with raises_errno(errno.EINVAL):
        env.iommu.dirty_bitmap(1, dom, 0, 1 << 46, clear=False)  # bitmap too large


def test_zero_length_dma_translates_nothing_and_does_not_fault(env: Env) -> None:
    dev, _, _ = setup(env)
    assert env.iommu.dma_space(dev, 99).runs(0x1000, 0, True) == ([], None)
    assert env.faults == []


def test_a_cleared_d_bit_stays_clear_behind_a_cached_entry(env: Env) -> None:
    """Why the dirty read invalidates: a cached writable+dirty entry lets writes through
    without a walk, so the D bit cleared in memory is not set again."""
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, PAGE, RW)
    env.iommu.dma_write(dev, 0, 0x10_0000, b"1")
    pt = env.iommu.domain(1, dom).pt
    assert pt is not None
    assert pt.read_dirty(0x10_0000, PAGE, clear=True) == [(0x10_0000, PAGE)]  # no flush
    env.iommu.dma_write(dev, 0, 0x10_0000, b"2")
    assert pt.read_dirty(0x10_0000, PAGE, clear=False) == []


def test_pasid_attach_translates_through_its_domain(env: Env) -> None:
    dev, _, base = setup(env)
    d1 = env.iommu.domain_alloc(1, "mdev").id
    d2 = env.iommu.domain_alloc(1, "mdev").id
    env.memory.view(base, 2)[:] = b"d1"
    env.memory.view(base + PAGE, 2)[:] = b"d2"
    env.iommu.map(1, d1, 0x5000, base, PAGE, RW)
    env.iommu.map(1, d2, 0x5000, base + PAGE, PAGE, RW)
    env.iommu.attach_pasid(1, d1, dev, 9)
    assert env.iommu.dma_read(dev, 9, 0x5000, 2) == (b"d1", None)
    env.iommu.replace_pasid(1, d2, dev, 9)
    assert env.iommu.dma_read(dev, 9, 0x5000, 2) == (b"d2", None)  # nothing stale
    env.iommu.detach_pasid(1, None, dev, 9)
    _, fault = env.iommu.dma_read(dev, 9, 0x5000, 2)
    assert fault is not None and fault.reason == FR_PASID_ENTRY_NOT_PRESENT
    # The default PASID still goes through the (untouched) default domain.
    _, fault = env.iommu.dma_read(dev, dev.default_pasid, 0x5000, 2)
    assert fault is not None and fault.reason == FR_FS_NOT_PRESENT


def test_five_level_domain(env: Env) -> None:
    dev, _, base = setup(env)
    d = env.iommu.domain_alloc(1, "mdev", levels=5).id
    env.iommu.attach_device(1, d, dev)
    env.iommu.map(1, d, 1 << 52, base, PAGE, RW)
    assert env.iommu.dma_write(dev, 0, (1 << 52) + 4, b"far") == (3, None)
    assert env.memory.view(base + 4, 3).tobytes() == b"far"


def test_iotlb_invalidate_api(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, 8 * PAGE, RW)
    env.iommu.dma_read(dev, 0, 0x10_0000, 8 * PAGE)
    inv = env.iommu.iotlb_invalidate
    with raises_errno(errno.EINVAL):
        inv(1, "page")
    with raises_errno(errno.EINVAL):
        inv(1, "domain")  # no domain
    with raises_errno(errno.ENOENT):
        inv(2, "domain", dom)  # not theirs
    with raises_errno(errno.EINVAL):
        inv(1, "range", dom, None, 0x10_1000, 1)  # not aligned to 2 pages
    with raises_errno(errno.EINVAL):
        inv(1, "range", dom, None, 0, 19)  # beyond VT-d's MAMV
    with raises_errno(errno.EINVAL):
        inv(1, "pasid", dom)
    assert inv(1, "range", dom, None, 0x10_0000, 1) == 2
    assert inv(1, "pasid", dom, 12345) == 0
    assert inv(1, "pasid", dom, dev.default_pasid) == 6
    env.iommu.dma_read(dev, 0, 0x10_0000, PAGE)
    assert inv(2, "global") == 0  # another owner's global flush leaves ours alone
    assert env.iommu.iotlb.entries() == 1
    assert inv(1, "global") == 1
    assert inv(None, "global") == 0


def test_stats(env: Env) -> None:
    dev, dom, base = setup(env)
    env.iommu.map(1, dom, 0x10_0000, base, 4 * PAGE, RW)
    env.iommu.dma_read(dev, 0, 0x10_0000, 4 * PAGE)
    env.iommu.dma_read(dev, 0, 0x10_0000, PAGE)
    s = env.iommu.stats()
    assert s["iotlb_misses"] == 4 and s["iotlb_hits"] == 1
    assert s["mapped_bytes"] == 4 * PAGE and s["domains"] == 1 and s["groups"] == 1
    assert s["iotlb_capacity"] == 8192 and s["iotlb_size"] == 4
    assert s["faults"] == 0 and s["page_table_pages"] == 4
