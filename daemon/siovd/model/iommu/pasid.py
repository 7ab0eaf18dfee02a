"""The global PASID space: 20 bits, PASID 0 reserved for requests without PASID.

Each mdev gets its default PASID here (``iommu_alloc_global_pasid``), so the PASID a parent
tags an mdev's DMA with is unique across the platform. The lowest free PASID is handed out.
"""

from __future__ import annotations

import errno
import heapq

from siov_protocol.ids import NO_PASID, PASID_BITS, PASID_LIMIT
from siovd.model.errors import SiovError

__all__ = ["NO_PASID", "PASID_BITS", "PASID_LIMIT", "PasidAllocator"]


class PasidAllocator:
    def __init__(self, limit: int = PASID_LIMIT) -> None:
        self._limit = limit
        self._next = 1  # everything at or above is free
        self._freed: list[int] = []  # below _next and free (min-heap)
        self._used: set[int] = set()

    def alloc(self) -> int:
        if self._freed:
            pasid = heapq.heappop(self._freed)
        elif self._next < self._limit:
            pasid = self._next
            self._next += 1
        else:
            raise SiovError(errno.ENOSPC, "the global PASID space is exhausted")
        self._used.add(pasid)
        return pasid

    def free(self, pasid: int) -> None:
        if pasid not in self._used:
            raise ValueError(f"PASID {pasid} is not allocated")
        self._used.remove(pasid)
        heapq.heappush(self._freed, pasid)

    def __contains__(self, pasid: int) -> bool:
        return pasid in self._used

    def __len__(self) -> int:
        return len(self._used)
