"""The mappings a paging domain holds, as iommufd's io_pagetable keeps its areas.

An area is one successful map: unmap must cover whole areas (a split is ``ENOENT``), and a
fixed map may not overlap one (``EEXIST``). The page table itself knows nothing of areas.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from siovd.model.memory import Region


@dataclass(eq=False, slots=True)
class Area:
    iova: int
    size: int
    phys: int
    prot: int
    regions: tuple[Region, ...]  # each holds one map_count reference for this area

    @property
    def last(self) -> int:
        return self.iova + self.size - 1


class AreaMap:
    """Non-overlapping areas ordered by IOVA."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._areas: list[Area] = []

    def __len__(self) -> int:
        return len(self._areas)

    def all(self) -> list[Area]:
        return list(self._areas)

    def intersecting(self, first: int, last: int) -> list[Area]:
        """Areas with at least one byte in ``[first, last]``, in order."""
        i = bisect.bisect_right(self._starts, first) - 1
        if i < 0 or self._areas[i].last < first:
            i += 1
        out = []
        while i < len(self._areas) and self._areas[i].iova <= last:
            out.append(self._areas[i])
            i += 1
        return out

    def overlaps(self, first: int, last: int) -> bool:
        return bool(self.intersecting(first, last))

    def add(self, area: Area) -> None:
        i = bisect.bisect_left(self._starts, area.iova)
        self._starts.insert(i, area.iova)
        self._areas.insert(i, area)

    def remove(self, area: Area) -> None:
        i = bisect.bisect_left(self._starts, area.iova)
        if i >= len(self._areas) or self._areas[i] is not area:
            raise KeyError(area.iova)
        del self._starts[i]
        del self._areas[i]

    def find(self, iova: int) -> Area | None:
        """The area holding ``iova``."""
        i = bisect.bisect_right(self._starts, iova) - 1
        if i >= 0 and iova <= self._areas[i].last:
            return self._areas[i]
        return None


def first_fit(
    busy: list[tuple[int, int]], size: int, align: int, start: int, limit: int
) -> int | None:
    """The lowest ``align``-aligned IOVA in ``[start, limit)`` where ``size`` bytes avoid every
    ``(first, last)`` range of ``busy`` (sorted by first)."""
    candidate = _align_up(start, align)
    for first, last in busy:
        if last < candidate:
            continue
        if candidate + size <= first:
            break
        candidate = _align_up(last + 1, align)
    if candidate + size > limit:
        return None
    return candidate


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align
