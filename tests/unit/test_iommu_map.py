"""Map and unmap with iommufd's rules, errno for errno (modelled on the iommufd selftest)."""

from __future__ import annotations

import errno
import itertools
from array import array

import pytest

from siovd.model.errors import SiovError
from siovd.model.iommu import UNMAP_ALL
from siovd.model.iommu.pagetable import ADDR_MASK, PTE_P, PTE_PS, leaf_flags
from tests.helpers import raises_errno
from tests.unit.iommu_env import PAGE, RO, RW, Env, GiB, MiB, env

__all__ = ["env"]

K4, M2 = PAGE, 2 * MiB


def paging(env: Env, owner: int = 1) -> int:
    return env.iommu.domain_alloc(owner, "mdev").id


def test_map_unmap_basic(env: Env) -> None:
    r = env.region(1, 4 * MiB)
    d = paging(env)
    iova = env.iommu.map(1, d, 0x10_0000, r.base, 3 * K4, RW)
    assert iova == 0x10_0000
    assert env.iommu.iova_to_phys(1, d, iova + K4 + 7) == r.base + K4 + 7
    assert r.map_count == 1
    assert env.iommu.unmap(1, d, iova, 3 * K4) == 3 * K4
    assert env.iommu.iova_to_phys(1, d, iova) is None
    assert r.map_count == 0
    with raises_errno(errno.ENOENT):
        env.iommu.unmap(1, d, iova, 3 * K4)  # nothing left there


def test_map_argument_errnos(env: Env) -> None:
    r = env.region(1, 4 * MiB)
    d = paging(env)
    m = env.iommu.map
    with raises_errno(errno.EINVAL):
        m(1, d, 0x1000, r.base, 0, RW)  # zero size
    with raises_errno(errno.EINVAL):
        m(1, d, 0x1001, r.base, K4, RW)  # iova unaligned
    with raises_errno(errno.EINVAL):
        m(1, d, 0x1000, r.base + 8, K4, RW)  # phys unaligned
    with raises_errno(errno.EINVAL):
        m(1, d, 0x1000, r.base, K4 + 1, RW)  # size unaligned
    with raises_errno(errno.EINVAL):
        m(1, d, 0x1000, r.base, K4, 0)  # no permission
    with raises_errno(errno.EINVAL):
        m(1, d, 0x1000, r.base, K4, 4)  # unknown prot bit
    with raises_errno(errno.EOVERFLOW):
        m(1, d, (1 << 64) - K4, r.base, 2 * K4, RW)
    with raises_errno(errno.EINVAL):
        m(1, d, (1 << 47) - K4, r.base, 2 * K4, RW)  # beyond the 4-level aperture
    with raises_errno(errno.ENOENT):
        m(1, d + 100, 0x1000, r.base, K4, RW)  # no such domain
    assert r.map_count == 0


def test_map_overlap_is_eexist(env: Env) -> None:
    r = env.region(1, 4 * MiB)
    d = paging(env)
    env.iommu.map(1, d, 0x10_0000, r.base, 4 * K4, RW)
    for iova, size in [(0x10_0000, K4), (0x10_3000, 2 * K4), (0xF_F000, 2 * K4), (0, M2)]:
        with raises_errno(errno.EEXIST):
            env.iommu.map(1, d, iova, r.base, size, RW)
    env.iommu.map(1, d, 0x10_4000, r.base, K4, RW)  # right after: fine
    env.iommu.map(1, d, 0xF_F000, r.base, K4, RW)  # right before: fine
    # the error names the mapping in the way, and how many more there are
    with pytest.raises(SiovError) as info:
        env.iommu.map(1, d, 0x10_2000, r.base, 2 * K4, RW)
    assert f"map 0x102000+0x2000 overlaps the mapping 0x100000+0x4000 in domain {d}" == (
        info.value.message
    )
    with pytest.raises(SiovError) as info:
        env.iommu.map(1, d, 0xF_F000, r.base, 3 * M2, RW)
    assert "overlaps the mapping 0xff000+0x1000 (and 2 more)" in info.value.message


def test_unmap_never_splits_a_mapping(env: Env) -> None:
    r = env.region(1, 4 * MiB)
    d = paging(env)
    env.iommu.map(1, d, 0x10_0000, r.base, 4 * K4, RW)
    for iova, size in [(0x10_0000, K4), (0x10_1000, 3 * K4), (0xF_F000, 2 * K4)]:
        with raises_errno(errno.ENOENT):
            env.iommu.unmap(1, d, iova, size)
    # Nothing was unmapped by the failed attempts.
    assert env.iommu.iova_to_phys(1, d, 0x10_0000) == r.base
    assert env.iommu.unmap(1, d, 0xF_0000, 0x10_0000) == 4 * K4


