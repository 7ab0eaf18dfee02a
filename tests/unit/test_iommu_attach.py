"""Groups, default domains, attach and PASID attach: the kernel's rules, errno for errno."""

from __future__ import annotations

import errno

from siovd.model.bus import Bus
from siovd.model.iommu import DomainType
from tests.helpers import raises_errno
from tests.unit.iommu_env import PAGE, RW, Env, MiB, env

__all__ = ["env"]


def test_probe_gives_each_mdev_a_group_and_default_domain(env: Env) -> None:
    a = env.mdev(1)
    b = env.mdev(1)
    assert a.group is not None and b.group is not None
    assert a.group is not b.group  # generic_device_group: one group per device
    assert a.group.devices == [a]
    default = a.group.default_domain
    assert a.group.domain is default and default.type is DomainType.PAGING
    assert default.owner == 1 and default.bus == "mdev"
    assert default.default_of is a.group
    assert a.default_pasid >= 1 and a.default_pasid != b.default_pasid
    info = env.bus.group_info(1, a.group.id)
    assert info["devices"] == [a.uuid] and info["domain_id"] == default.id


def test_default_domain_type_is_configurable() -> None:
    e = Env(default_domain="identity")
    try:
        d = e.mdev(1)
        assert d.group is not None and d.group.default_domain.type is DomainType.IDENTITY
    finally:
        e.close()


def test_attach_and_detach_device(env: Env) -> None:
    dev = env.mdev(1)
    assert dev.group is not None
    d1 = env.iommu.domain_alloc(1, "mdev").id
    d2 = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.attach_device(1, d1, dev)
    assert dev.group.domain.id == d1
    # The group is on a domain other than its default or blocking one.
    with raises_errno(errno.EBUSY):
        env.iommu.attach_device(1, d2, dev)
    with raises_errno(errno.EBUSY):
        env.iommu.attach_device(1, d1, dev)
    with raises_errno(errno.EINVAL):
        env.iommu.detach_device(1, d2, dev)  # not on d2
    env.iommu.detach_device(1, d1, dev)
    assert dev.group.domain is dev.group.default_domain
    env.iommu.attach_device(1, d2, dev)  # from the default domain again: fine
    assert dev.group.domain.id == d2
    env.iommu.detach_device(1, d2, dev)
    # Detaching the default domain leaves the group where it is.
    env.iommu.detach_device(1, env.default_domain(dev), dev)
    assert dev.group.domain is dev.group.default_domain


def test_domain_of_another_bus_does_not_attach(env: Env) -> None:
    Bus(env.iommu, name="mock")  # the IOMMU serves a second bus
    dev = env.mdev(1)
    other = env.iommu.domain_alloc(1, "mock").id
    with raises_errno(errno.EINVAL):
        env.iommu.attach_device(1, other, dev)
    with raises_errno(errno.EINVAL):
        env.iommu.attach_pasid(1, other, dev, 7)
    # EBUSY is checked before the bus (iommu.c: __iommu_attach_group, then attach_dev).
    mine = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.attach_device(1, mine, dev)
    with raises_errno(errno.EBUSY):
        env.iommu.attach_device(1, other, dev)
    with raises_errno(errno.ENODEV):
        env.iommu.domain_alloc(1, "pci")


def test_attach_needs_a_group_of_one_device(env: Env) -> None:
    first, _ = env.bus.register_device(1, "nic0", 8)
    alias, _ = env.bus.register_device(1, "nic0-fn1", 8, alias_of=first.uuid)
    assert first.group is alias.group
    assert first.group is not None and len(first.group.devices) == 2
    d = env.iommu.domain_alloc(1, "mdev").id
    for dev in (first, alias):
        with raises_errno(errno.EINVAL):
            env.iommu.attach_device(1, d, dev)
    # The group's PASID array is shared by its devices.
    env.iommu.attach_pasid(1, d, first, 3)
    with raises_errno(errno.EBUSY):
        env.iommu.attach_pasid(1, d, alias, 3)


