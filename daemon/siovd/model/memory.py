"""The physical address space: client memory and the daemon's page-table memory, side by side.

Clients pass memory as file descriptors; the daemon maps them and places each mapping as a
*region* at a 2 MiB-aligned physical base. The IOMMU's page tables live in the same space (in
regions the daemon owns), so one walker reads kernel-managed and user-managed tables alike,
and a DMA turns into a slice of a memoryview: no copy.

Ownership is by session id (``owner``); the daemon itself is owner 0. An object of another
owner is reported exactly like an object that does not exist, so nothing can be probed.
"""

from __future__ import annotations

import bisect
import errno
import heapq
import mmap
import sys
from array import array
from dataclasses import dataclass, field

from siovd.model.errors import SiovError
from siovd.model.owner import HOST

if sys.byteorder != "little":  # pragma: no cover - x86 page-table entries are little-endian
    raise ImportError("siovd's physical memory model needs a little-endian host")

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
REGION_ALIGN = 2 << 20
#: The first 2 MiB of the physical space stay empty, so physical address 0 never names memory.
FIRST_BASE = REGION_ALIGN
#: Physical addresses are 52 bits wide (x86 MAXPHYADDR), the width a page-table entry can hold.
PHYS_LIMIT = 1 << 52

_ZERO_PAGE = array("Q", bytes(PAGE_SIZE))


@dataclass(eq=False, slots=True)
class Region:
    """One mapping placed in the physical space.

    ``map_count`` counts the domains' references (mappings, user page-table roots); the IOMMU
    keeps it, and a region cannot be removed while it is not zero.
    """

    id: int
    owner: int
    base: int
    size: int
    access: str  # "rw" | "ro": what a device may do through the IOMMU
    buf: memoryview = field(repr=False)  # bytes, as the daemon maps them
    q: memoryview = field(repr=False)  # the same bytes as u64 words, for page-table entries
    map_count: int = 0
    alive: bool = True
    #: The daemon's own mapping of the memory, if the region owns one (a registered memfd):
    #: closed by :meth:`close_mapping` once the region has left the space.
    mapping: mmap.mmap | None = field(default=None, repr=False)
    end: int = field(init=False)  # base + size
    writable: bool = field(init=False)  # a device may write here (registered read-write)

    def __post_init__(self) -> None:
        self.end = self.base + self.size
        self.writable = self.access == "rw"

    def close_mapping(self) -> None:
        """Unmap the region's memory (it must have left the space: no view of it remains).
        For a large memfd whose last user this is, the unmap frees its pages, which takes a
        while: the service calls this where it cannot stall the loop."""
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            mapping.close()


