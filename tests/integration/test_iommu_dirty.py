"""Dirty-tracking control over a real socket (iommufd selftest ``iommufd_dirty_tracking``:
enforce, set, capability, bitmap with and without clear; VFIO's unmap with the dirty bitmap;
SPEC §8.17)."""

from __future__ import annotations

import errno

import siov
from siov_protocol import Command
from tests.conftest import RunningDaemon
from tests.integration.test_iommu_socket import expect

MiB = 1 << 20
BASE = 0x20_0000  # a 2 MiB-aligned IOVA over a phys that is not: 4 KiB leaves


def bits(bitmap: bytes) -> list[int]:
    return [i for i in range(len(bitmap) * 8) if bitmap[i >> 3] >> (i & 7) & 1]


async def setup(client: siov.Client) -> tuple[int, str]:
    """A tracking domain with 2 MiB mapped at BASE in 4 KiB leaves, a device on it."""
    buf = await client.alloc(4 * MiB)
    dom = (await client.alloc_domain(dirty_tracking=True)).domain_id
    dev = (await client.register_device("nic")).uuid
    await client.attach_device(dom, dev)
    await client.map(dom, buf.phys + 4096, 2 * MiB, iova=BASE)  # phys not 2 MiB-aligned
    return dom, dev


async def test_d_is_set_only_while_tracking_is_on(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        dom, dev = await setup(client)
        await expect(errno.EINVAL, client.get_dirty_bitmap(dom, BASE, 2 * MiB), "off")
        await client.dma_write(dev, BASE + 0x1000, b"x")  # off: no D
        await client.dma_write(dev, BASE + 0x5000, b"x")  # off, and now cached in the IOTLB
        assert await client.set_dirty_tracking(dom, True) is True
        assert bits(await client.get_dirty_bitmap(dom, BASE, 2 * MiB)) == []
        # the same page again: enabling flushed the IOTLB, so this write walks and sets D
        await client.dma_write(dev, BASE + 0x5000, b"y")
        await client.dma_write(dev, BASE + 0x3000, b"y")
        # NO_CLEAR reads leave the bits; a clearing read takes them; then nothing is left
        first = await client.get_dirty_bitmap(dom, BASE, 2 * MiB, no_clear=True)
        assert bits(first) == [3, 5]
        assert await client.get_dirty_bitmap(dom, BASE, 2 * MiB, no_clear=True) == first
        assert bits(await client.get_dirty_bitmap(dom, BASE, 2 * MiB)) == [3, 5]
        assert bits(await client.get_dirty_bitmap(dom, BASE, 2 * MiB)) == []
        # page_size: one bit per 2 MiB, set if any 4 KiB page in it is dirty
        await client.dma_write(dev, BASE + 0x7000, b"z")
        coarse = await client.get_dirty_bitmap(dom, 0, 4 * MiB, page_size=2 * MiB)
        assert bits(coarse) == [1]
        await client.dma_write(dev, BASE + 0x9000, b"z")
        assert await client.set_dirty_tracking(dom, False) is False
        await client.dma_write(dev, BASE + 0xB000, b"z")  # off again: no D
        await expect(errno.EINVAL, client.get_dirty_bitmap(dom, BASE, 2 * MiB))
        # unmap collects the bits set while tracking was on (page 9), not page 11
        unmapped, bitmap = await client.unmap_dirty(dom, BASE, 2 * MiB)
        assert unmapped == 2 * MiB and bits(bitmap) == [9]
        await expect(errno.ENOENT, client.iova_to_phys(dom, BASE + 0x9000))


async def test_enable_clears_what_was_dirty_before(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        dom, dev = await setup(client)
        await client.set_dirty_tracking(dom, True)
        await client.dma_write(dev, BASE, b"a")
        assert await client.set_dirty_tracking(dom, True) is True  # already on: kept
        assert bits(await client.get_dirty_bitmap(dom, BASE, 4096, no_clear=True)) == [0]
        await client.set_dirty_tracking(dom, False)
        await client.set_dirty_tracking(dom, True)  # off -> on clears every D bit
        assert bits(await client.get_dirty_bitmap(dom, BASE, 2 * MiB)) == []


async def test_dirty_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        dom, _dev = await setup(client)
        await client.set_dirty_tracking(dom, True)
        get = client.get_dirty_bitmap
        await expect(errno.EINVAL, get(dom, BASE, 0))
        await expect(errno.EINVAL, get(dom, BASE + 1, 4096))
        await expect(errno.EINVAL, get(dom, BASE, 4095))
        await expect(errno.EINVAL, get(dom, BASE, 2 * MiB, page_size=3 * 4096), "power of two")
        await expect(errno.EINVAL, get(dom, BASE, 2 * MiB, page_size=2048))
        await expect(errno.EINVAL, get(dom, BASE, 2 * MiB, page_size=1 << 31))
        await expect(errno.EINVAL, get(dom, BASE + 4096, 2 * MiB, page_size=2 * MiB), "aligned")
        await expect(errno.EOVERFLOW, get(dom, (1 << 64) - 4096, 8192))
        await expect(errno.EMSGSIZE, get(dom, 0, 8_388_352 * 4096), "does not fit")
        await expect(errno.EINVAL, get(dom, 0, 64 << 30, page_size=1 << 30), "at most")
        await expect(errno.ENOENT, get(999, BASE, 4096))
        await expect(errno.ENOENT, client.set_dirty_tracking(999, True))
        # a domain that cannot track: EOPNOTSUPP for every verb
        plain = (await client.alloc_domain()).domain_id
        await expect(errno.EOPNOTSUPP, client.set_dirty_tracking(plain, True), "cannot track")
        await expect(errno.EOPNOTSUPP, get(plain, 0, 4096))
        await expect(errno.EOPNOTSUPP, client.unmap_dirty(plain, 0, 4096))
        # and what cannot be allocated so
        for kind in ("identity", "blocked"):
            await expect(errno.EOPNOTSUPP, client.alloc_domain(kind, dirty_tracking=True))
        body = {"type": "paging", "user_managed": True, "pt_root": 0, "dirty_tracking": True}
        await expect(errno.EOPNOTSUPP, client.call(Command.DOMAIN_ALLOC, body))
        ident = (await client.alloc_domain("identity")).domain_id
        await expect(errno.EINVAL, client.set_dirty_tracking(ident, True), "not a paging")
        # unmap with the bitmap: bounded, whole mappings only
        await expect(errno.EINVAL, client.unmap_dirty(dom, 0, (1 << 64) - 1), "bounded")
        await expect(errno.ENOENT, client.unmap_dirty(dom, BASE, MiB), "split")
        await expect(errno.ENOENT, client.unmap_dirty(dom, 0x4000_0000, MiB), "nothing")
        await expect(errno.EINVAL, client.unmap_dirty(dom, BASE, 2 * MiB, page_size=5))
        # nothing changed on any refusal
        unmapped, bitmap = await client.unmap_dirty(dom, BASE, 2 * MiB, page_size=MiB)
        assert unmapped == 2 * MiB and bits(bitmap) == []