def test_domain_alloc_errnos(env: Env) -> None:
    mine = env.region(1, 2 * MiB)
    theirs = env.region(2, 2 * MiB)
    alloc = env.iommu.domain_alloc
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", "nested")
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", levels=3)
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", user_managed=True)  # no root
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", pt_root_phys=mine.base)  # root without user_managed
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", "identity", lazy=True)
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", user_managed=True, lazy=True, pt_root_phys=mine.base)
    with raises_errno(errno.EINVAL):
        alloc(1, "mdev", user_managed=True, pt_root_phys=mine.base + 8)
    with raises_errno(errno.EFAULT):
        alloc(1, "mdev", user_managed=True, pt_root_phys=theirs.base)
    with raises_errno(errno.EFAULT):
        alloc(1, "mdev", user_managed=True, pt_root_phys=theirs.end + 64 * MiB)
    five = alloc(1, "mdev", levels=5)
    assert five.levels == 5 and five.aperture_end == 1 << 56
    user = alloc(1, "mdev", user_managed=True, pt_root_phys=mine.base)
    assert mine.map_count == 1  # the root pins its region
    env.iommu.domain_free(1, user.id)
    assert mine.map_count == 0


def test_domain_free_rules(env: Env) -> None:
    dev = env.mdev(1)
    d = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.attach_device(1, d, dev)
    with raises_errno(errno.EBUSY):
        env.iommu.domain_free(1, d)
    env.iommu.detach_device(1, d, dev)
    env.iommu.attach_pasid(1, d, dev, 9)
    with raises_errno(errno.EBUSY):
        env.iommu.domain_free(1, d)
    env.iommu.detach_pasid(1, d, dev, 9)
    env.iommu.domain_free(1, d)
    with raises_errno(errno.ENOENT):
        env.iommu.domain_free(1, d)
    with raises_errno(errno.EBUSY):
        env.iommu.domain_free(1, env.default_domain(dev))  # lives as long as its group


def test_pasid_attach_rules(env: Env) -> None:
    dev = env.mdev(1)
    narrow, _ = env.bus.register_device(1, "narrow", 4)  # PASIDs 1..15
    assert dev.group is not None
    d1 = env.iommu.domain_alloc(1, "mdev").id
    d2 = env.iommu.domain_alloc(1, "mdev").id
    with raises_errno(errno.EINVAL):
        env.iommu.attach_pasid(1, d1, dev, 0)
    with raises_errno(errno.EINVAL):
        env.iommu.attach_pasid(1, d1, dev, 1 << 20)
    with raises_errno(errno.EINVAL):
        env.iommu.attach_pasid(1, d1, narrow, 16)
    env.iommu.attach_pasid(1, d1, narrow, 15)
    env.iommu.attach_pasid(1, d1, dev, 5)
    with raises_errno(errno.EBUSY):
        env.iommu.attach_pasid(1, d1, dev, 5)  # attach does not overwrite
    with raises_errno(errno.EBUSY):
        env.iommu.attach_pasid(1, d2, dev, 5)
    with raises_errno(errno.EBUSY):
        env.iommu.attach_pasid(1, d2, dev, dev.default_pasid)  # rides with the group domain
    assert dev.group.pasids[5].id == d1