def test_unmap_fully_contained_areas_returns_the_sum(env: Env) -> None:
    r = env.region(1, 4 * MiB)
    d = paging(env)
    for i in range(4):
        env.iommu.map(1, d, 0x100_0000 + i * 0x10_0000, r.base, (i + 1) * K4, RW)
    # A range with holes that covers the four areas whole.
    assert env.iommu.unmap(1, d, 0xF0_0000, 0x50_0000) == (1 + 2 + 3 + 4) * K4
    assert not env.iommu.domain(1, d).areas.all()


def test_unmap_argument_errnos(env: Env) -> None:
    d = paging(env)
    with raises_errno(errno.EINVAL):
        env.iommu.unmap(1, d, 0x1000, 0)
    with raises_errno(errno.EINVAL):
        env.iommu.unmap(1, d, 0x1001, K4)
    with raises_errno(errno.EINVAL):
        env.iommu.unmap(1, d, 0x1000, K4 + 1)
    with raises_errno(errno.EOVERFLOW):
        env.iommu.unmap(1, d, (1 << 64) - K4, 2 * K4)
    with raises_errno(errno.ENOENT):
        env.iommu.unmap(1, d, 0x1000, K4)  # empty domain, ordinary range


def test_unmap_all(env: Env) -> None:
    r = env.region(1, 4 * MiB)
    d = paging(env)
    assert env.iommu.unmap(1, d, 0, UNMAP_ALL) == 0  # empty domain: succeeds
    env.iommu.map(1, d, 0x1000, r.base, K4, RW)
    env.iommu.map(1, d, 0x4000_0000, r.base, M2, RW)
    assert env.iommu.unmap(1, d, 0, UNMAP_ALL) == K4 + M2
    assert env.iommu.unmap(1, d, 0, 1 << 64) == 0
    assert env.iommu.domain(1, d).pt.table_pages == 1  # type: ignore[union-attr]
    assert r.map_count == 0


def test_auto_iova_is_aligned_to_the_size(env: Env) -> None:
    r = env.region(1, 8 * MiB)
    d = paging(env)
    iovas = []
    for i in range(10):
        length = K4 * (i + 1)
        iova = env.iommu.map(1, d, None, r.base, length, RW)
        assert iova % (length & -length) == 0
        iovas.append((iova, length))
    spans = sorted(iovas)
    for (a, la), (b, _) in itertools.pairwise(spans):
        assert a + la <= b  # no overlap
    # A 2 MiB map of 2 MiB-aligned memory lands 2 MiB-aligned: one large page.
    iova = env.iommu.map(1, d, None, r.base + M2, M2, RW)
    assert iova % M2 == 0
    assert env.iommu.walk(1, d, iova)[1] == M2  # type: ignore[index]


def test_large_pages_used_when_aligned(env: Env) -> None:
    r = env.region(1, 3 * GiB)
    phys = (r.base + GiB - 1) & ~(GiB - 1)
    d = paging(env)
    env.iommu.map(1, d, GiB, phys, GiB + M2 + K4, RW)
    assert env.iommu.walk(1, d, GiB)[1:] == (GiB, env.iommu.walk(1, d, GiB)[2], 3)  # type: ignore[index]
    assert env.iommu.walk(1, d, 2 * GiB)[1] == M2  # type: ignore[index]
    assert env.iommu.walk(1, d, 2 * GiB + M2)[1] == K4  # type: ignore[index]
    # The leaves really are PS entries in the table in memory.
    pt = env.iommu.domain(1, d).pt
    assert pt is not None
    pdpte = env.memory.read_u64(
        env.memory.read_u64(pt.root) & ADDR_MASK  # PML4[0] → PDPT
        | 8 * 1
    )
    assert pdpte & PTE_PS and pdpte & ADDR_MASK == phys


def test_memory_not_owned_and_memory_absent_look_the_same(env: Env) -> None:
    mine = env.region(1, 2 * MiB)
    theirs = env.region(2, 2 * MiB)
    d = paging(env)
    absent = theirs.end + 64 * MiB
    # Another client's memory, memory that does not exist, and a range running off my own
    # region all get EFAULT: the errno tells nothing about who owns what.
    for phys, size in ((theirs.base, K4), (absent, K4), (mine.end - K4, 2 * K4)):
        with raises_errno(errno.EFAULT):
            env.iommu.map(1, d, 0x1000, phys, size, RW)
    assert theirs.map_count == 0


