"""The physical address space and the page-table pool."""

from __future__ import annotations

import errno
import mmap

from siovd.model.memory import (
    FIRST_BASE,
    PAGE_SIZE,
    REGION_ALIGN,
    PageTablePool,
    PhysicalMemory,
)
from siovd.model.owner import HOST
from tests.helpers import raises_errno
from tests.unit.iommu_env import MiB


def anon(size: int) -> memoryview:
    return memoryview(mmap.mmap(-1, size))


def test_placement_is_2mib_aligned_and_skips_the_first_2mib() -> None:
    mem = PhysicalMemory()
    a = mem.add_region(anon(4096), 1)
    b = mem.add_region(anon(3 * MiB), 1)
    c = mem.add_region(anon(8192), 2)
    assert a.base == FIRST_BASE == 2 * MiB
    assert b.base == 4 * MiB  # a's 4 KiB still takes its 2 MiB slot
    assert c.base == 8 * MiB  # b ends at 7 MiB, next aligned base is 8 MiB
    assert len({a.id, b.id, c.id}) == 3
    assert mem.region_of(0) is None
    assert mem.region_of(FIRST_BASE - 1) is None
    for r in (a, b, c):
        assert r.base % REGION_ALIGN == 0
        assert mem.region_of(r.base) is r
        assert mem.region_of(r.end - 1) is r
    assert mem.region_of(a.end) is None  # the gap after a


def test_removed_space_is_reused_first_fit() -> None:
    mem = PhysicalMemory()
    a = mem.add_region(anon(2 * MiB), 1)
    b = mem.add_region(anon(2 * MiB), 1)
    mem.remove_region(a.id, 1)
    c = mem.add_region(anon(MiB), 1)
    assert c.base == a.base
    d = mem.add_region(anon(4 * MiB), 1)  # does not fit in any gap
    assert d.base == b.end
    assert not a.alive


def test_add_region_rejects_bad_buffers() -> None:
    mem = PhysicalMemory()
    with raises_errno(errno.EINVAL):
        mem.add_region(memoryview(bytearray(100)), 1)
    with raises_errno(errno.EINVAL):
        mem.add_region(memoryview(bytearray(0)), 1)
    with raises_errno(errno.EINVAL):
        mem.add_region(anon(4096).toreadonly(), 1, "rw")
    with raises_errno(errno.EINVAL):
        mem.add_region(anon(4096), 1, "wx")
    ro = mem.add_region(anon(4096).toreadonly(), 1, "ro")
    assert not ro.writable


def test_remove_region_errnos() -> None:
    mem = PhysicalMemory()
    r = mem.add_region(anon(4096), 1)
    # Unknown id and another owner's region answer the same, so ids cannot be probed.
    with raises_errno(errno.ENOENT):
        mem.remove_region(r.id + 100, 1)
    with raises_errno(errno.ENOENT):
        mem.remove_region(r.id, 2)
    r.map_count = 1  # as the IOMMU holds it while mapped
    with raises_errno(errno.EBUSY):
        mem.remove_region(r.id, 1)
    r.map_count = 0
    mem.remove_region(r.id, 1)
    with raises_errno(errno.ENOENT):
        mem.remove_region(r.id, 1)


def test_view_is_contiguous_and_faults_across_a_region_end() -> None:
    mem = PhysicalMemory()
    buf = mmap.mmap(-1, 2 * MiB)
    a = mem.add_region(memoryview(buf), 1)
    b = mem.add_region(anon(2 * MiB), 1)
    assert b.base == a.end  # back to back
    v = mem.view(a.base + 10, 5)
    v[:] = b"abcde"
    assert buf[10:15] == b"abcde"
    assert len(mem.view(a.end - 4096, 4096)) == 4096
    with raises_errno(errno.EFAULT):
        mem.view(a.end - 4096, 4097)  # adjacent, but another mapping
    with raises_errno(errno.EFAULT):
        mem.view(0, 1)
    with raises_errno(errno.EFAULT):
        mem.view(b.end + REGION_ALIGN, 1)


def test_read_only_region_gives_read_only_views() -> None:
    mem = PhysicalMemory()
    r = mem.add_region(anon(4096).toreadonly(), 1, "ro")
    assert mem.view(r.base, 16).readonly
    with raises_errno(errno.EFAULT):
        mem.write_u64(r.base, 1)


def test_owns_spans_adjacent_regions_of_one_owner_only() -> None:
    mem = PhysicalMemory()
    a = mem.add_region(anon(2 * MiB), 1)
    b = mem.add_region(anon(2 * MiB), 1)
    c = mem.add_region(anon(2 * MiB), 2)
    assert mem.owns(1, a.base, 4 * MiB)
    assert mem.regions_in(1, a.base + MiB, 2 * MiB) == [a, b]
    assert not mem.owns(1, b.base, 4 * MiB)  # runs into c, owner 2
    assert mem.owns(2, c.base, 2 * MiB)
    assert not mem.owns(2, c.base, 2 * MiB + 1)
    assert not mem.owns(1, 0, 4096)
    assert not mem.owns(1, a.base, 0)


def test_regions_listing_and_release_owner() -> None:
    mem = PhysicalMemory()
    a = mem.add_region(anon(4096), 1)
    b = mem.add_region(anon(4096), 2)
    c = mem.add_region(anon(4096), 1)
    assert mem.regions(1) == [a, c]
    assert mem.regions(None) == [a, b, c]
    c.map_count = 1
    assert mem.release_owner(1) == [a.id]  # a mapped region stays
    c.map_count = 0
    assert mem.release_owner(1) == [c.id]
    assert mem.regions(None) == [b]


def test_u64_access() -> None:
    mem = PhysicalMemory()
    buf = mmap.mmap(-1, 4096)
    r = mem.add_region(memoryview(buf), 1)
    mem.write_u64(r.base + 8, 0x1122334455667788)
    assert buf[8:16] == bytes.fromhex("8877665544332211")  # little-endian, like x86
    assert mem.read_u64(r.base + 8) == 0x1122334455667788
    with raises_errno(errno.EFAULT):
        mem.read_u64(r.base + 4)
    with raises_errno(errno.EFAULT):
        mem.read_u64(0)


def test_pool_pages_are_zeroed_daemon_memory_and_reused() -> None:
    mem = PhysicalMemory()
    pool = PageTablePool(mem)
    p = pool.alloc()
    region = mem.region_of(p)
    assert region is not None and region.owner == HOST
    assert p % PAGE_SIZE == 0
    mem.write_u64(p + 64, 0xDEAD)
    pool.free(p)
    q = pool.alloc()
    assert q == p  # lowest chunk first, page reused
    assert mem.view(q, PAGE_SIZE).tobytes() == bytes(PAGE_SIZE)  # zeroed again
    assert pool.pages_in_use == 1


def test_pool_grows_by_chunks_and_gives_empty_chunks_back() -> None:
    mem = PhysicalMemory()
    pool = PageTablePool(mem)
    per_chunk = PageTablePool.CHUNK // PAGE_SIZE
    pages = [pool.alloc() for _ in range(3 * per_chunk + 1)]
    assert len(set(pages)) == len(pages)
    assert pool.chunks == 4
    assert len(mem.regions(HOST)) == 4
    for p in pages:
        pool.free(p)
    assert pool.pages_in_use == 0
    assert pool.chunks == 1  # one spare chunk is kept
    assert len(mem.regions(HOST)) == 1
