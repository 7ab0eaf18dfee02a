"""Memory, the mdev bus and the IOMMU through a real socket, errno for errno."""

from __future__ import annotations

import errno
import os
import struct

import pytest
import trio

import siov
from siov_protocol.replies import TranslateRun
from tests.conftest import RunningDaemon, make_config, start_daemon
from tests.helpers import expect

MiB = 1 << 20


async def test_the_aux_domain_case_done_the_plain_way(siovd: RunningDaemon) -> None:
    """Create an mdev: its group and default domain exist at once; attach with one call."""
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        assert mdev.group_id > 0 and mdev.domain_id == mdev.default_domain_id
        assert 0 < mdev.default_pasid < 1 << 20
        group = await client.group(mdev.group_id)
        assert group.devices == [mdev.uuid]
        domain = (await client.alloc_domain()).domain_id
        attached = await client.attach_device(domain, mdev.uuid)
        assert attached.domain_id == domain
        # the mdev's PASID-table entry now points at the domain: map and translate by it
        buf = await client.alloc(2 * MiB)
        await client.map(domain, buf.phys, 2 * MiB, iova=0x4000_0000)
        assert await client.iova_to_phys(domain, 0x4000_1234) == buf.phys + 0x1234
        detached = await client.detach_device(mdev.uuid)
        assert detached.domain_id == mdev.default_domain_id
        await client.free_domain(domain)


async def test_map_unmap_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        buf = await client.alloc(4 * MiB)
        dom = (await client.alloc_domain()).domain_id
        await expect(errno.EINVAL, client.map(dom, buf.phys + 1, 4096, iova=0x1000))
        await expect(errno.EINVAL, client.map(dom, buf.phys, 4096, iova=0x1001))
        await client.map(dom, buf.phys, 2 * MiB, iova=0x20_0000)
        await expect(errno.EEXIST, client.map(dom, buf.phys, 4096, iova=0x30_0000))
        await expect(errno.ENOENT, client.unmap(dom, 0x20_0000, 4096))  # would split
        assert await client.unmap(dom, 0, (1 << 64) - 1) == 2 * MiB  # unmap all
        assert await client.unmap(dom, 0, (1 << 64) - 1) == 0  # again, on an empty domain
        iova = await client.map(dom, buf.phys, 2 * MiB)  # auto-IOVA
        assert iova % (2 * MiB) == 0
        await expect(errno.EBUSY, client.unregister(buf), "still mapped")
        assert await client.unmap(dom, iova, 2 * MiB) == 2 * MiB
        await client.unregister(buf)
        await expect(errno.ENOENT, client.unregister(buf))


async def test_attach_and_pasid_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        uuid = mdev.uuid
        a = (await client.alloc_domain()).domain_id
        b = (await client.alloc_domain()).domain_id
        await client.attach_device(a, uuid)
        await expect(errno.EBUSY, client.attach_device(b, uuid))  # not on default/blocking
        await expect(errno.EBUSY, client.free_domain(a), "attached")
        await client.attach_pasid(b, uuid, 7)
        await expect(errno.EBUSY, client.attach_pasid(a, uuid, 7))
        await expect(errno.EINVAL, client.attach_pasid(b, uuid, 0))
        await expect(errno.EINVAL, client.attach_pasid(b, uuid, 1 << 20))
        await expect(errno.EINVAL, client.replace_pasid(a, uuid, 8))  # never attached
        await client.replace_pasid(a, uuid, 7)
        await client.detach_pasid(uuid, 9)  # never attached: a no-op
        await client.detach_pasid(uuid, 7)
        await expect(errno.ENODEV, client.alloc_domain(bus="pci"))
        narrow = await client.register_device("narrow", pasid_bits=4)
        await expect(errno.EINVAL, client.attach_pasid(b, narrow.uuid, 16))


async def test_memory_must_be_a_sealable_memfd(siovd: RunningDaemon, sock_dir: str) -> None:
    async with siov.connect(siovd.path) as client:
        fd = os.open(os.path.join(sock_dir, "file"), os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 8192)
        try:
            await expect(errno.EINVAL, client.register(fd, 8192), "F_SEAL_SHRINK")
        finally:
            os.close(fd)
        fd = os.memfd_create("short", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 8192)
        try:
            await expect(errno.EINVAL, client.register(fd, 16384), "runs past")
            await expect(errno.EINVAL, client.register(fd, 4096, offset=100), "multiples")
            info = await client.register(fd, 8192)
            with pytest.raises(OSError):
                os.ftruncate(fd, 4096)  # sealed: the daemon's mapping can never lose pages
            assert info.size == 8192
        finally:
            os.close(fd)