def test_writable_map_of_read_only_memory(env: Env) -> None:
    ro = env.region(1, 2 * MiB, access="ro")
    d = paging(env)
    with raises_errno(errno.EFAULT):
        env.iommu.map(1, d, 0x1000, ro.base, K4, RW)
    env.iommu.map(1, d, 0x1000, ro.base, K4, RO)


def test_mapped_region_cannot_be_removed(env: Env) -> None:
    r = env.region(1, 2 * MiB)
    d = paging(env)
    env.iommu.map(1, d, 0x1000, r.base, K4, RW)
    with raises_errno(errno.EBUSY):
        env.memory.remove_region(r.id, 1)
    env.iommu.unmap(1, d, 0x1000, K4)
    env.memory.remove_region(r.id, 1)


def test_map_on_non_paging_and_user_managed_domains(env: Env) -> None:
    r = env.region(1, 2 * MiB)
    ident = env.iommu.domain_alloc(1, "mdev", "identity").id
    blocked = env.iommu.domain_alloc(1, "mdev", "blocked").id
    user = env.iommu.domain_alloc(1, "mdev", user_managed=True, pt_root_phys=r.base).id
    for d in (ident, blocked):
        with raises_errno(errno.EINVAL):
            env.iommu.map(1, d, 0x1000, r.base, K4, RW)
        with raises_errno(errno.EINVAL):
            env.iommu.unmap(1, d, 0, UNMAP_ALL)
    with raises_errno(errno.EOPNOTSUPP):
        env.iommu.map(1, user, 0x1000, r.base + K4, K4, RW)
    with raises_errno(errno.EOPNOTSUPP):
        env.iommu.unmap(1, user, 0, UNMAP_ALL)
    assert env.iommu.iova_to_phys(1, ident, 0x1234) == 0x1234
    assert env.iommu.iova_to_phys(1, blocked, 0x1234) is None


def test_all_aligns(env: Env) -> None:
    """Every start and end at 4 KiB granularity across a 2 MiB + 4 KiB window, checked page
    by page in the real table (iommufd's all_aligns), with the region refcount."""
    window = M2 + K4
    r = env.region(1, 4 * MiB)
    d = paging(env)
    dom = env.iommu.domain(1, d)
    pt = dom.pt
    assert pt is not None
    base_iova = 0x4000_0000  # 2 MiB-aligned, like r.base: the [0, 2M) part can be a 2M leaf
    mem = env.memory
    flags = leaf_flags(RW)
    npages = window // K4

    def l2_slot(iova: int) -> int:
        pml4 = mem.read_u64(pt.root + 8 * ((iova >> 39) & 511))
        pdpt = mem.read_u64((pml4 & ADDR_MASK) + 8 * ((iova >> 30) & 511))
        return (pdpt & ADDR_MASK) + 8 * ((iova >> 21) & 511)

    def expected_l1(first: int, last: int, phys: int) -> bytes:
        """The leaf table bytes for pages [first, last) of a 512-entry table mapped from phys."""
        out = array("Q", bytes(8 * first))
        out.extend(range(phys | flags, (phys | flags) + (last - first) * K4, K4))
        out.extend(array("Q", bytes(8 * (512 - last))))
        return out.tobytes()

    checked = 0
    for start in range(npages):
        for end in range(start + 1, npages + 1):
            length = (end - start) * K4
            iova = env.iommu.map(1, d, base_iova + start * K4, r.base + start * K4, length, RW)
            assert r.map_count == 1
            # The first 2 MiB: one PS leaf when the whole of it is mapped, else a leaf table.
            e0 = mem.read_u64(l2_slot(base_iova))
            if start == 0 and end >= 512:
                assert e0 & PTE_PS and e0 & ADDR_MASK == r.base
            elif start >= 512:
                assert e0 == 0
            else:
                assert e0 & PTE_P and not e0 & PTE_PS
                hi = min(end, 512)
                table = mem.view(e0 & ADDR_MASK, K4).tobytes()
                assert table == expected_l1(start, hi, r.base + start * K4)
            # The page after the 2 MiB line.
            e1 = mem.read_u64(l2_slot(base_iova + M2))
            if end == npages:
                leaf = mem.read_u64(e1 & ADDR_MASK)
                assert leaf == (r.base + M2) | flags
            else:
                assert e1 == 0
            checked += end - start
            assert env.iommu.unmap(1, d, iova, length) == length
            assert r.map_count == 0
    assert checked == npages * (npages + 1) * (npages + 2) // 6
    assert pt.table_pages == 1  # every table under the window went back to the pool
