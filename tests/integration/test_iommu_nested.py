"""Nested translation over a real socket (iommufd NEST_PARENT + ``iommu_hwpt_vtd_s1``,
HWPT_INVALIDATE with ``iommu_hwpt_vtd_s1_invalidate``; SPEC §8.20). Stage 1 is written by
the test in VT-d first-stage format at guest-physical addresses; stage 2 is the parent's MAP."""

from __future__ import annotations

import errno
import struct

import siov
from siov_protocol import Command
from tests.conftest import RunningDaemon
from tests.integration.test_iommu_socket import expect

MiB = 1 << 20
P_RW_US = 0x7
IOVA = 0x4000_0000  # PML4[0] -> PDPT[1] -> PD[0] -> PT[0]
# guest-physical layout: tables in the first MiB, data in the second
ROOT, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
DATA = 0x10_0000


class Guest:
    """Stage-1 tables written into the buffer stage 2 maps at guest-physical 0."""

    def __init__(self, buf: siov.Buffer) -> None:
        self.buf = buf

    def put(self, table_gpa: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.buf.view, table_gpa + 8 * index, value)

    def build(self) -> None:
        self.put(ROOT, 0, PDPT | P_RW_US)
        self.put(PDPT, 1, PD | P_RW_US)
        self.put(PD, 0, PT | P_RW_US)
        self.put(PT, 0, DATA | P_RW_US)


async def nested_setup(client: siov.Client) -> tuple[siov.Buffer, int, int, str, Guest]:
    buf = await client.alloc(2 * MiB)
    parent = (await client.alloc_domain(nest_parent=True)).domain_id
    await client.map(parent, buf.phys, MiB, iova=0)  # tables
    await client.map(parent, buf.phys + MiB, MiB, iova=MiB)  # data
    guest = Guest(buf)
    guest.build()
    nested = (await client.alloc_nested(parent, ROOT))["domain_id"]
    dev = (await client.register_device("vdev")).uuid
    await client.attach_device(nested, dev)
    return buf, parent, nested, dev, guest


async def test_two_stage_dma(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        buf, _parent, _nested, dev, guest = await nested_setup(client)
        await client.dma_write(dev, IOVA + 8, b"nested")
        assert bytes(buf.view[MiB + 8 : MiB + 14]) == b"nested"
        assert await client.dma_read(dev, IOVA + 8, 6) == b"nested"
        out = await client.translate(dev, IOVA, 4096)
        assert out.runs[0].phys == buf.phys + MiB and out.fault is None
        # A set by the walker in stage 1 (through stage 2) and D on the written leaf
        (leaf,) = struct.unpack_from("<Q", buf.view, PT)
        assert leaf & 0x20 and leaf & 0x40
        # a stage-1 table pointer stage 2 does not translate: 0x70
        guest.put(PD, 1, 0x80_0000 | P_RW_US)  # 8 MiB: no stage-2 mapping there
        fault = (await client.translate(dev, IOVA + 2 * MiB, 4096)).fault
        assert fault.reason == 0x70
        # a leaf whose output stage 2 does not translate: stage 2's reason (not present)
        guest.put(PT, 1, 0x90_0000 | P_RW_US)
        fault = (await client.translate(dev, IOVA + 0x1000, 4096)).fault
        assert fault.reason == 0x71


async def test_invalidation_both_stages(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        buf, parent, nested, dev, guest = await nested_setup(client)
        assert (await client.translate(dev, IOVA, 4096)).runs[0].phys == buf.phys + MiB
        # stage 1 changes: stale until the owner invalidates (as a guest driver must)
        guest.put(PT, 0, (DATA + 0x1000) | P_RW_US)
        assert (await client.translate(dev, IOVA, 4096)).runs[0].phys == buf.phys + MiB
        assert await client.hwpt_invalidate(nested, [(IOVA, 1, 1)]) == 1
        out = await client.translate(dev, IOVA, 4096)
        assert out.runs[0].phys == buf.phys + MiB + 0x1000
        # stage 2 changes: the nested domain's cached translation goes with the unmap
        assert await client.unmap(parent, MiB, MiB) == MiB
        fault = (await client.translate(dev, IOVA, 4096)).fault
        assert fault is not None and fault.reason == 0x71
        # stage 2 read-only: a write faults even though stage 1 allows it
        await client.map(parent, buf.phys + MiB, MiB, iova=MiB, write=False)
        assert await client.hwpt_invalidate(nested, [(0, (1 << 64) - 1, 0)]) == 1
        assert (await client.translate(dev, IOVA, 4096)).fault is None
        fault = (await client.translate(dev, IOVA, 4096, write=True)).fault
        assert fault.reason == 0x85


async def test_nested_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        buf, parent, nested, dev, _guest = await nested_setup(client)
        plain = (await client.alloc_domain()).domain_id
        await expect(errno.EINVAL, client.alloc_nested(plain, ROOT), "not a nesting parent")
        await expect(errno.EINVAL, client.alloc_nested(parent, ROOT + 8), "aligned")
        await expect(errno.EINVAL, client.alloc_nested(parent, ROOT, addr_width=39))
        await expect(errno.EOPNOTSUPP, client.alloc_nested(parent, ROOT, flags=8))
        await expect(errno.ENOENT, client.alloc_nested(999, ROOT))
        await expect(errno.EOPNOTSUPP, client.alloc_domain("identity", nest_parent=True))
        await expect(errno.EOPNOTSUPP, client.map(nested, buf.phys, 4096, iova=0))
        await expect(errno.EBUSY, client.free_domain(parent), "nested")
        await expect(errno.EINVAL, client.hwpt_invalidate(plain, [(0, 1, 0)]), "not a nested")
        bad = [(IOVA, 1, 0), (IOVA + 1, 1, 0)]
        await expect(errno.EINVAL, client.hwpt_invalidate(nested, bad), "1 handled")
        await expect(errno.EINVAL, client.hwpt_invalidate(nested, [(IOVA, 0, 0)]), "0 handled")
        await expect(errno.EOPNOTSUPP, client.hwpt_invalidate(nested, [(IOVA, 1, 2)]))
        await expect(errno.EINVAL, client.hwpt_invalidate(nested, [((1 << 64) - 4096, 2, 0)]))
        too_many = [{"addr": 0, "npages": 1}] * 4097
        body = {"domain": nested, "entries": too_many}
        await expect(errno.ERANGE, client.call(Command.HWPT_INVALIDATE, body))
        assert await client.hwpt_invalidate(nested, []) == 0  # probes the type
        # the nested domain goes first, then its parent
        await client.detach_device(dev)
        await client.free_domain(nested)
        await client.free_domain(parent)