async def test_isolation_between_clients(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as alice, siov.connect(siovd.path) as bob:
        buf = await alice.alloc(2 * MiB)
        mdev = await alice.create_mdev("siov_test", "siov_test-1")
        dom = (await alice.alloc_domain()).domain_id
        dev = await alice.register_device("emu")
        bob_dom = (await bob.alloc_domain()).domain_id
        # Bob gets the same answer for Alice's objects as for objects that do not exist.
        for theirs, absent in [
            (bob.map(bob_dom, buf.phys, 4096, iova=0), bob.map(bob_dom, 1 << 40, 4096, iova=0)),
            (bob.unregister(buf.region), bob.unregister(9999)),
            (bob.attach_device(bob_dom, mdev.uuid), bob.attach_device(bob_dom, "0" * 36)),
            (bob.attach_device(dom, mdev.uuid), bob.attach_device(9999, mdev.uuid)),
            (bob.remove_mdev(mdev.uuid), bob.remove_mdev("1" * 36)),
            (bob.free_domain(dom), bob.free_domain(9999)),
            (bob.map(dom, buf.phys, 4096, iova=0), bob.map(9998, buf.phys, 4096, iova=0)),
            (bob.dma_read(dev.uuid, 0, 8), bob.dma_read("2" * 36, 0, 8)),
            (bob.group(mdev.group_id), bob.group(9999)),
        ]:
            e1 = await expect(None, theirs)
            e2 = await expect(None, absent)
            assert e1.errno == e2.errno, (e1, e2)
            assert e1.errno in (errno.ENOENT, errno.EFAULT)
        assert [d["uuid"] for d in await bob.devices()] == []
        assert await bob.memory() == []
        assert [d.domain_id for d in await bob.domains()] == [bob_dom]
        # Alice is untouched: her objects all still work.
        await alice.attach_device(dom, mdev.uuid)
        await alice.map(dom, buf.phys, 4096, iova=0x5000)
        assert await alice.iova_to_phys(dom, 0x5000) == buf.phys


async def test_faults_reach_the_domain_owner(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu, siov.connect(siovd.path) as owner:
        dev = await emu.register_device("nic")
        claimed = await owner.claim_device(dev.uuid, dev.token)
        assert claimed.uuid == dev.uuid
        buf = await owner.alloc(2 * MiB)
        dom = (await owner.alloc_domain()).domain_id
        await owner.attach_device(dom, dev.uuid)
        await owner.map(dom, buf.phys, MiB, iova=0x10_0000, write=False)
        buf.view[:4] = b"ping"
        assert await emu.dma_read(dev.uuid, 0x10_0000, 4) == b"ping"
        await expect(errno.EFAULT, emu.dma_write(dev.uuid, 0x10_0000, b"x"), "faulted")
        event = await owner.next_event(siov_command("EVENT_FAULT"))
        assert event.body["reason"] == 0x85 and event.body["write"] is True
        assert event.body["device"] == dev.uuid and event.body["domain"] == dom
        await expect(errno.EFAULT, emu.dma_read(dev.uuid, 0x90_0000, 4))
        event = await owner.next_event(siov_command("EVENT_FAULT"))
        assert event.body["reason"] == 0x71 and event.body["iova"] == 0x90_0000
        out = await emu.translate(dev.uuid, 0x10_0000, 2 * MiB)
        assert out.translated == MiB and out.fault.iova == 0x20_0000
        run = TranslateRun(iova=0x10_0000, phys=buf.phys, length=MiB, prot=1, page_size=4096)
        assert out.runs == [run]


def siov_command(name: str) -> siov.Event | object:
    from siov_protocol import Command

    return Command[name]


async def test_user_managed_domain_stays_stale_until_invalidated(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        data = await client.alloc(2 * MiB)
        tables = await client.alloc(4 * 4096)
        base = tables.phys
        pml4, pdpt, pd, pt = (base + i * 4096 for i in range(4))
        q = tables.view.cast("Q")

        def entry(table_index: int, slot: int, target: int) -> None:
            q[table_index * 512 + slot] = target | 0x7  # P | R/W | U/S

        entry(0, 0, pdpt)
        entry(1, 0, pd)
        entry(2, 0, pt)
        entry(3, 1, data.phys)  # iova 0x1000 -> data page 0
        dom = (await client.alloc_domain(user_managed=True, pt_root=pml4)).domain_id
        dev = await client.register_device("emu")
        await client.attach_device(dom, dev.uuid)
        data.view[0:4] = b"AAAA"
        data.view[4096 : 4096 + 4] = b"BBBB"
        assert await client.dma_read(dev.uuid, 0x1000, 4) == b"AAAA"
        entry(3, 1, data.phys + 4096)  # the client rewrites the PTE ...
        assert await client.dma_read(dev.uuid, 0x1000, 4) == b"AAAA"  # ... the IOTLB is stale
        await client.invalidate("range", domain=dom, iova=0x1000, am=0)
        assert await client.dma_read(dev.uuid, 0x1000, 4) == b"BBBB"
        await expect(errno.EOPNOTSUPP, client.map(dom, data.phys, 4096, iova=0x2000))
        assert struct.unpack_from("<Q", tables.view, 3 * 4096 + 8)[0] & 0x20  # A bit set


async def test_dirty_bitmap_through_the_socket(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        buf = await client.alloc(MiB)
        dev = await client.register_device("emu")
        dom = (await client.alloc_domain()).domain_id
        await client.attach_device(dom, dev.uuid)
        await client.map(dom, buf.phys, MiB, iova=0)
        await client.dma_write(dev.uuid, 3 * 4096, b"x")
        await client.dma_write(dev.uuid, 9 * 4096 + 5, b"y")
        bitmap = await client.dirty_bitmap(dom, 0, 16 * 4096, clear=True)
        assert bitmap == bytes([0b0000_1000, 0b0000_0010])
        assert await client.dirty_bitmap(dom, 0, 16 * 4096) == b"\0\0"


async def test_limits_name_themselves(nursery: trio.Nursery, sock_dir: str) -> None:
    cfg = make_config(limits={"memory_regions": 2, "domains": 1, "mdevs": 1, "mapped_bytes": MiB})
    running = await start_daemon(nursery, os.path.join(sock_dir, "l.sock"), cfg)
    async with siov.connect(running.path) as client:
        await client.alloc(4096)
        buf = await client.alloc(2 * MiB)
        await expect(errno.ENOSPC, client.alloc(4096), "limits.memory_regions = 2")
        dom = (await client.alloc_domain()).domain_id
        await expect(errno.ENOSPC, client.alloc_domain(), "limits.domains = 1")
        await client.create_mdev("siov_test", "siov_test-1")
        await expect(errno.ENOSPC, client.create_mdev("siov_test", "siov_test-1"), "limits.mdevs")
        await expect(errno.ENOSPC, client.map(dom, buf.phys, 2 * MiB), "limits.mapped_bytes")
    running.server.nursery.cancel_scope.cancel()


async def test_the_number_of_mappings_is_bounded(nursery: trio.Nursery, sock_dir: str) -> None:
    cfg = make_config(limits={"mappings": 3})
    running = await start_daemon(nursery, os.path.join(sock_dir, "m.sock"), cfg)
    async with siov.connect(running.path) as client:
        buf = await client.alloc(MiB)
        a = (await client.alloc_domain()).domain_id
        b = (await client.alloc_domain()).domain_id
        for i in range(2):
            await client.map(a, buf.phys + i * 4096, 4096, iova=i * 4096)
        await client.map(b, buf.phys, 4096, iova=0)  # the limit counts every domain
        await expect(errno.ENOSPC, client.map(b, buf.phys, 4096, iova=0x1000), "limits.mappings")
        assert await client.unmap(a, 0, 4096) == 4096  # an unmap frees a slot
        await client.map(b, buf.phys, 4096, iova=0x1000)
    running.server.nursery.cancel_scope.cancel()


async def test_lazy_unmaps_are_flushed_by_the_timer(
    nursery: trio.Nursery, sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """iommu.lazy_flush_ms, on virtual time: a queued unmap is flushed when the timer fires,
    not before (one queued range is far below lazy_flush_threshold)."""
    cfg = make_config(iommu={"lazy_flush_ms": 1000.0})
    running = await start_daemon(nursery, os.path.join(sock_dir, "lazy.sock"), cfg)
    async with siov.connect(running.path) as client:
        buf = await client.alloc(2 * MiB)
        dom = (await client.alloc_domain(lazy=True)).domain_id
        await client.map(dom, buf.phys, 4096, iova=0)
        await client.unmap(dom, 0, 4096)
        flushes = (await client.stats()).iommu["lazy_flushes"]
        await trio.sleep(0.5)  # the timer fires 1 s after the daemon started
        assert (await client.stats()).iommu["lazy_flushes"] == flushes
        await trio.sleep(1.0)
        assert (await client.stats()).iommu["lazy_flushes"] == flushes + 1
    running.server.nursery.cancel_scope.cancel()
