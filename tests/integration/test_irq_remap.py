"""Interrupt remapping for mdev MSI-X over the socket (SPEC §8.22), iommufd-selftest style:
remapped delivery, the IEC's staleness until invalidation, every IR fault reason, another
client's device, and the errno of each bad input."""

from __future__ import annotations

import errno
import os

import siov
from siov import dsa
from siov.iommu_ext import msi_address
from siov_protocol import Command
from siov_protocol.messages_accel import IRQ_MSIX, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_NONE
from tests.conftest import DaemonProcess, RunningDaemon
from tests.helpers import asettle, expect

EVENTFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


async def fire(client: siov.Client, uuid: str, vector: int) -> None:
    """The accelerator raises ``vector`` (DEVICE_SET_IRQS loopback trigger)."""
    body = {
        "device": uuid,
        "flags": IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
        "index": IRQ_MSIX,
        "start": vector,
        "count": 1,
    }
    await client.call(Command.DEVICE_SET_IRQS, body)


def count(fd: int) -> int:
    """An eventfd's count, 0 when it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


async def with_mdev(client: siov.Client) -> tuple[siov.Mdev, list[int]]:
    mdev = await client.create_dsa_mdev("dsa-1dwq")
    fds = [os.eventfd(0, EVENTFD_FLAGS) for _ in range(2)]
    await mdev.set_irqs(fds)
    return mdev, fds


async def test_remapped_delivery_goes_to_the_entrys_vector(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, fds = await with_mdev(client)
        try:
            await fire(client, mdev.uuid, 0)  # direct delivery first
            assert (count(fds[0]), count(fds[1])) == (1, 0)
            assert await client.ir_table_set(256) == 256
            assert await client.ir_set_entry(5, 1, source=mdev.uuid) is False
            assert msi_address(5) == 0xFEE000B0
            assert await client.set_msi_remap(mdev.uuid, 0, msi_address(5)) == 5
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (0, 1)  # vector 0 lands on vector 1
            # SHV: index = handle + subhandle (data)
            assert await client.set_msi_remap(mdev.uuid, 0, msi_address(4, shv=True), 1) == 5
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (0, 1)
            # back to direct delivery
            assert await client.set_msi_remap(mdev.uuid, 0, None) is None
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (1, 0)
            stats = (await client.call(Command.STATS))["accel"]
            assert stats["irqs_remapped"] == 2 and stats["irqs_blocked"] == 0
        finally:
            for fd in fds:
                os.close(fd)


async def test_a_changed_entry_stays_stale_until_iec_invalidation(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, fds = await with_mdev(client)
        try:
            await client.ir_table_set(16)
            await client.ir_set_entry(2, 1)
            await client.set_msi_remap(mdev.uuid, 0, msi_address(2))
            await fire(client, mdev.uuid, 0)  # fills the IEC
            assert (count(fds[0]), count(fds[1])) == (0, 1)
            assert await client.ir_set_entry(2, 0) is True  # the IEC holds the old copy
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (0, 1)  # stale: still vector 1
            # an index-selective invalidation elsewhere leaves it
            assert await client.ir_invalidate_iec(8, 3) == 0
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (0, 1)
            # one covering it drops it: the new entry is read
            assert await client.ir_invalidate_iec(0, 2) == 1
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (1, 0)
            # a cleared entry is still used until the (global) invalidation
            assert await client.ir_clear_entry(2) is True
            await fire(client, mdev.uuid, 0)
            assert count(fds[0]) == 1
            assert await client.ir_invalidate_iec() == 1
            await fire(client, mdev.uuid, 0)
            assert count(fds[0]) == 0
            fault = await client.next_event(Command.EVENT_FAULT)
            assert fault.body["reason"] == 0x22 and fault.body["iova"] == 2
        finally:
            for fd in fds:
                os.close(fd)


async def test_each_ir_fault_reason(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, fds = await with_mdev(client)
        other = await client.create_dsa_mdev("dsa-1swq")
        uuid = mdev.uuid
        try:

            async def blocked(address: int, reason: int, index: int, data: int = 0) -> None:
                await client.set_msi_remap(uuid, 0, address, data)
                await fire(client, uuid, 0)
                assert (count(fds[0]), count(fds[1])) == (0, 0)  # not delivered
                fault = await client.next_event(Command.EVENT_FAULT)
                body = fault.body
                assert (body["reason"], body["iova"], body["device"]) == (reason, index, uuid)
                assert body["pasid"] == 0 and body["write"] is True and body["domain"] is None
                assert body["reason_name"]

            await blocked(msi_address(1), 0x23, 1)  # no table yet
            await client.ir_table_set(8)
            await blocked(0xFED000B0, 0x20, 0)  # not 0xFEExxxxx
            await blocked(0xFEE000A0, 0x25, 0)  # compatibility format
            await blocked(msi_address(8), 0x21, 8)  # beyond 8 entries
            await blocked(msi_address(6, shv=True), 0x21, 9, data=3)  # handle + subhandle
            await blocked(msi_address(1), 0x22, 1)  # never set
            await client.ir_set_entry(1, 1, present=False)
            await blocked(msi_address(1), 0x22, 1)  # set, not present
            await client.ir_set_entry(3, 1, rsvd=1)
            await blocked(msi_address(3), 0x24, 3)
            await client.ir_set_entry(4, 1, source=other.uuid)
            await blocked(msi_address(4), 0x26, 4)
            # FPD: blocked without a record; the next fault is the next one raised
            await client.ir_set_entry(5, 1, source=other.uuid, fpd=True)
            await client.set_msi_remap(uuid, 0, msi_address(5))
            await fire(client, uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (0, 0)
            await blocked(msi_address(4), 0x26, 4)
            stats = (await client.call(Command.STATS))["accel"]
            assert stats["irqs_blocked"] == 11 and stats["irqs_remapped"] == 0
        finally:
            for fd in fds:
                os.close(fd)


async def test_another_clients_device_and_table_are_refused(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client, siov.connect(siovd.path) as intruder:
        mdev, fds = await with_mdev(client)
        try:
            await intruder.ir_table_set(16)
            await expect(errno.ENOENT, intruder.set_msi_remap(mdev.uuid, 0, msi_address(1)))
            await expect(errno.ENOENT, intruder.ir_set_entry(1, 1, source=mdev.uuid))
            # tables are per client: the owner's vector faults on its own (absent) table
            await intruder.ir_set_entry(1, 1)
            await client.set_msi_remap(mdev.uuid, 0, msi_address(1))
            await fire(client, mdev.uuid, 0)
            assert (count(fds[0]), count(fds[1])) == (0, 0)
            fault = await client.next_event(Command.EVENT_FAULT)
            assert fault.body["reason"] == 0x23
        finally:
            for fd in fds:
                os.close(fd)


async def test_bad_input_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_dsa_mdev("dsa-1dwq")
        plain = await client.create_mdev("siov_test", "siov_test-1")
        await expect(errno.ENOENT, client.ir_set_entry(0, 0), "IR_TABLE_SET first")
        await expect(errno.ENOENT, client.ir_clear_entry(0), "IR_TABLE_SET first")
        await expect(errno.ENOENT, client.ir_invalidate_iec(), "IR_TABLE_SET first")
        await expect(errno.EINVAL, client.ir_table_set(3), "power of two")
        await expect(errno.EINVAL, client.ir_table_set(1), "power of two")
        await expect(errno.ERANGE, client.ir_table_set(1 << 17), "outside")  # the schema bound
        await client.ir_table_set(16)
        await expect(errno.EINVAL, client.ir_set_entry(16, 0), "the table has 16 entries")
        await expect(errno.EINVAL, client.ir_set_entry(0, 2), "vector 2")
        await expect(errno.ENODEV, client.ir_set_entry(0, 0, source=plain.uuid), "accelerator")
        await expect(errno.ENOENT, client.ir_clear_entry(3), "not set")
        await expect(errno.EINVAL, client.ir_clear_entry(16), "the table has 16 entries")
        await expect(errno.EINVAL, client.ir_invalidate_iec(None, 1), "no mask")
        await expect(errno.EINVAL, client.ir_invalidate_iec(0, 17), "at most 16")
        await expect(errno.EINVAL, client.ir_invalidate_iec(2, 2), "not aligned")
        await expect(errno.EINVAL, client.ir_invalidate_iec(16, 0), "the table has 16 entries")
        await expect(errno.EINVAL, client.set_msi_remap(mdev.uuid, 2, msi_address(0)), "vector 2")
        await expect(errno.EINVAL, client.set_msi_remap(mdev.uuid, 0, None, 1), "needs an address")
        await expect(errno.ENODEV, client.set_msi_remap(plain.uuid, 0, msi_address(0)))
        # a removed table: its entries go with it
        assert await client.ir_table_set(0) == 0
        await expect(errno.ENOENT, client.ir_set_entry(0, 0), "IR_TABLE_SET first")
        # a message that names no handle is accepted and answers index nil
        assert await client.set_msi_remap(mdev.uuid, 0, 0xFEE000A0) is None


def test_blocking_client_methods(siovd_proc: DaemonProcess) -> None:
    with siov.BlockingClient(siovd_proc.path) as client:
        assert client.ir_table_set(4) == 4
        assert client.ir_set_entry(1, 0) is False
        assert client.ir_clear_entry(1) is False
        assert client.ir_invalidate_iec(0, 2) == 0


async def test_completion_interrupts_are_remapped(siovd: RunningDaemon) -> None:
    """A descriptor's completion interrupt (RCI, int_handle 1) takes the same path: remapped
    to vector 0's eventfd; once the entry is cleared and the IEC invalidated, blocked."""
    async with siov.connect(siovd.path) as client:
        mdev, fds = await with_mdev(client)
        buf = await client.alloc(1 << 20)
        assert mdev.domain_id is not None
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        rci = dsa.IDXD_OP_FLAG_RCI
        try:
            await client.ir_table_set(4)
            await client.ir_set_entry(3, 0, source=mdev.uuid)
            await client.set_msi_remap(mdev.uuid, 1, msi_address(3))
            descs = [
                dsa.noop(completion=0x1000 + 32 * i, flags=rci, int_handle=1) for i in range(3)
            ]
            assert (await mdev.submit(descs)).all_accepted
            got = [0]

            def all_three() -> bool:
                got[0] += count(fds[0])
                return got[0] == 3

            await asettle(all_three, "three remapped completion interrupts on vector 0")
            assert count(fds[1]) == 0
            await client.ir_clear_entry(3)
            await client.ir_invalidate_iec()
            last = dsa.noop(completion=0x2000, flags=rci, int_handle=1)
            assert (await mdev.submit([last])).all_accepted
            fault = await client.next_event(Command.EVENT_FAULT)
            assert (fault.body["reason"], fault.body["iova"]) == (0x22, 3)
            assert (count(fds[0]), count(fds[1])) == (0, 0)
        finally:
            for fd in fds:
                os.close(fd)


