"""First-stage page tables in physical memory: format, page-size choice, walker, freeing."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import pytest

from siovd.model.iommu.faults import (
    FR_FS_ACCESS,
    FR_FS_NOT_PRESENT,
    FR_FS_RESERVED,
    FR_NON_CANONICAL,
    FR_SM_WRITE,
    FR_US_PRIVILEGE,
)
from siovd.model.iommu.pagetable import (
    ADDR_MASK,
    PROT_READ,
    PROT_WRITE,
    PTE_A,
    PTE_D,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    PTE_XD,
    SIZE_1G,
    SIZE_2M,
    SIZE_4K,
    PageTable,
    walk,
)
from siovd.model.memory import PageTablePool, PhysicalMemory, Region
from tests.unit.iommu_env import GiB, MiB, UserPageTable

RW = PROT_READ | PROT_WRITE


class World:
    def __init__(self) -> None:
        self.mem = PhysicalMemory()
        self.pool = PageTablePool(self.mem)
        self.maps: list[mmap.mmap] = []

    def region(self, size: int, owner: int = 1) -> Region:
        m = mmap.mmap(-1, size)  # anonymous: untouched pages cost nothing
        self.maps.append(m)
        return self.mem.add_region(memoryview(m), owner)

    def table(self, levels: int = 4) -> PageTable:
        return PageTable(self.mem, self.pool, levels)


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    for m in world.maps:
        try:
            m.close()
        except BufferError:
            pass


def entry_path(mem: PhysicalMemory, root: int, levels: int, iova: int) -> list[int]:
    """Entries from the root down to the leaf, read straight from physical memory."""
    out = []
    table = root
    for level in range(levels, 0, -1):
        entry = mem.read_u64(table + 8 * ((iova >> (12 + 9 * (level - 1))) & 511))
        out.append(entry)
        if not entry & PTE_P or entry & PTE_PS:
            break
        table = entry & ADDR_MASK
    return out


def test_4k_map_writes_x86_entries_into_memory(w: World) -> None:
    r = w.region(4 * MiB)
    pt = w.table()
    pt.map(0x10000, r.base + 0x3000, 3 * SIZE_4K, RW)
    path = entry_path(w.mem, pt.root, 4, 0x11000)
    assert len(path) == 4
    for upper in path[:3]:
        assert upper & (PTE_P | PTE_RW | PTE_US) == PTE_P | PTE_RW | PTE_US
        assert not upper & PTE_PS
        region = w.mem.region_of(upper & ADDR_MASK)
        assert region is not None and region.owner == 0  # tables are daemon memory
    leaf = path[3]
    assert leaf & ADDR_MASK == r.base + 0x4000
    assert leaf & PTE_P and leaf & PTE_RW and leaf & PTE_US and leaf & PTE_XD
    assert not leaf & (PTE_A | PTE_D)
    ro = w.table()
    ro.map(0x10000, r.base, SIZE_4K, PROT_READ)
    assert not entry_path(w.mem, ro.root, 4, 0x10000)[3] & PTE_RW


def test_large_pages_are_ps_leaves_when_alignment_allows(w: World) -> None:
    r = w.region(3 * GiB)
    phys = (r.base + SIZE_1G - 1) & ~(SIZE_1G - 1)  # 1 GiB-aligned inside the region
    pt = w.table()
    pt.map(SIZE_1G, phys, SIZE_1G + SIZE_2M + SIZE_4K, RW)
    leaves = pt.leaves(0, 1 << 47)
    assert [(iova, size) for iova, size, _ in leaves] == [
        (SIZE_1G, SIZE_1G),
        (2 * SIZE_1G, SIZE_2M),
        (2 * SIZE_1G + SIZE_2M, SIZE_4K),
    ]
    one_g = entry_path(w.mem, pt.root, 4, SIZE_1G)
    assert len(one_g) == 2 and one_g[-1] & PTE_PS  # leaf in the PDPT
    two_m = entry_path(w.mem, pt.root, 4, 2 * SIZE_1G)
    assert len(two_m) == 3 and two_m[-1] & PTE_PS  # leaf in the PD
    four_k = entry_path(w.mem, pt.root, 4, 2 * SIZE_1G + SIZE_2M)
    assert len(four_k) == 4
    assert pt.walk(SIZE_1G + 0x12345) == (phys, SIZE_1G, pt.walk(SIZE_1G)[2], 3)  # type: ignore[index]
    assert pt.walk(2 * SIZE_1G + 5)[:2] == (phys + SIZE_1G, SIZE_2M)  # type: ignore[index]


def test_page_size_follows_iova_or_phys_alignment(w: World) -> None:
    r = w.region(16 * MiB)
    base = r.base  # 2 MiB-aligned
    pt = w.table()
    # iova 2 MiB-aligned but phys only 4 KiB-aligned: 4 KiB pages only.
    pt.map(0x4000_0000, base + SIZE_4K, SIZE_2M, RW)
    assert {size for _, size, _ in pt.leaves(0x4000_0000, SIZE_2M)} == {SIZE_4K}
    assert len(pt.leaves(0x4000_0000, SIZE_2M)) == 512
    # Congruent iova and phys starting 4 KiB below a 2 MiB line: 4K, then 2M, then 4Ks
    # (Linux iommu_pgsize switches up as soon as alignment permits).
    start = 0x8000_0000 - SIZE_4K
    pt.map(start, base + 4 * SIZE_2M - SIZE_4K, 2 * SIZE_2M, RW)
    sizes = [size for _, size, _ in pt.leaves(start, 2 * SIZE_2M)]
    assert sizes[0] == SIZE_4K and sizes[1] == SIZE_2M
    assert sizes[2:] == [SIZE_4K] * 511


def test_walk_sets_accessed_and_dirty_like_hardware(w: World) -> None:
    r = w.region(4 * MiB)
    pt = w.table()
    pt.map(0x2000, r.base, SIZE_4K, RW)
    assert pt.walk(0x2000, write=False, set_ad=False)[0] == r.base  # type: ignore[index]
    assert not entry_path(w.mem, pt.root, 4, 0x2000)[3] & PTE_A
    pt.walk(0x2000, write=False)
    path = entry_path(w.mem, pt.root, 4, 0x2000)
    assert all(e & PTE_A for e in path)
    assert not path[3] & PTE_D
    pt.walk(0x2000, write=True)
    assert entry_path(w.mem, pt.root, 4, 0x2000)[3] & PTE_D
    assert pt.read_dirty(0, SIZE_2M, clear=True) == [(0x2000, SIZE_4K)]
    assert pt.read_dirty(0, SIZE_2M, clear=False) == []


def test_walk_faults(w: World) -> None:
    r = w.region(4 * MiB)
    pt = w.table()
    pt.map(0x0, r.base, SIZE_4K, PROT_READ)
    pt.map(SIZE_2M, r.base + SIZE_2M, SIZE_2M, RW)
    assert pt.walk(0x1000) == FR_FS_NOT_PRESENT
    assert pt.walk(0x0, write=True) == FR_SM_WRITE
    assert isinstance(pt.walk(0x0, write=False), tuple)
    assert pt.walk(1 << 47) == FR_NON_CANONICAL  # bit 47 set, bits 63:48 clear
    assert pt.walk(0xFFFF_8000_0000_0000) == FR_FS_NOT_PRESENT  # canonical upper half
    # A reserved bit (20:13) in a 2 MiB leaf.
    slot = _leaf_slot(w.mem, pt, SIZE_2M, level=2)
    w.mem.write_u64(slot, w.mem.read_u64(slot) | (1 << 13))
    assert pt.walk(SIZE_2M) == FR_FS_RESERVED
    # PS in a PML4 entry is reserved.
    slot4 = pt.root + 8 * 1
    w.mem.write_u64(slot4, r.base | PTE_P | PTE_RW | PTE_US | PTE_PS)
    assert pt.walk(1 << 39) == FR_FS_RESERVED


def _leaf_slot(mem: PhysicalMemory, pt: PageTable, iova: int, level: int) -> int:
    table = pt.root
    for lvl in range(pt.levels, level, -1):
        table = mem.read_u64(table + 8 * ((iova >> (12 + 9 * (lvl - 1))) & 511)) & ADDR_MASK
    return table + 8 * ((iova >> (12 + 9 * (level - 1))) & 511)


def test_user_table_walk_checks_privilege_and_ownership(w: World) -> None:
    mine = w.region(4 * MiB, owner=1)
    theirs = w.region(2 * MiB, owner=2)
    upt = UserPageTable(w.mem, mine)

    def locate(table: int) -> tuple[memoryview, int] | None:
        region = w.mem.region_of(table)
        if region is None or region.owner != 1:
            return None
        return region.q, (table - region.base) >> 3

    upt.map(0x1000, mine.base + SIZE_2M)
    assert walk(locate, upt.root, 4, 0x1000, True)[0] == mine.base + SIZE_2M  # type: ignore[index]
    upt.map(0x2000, mine.base + SIZE_2M, write=False)
    assert walk(locate, upt.root, 4, 0x2000, True) == FR_SM_WRITE
    w.mem.write_u64(upt.slot(0x3000), (mine.base + SIZE_2M) | PTE_P | PTE_RW)  # U/S clear
    assert walk(locate, upt.root, 4, 0x3000, False) == FR_US_PRIVILEGE
    # An upper-level entry pointing into another owner's memory: the walk may not read it.
    slot = upt.slot(1 << 30, level=3)
    w.mem.write_u64(slot, theirs.base | PTE_P | PTE_RW | PTE_US)
    assert walk(locate, upt.root, 4, 1 << 30, False) == FR_FS_ACCESS


def test_unmap_frees_tables_that_become_empty(w: World) -> None:
    r = w.region(8 * MiB)
    pt = w.table()
    assert pt.table_pages == 1 and w.pool.pages_in_use == 1
    pt.map(0x7FFF_0000_0000, r.base, 4 * SIZE_2M, RW)  # high: its own L3/L2
    pt.map(0x1000, r.base + SIZE_4K, SIZE_4K, RW)
    before = pt.table_pages
    assert before == 1 + 2 + 3  # root, L3+L2 for the high range, L3+L2+L1 for 0x1000
    assert pt.unmap(0x1000, SIZE_4K) == SIZE_4K
    assert pt.table_pages == before - 3
    assert pt.unmap(0x7FFF_0000_0000, 4 * SIZE_2M) == 4 * SIZE_2M
    assert pt.table_pages == 1
    assert w.pool.pages_in_use == 1
    assert pt.mapped_bytes == 0
    assert pt.walk(0x1000) == FR_FS_NOT_PRESENT


def test_unmap_skips_holes_and_refuses_to_split_a_large_page(w: World) -> None:
    r = w.region(8 * MiB)
    pt = w.table()
    pt.map(0, r.base, SIZE_2M, RW)
    pt.map(4 * SIZE_2M, r.base + SIZE_2M, SIZE_4K, RW)
    with pytest.raises(ValueError):
        pt.unmap(0, SIZE_4K)
    with pytest.raises(ValueError):
        pt.map(SIZE_4K, r.base, SIZE_4K, RW)  # inside the 2 MiB leaf
    assert pt.unmap(0, 1 << 47) == SIZE_2M + SIZE_4K
    assert pt.table_pages == 1


def test_page_table_bytes_per_4k_page(w: World) -> None:
    r = w.region(64 * MiB + SIZE_4K)
    pt = w.table()
    pt.map(0, r.base + SIZE_4K, 64 * MiB, RW)  # phys misaligned: 4 KiB pages throughout
    pages = 64 * MiB // SIZE_4K
    assert len(pt.leaves(0, 64 * MiB)) == pages
    assert pt.table_bytes / pages <= 16
    pt.unmap(0, 64 * MiB)
    assert pt.table_pages == 1


def test_five_level_table_maps_above_47_bits(w: World) -> None:
    r = w.region(4 * MiB)
    pt = w.table(levels=5)
    iova = 1 << 50
    pt.map(iova, r.base, SIZE_2M, RW)
    assert pt.walk(iova + 8)[:2] == (r.base, SIZE_2M)  # type: ignore[index]
    assert len(entry_path(w.mem, pt.root, 5, iova)) == 4  # PML5, PML4, PDPT, PD leaf
    assert pt.walk(1 << 56) == FR_NON_CANONICAL
    with pytest.raises(ValueError):
        PageTable(w.mem, w.pool, levels=3)
