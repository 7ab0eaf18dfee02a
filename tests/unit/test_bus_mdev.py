"""The mdev bus: types, create/remove with errnos, external devices, claim, release."""

from __future__ import annotations

import errno

from siovd.model.device import Device
from siovd.model.testparent import SiovTestParent
from tests.helpers import raises_errno
from tests.unit.iommu_env import PAGE, RW, Env, MiB, env

__all__ = ["env"]

UUID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


def test_types_and_available_instances_fall(env: Env) -> None:
    (entry,) = env.bus.types(1)
    assert entry.parent == "siov_test"
    assert entry.info.type_id == "siov_test-1" and entry.info.pasid_bits == 20
    assert entry.info.available_instances == 16
    env.mdev(1)
    env.mdev(2)
    assert env.bus.types(None)[0].info.available_instances == 14


def test_create_mdev_result(env: Env) -> None:
    dev = env.bus.create_mdev(1, "siov_test", "siov_test-1", UUID.upper())
    assert dev.uuid == UUID  # canonical lower case
    info = env.bus.describe(dev)
    assert info["uuid"] == UUID and info["parent"] == "siov_test"
    assert info["group_id"] == dev.group.id  # type: ignore[union-attr]
    assert info["default_domain_id"] == info["domain_id"] == env.default_domain(dev)
    assert info["default_pasid"] == dev.default_pasid >= 1
    assert env.parent.live[UUID] == dev.default_pasid  # the parent tags DMA with it
    generated = env.mdev(1)
    assert len(generated.uuid) == 36 and generated.uuid != UUID


def test_create_mdev_errnos(env: Env) -> None:
    create = env.bus.create_mdev
    with raises_errno(errno.ENOENT):
        create(1, "dsa9", "siov_test-1")
    with raises_errno(errno.ENOENT):
        create(1, "siov_test", "siov_test-2")
    for bad in ("xyz", "{" + UUID + "}", UUID.replace("-", ""), UUID + "0", ""):
        with raises_errno(errno.EINVAL):
            create(1, "siov_test", "siov_test-1", bad)
    create(1, "siov_test", "siov_test-1", UUID)
    with raises_errno(errno.EEXIST):
        create(2, "siov_test", "siov_test-1", UUID)
    for _ in range(15):
        env.mdev(1)
    with raises_errno(errno.ENOSPC):
        env.mdev(1)
    assert len(env.iommu.pasids) == 16  # the failed create gave its PASID back


def test_pasid_width_limits_the_default_pasid() -> None:
    e = Env()
    try:
        e.bus.add_parent(SiovTestParent("tiny", instances=4, pasid_bits=1))  # PASID 1 only
        first = e.bus.create_mdev(1, "tiny", "siov_test-1")
        assert first.default_pasid == 1
        with raises_errno(errno.ENOSPC):
            e.bus.create_mdev(1, "tiny", "siov_test-1")
        assert len(e.iommu.pasids) == 1
        assert e.bus.types()[1].info.available_instances == 3
        with raises_errno(errno.EEXIST):
            e.bus.add_parent(SiovTestParent("tiny"))
    finally:
        e.close()


def test_remove_mdev(env: Env) -> None:
    dev = env.mdev(1)
    ext, _ = env.bus.register_device(1, "ext0", 4)
    with raises_errno(errno.ENOENT):
        env.bus.remove_mdev(2, dev.uuid)
    with raises_errno(errno.ENOENT):
        env.bus.remove_mdev(1, UUID)
    with raises_errno(errno.ENOENT):
        env.bus.remove_mdev(1, ext.uuid)  # not an mdev
    removed: list[Device] = []
    env.bus.on_device_removed = removed.append
    env.bus.remove_mdev(1, dev.uuid)
    assert removed == [dev] and not dev.alive and dev.group is None
    assert env.bus.list(None) == [ext]
    assert env.parent.live == {}


def test_list_by_owner(env: Env) -> None:
    a = env.mdev(1)
    b = env.mdev(2)
    assert env.bus.list(1) == [a]
    assert env.bus.list(2) == [b]
    assert env.bus.list(None) == [a, b]


