"""x86 first-stage page tables, stored in physical memory.

The format is the one VT-d's first stage shares with the CPU: 512 eight-byte entries per 4 KiB
table, P(0) R/W(1) U/S(2) A(5) D(6) PS(7) XD(63), the next table or page in bits 12..51. A
paging domain's table lives in daemon pages (:class:`PageTable` maps and unmaps it); a
user-managed table lives in client memory and only the walker (:func:`walk`) touches it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection

from siovd.model.iommu.faults import (
    FR_AD_UPDATE,
    FR_FS_ACCESS,
    FR_FS_NOT_PRESENT,
    FR_FS_RESERVED,
    FR_NON_CANONICAL,
    FR_SM_WRITE,
    FR_US_PRIVILEGE,
)
from siovd.model.memory import PAGE_SIZE, REGION_ALIGN, PageTablePool, PhysicalMemory

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_XD = 1 << 63
ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)

#: Reserved bits of a PS leaf: the address bits below the page size (VT-d: 2M 0x1fe000,
#: 1G 0x3fffe000). Bit 12 is PAT in a large leaf.
RESERVED_2M = 0x1FE000
RESERVED_1G = 0x3FFFE000

PROT_READ = 1
PROT_WRITE = 2

SIZE_4K = 1 << 12
SIZE_2M = 1 << 21
SIZE_1G = 1 << 30
PAGE_SIZES = (SIZE_4K, SIZE_2M, SIZE_1G)
ENTRIES = 512

#: Upper-level entries grant everything; the leaf decides (as Linux's first-stage tables do).
TABLE_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_XD

_ZERO_BYTES = bytes(PAGE_SIZE)
_ZEROS = array("Q", _ZERO_BYTES)

#: A walk that succeeds: (page base, page size, effective leaf flags, level of the leaf).
Translation = tuple[int, int, int, int]
#: Where a table's entries live: (u64 view, index of the table's entry 0), or None.
Locate = Callable[[int], "tuple[memoryview, int] | None"]


def level_shift(level: int) -> int:
    return 12 + 9 * (level - 1)


def leaf_flags(prot: int) -> int:
    """Entry bits for a leaf with ``prot``. First-stage has no write-only page: any present
    page is readable."""
    return PTE_P | PTE_US | PTE_XD | (PTE_RW if prot & PROT_WRITE else 0)


def walk(
    locate: Locate,
    root: int,
    levels: int,
    iova: int,
    write: bool,
    set_ad: bool = True,
    set_d: bool = True,
) -> Translation | int:
    """Translate ``iova`` the way the hardware walker does; a fault reason on failure.

    ``locate`` finds a table's memory (and so decides which memory a walk may read: a
    user-managed table is only read in its owner's memory). When the walk succeeds, A is set
    in every entry used and D in the leaf on a write, unless ``set_ad`` is false (a
    software lookup such as ``iova_to_phys``). ``set_d`` false leaves D alone (a domain whose
    dirty tracking is off, model/iommu/dirty.py).
    """
    va_bits = level_shift(levels) + 9  # 48 or 57
    top = iova >> (va_bits - 1)
    if top and top != (1 << (65 - va_bits)) - 1:
        return FR_NON_CANONICAL
    table = root
    level = levels
    effective = PTE_RW | PTE_US
    used: list[tuple[memoryview, int, int]] = []
    while True:
        where = locate(table)
        if where is None:
            return FR_FS_ACCESS
        q, base = where
        shift = 12 + 9 * (level - 1)
        idx = base + ((iova >> shift) & 511)
        entry = int(q[idx])
        if not entry & PTE_P:
            return FR_FS_NOT_PRESENT
        effective &= entry
        used.append((q, idx, entry))
        if level == 1 or entry & PTE_PS:
            if level == 2:
                if entry & RESERVED_2M:
                    return FR_FS_RESERVED
            elif level == 3:
                if entry & RESERVED_1G:
                    return FR_FS_RESERVED
            elif level != 1:
                return FR_FS_RESERVED  # PS is reserved in PML4E and PML5E
            break
        table = entry & ADDR_MASK
        level -= 1
    if not effective & PTE_US:
        return FR_US_PRIVILEGE
    if write and not effective & PTE_RW:
        return FR_SM_WRITE
    # Accessed everywhere on the path, dirty in the leaf on a write.
    last = len(used) - 1
    for i, (q, idx, entry) in enumerate(used if set_ad else ()):
        want = entry | PTE_A
        if i == last and write and set_d:
            want |= PTE_D
        if want != entry:
            if q.readonly:
                return FR_AD_UPDATE
            q[idx] = want
    leaf = used[last][2]
    if set_ad:
        leaf |= PTE_A | (PTE_D if write and set_d else 0)
    size = 1 << shift
    flags = (leaf & ~ADDR_MASK & ~(PTE_RW | PTE_US)) | effective
    return (leaf & ADDR_MASK & ~(size - 1), size, flags, level)


#: Pool chunks are REGION_ALIGN-sized and -aligned regions: a page's chunk is its address masked.
_CHUNK_MASK = ~(REGION_ALIGN - 1)


class PageTable:
    """A kernel-managed table: the daemon writes entries, tables come from the pool.

    ``map`` picks page sizes like Linux's ``iommu_pgsize``: the largest page the alignment of
    ``iova | phys`` and the remaining size allow, re-chosen at every table boundary so a
    larger page is used as soon as alignment permits. Tables left empty by ``unmap`` go back
    to the pool at once (this model caches no paging structures, so nothing can still point
    at them). The caller (the domain) guarantees that maps do not overlap and that unmaps
    cover whole earlier maps.
    """

    def __init__(
        self, memory: PhysicalMemory, pool: PageTablePool, levels: int = 4, large_1g: bool = True
    ) -> None:
        if levels not in (4, 5):
            raise ValueError("first-stage tables have 4 or 5 levels")
        self.memory = memory
        self.levels = levels
        self.large_1g = large_1g
        self._pool = pool
        #: The memory of each pool chunk this table's pages are in (chunk base -> its qwords).
        #: Pages are found by arithmetic, not by a per-page tuple: 32k tables of a 64 GiB map
        #: in 4 KiB pages would otherwise be 32k objects for every full GC pass to visit.
        self._qs: dict[int, memoryview] = {}
        self._chunk_pages: dict[int, int] = {}
        self._used: dict[int, int] = {}  # table -> present entries
        self.root = self._new_table()
        self.mapped_bytes = 0
        #: The lower canonical half: the IOVAs this table maps (48 or 57 bits wide).
        self.aperture_end = 1 << (level_shift(levels) + 8)

    # -- tables ------------------------------------------------------------------------------

    def _new_table(self) -> int:
        phys = self._pool.alloc()
        chunk = phys & _CHUNK_MASK
        if chunk not in self._qs:
            region = self.memory.region_of(phys)
            assert region is not None and region.base == chunk
            self._qs[chunk] = region.q
            self._chunk_pages[chunk] = 0
        self._chunk_pages[chunk] += 1
        self._used[phys] = 0
        return phys

    def _free_table(self, phys: int) -> None:
        del self._used[phys]
        chunk = phys & _CHUNK_MASK
        left = self._chunk_pages[chunk] - 1
        if left:
            self._chunk_pages[chunk] = left
        else:  # no page of ours left there: let the pool give the chunk back
            del self._chunk_pages[chunk]
            del self._qs[chunk]
        self._pool.free(phys)

    def locate(self, table: int) -> tuple[memoryview, int] | None:
        """Where one of this table's pages lives (the walker's view of daemon memory)."""
        if table not in self._used:
            return None
        chunk = table & _CHUNK_MASK
        return self._qs[chunk], (table - chunk) >> 3

    def _where(self, table: int) -> tuple[memoryview, int]:
        chunk = table & _CHUNK_MASK
        return self._qs[chunk], (table - chunk) >> 3

    @property
    def table_pages(self) -> int:
        return len(self._used)

    @property
    def table_bytes(self) -> int:
        return len(self._used) * PAGE_SIZE

    def _table_for(self, iova: int, level: int) -> int:
        """The table at ``level`` covering ``iova``, made on the way down if missing."""
        table = self.root
        lvl = self.levels
        loc = self._where
        while lvl > level:
            q, base = loc(table)
            idx = base + ((iova >> (12 + 9 * (lvl - 1))) & 511)
            entry = int(q[idx])
            if entry & PTE_P:
                if entry & PTE_PS or lvl == 1:
                    raise ValueError(f"iova {iova:#x} is already mapped by a large page")
                table = entry & ADDR_MASK
            else:
                new = self._new_table()
                q[idx] = new | TABLE_FLAGS
                self._used[table] += 1
                table = new
            lvl -= 1
        return table

    # -- map / unmap -------------------------------------------------------------------------

    def pgsize(
        self, iova: int, phys: int, remaining: int, sizes: Collection[int] = PAGE_SIZES
    ) -> int:
        """The page size for the next step of a map (Linux ``iommu_pgsize``), among ``sizes``
        (the page sizes the client negotiated; 4 KiB always)."""
        align = iova | phys
        if (
            self.large_1g
            and SIZE_1G in sizes
            and not align & (SIZE_1G - 1)
            and remaining >= SIZE_1G
        ):
            return SIZE_1G
        if SIZE_2M in sizes and not align & (SIZE_2M - 1) and remaining >= SIZE_2M:
            return SIZE_2M
        return SIZE_4K

    def map(
        self, iova: int, phys: int, size: int, prot: int, sizes: Collection[int] = PAGE_SIZES
    ) -> None:
        """Write leaves for ``[iova, iova + size)`` → ``phys``; the range must be unmapped.
        Leaves are the largest of ``sizes`` the alignment allows."""
        done = 0
        while done < size:
            done = self.map_step(iova, phys, size, prot, done, 1 << 62, sizes)

    def map_step(
        self,
        iova: int,
        phys: int,
        size: int,
        prot: int,
        done: int,
        max_entries: int,
        sizes: Collection[int] = PAGE_SIZES,
    ) -> int:
        """Part of :meth:`map`: continue at byte ``done`` and stop at a table boundary once
        about ``max_entries`` entries are written; returns the bytes mapped so far. The
        leaves are the ones one :meth:`map` call writes (page sizes depend on the whole
        range and ``sizes``, never on where a step stops)."""
        if (iova | phys | size) & (PAGE_SIZE - 1) or size <= 0:
            raise ValueError("map needs a positive size and 4 KiB alignment")
        if iova + size > self.aperture_end:
            raise ValueError("map beyond the lower canonical half")
        flags = leaf_flags(prot)
        end = iova + size
        pos, p = iova + done, phys + done
        loc = self._where
        written = 0
        while pos < end and written < max_entries:
            pg = self.pgsize(pos, p, end - pos, sizes)
            level = 1 if pg == SIZE_4K else 2 if pg == SIZE_2M else 3
            table = self._table_for(pos, level)
            q, base = loc(table)
            idx = (pos >> (12 + 9 * (level - 1))) & 511
            n = min(ENTRIES - idx, (end - pos) // pg)
            lo = base + idx
            if q[lo : lo + n].tobytes() != _ZERO_BYTES[: 8 * n]:
                raise ValueError(f"iova {pos:#x} is already mapped")
            first = p | flags | (PTE_PS if level > 1 else 0)
            q[lo : lo + n] = array("Q", range(first, first + n * pg, pg))
            self._used[table] += n
            pos += n * pg
            p += n * pg
            written += n
            self.mapped_bytes += n * pg
        return pos - iova

    def unmap(self, iova: int, size: int) -> int:
        """Clear every leaf in ``[iova, iova + size)``; return the bytes they mapped.

        Holes are skipped. A large leaf that sticks out of the range is an error (the domain
        never asks for a split).
        """
        done = cleared = 0
        while done < size:
            done, got = self.unmap_step(iova, size, done, 1 << 62)
            cleared += got
        return cleared

    def unmap_step(self, iova: int, size: int, done: int, max_entries: int) -> tuple[int, int]:
        """Part of :meth:`unmap`: continue at byte ``done``, stop once about ``max_entries``
        entries are cleared; returns (bytes of the range done, bytes cleared now)."""
        end = min(iova + size, self.aperture_end)
        pos = iova + done
        loc, used = self._where, self._used
        cleared = 0
        touched = 0
        while pos < end and touched < max_entries:
            path: list[tuple[int, int]] = []
            table, level = self.root, self.levels
            while True:
                q, base = loc(table)
                shift = 12 + 9 * (level - 1)
                idx = (pos >> shift) & 511
                entry = int(q[base + idx])
                if not entry & PTE_P:
                    pos = ((pos >> shift) + 1) << shift  # skip the hole this entry covers
                    touched += 1
                    break
                if level == 1 or entry & PTE_PS:
                    pg = 1 << shift
                    if level == 1:
                        n = min(ENTRIES - idx, (end - pos) >> 12)
                        lo = base + idx
                        present = n - q[lo : lo + n].tolist().count(0)
                        q[lo : lo + n] = _ZEROS[:n]
                    else:
                        if pos & (pg - 1) or pos + pg > end:
                            raise ValueError(f"unmap would split the large page at {pos:#x}")
                        n = present = 1
                        q[base + idx] = 0
                    used[table] -= present
                    cleared += present * pg
                    pos += n * pg
                    touched += n
                    while table != self.root and used[table] == 0:
                        self._free_table(table)
                        table, pidx = path.pop()
                        pq, pbase = loc(table)
                        pq[pbase + pidx] = 0
                        used[table] -= 1
                    break
                path.append((table, idx))
                table = entry & ADDR_MASK
                level -= 1
        self.mapped_bytes -= cleared
        return (min(pos, iova + size) - iova if pos < end else size), cleared

    # -- reading -----------------------------------------------------------------------------

    def walk(self, iova: int, write: bool = False, set_ad: bool = True) -> Translation | int:
        """A hardware walk of this table (sets A, and D on a write, unless ``set_ad`` is false)."""
        return walk(self.locate, self.root, self.levels, iova, write, set_ad)

    def leaves(self, iova: int, size: int) -> list[tuple[int, int, int]]:
        """Present leaves overlapping ``[iova, iova + size)`` as (leaf iova, page size, entry)."""
        out: list[tuple[int, int, int]] = []

        def visit(q: memoryview, i: int, leaf_iova: int, pg: int) -> None:
            out.append((leaf_iova, pg, int(q[i])))

        self._visit(iova, iova + size, visit)
        return out

    def read_dirty(self, iova: int, size: int, clear: bool) -> list[tuple[int, int]]:
        """Dirty leaves overlapping the range as (leaf iova, page size); optionally clear D."""
        out: list[tuple[int, int]] = []

        def visit(q: memoryview, i: int, leaf_iova: int, pg: int) -> None:
            entry = int(q[i])
            if entry & PTE_D:
                out.append((leaf_iova, pg))
                if clear:
                    q[i] = entry & ~PTE_D

        self._visit(iova, iova + size, visit)
        return out

    def _visit(self, start: int, end: int, fn: Callable[[memoryview, int, int, int], None]) -> None:
        loc = self._where

        def rec(table: int, level: int, table_iova: int) -> None:
            q, base = loc(table)
            shift = 12 + 9 * (level - 1)
            pg = 1 << shift
            first = max(0, (start - table_iova) >> shift)
            last = min(ENTRIES - 1, (end - 1 - table_iova) >> shift)
            for idx in range(first, last + 1):
                entry = int(q[base + idx])
                if not entry & PTE_P:
                    continue
                entry_iova = table_iova + (idx << shift)
                if level == 1 or entry & PTE_PS:
                    fn(q, base + idx, entry_iova, pg)
                else:
                    rec(entry & ADDR_MASK, level - 1, entry_iova)

        end = min(end, self.aperture_end)
        if end > start:
            rec(self.root, self.levels, 0)

    def destroy(self) -> None:
        """Give every table page back to the pool."""
        while not self.destroy_step(1 << 62):
            pass

    def destroy_step(self, max_tables: int) -> bool:
        """Part of :meth:`destroy`: free up to ``max_tables`` table pages (leaves first, the
        root last); True once all are back. The table must be unreachable already."""
        self.mapped_bytes = 0
        used = self._used
        for _ in range(min(max_tables, len(used))):
            self._free_table(next(reversed(used)))  # newest first: the root was made first
        return not used