async def test_software_error_interrupts_are_remapped(siovd: RunningDaemon) -> None:
    """A software error signals vector 0, an MSI like any other: remapped to the entry's
    vector (its eventfd, and EVENT_IRQ naming that vector with the swerr); blocked once the
    entry is cleared and the IEC invalidated, when only the fault record says so."""
    async with siov.connect(siovd.path) as client:
        mdev, fds = await with_mdev(client)
        buf = await client.alloc(1 << 20)
        assert mdev.domain_id is not None
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        try:
            await client.ir_table_set(4)
            await client.ir_set_entry(2, 1, source=mdev.uuid)
            await client.set_msi_remap(mdev.uuid, 0, msi_address(2))
            # a completion record not 32-byte aligned: no record can report the error
            bad = dsa.memmove(0x8000, 0x4000, 64, completion=0x1008)
            assert (await mdev.submit([bad])).all_accepted
            await asettle(lambda: bool(mdev.software_errors), "the EVENT_IRQ with its swerr")
            assert mdev.software_errors[-1]["status"] == dsa.DSA_COMP_CRA_ALIGN
            assert (mdev.irq_counts[0], mdev.irq_counts[1]) == (0, 1)  # it names vector 1
            assert (count(fds[0]), count(fds[1])) == (0, 1)
            await client.ir_clear_entry(2)
            await client.ir_invalidate_iec()
            assert (await mdev.submit([bad])).all_accepted
            fault = await client.next_event(Command.EVENT_FAULT)
            assert (fault.body["reason"], fault.body["iova"]) == (0x22, 2)
            assert (count(fds[0]), count(fds[1])) == (0, 0)
            assert len(mdev.software_errors) == 1 and mdev.irq_counts[1] == 1
            stats = (await client.call(Command.STATS))["accel"]
            assert stats["software_errors"] == 2
            assert stats["irqs_remapped"] == 1 and stats["irqs_blocked"] == 1
        finally:
            for fd in fds:
                os.close(fd)
