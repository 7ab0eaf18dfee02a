"""The IOTLB: cached leaf translations, keyed like VT-d's PASID-tagged first-stage entries.

A key is ``(tag, page number at the leaf's level, level)``; the tag names one PASID-table
entry: ``domain id << 20 | pasid`` (PASID 0 for requests without one). A lookup probes the
4 KiB, 2 MiB and 1 GiB levels in turn, as QEMU's intel-iommu does.

The table is bounded. Unlike QEMU, which drops everything when it reaches 1024 entries, a full
table evicts one entry by CLOCK (second chance): a hit only sets the entry's reference mark,
so the hit path is one dict probe and one store, and eviction walks the insertion order
giving referenced entries another round. The bench keeps QEMU's policy for comparison
(``bench/baselines.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from siov_protocol.ids import PASID_BITS

# Entry fields.
E_PHYS = 0  # physical base of the page
E_SIZE = 1  # page size in bytes
E_FLAGS = 2  # effective leaf flags (RW, D, ...)
E_REF = 3  # CLOCK reference mark
E_REGION = 4  # the memory region holding the page when it was cached (a hint)
E_HITS = 5  # lookups this entry answered since it was cached

Key = tuple[int, int, int]
#: ``[phys, size, flags, ref, region, hits]``: a list so that a hit is index loads and stores.
Entry = list[Any]


def new_entry(phys: int, size: int, flags: int, region: Any = None) -> Entry:
    """An entry as the walker fills it: not yet referenced, no hits yet."""
    return [phys, size, flags, 0, region, 0]


def make_tag(domain_id: int, pasid: int) -> int:
    return (domain_id << PASID_BITS) | pasid


class Iotlb:
    """Bounded translation cache with CLOCK eviction and VT-d invalidation granularities."""

    def __init__(self, capacity: int = 8192) -> None:
        if capacity < 1:
            raise ValueError("IOTLB capacity must be positive")
        self.capacity = capacity
        self._map: OrderedDict[Key, Entry] = OrderedDict()
        self._by_tag: dict[int, set[Key]] = {}
        self._domains: dict[int, set[int]] = {}  # domain id -> its tags with entries
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0  # invalidation requests handled
        self.invalidated_entries = 0
        #: Grows whenever an entry may have left (invalidation or eviction): a device TLB
        #: in front of this IOTLB stays valid only while it does not change.
        self.generation = 0
        #: Grows with every insert (a new entry, or one replacing another): a copy of the
        #: entries (the executor's native page cache) stays exact only while neither moves.
        self.fills = 0

    def __len__(self) -> int:
        return len(self._map)

    # -- hit path ----------------------------------------------------------------------------

    def lookup(self, tag: int, iova: int) -> Entry | None:
        """The cached entry translating ``iova`` for ``tag``, or ``None`` (counted as a miss)."""
        get = self._map.get
        entry = get((tag, iova >> 12, 1))
        if entry is None:
            entry = get((tag, iova >> 21, 2))
            if entry is None:
                entry = get((tag, iova >> 30, 3))
                if entry is None:
                    self.misses += 1
                    return None
        entry[3] = 1
        entry[5] += 1
        self.hits += 1
        return entry

    def peek(self, tag: int, iova: int) -> Entry | None:
        """Like :meth:`lookup` but without counting or marking (for tests, tools, and the DMA
        fast path, which counts a hit only when it uses the entry)."""
        get = self._map.get
        entry = get((tag, iova >> 12, 1))
        if entry is None:
            entry = get((tag, iova >> 21, 2))
            if entry is None:
                entry = get((tag, iova >> 30, 3))
        return entry

    # -- fill --------------------------------------------------------------------------------

    def insert(self, tag: int, iova: int, level: int, entry: Entry) -> None:
        """Cache ``entry`` (see the ``E_*`` fields) for the page of ``iova`` at ``level``."""
        key = (tag, iova >> (12 + 9 * (level - 1)), level)
        self.fills += 1
        m = self._map
        if key in m:
            m[key] = entry
            return
        if len(m) >= self.capacity:
            self._make_room()
        entry[E_REF] = 0
        m[key] = entry
        keys = self._by_tag.get(tag)
        if keys is None:
            keys = self._by_tag[tag] = set()
            self._domains.setdefault(tag >> PASID_BITS, set()).add(tag)
        keys.add(key)

    def _make_room(self) -> None:
        self.generation += 1
        m = self._map
        while True:
            key, entry = m.popitem(last=False)
            if entry[E_REF]:
                entry[E_REF] = 0
                m[key] = entry  # second chance: back of the line
                continue
            keys = self._by_tag[key[0]]
            keys.discard(key)
            if not keys:
                self._drop_tag(key[0])
            self.evictions += 1
            return

    def _drop_tag(self, tag: int) -> set[Key]:
        keys = self._by_tag.pop(tag)
        did = tag >> PASID_BITS
        tags = self._domains[did]
        tags.discard(tag)
        if not tags:
            del self._domains[did]
        return keys

    # -- invalidation ------------------------------------------------------------------------

    def invalidate_all(self) -> int:
        """Global invalidation; returns the entries dropped."""
        n = len(self._map)
        self._map.clear()
        self._by_tag.clear()
        self._domains.clear()
        return self._count(n)

    def invalidate_tag(self, tag: int) -> int:
        """Everything cached for one PASID entry (VT-d PASID-selective invalidation)."""
        n = 0
        if tag in self._by_tag:
            keys = self._drop_tag(tag)
            for key in keys:
                del self._map[key]
            n = len(keys)
        return self._count(n)

    def invalidate_domain(self, domain_id: int) -> int:
        """Everything cached for a domain, under any PASID (domain-selective invalidation)."""
        n = 0
        for tag in list(self._domains.get(domain_id, ())):
            keys = self._drop_tag(tag)
            for key in keys:
                del self._map[key]
            n += len(keys)
        return self._count(n)

    def _tags(self, domain_id: int, pasid: int | None) -> list[int]:
        if pasid is None:
            return list(self._domains.get(domain_id, ()))
        tag = make_tag(domain_id, pasid)
        return [tag] if tag in self._by_tag else []

    def invalidate_range(self, domain_id: int, pasid: int | None, addr: int, am: int) -> int:
        """Page-selective invalidation: the ``2**am`` 4 KiB pages from ``addr`` (aligned).

        Large-page entries overlapping the range go too. ``pasid=None`` covers every PASID
        of the domain.
        """
        start = addr >> 12
        return self._count(self._drop_pages(self._tags(domain_id, pasid), start, start + (1 << am)))

    def invalidate_span(self, domain_id: int, pasid: int | None, iova: int, size: int) -> int:
        """Invalidate ``[iova, iova + size)`` as one request (the IOMMU splits it into aligned
        power-of-two blocks, as a driver does when it flushes an unmapped range)."""
        tags = self._tags(domain_id, pasid)
        n = 0
        if tags:
            pos = iova >> 12
            end = (iova + size) >> 12
            cached = sum(len(self._by_tag.get(tag, ())) for tag in tags)
            if (end - pos) >> 9 > cached:
                # A span far larger than what is cached (a 64 GiB unmap): one pass over the
                # cached entries drops the same ones as the block-by-block walk below.
                return self._count(self._drop_pages(tags, pos, end))
            while pos < end:
                am = (pos & -pos).bit_length() - 1 if pos else 64
                while 1 << am > end - pos:
                    am -= 1
                n += self._drop_pages(tags, pos, pos + (1 << am))
                pos += 1 << am
        return self._count(n)

    def _drop_pages(self, tags: list[int], start: int, end: int) -> int:
        """Drop entries of ``tags`` overlapping 4 KiB pages ``[start, end)``."""
        n = 0
        m = self._map
        for tag in tags:
            keys = self._by_tag.get(tag)
            if not keys:
                continue
            # Probe the candidate keys when there are fewer of them than cached keys.
            if (end - start) + ((end - start) >> 9) + 4 < len(keys):
                doomed: list[Key] = []
                for level in (1, 2, 3):
                    shift = 9 * (level - 1)
                    for pfn in range(start >> shift, ((end - 1) >> shift) + 1):
                        key = (tag, pfn, level)
                        if key in m:
                            doomed.append(key)
            else:
                doomed = [
                    k
                    for k in keys
                    if (k[1] << (9 * (k[2] - 1))) < end and ((k[1] + 1) << (9 * (k[2] - 1))) > start
                ]
            for key in doomed:
                del m[key]
                keys.discard(key)
            if not keys:
                self._drop_tag(tag)
            n += len(doomed)
        return n

    def _count(self, dropped: int) -> int:
        self.generation += 1
        self.invalidations += 1
        self.invalidated_entries += dropped
        return dropped

    def entries(self, tag: int | None = None) -> int:
        """How many entries are cached (for one tag, or in all)."""
        if tag is None:
            return len(self._map)
        return len(self._by_tag.get(tag, ()))

    def cached(self, domain_id: int, pasid: int | None = None) -> list[tuple[int, int, Entry]]:
        """What is cached for a domain (one PASID entry of it, or all): ``(pasid, iova,
        entry)`` sorted by PASID and IOVA, for inspection (no hit is counted). At most the
        table's capacity: bounded work."""
        mask = (1 << PASID_BITS) - 1
        out = [
            (tag & mask, pfn << (12 + 9 * (level - 1)), self._map[(tag, pfn, level)])
            for tag in self._tags(domain_id, pasid)
            for (_, pfn, level) in self._by_tag.get(tag, ())
        ]
        out.sort(key=lambda row: (row[0], row[1]))
        return out

    def stats(self) -> dict[str, int]:
        return {
            "iotlb_hits": self.hits,
            "iotlb_misses": self.misses,
            "iotlb_evictions": self.evictions,
            "iotlb_invalidations": self.invalidations,
            "iotlb_invalidated_entries": self.invalidated_entries,
            "iotlb_size": len(self._map),
            "iotlb_capacity": self.capacity,
        }
