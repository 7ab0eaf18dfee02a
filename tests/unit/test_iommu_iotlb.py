"""The IOTLB on its own: levels, CLOCK eviction, invalidation granularities, counters."""

from __future__ import annotations

from bench.baselines import QemuPolicyIotlb
from siovd.model.iommu.iotlb import Iotlb, make_tag

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30


def entry(phys: int, size: int = K4) -> list[object]:
    return [phys, size, 0, 0, None, 0]


def test_lookup_probes_4k_2m_1g_levels() -> None:
    t = Iotlb(16)
    tag = make_tag(1, 0)
    t.insert(tag, 0x5000, 1, entry(0xA000))
    t.insert(tag, 0x40_0000, 2, entry(0x80_0000, M2))
    t.insert(tag, 0x8000_0000, 3, entry(0x4000_0000, G1))
    assert t.lookup(tag, 0x5FFF) == [*entry(40960)[:3], 1, None, 1]  # marked, one hit
    assert t.lookup(tag, 0x5_FFFF) is None
    hit = t.lookup(tag, 0x40_0000 + M2 - 1)
    assert hit is not None and hit[0] == 0x80_0000
    hit = t.lookup(tag, 0x8000_0000 + 12345)
    assert hit is not None and hit[1] == G1
    assert t.lookup(make_tag(1, 7), 0x5000) is None  # another PASID entry
    assert t.lookup(make_tag(2, 0), 0x5000) is None  # another domain
    assert (t.hits, t.misses) == (3, 3)


def test_bounded_with_clock_second_chance() -> None:
    t = Iotlb(4)
    tag = make_tag(1, 0)
    for page in range(4):
        t.insert(tag, page * K4, 1, entry(page))
    t.lookup(tag, 0)  # page 0 referenced: survives the next eviction
    t.insert(tag, 4 * K4, 1, entry(4))
    assert len(t) == 4 and t.evictions == 1
    assert t.peek(tag, 0) is not None
    assert t.peek(tag, 1 * K4) is None  # oldest unreferenced went
    # A hot working set within capacity keeps hitting while cold pages stream past.
    for i in range(100):
        assert t.lookup(tag, 0) is not None
        t.insert(tag, (10 + i) * K4, 1, entry(i))
    assert len(t) == 4
    assert t.evictions == 101


def test_invalidate_global_domain_and_pasid() -> None:
    t = Iotlb(64)
    for did in (1, 2):
        for pasid in (0, 5):
            for page in range(3):
                t.insert(make_tag(did, pasid), page * K4, 1, entry(page))
    assert t.invalidate_tag(make_tag(1, 5)) == 3
    assert t.entries(make_tag(1, 5)) == 0 and t.entries(make_tag(1, 0)) == 3
    assert t.invalidate_domain(1) == 3
    assert t.entries() == 6
    assert t.invalidate_all() == 6
    assert len(t) == 0
    assert t.invalidations == 3 and t.invalidated_entries == 12


def test_invalidate_range_with_address_mask() -> None:
    t = Iotlb(4096)
    tag0, tag5 = make_tag(1, 0), make_tag(1, 5)
    for page in range(32):
        t.insert(tag0, page * K4, 1, entry(page))
        t.insert(tag5, page * K4, 1, entry(page))
    t.insert(tag0, M2, 2, entry(0, M2))  # a 2 MiB page over [2M, 4M)
    # am=3: 8 pages from 8*4K, one PASID only.
    assert t.invalidate_range(1, 0, 8 * K4, 3) == 8
    assert [t.peek(tag0, p * K4) is None for p in (7, 8, 15, 16)] == [False, True, True, False]
    assert t.peek(tag5, 8 * K4) is not None
    # All PASIDs of the domain; a range inside the 2 MiB page drops the large entry too.
    assert t.invalidate_range(1, None, M2 + 5 * K4, 0) == 1
    assert t.peek(tag0, M2) is None
    assert t.invalidate_range(1, None, 0, 4) == 16 + 8  # 16 of tag5, 8 left of tag0
    # A huge mask scans the cached keys instead of probing 2**am candidates.
    left = len(t)
    assert left == 32
    assert t.invalidate_range(1, None, 0, 30) == left
    assert len(t) == 0


def test_reinsert_replaces_and_stats() -> None:
    t = Iotlb(8)
    tag = make_tag(3, 0)
    t.insert(tag, 0, 1, entry(1))
    t.insert(tag, 0, 1, entry(2))
    assert len(t) == 1
    got = t.lookup(tag, 0)
    assert got is not None and got[0] == 2
    s = t.stats()
    assert s["iotlb_size"] == 1 and s["iotlb_capacity"] == 8 and s["iotlb_hits"] == 1


def test_qemu_policy_flushes_everything_when_full() -> None:
    t = QemuPolicyIotlb()
    assert t.capacity == 1024
    tag = make_tag(1, 0)
    for page in range(1024):
        t.insert(tag, page * K4, 1, entry(page))
    assert len(t) == 1024
    t.insert(tag, 1024 * K4, 1, entry(1024))
    assert len(t) == 1  # QEMU: g_hash_table_remove_all, then insert
    assert t.evictions == 1024
    assert t.peek(tag, 0) is None