class PhysicalMemory:
    """Regions at 2 MiB-aligned bases, found by bisection on their bases."""

    def __init__(self) -> None:
        self._regions: dict[int, Region] = {}
        self._dead: list[Region] = []  # removed, their mappings not yet closed
        self._bases: list[int] = []  # sorted
        self._sorted: list[Region] = []  # same order as _bases
        self._next_id = 1
        #: Grows whenever a region leaves the space: host addresses taken from the regions
        #: (the executor's native page cache) stay valid while it does not change.
        self.generation = 0

    # -- placement ---------------------------------------------------------------------------

    def add_region(self, buf: memoryview, owner: int, access: str = "rw") -> Region:
        """Place ``buf`` at the lowest free 2 MiB-aligned base and return its region.

        ``buf`` must be a C-contiguous buffer whose size is a positive multiple of 4 KiB (an
        mmap of a memfd is). A read-write region needs a writable buffer.
        """
        if access not in ("rw", "ro"):
            raise SiovError(errno.EINVAL, f"region access must be 'rw' or 'ro', not {access!r}")
        if not buf.c_contiguous:
            raise SiovError(errno.EINVAL, "region buffer must be contiguous")
        raw = memoryview(buf).cast("B")  # our own view: releasing it leaves the caller's alone
        size = raw.nbytes
        if size == 0 or size % PAGE_SIZE:
            raise SiovError(
                errno.EINVAL, f"region size {size:#x} is not a positive multiple of 4 KiB"
            )
        if access == "rw" and raw.readonly:
            raise SiovError(errno.EINVAL, "a read-write region needs a writable buffer")
        base = self._find_base(size)
        region = Region(self._next_id, owner, base, size, access, raw, raw.cast("Q"))
        self._next_id += 1
        self._regions[region.id] = region
        i = bisect.bisect_left(self._bases, base)
        self._bases.insert(i, base)
        self._sorted.insert(i, region)
        return region

    def _find_base(self, size: int) -> int:
        """First fit over the gaps between regions, every base 2 MiB-aligned."""
        candidate = FIRST_BASE
        for region in self._sorted:
            if candidate + size <= region.base:
                break
            candidate = max(candidate, _align_up(region.end, REGION_ALIGN))
        if candidate + size > PHYS_LIMIT:
            raise SiovError(errno.ENOMEM, "the physical address space is full")
        return candidate

    def add_mapping(self, mapping: mmap.mmap, owner: int, access: str) -> Region:
        """:meth:`add_region` for a mapping the region then owns (and closes when it goes)."""
        view = memoryview(mapping) if access == "rw" else memoryview(mapping).toreadonly()
        try:
            region = self.add_region(view, owner, access)
        except BaseException:
            view.release()
            mapping.close()
            raise
        view.release()
        region.mapping = mapping
        return region

    def take_dead_mappings(self) -> list[Region]:
        """Regions that left the space and still own a mapping: the caller closes them
        (:meth:`Region.close_mapping`)."""
        dead, self._dead = self._dead, []
        return dead

    def remove_region(self, region_id: int, owner: int) -> None:
        """Take a region out of the space.

        ``ENOENT`` for an unknown id or another owner's region (the same answer, so ids
        cannot be probed); ``EBUSY`` while a domain maps it.
        """
        region = self.region(region_id, owner)
        if region.map_count:
            raise SiovError(
                errno.EBUSY,
                f"memory region {region_id} is still mapped by {region.map_count} IOMMU mapping(s)",
            )
        self._drop(region)

    def _drop(self, region: Region) -> None:
        del self._regions[region.id]
        i = bisect.bisect_left(self._bases, region.base)
        del self._bases[i]
        del self._sorted[i]
        self.generation += 1
        region.alive = False
        # Drop the daemon's views so the owner of the mapping can close it.
        region.q.release()
        region.buf.release()
        if region.mapping is not None:
            self._dead.append(region)

    def release_owner(self, owner: int) -> list[int]:
        """Remove every region of ``owner`` that no domain maps; return the removed ids.

        The server calls this after the IOMMU has dropped the owner's domains, so normally
        every region goes.
        """
        removed = []
        for region in [r for r in self._sorted if r.owner == owner]:
            if region.map_count == 0:
                self._drop(region)
                removed.append(region.id)
        return removed

    # -- lookup ------------------------------------------------------------------------------

    def region(self, region_id: int, owner: int | None) -> Region:
        """The region with this id, if ``owner`` may see it (``None`` = the daemon's admin view)."""
        region = self._regions.get(region_id)
        if region is None or (owner is not None and region.owner != owner):
            raise SiovError(errno.ENOENT, f"no memory region {region_id}")
        return region

    def region_of(self, phys: int) -> Region | None:
        """The region holding physical address ``phys``, or ``None``."""
        i = bisect.bisect_right(self._bases, phys) - 1
        if i < 0:
            return None
        region = self._sorted[i]
        return region if phys < region.base + region.size else None

    def regions(self, owner: int | None = None) -> list[Region]:
        """Regions in physical order; ``owner=None`` lists everyone's."""
        if owner is None:
            return list(self._sorted)
        return [r for r in self._sorted if r.owner == owner]

    def owns(self, owner: int, phys: int, length: int) -> bool:
        """Whether every byte of ``[phys, phys + length)`` is memory of ``owner``.

        The range may run across regions that sit back to back.
        """
        return self._covering(owner, phys, length) is not None

    def regions_in(self, owner: int, phys: int, length: int) -> list[Region] | None:
        """The regions of ``owner`` covering ``[phys, phys + length)``, or ``None`` if any byte
        is not ``owner``'s memory."""
        return self._covering(owner, phys, length)

    def _covering(self, owner: int, phys: int, length: int) -> list[Region] | None:
        if length <= 0 or phys < 0:
            return None
        end = phys + length
        out: list[Region] = []
        pos = phys
        while pos < end:
            region = self.region_of(pos)
            if region is None or region.owner != owner:
                return None
            out.append(region)
            pos = region.end
        return out

    def view(self, phys: int, length: int) -> memoryview:
        """Bytes ``[phys, phys + length)`` as one memoryview.

        ``EFAULT`` when the range is not inside one region: it starts where there is no
        memory or runs past the end of its region (the next region, even if adjacent, is a
        different mapping). A read-only region gives a read-only view.
        """
        region = self.region_of(phys)
        if region is None or length < 0 or phys + length > region.end:
            raise SiovError(
                errno.EFAULT, f"physical range {phys:#x}+{length:#x} is not inside one region"
            )
        off = phys - region.base
        view = region.buf[off : off + length]
        return view if region.writable else view.toreadonly()

    def read_u64(self, phys: int) -> int:
        """One aligned 64-bit word (a page-table entry); ``EFAULT`` where there is no memory."""
        region = self.region_of(phys)
        if region is None or phys & 7:
            raise SiovError(errno.EFAULT, f"no 64-bit word at physical {phys:#x}")
        return int(region.q[(phys - region.base) >> 3])

    def write_u64(self, phys: int, value: int) -> None:
        """Store one aligned 64-bit word; ``EFAULT`` where there is no writable memory."""
        region = self.region_of(phys)
        if region is None or phys & 7 or region.q.readonly:
            raise SiovError(errno.EFAULT, f"no writable 64-bit word at physical {phys:#x}")
        region.q[(phys - region.base) >> 3] = value

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self._sorted)