def test_external_device_register_and_claim(env: Env) -> None:
    emulator, client = 10, 1
    dev, token = env.bus.register_device(emulator, "nvme-emu", 8)
    assert dev.owner == emulator and dev.registrant == emulator
    assert dev.group is not None and dev.default_pasid == 0 and not dev.is_mdev
    assert len(token) >= 32
    with raises_errno(errno.ENOENT):
        env.bus.claim_device(client, dev.uuid, "0" * 32)
    with raises_errno(errno.ENOENT):
        env.bus.claim_device(client, UUID, token)
    assert env.bus.claim_device(client, dev.uuid, token) is dev
    assert dev.owner == client
    assert dev.group.default_domain.owner == client
    with raises_errno(errno.ENOENT):
        env.bus.claim_device(2, dev.uuid, token)  # the token is spent
    # The client drives the IOMMU side; the emulator does the device's DMA.
    mem = env.region(client, 2 * MiB)
    mem.buf[0:2] = b"hi"
    env.iommu.map(client, env.default_domain(dev), 0x1000, mem.base, PAGE, RW)
    assert env.bus.emulated_device(emulator, dev.uuid) is dev
    assert env.iommu.dma_read(dev, 0, 0x1000, 2) == (b"hi", None)
    with raises_errno(errno.ENOENT):
        env.bus.emulated_device(client, dev.uuid)
    with raises_errno(errno.ENOENT):
        env.bus.unregister_device(client, dev.uuid)
    # The client leaves: the device goes back to its emulator, reset.
    env.bus.release_owner(client)
    assert dev.alive and dev.owner == emulator
    assert not env.iommu.domain(emulator, env.default_domain(dev)).areas.all()
    assert env.bus.claim_device(2, dev.uuid, token) is dev  # claimable again
    # The emulator leaves: the device goes, and its owner hears of it.
    removed: list[Device] = []
    env.bus.on_device_removed = removed.append
    env.bus.release_owner(emulator)
    assert removed == [dev] and env.bus.list(None) == []


def test_claiming_resets_the_group(env: Env) -> None:
    dev, token = env.bus.register_device(10, "emu", 8)
    mem = env.region(10, 2 * MiB)
    other = env.iommu.domain_alloc(10, "mdev").id
    env.iommu.map(10, env.default_domain(dev), 0x1000, mem.base, PAGE, RW)
    env.iommu.attach_device(10, other, dev)
    env.iommu.attach_pasid(10, other, dev, 4)
    env.bus.claim_device(1, dev.uuid, token)
    assert dev.group is not None
    assert dev.group.domain is dev.group.default_domain and dev.group.pasids == {}
    assert mem.map_count == 0  # the emulator's memory is no longer mapped for the client
    _, fault = env.iommu.dma_read(dev, 0, 0x1000, 4)
    assert fault is not None


def test_register_device_errnos_and_aliases(env: Env) -> None:
    with raises_errno(errno.EINVAL):
        env.bus.register_device(10, "", 8)
    with raises_errno(errno.EINVAL):
        env.bus.register_device(10, "bad name", 8)
    with raises_errno(errno.EINVAL):
        env.bus.register_device(10, "ok", 21)
    with raises_errno(errno.ENOENT):
        env.bus.register_device(10, "ok", 8, alias_of=UUID)
    first, token = env.bus.register_device(10, "fn0", 8)
    with raises_errno(errno.ENOENT):
        env.bus.register_device(11, "fn1", 8, alias_of=first.uuid)  # not 11's device
    second, _ = env.bus.register_device(10, "fn1", 8, alias_of=first.uuid)
    assert second.group is first.group
    # A claim takes the whole group.
    env.bus.claim_device(1, first.uuid, token)
    assert second.owner == 1
    env.bus.unregister_device(10, second.uuid)
    assert first.group is not None and first.group.devices == [first]


def test_remove_parent_removes_its_mdevs(env: Env) -> None:
    env.bus.add_parent(SiovTestParent("other"))
    a = env.mdev(1)
    b = env.bus.create_mdev(1, "other", "siov_test-1")
    env.bus.remove_parent("siov_test")
    assert not a.alive and b.alive
    assert [t.parent for t in env.bus.types()] == ["other"]
    with raises_errno(errno.ENOENT):
        env.bus.remove_parent("siov_test")
