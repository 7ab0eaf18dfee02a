"""Long IOMMU requests as jobs: a map, an unmap and a dirty read run a budget at a time, leave
the table exactly as one uninterrupted call would, and show what SPEC §8.15 says mid-way."""

from __future__ import annotations

import errno

import pytest

from siovd.model.budget import Budget
from siovd.model.iommu import io_pagetable
from siovd.model.iommu.io_pagetable import STEP_ENTRIES
from tests.helpers import raises_errno
from tests.unit.iommu_env import PAGE, RW, Env, GiB, MiB, env

__all__ = ["env"]


def steps(job: object) -> int:
    """Run ``job`` with a budget spent after every step; the number of steps it took."""
    count = 1
    while not job.step(Budget(1)):  # type: ignore[attr-defined]
        count += 1
        assert count < 100_000
    return count


def test_a_map_in_steps_writes_the_leaves_one_call_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_pagetable, "STEP_ENTRIES", 64)  # many steps over few entries
    one, stepped = Env(), Env()
    try:
        for e in (one, stepped):
            r = e.region(1, 4 * GiB)
            phys = ((r.base + GiB - 1) & ~(GiB - 1)) + GiB
            d = e.iommu.domain_alloc(1, "mdev").id
            # 3000 small leaves, a 1 GiB leaf, a 2 MiB leaf, 3000 small ones
            size = 3000 * PAGE + GiB + 2 * MiB + 3000 * PAGE
            start, base = GiB - 3000 * PAGE, phys - 3000 * PAGE
            if e is one:
                e.iommu.map(1, d, start, base, size, RW)
            else:
                job = e.iommu.map_job(1, d, start, base, size, RW)
                assert steps(job) > 1
        a = one.iommu.domain(1, 1).pt
        b = stepped.iommu.domain(1, 1).pt
        assert a is not None and b is not None
        assert a.leaves(start, size) == b.leaves(start, size)
        assert [pg for _, pg, _ in b.leaves(start, size)].count(GiB) == 1
    finally:
        one.close()
        stepped.close()


def test_a_map_reserves_its_range_first_and_fills_it_in_iova_order(env: Env) -> None:
    r = env.region(1, 64 * MiB)
    d = env.iommu.domain_alloc(1, "mdev").id
    iova = 0x1000_1000  # not 2 MiB aligned: 4 KiB pages only
    job = env.iommu.map_job(1, d, iova, r.base, 32 * MiB, RW)
    assert not job.step(Budget(1))
    # Reserved: an overlapping map is EEXIST while the first is part way.
    with raises_errno(errno.EEXIST):
        env.iommu.map(1, d, iova + 16 * MiB, r.base, PAGE, RW)
    # The first entries translate, the last not yet.
    assert env.iommu.iova_to_phys(1, d, iova) == r.base
    assert env.iommu.iova_to_phys(1, d, iova + 32 * MiB - PAGE) is None
    while not job.step(Budget(1)):
        pass
    assert env.iommu.iova_to_phys(1, d, iova + 32 * MiB - PAGE) == r.base + 32 * MiB - PAGE
    assert env.iommu.domain(1, d).mapped_bytes == 32 * MiB


def test_an_unmap_in_steps_flushes_once_at_the_end(env: Env) -> None:
    r = env.region(1, 64 * MiB)
    d = env.iommu.domain_alloc(1, "mdev").id
    iova = 0x1000_1000
    env.iommu.map(1, d, iova, r.base, 32 * MiB, RW)
    pool_before = env.iommu.pool.pages_in_use
    job = env.iommu.unmap_job(1, d, iova, 32 * MiB)
    count = steps(job)
    assert count >= 32 * MiB // PAGE // (STEP_ENTRIES + 512)
    assert job.unmapped == 32 * MiB
    assert env.iommu.domain(1, d).mapped_bytes == 0
    assert len(env.iommu.domain(1, d).areas) == 0
    assert env.iommu.pool.pages_in_use < pool_before
    assert all(region.map_count == 0 for region in [r])


def test_a_dirty_read_in_steps_sees_a_large_leaf_once(env: Env) -> None:
    r = env.region(1, 3 * GiB)
    phys = (r.base + GiB - 1) & ~(GiB - 1)
    d = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.map(1, d, GiB, phys, GiB, RW)
    env.iommu.map(1, d, 2 * GiB + PAGE, phys + GiB, 64 * PAGE, RW)
    domain = env.iommu.domain(1, d)
    assert domain.pt is not None
    domain.pt.walk(GiB + 5 * PAGE, write=True)  # sets D on the 1 GiB leaf
    domain.pt.walk(2 * GiB + 3 * PAGE, write=True)
    for clear in (False, True):
        job = env.iommu.dirty_job(1, d, GiB, GiB + 64 * PAGE, clear)
        assert steps(job) > 1
        bits = int.from_bytes(job.bitmap, "little")
        assert bits == ((1 << (GiB // PAGE)) - 1) | (1 << (GiB // PAGE + 3))
    # Cleared by the second read.
    assert not any(env.iommu.dirty_bitmap(1, d, GiB, GiB, False))


def test_a_job_on_a_domain_destroyed_under_it_is_enodev(env: Env) -> None:
    r = env.region(1, 64 * MiB)
    d = env.iommu.domain_alloc(1, "mdev").id
    job = env.iommu.map_job(1, d, 0x1000_1000, r.base, 32 * MiB, RW)
    assert not job.step(Budget(1))
    env.iommu.release_owner(1)
    with raises_errno(errno.ENODEV):
        job.step(Budget(1))


def test_a_big_table_is_given_back_a_budget_at_a_time(env: Env) -> None:
    r = env.region(1, 2 * GiB)
    d = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.map(1, d, 0x1000_1000, r.base, GiB, RW)  # 4 KiB leaves: 513+ tables
    woken: list[int] = []
    env.iommu.wake_reaper = lambda: woken.append(1)
    before = env.iommu.pool.pages_in_use
    env.iommu.domain_free(1, d)
    assert woken and env.iommu.reaping > 256
    assert env.iommu.pool.pages_in_use == before  # nothing freed in the call itself
    turns = 1
    while not env.iommu.reap(Budget(1)):
        turns += 1
    assert turns > 1 and env.iommu.reaping == 0
    assert before > 513 and env.iommu.pool.pages_in_use == 0  # all of it, the root too
    assert r.map_count == 0


def test_resetting_a_big_default_domain_swaps_in_a_fresh_table(env: Env) -> None:
    dev = env.mdev(1)
    d = env.default_domain(dev)
    r = env.region(1, 2 * GiB)
    env.iommu.map(1, d, 0x1000_1000, r.base, GiB, RW)
    assert dev.group is not None
    env.iommu.reset_group(dev.group)
    domain = env.iommu.domain(1, d)
    assert len(domain.areas) == 0 and domain.mapped_bytes == 0
    assert env.iommu.iova_to_phys(1, d, 0x1000_1000) is None
    assert env.iommu.reaping > 256 and r.map_count == 0
    env.iommu.map(1, d, 0x1000_1000, r.base, 4 * PAGE, RW)  # the fresh table works
    assert env.iommu.iova_to_phys(1, d, 0x1000_1000) == r.base
