"""Owners cannot see, touch or probe each other's objects; a departing owner leaves nothing."""

from __future__ import annotations

import errno
from collections.abc import Callable

from siovd.model.iommu import UNMAP_ALL
from tests.helpers import raises_errno
from tests.unit.iommu_env import PAGE, RW, Env, MiB, UserPageTable, env, errno_of

__all__ = ["env"]


def test_second_owner_gets_enoent_for_everything_of_the_first(env: Env) -> None:
    dev = env.mdev(1)
    mem = env.region(1, 4 * MiB)
    dom = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.map(1, dom, 0x1000, mem.base, PAGE, RW)
    own_dev = env.mdev(2)
    own_dom = env.iommu.domain_alloc(2, "mdev").id
    assert dev.group is not None
    gid = dev.group.id
    io = env.iommu
    attempts: list[Callable[[], object]] = [
        lambda: io.map(2, dom, 0x2000, mem.base, PAGE, RW),
        lambda: io.unmap(2, dom, 0x1000, PAGE),
        lambda: io.unmap(2, dom, 0, UNMAP_ALL),
        lambda: io.domain_free(2, dom),
        lambda: io.attach_device(2, dom, own_dev),
        lambda: io.attach_device(2, own_dom, dev),
        lambda: io.detach_device(2, dom, own_dev),
        lambda: io.attach_pasid(2, own_dom, dev, 5),
        lambda: io.attach_pasid(2, dom, own_dev, 5),
        lambda: io.replace_pasid(2, own_dom, dev, 5),
        lambda: io.detach_pasid(2, None, dev, 5),
        lambda: io.iova_to_phys(2, dom, 0x1000),
        lambda: io.dirty_bitmap(2, dom, 0, PAGE, False),
        lambda: io.iotlb_invalidate(2, "domain", dom),
        lambda: io.group(2, gid),
        lambda: env.memory.remove_region(mem.id, 2),
        lambda: env.bus.remove_mdev(2, dev.uuid),
        lambda: env.bus.device(2, dev.uuid),
        lambda: env.bus.group_info(2, gid),
    ]
    for attempt in attempts:
        with raises_errno(errno.ENOENT):
            attempt()
    # Nothing changed for owner 1.
    assert io.iova_to_phys(1, dom, 0x1000) == mem.base
    assert env.memory.region(mem.id, 1) is mem
    assert env.bus.device(1, dev.uuid) is dev
    assert dom not in [d.id for d in io.domains(2)]
    assert env.bus.list(2) == [own_dev]
    assert env.memory.regions(2) == []


def test_ids_cannot_be_probed(env: Env) -> None:
    """Another owner's object and an object that never existed give the same errno."""
    dev = env.mdev(1)
    mem = env.region(1, 2 * MiB)
    dom = env.iommu.domain_alloc(1, "mdev").id
    assert dev.group is not None
    gid = dev.group.id
    env.mdev(2)
    own = env.iommu.domain_alloc(2, "mdev").id
    own_mem = env.region(2, 2 * MiB)
    io = env.iommu
    absent_dom = dom + 1000
    absent_phys = own_mem.end + 256 * MiB
    pairs: list[tuple[Callable[[], object], Callable[[], object]]] = [
        (lambda: io.domain_free(2, dom), lambda: io.domain_free(2, absent_dom)),
        (lambda: io.group(2, gid), lambda: io.group(2, 999)),
        (
            lambda: env.memory.remove_region(mem.id, 2),
            lambda: env.memory.remove_region(999, 2),
        ),
        (
            lambda: env.bus.remove_mdev(2, dev.uuid),
            lambda: env.bus.remove_mdev(2, "00000000-0000-0000-0000-000000000000"),
        ),
        # Mapping another client's memory looks like mapping memory that does not exist.
        (
            lambda: io.map(2, own, 0x1000, mem.base, PAGE, RW),
            lambda: io.map(2, own, 0x1000, absent_phys, PAGE, RW),
        ),
        (
            lambda: io.domain_alloc(2, "mdev", user_managed=True, pt_root_phys=mem.base),
            lambda: io.domain_alloc(2, "mdev", user_managed=True, pt_root_phys=absent_phys),
        ),
    ]
    for theirs, absent in pairs:
        code = errno_of(theirs)
        assert code is not None and code == errno_of(absent)


def test_user_managed_table_cannot_reach_other_memory(env: Env) -> None:
    """A client's own page table cannot translate into, or be read from, another's memory."""
    dev = env.mdev(1)
    tables = env.region(1, 2 * MiB)
    theirs = env.region(2, 2 * MiB)
    theirs.buf[0:6] = b"secret"
    upt = UserPageTable(env.memory, tables)
    upt.map(0x1000, theirs.base)
    d = env.iommu.domain_alloc(1, "mdev", user_managed=True, pt_root_phys=upt.root).id
    env.iommu.attach_device(1, d, dev)
    data, fault = env.iommu.dma_read(dev, 0, 0x1000, 6)
    assert data == b"" and fault is not None


def test_release_owner_frees_everything(env: Env) -> None:
    baseline_pages = env.iommu.pool.pages_in_use
    keep_dev = env.mdev(2)
    keep_mem = env.region(2, 2 * MiB)
    env.iommu.map(2, env.default_domain(keep_dev), 0x1000, keep_mem.base, PAGE, RW)
    pages_of_2 = env.iommu.pool.pages_in_use

    a = env.mdev(1)
    env.mdev(1)
    mem = env.region(1, 8 * MiB)
    tables = env.region(1, 2 * MiB)
    paging = env.iommu.domain_alloc(1, "mdev").id
    lazy = env.iommu.domain_alloc(1, "mdev", lazy=True).id
    upt = UserPageTable(env.memory, tables)
    env.iommu.domain_alloc(1, "mdev", user_managed=True, pt_root_phys=upt.root)
    env.iommu.map(1, paging, 0x1000, mem.base, 4 * PAGE, RW)
    env.iommu.map(1, lazy, 0x1000, mem.base, PAGE, RW)
    env.iommu.unmap(1, lazy, 0x1000, PAGE)  # queued, not flushed
    env.iommu.map(1, lazy, 0x8000, mem.base, PAGE, RW)
    env.iommu.map(1, env.default_domain(a), 0x1000, mem.base, PAGE, RW)
    env.iommu.attach_device(1, paging, a)
    env.iommu.attach_pasid(1, lazy, a, 3)
    env.iommu.dma_read(a, 0, 0x1000, PAGE)
    ext, _ = env.bus.register_device(1, "ext", 8)
    assert env.parent.mdev_types()[0].available_instances == 16 - 3

    env.bus.release_owner(1)

    assert env.bus.list(1) == [] and env.iommu.domains(1) == [] and env.iommu.groups(1) == []
    assert env.memory.regions(1) == []
    assert env.iommu.pool.pages_in_use == pages_of_2
    assert env.iommu.stats()["lazy_pending"] == 0
    assert len(env.iommu.pasids) == 1  # owner 2's mdev
    assert env.parent.mdev_types()[0].available_instances == 16 - 1
    assert not ext.alive and not a.alive
    # Owner 2 is untouched.
    assert env.iommu.dma_read(keep_dev, 0, 0x1000, 4)[1] is None
    env.bus.release_owner(2)
    assert env.iommu.pool.pages_in_use == baseline_pages
    assert env.memory.regions(None) == env.memory.regions(0)