def test_pasid_replace_and_detach(env: Env) -> None:
    dev = env.mdev(1)
    assert dev.group is not None
    d1 = env.iommu.domain_alloc(1, "mdev").id
    d2 = env.iommu.domain_alloc(1, "mdev").id
    # Replacing a PASID that is not attached fails and attaches nothing.
    with raises_errno(errno.EINVAL):
        env.iommu.replace_pasid(1, d1, dev, 6)
    assert 6 not in dev.group.pasids
    # Detaching a never-attached PASID is a no-op.
    env.iommu.detach_pasid(1, d1, dev, 6)
    env.iommu.detach_pasid(1, None, dev, 6)
    env.iommu.attach_pasid(1, d1, dev, 6)
    env.iommu.replace_pasid(1, d2, dev, 6)
    assert dev.group.pasids[6].id == d2
    env.iommu.replace_pasid(1, d2, dev, 6)  # same domain: nothing to do
    # A failed replace keeps the old domain.
    Bus(env.iommu, name="mock")
    other = env.iommu.domain_alloc(1, "mock").id
    with raises_errno(errno.EINVAL):
        env.iommu.replace_pasid(1, other, dev, 6)
    with raises_errno(errno.EINVAL):
        env.iommu.replace_pasid(1, d1, dev, 0)
    assert dev.group.pasids[6].id == d2
    with raises_errno(errno.EINVAL):
        env.iommu.detach_pasid(1, d1, dev, 6)  # attached, but to d2
    env.iommu.detach_pasid(1, d2, dev, 6)
    assert 6 not in dev.group.pasids
    assert not env.iommu.domain(1, d2).attached


def test_attach_device_is_the_aux_domain_done_the_plain_way(env: Env) -> None:
    """Attaching a domain to an mdev points its default PASID at the domain (Roedel 2020)."""
    dev = env.mdev(1)
    r = env.region(1, 4 * MiB)
    r.buf[0:4] = b"dflt"
    r.buf[MiB : MiB + 4] = b"mine"
    env.iommu.map(1, env.default_domain(dev), 0x10_0000, r.base, PAGE, RW)
    mine = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.map(1, mine, 0x10_0000, r.base + MiB, PAGE, RW)
    for pasid in (dev.default_pasid, 0):
        assert env.iommu.dma_read(dev, pasid, 0x10_0000, 4) == (b"dflt", None)
    env.iommu.attach_device(1, mine, dev)
    for pasid in (dev.default_pasid, 0):
        assert env.iommu.dma_read(dev, pasid, 0x10_0000, 4) == (b"mine", None)
    env.iommu.detach_device(1, mine, dev)
    assert env.iommu.dma_read(dev, dev.default_pasid, 0x10_0000, 4) == (b"dflt", None)


def test_removing_the_device_releases_group_default_domain_and_pasid(env: Env) -> None:
    dev = env.mdev(1)
    assert dev.group is not None
    group_id, default_id, pasid = dev.group.id, env.default_domain(dev), dev.default_pasid
    d = env.iommu.domain_alloc(1, "mdev").id
    env.iommu.attach_device(1, d, dev)
    env.iommu.attach_pasid(1, d, dev, 77)
    env.bus.remove_mdev(1, dev.uuid)
    with raises_errno(errno.ENOENT):
        env.iommu.group(1, group_id)
    with raises_errno(errno.ENOENT):
        env.iommu.domain(1, default_id)
    assert not env.iommu.domain(1, d).attached
    env.iommu.domain_free(1, d)
    again = env.mdev(1)
    assert again.default_pasid == pasid  # the global PASID came back
    assert env.iommu.stats()["groups"] == 1


def test_a_default_domain_stays_with_its_group(env: Env) -> None:
    a = env.mdev(1)
    b = env.mdev(1)
    a_default = env.default_domain(a)
    with raises_errno(errno.EINVAL):
        env.iommu.attach_device(1, a_default, b)
    with raises_errno(errno.EINVAL):
        env.iommu.attach_pasid(1, a_default, b, 5)
    # Its own group may use it under a PASID; removing the device drops that too.
    env.iommu.attach_pasid(1, a_default, a, 5)
    env.iommu.attach_pasid(1, env.iommu.domain_alloc(1, "mdev").id, b, 5)
    with raises_errno(errno.EINVAL):
        env.iommu.replace_pasid(1, a_default, b, 5)
    env.bus.remove_mdev(1, a.uuid)
    assert b.group is not None and b.group.pasids[5].id != a_default