class PageTablePool:
    """Zeroed 4 KiB pages for the IOMMU's own page tables, from daemon-owned regions.

    The pool grows by anonymous 2 MiB mmaps placed in the physical space (owner 0) and hands
    out the lowest chunk's pages first, so chunks left empty by unmaps can go back; one spare
    chunk is kept to avoid churn.
    """

    CHUNK = REGION_ALIGN

    def __init__(self, memory: PhysicalMemory) -> None:
        self._memory = memory
        self._chunks: dict[int, tuple[Region, mmap.mmap]] = {}  # base -> chunk
        self._free: dict[int, list[int]] = {}  # chunk base -> free page addresses
        self._heap: list[int] = []  # chunk bases that may have free pages (lazy deletion)
        self._in_heap: set[int] = set()
        self.pages_in_use = 0

    def alloc(self) -> int:
        """A zeroed 4 KiB page; returns its physical address."""
        while self._heap:
            base = self._heap[0]
            free = self._free.get(base)
            if free:
                break
            heapq.heappop(self._heap)
            self._in_heap.discard(base)
        else:
            base = self._grow()
            free = self._free[base]
        phys = free.pop()
        region = self._chunks[base][0]
        i = (phys - base) >> 3
        region.q[i : i + PAGE_SIZE // 8] = _ZERO_PAGE
        self.pages_in_use += 1
        return phys

    def free(self, phys: int) -> None:
        """Give a page back. The last page of a chunk returns the chunk unless it is the spare."""
        base = phys & ~(self.CHUNK - 1)
        free = self._free[base]
        free.append(phys)
        self.pages_in_use -= 1
        if base not in self._in_heap:
            heapq.heappush(self._heap, base)
            self._in_heap.add(base)
        if len(free) == self.CHUNK // PAGE_SIZE and self._spare_chunks() > 1:
            self._shrink(base)

    def _spare_chunks(self) -> int:
        full = self.CHUNK // PAGE_SIZE
        return sum(1 for f in self._free.values() if len(f) == full)

    def _grow(self) -> int:
        buf = mmap.mmap(-1, self.CHUNK)
        region = self._memory.add_region(memoryview(buf), HOST, "rw")
        base = region.base
        self._chunks[base] = (region, buf)
        # Highest first, so pop() hands out the chunk's pages in ascending order.
        self._free[base] = list(range(base + self.CHUNK - PAGE_SIZE, base - 1, -PAGE_SIZE))
        heapq.heappush(self._heap, base)
        self._in_heap.add(base)
        return base

    def _shrink(self, base: int) -> None:
        region, buf = self._chunks.pop(base)
        del self._free[base]
        self._memory.remove_region(region.id, HOST)
        try:
            buf.close()
        except BufferError:  # someone still holds a view; the mapping goes with the last one
            pass

    @property
    def chunks(self) -> int:
        return len(self._chunks)

    @property
    def bytes_in_use(self) -> int:
        return self.pages_in_use * PAGE_SIZE


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)
