"""Reserved regions and IOVA ranges over a real socket, every errno path (iommufd selftest
``iommufd_ioas`` reserved/allowed/iova_ranges cases; SPEC §8.16)."""

from __future__ import annotations

import errno
import json

import pytest
import trio

import siov
from siov import cli
from siov_protocol import Command
from tests.conftest import RunningDaemon
from tests.integration.test_iommu_socket import expect

MiB = 1 << 20
MSI = (0xFEE0_0000, 0xFEEF_FFFF)
APERTURE_LAST = (1 << 47) - 1  # a 4-level domain: the lower canonical half


async def test_msi_window_is_every_devices_region(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        regions = await client.resv_regions(mdev.uuid)
        assert regions == [{"start": MSI[0], "last": MSI[1], "type": "msi"}]
        await expect(errno.ENOENT, client.resv_regions("00000000-0000-0000-0000-000000000000"))
        # its default domain reserves the window: a fixed map into it is EINVAL (iopt_check_iova)
        buf = await client.alloc(2 * MiB)
        default = mdev.default_domain_id
        await expect(errno.EINVAL, client.map(default, buf.phys, 4096, iova=MSI[0]), "reserved")
        await expect(errno.EINVAL, client.map(default, buf.phys, 2 * MiB, iova=MSI[1] + 1 - MiB))
        # EINVAL for the reserved range comes before EEXIST for an overlap, as in iommufd
        await client.map(default, buf.phys, 2 * MiB, iova=0xFEC0_0000)
        await expect(errno.EINVAL, client.map(default, buf.phys, 4 * MiB, iova=0xFEC0_0000))
        assert await client.iova_ranges(default) == [(0, MSI[0] - 1), (MSI[1] + 1, APERTURE_LAST)]


async def test_attach_with_a_mapping_in_the_window_is_eaddrinuse(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        uuid = mdev.uuid
        buf = await client.alloc(2 * MiB)
        dom = (await client.alloc_domain()).domain_id
        # nothing attached yet: the domain has no reserved range, the window maps
        assert await client.iova_ranges(dom) == [(0, APERTURE_LAST)]
        await client.map(dom, buf.phys, 4096, iova=MSI[0] + 0x1000)
        await expect(errno.EADDRINUSE, client.attach_device(dom, uuid), "msi region")
        await expect(errno.EADDRINUSE, client.attach_pasid(dom, uuid, 5), "msi region")
        other = (await client.alloc_domain()).domain_id
        await client.attach_pasid(other, uuid, 5)
        await expect(errno.EADDRINUSE, client.replace_pasid(dom, uuid, 5))
        group = await client.group(mdev.group_id)  # state kept on each refusal
        assert group.domain_id == mdev.default_domain_id
        await client.unmap(dom, MSI[0] + 0x1000, 4096)
        await client.attach_device(dom, uuid)
        assert len(await client.iova_ranges(dom)) == 2
        # auto-IOVA skips the window: 8 x 512 MiB fill 0..4 GiB around it
        big = await client.alloc(512 * MiB)
        iovas = [await client.map(dom, big.phys, 512 * MiB) for _ in range(8)]
        assert all(not (i <= MSI[1] and MSI[0] < i + 512 * MiB) for i in iovas)


async def test_emulator_adds_direct_and_reserved_regions(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu, siov.connect(siovd.path) as owner:
        dev = await emu.register_device("nic")
        uuid = dev.uuid
        regions = await emu.add_resv_region(uuid, 0x1000_0000, 0x100F_FFFF, "direct")
        assert regions[-1] == {"start": 0x1000_0000, "last": 0x100F_FFFF, "type": "direct"}
        await expect(errno.EINVAL, emu.add_resv_region(uuid, 0x2000_0000, 0x2000_0FFF, "msi"))
        await expect(errno.EINVAL, emu.add_resv_region(uuid, 0x2000_0001, 0x2000_0FFF))
        await expect(errno.EINVAL, emu.add_resv_region(uuid, 0x2000_0000, 0x2000_0FFE))
        await expect(errno.EINVAL, emu.add_resv_region(uuid, 0x3000_0000, 0x2000_0FFF))
        await expect(errno.ENOENT, owner.add_resv_region(uuid, 0x2000_0000, 0x2000_0FFF))
        await owner.claim_device(uuid, dev.token)
        dom = (await owner.alloc_domain()).domain_id
        buf = await owner.alloc(2 * MiB)
        await owner.map(dom, buf.phys, 2 * MiB, iova=0x4000_0000)
        await owner.attach_device(dom, uuid)
        await expect(errno.EINVAL, owner.map(dom, buf.phys, 4096, iova=0x1000_0000))
        # a new region over a mapping of a domain the device reaches: EADDRINUSE, not added
        await expect(errno.EADDRINUSE, emu.add_resv_region(uuid, 0x4000_0000, 0x4000_0FFF))
        assert len(await emu.resv_regions(uuid)) == 2
        await owner.add_resv_region(uuid, 0x5000_0000, 0x5000_0FFF)  # the owner may too
        await expect(errno.EINVAL, owner.map(dom, buf.phys, 4096, iova=0x5000_0000))
        for i in range(14):  # 16 beyond the MSI window at most
            await emu.add_resv_region(uuid, 0x6000_0000 + i * 0x1000, 0x6000_0FFF + i * 0x1000)
        await expect(errno.ENOSPC, emu.add_resv_region(uuid, 0x7000_0000, 0x7000_0FFF))


async def test_allow_iovas(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        dom = (await client.alloc_domain()).domain_id
        await client.attach_device(dom, mdev.uuid)
        await expect(errno.EADDRINUSE, client.allow_iovas(dom, [(0xF000_0000, 0xFFFF_FFFF)]))
        await expect(errno.EINVAL, client.allow_iovas(dom, [(0x1001, 0x1FFF)]))
        await expect(errno.EINVAL, client.allow_iovas(dom, [(0x1000, 0x1FFE)]))
        await expect(errno.EINVAL, client.allow_iovas(dom, [(0x3000, 0x1FFF)]))
        assert len(await client.iova_ranges(dom)) == 2  # nothing changed on refusals
        await client.allow_iovas(dom, [(0x1_0000_0000, 0x1_3FFF_FFFF), (0x20_0000, 0x3F_FFFF)])
        assert await client.iova_ranges(dom) == [
            (0x20_0000, 0x3F_FFFF),
            (0x1_0000_0000, 0x1_3FFF_FFFF),
        ]
        buf = await client.alloc(4 * MiB)
        assert await client.map(dom, buf.phys, 2 * MiB) == 0x20_0000
        assert await client.map(dom, buf.phys, 4 * MiB) == 0x1_0000_0000
        # a fixed IOVA outside the allowed ranges still maps (iommufd: allowed bounds the allocator)
        await client.map(dom, buf.phys, 4096, iova=0x800_0000)
        await expect(errno.EMSGSIZE, client.iova_ranges(dom, num_iovas=1), "2 IOVA ranges")
        assert len(await client.iova_ranges(dom, num_iovas=2)) == 2
        # a device whose region falls in an allowed range cannot attach to the domain
        emu = await client.register_device("emu")
        await client.add_resv_region(emu.uuid, 0x1_2000_0000, 0x1_2000_0FFF)
        await expect(errno.EADDRINUSE, client.attach_pasid(dom, emu.uuid, 3), "allowed range")
        await client.allow_iovas(dom, [])  # the whole aperture again
        assert await client.iova_ranges(dom) == [
            (0, MSI[0] - 1),
            (MSI[1] + 1, APERTURE_LAST),
        ]


async def test_wrong_domains_and_bad_bodies(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        ident = (await client.alloc_domain("identity")).domain_id
        await expect(errno.EINVAL, client.iova_ranges(ident), "not a paging domain")
        await expect(errno.EINVAL, client.allow_iovas(ident, []))
        await expect(errno.ENOENT, client.iova_ranges(999))
        await expect(errno.ENOENT, client.allow_iovas(999, []))
        dom = (await client.alloc_domain()).domain_id
        too_many = [{"start": i << 20, "last": (i << 20) + 4095} for i in range(257)]
        await expect(
            errno.ERANGE, client.call(Command.ALLOW_IOVAS, {"domain": dom, "ranges": too_many})
        )
        await expect(errno.EINVAL, client.call(Command.ALLOW_IOVAS, {"domain": dom, "ranges": [1]}))
        await expect(
            errno.ERANGE, client.call(Command.IOVA_RANGES, {"domain": dom, "num_iovas": -1})
        )
        # the connection survived every refusal: the domain is still there, unrestricted
        assert await client.iova_ranges(dom) == [(0, APERTURE_LAST)]


def _json_line(text: str) -> object:
    """siovctl's one JSON line among the in-process daemon's log lines."""
    (line,) = [ln for ln in text.splitlines() if ln.startswith("[{")]
    return json.loads(line)


async def test_siovctl_resv_regions_and_iova_ranges(
    siovd: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_mdev("siov_test", "siov_test-1")
        base = ["--socket", siovd.path, "--json"]
        rc = await trio.to_thread.run_sync(cli.main, [*base, "resv-regions", mdev.uuid])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert _json_line(out.out) == [{"start": MSI[0], "last": MSI[1], "type": "msi"}]
        dom = str(mdev.default_domain_id)
        rc = await trio.to_thread.run_sync(cli.main, [*base, "iova-ranges", dom])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert _json_line(out.out) == [
            {"start": 0, "last": MSI[0] - 1},
            {"start": MSI[1] + 1, "last": APERTURE_LAST},
        ]
