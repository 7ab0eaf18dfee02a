"""Descriptors through a real socket: every opcode, invalid descriptors, faults, block-on-fault,
shared-WQ retry and dedicated-WQ overflow; results checked in the client's own memory."""

from __future__ import annotations

import errno
import os
import struct

import crc32c
import pytest
import trio

import siov
from siov import dsa
from siov_protocol import Command
from tests.conftest import RunningDaemon, make_config, start_daemon
from tests.helpers import asettle

MiB = 1 << 20
SIZE = 8 * MiB
SRC, SRC2, DST, DST2 = 0x0, 0x10_0000, 0x20_0000, 0x30_0000
DELTA = 0x40_0000
LIST = 0x50_0000  # batch descriptor lists
CR = 0x70_0000  # completion records, 32 bytes apart


async def setup(
    client: siov.Client, type_id: str = "dsa-1dwq", size: int = SIZE
) -> tuple[siov.Mdev, siov.Buffer]:
    mdev = await client.create_dsa_mdev(type_id)
    buf = await client.alloc(size)
    assert mdev.domain_id is not None
    await client.map(mdev.domain_id, buf.phys, size, iova=0)
    return mdev, buf


def cr(index: int) -> int:
    """The IOVA of completion record ``index``."""
    return CR + 32 * index


def rec(records: memoryview, index: int) -> memoryview:
    """Completion record ``index`` in the client's memory (``records`` is what CR maps to)."""
    return records[32 * index : 32 * index + 32]


def records_of(buf: siov.Buffer) -> memoryview:
    """The record area of a buffer mapped at IOVA 0."""
    return buf.view[CR:]


async def run_all(
    mdev: siov.Mdev, records: memoryview, descriptors: list[bytes], start: int = 0
) -> list[dsa.CompletionRecord]:
    """Submit ``descriptors`` (whose records are ``start``, ``start + 1``, ...) in one SUBMIT
    and wait for every record."""
    for i in range(len(descriptors)):
        rec(records, start + i)[:] = bytes(32)
    result = await mdev.submit(descriptors)
    assert result.all_accepted, result
    with trio.fail_after(10):
        return [await mdev.wait(rec(records, start + i)) for i in range(len(descriptors))]


async def test_every_opcode_through_one_submit(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, buf = await setup(client)
        mem = buf.view
        data = os.urandom(4096)
        mem[SRC : SRC + 4096] = data
        mem[SRC2 : SRC2 + 4096] = data[:777] + bytes([data[777] ^ 0xFF]) + data[778:]
        mem[0x60_0000:0x60_0009] = b"123456789"
        mem[0x60_1000:0x60_1040] = struct.pack("<Q", 0x0123456789ABCDEF) * 8
        delta_a = bytes(16)
        delta_b = bytes(8) + bytes.fromhex("1122334455667788")
        mem[0x60_2000:0x60_2010] = delta_a
        mem[0x60_3000:0x60_3010] = delta_b
        mem[0x60_4000:0x60_4010] = delta_a  # apply-delta target
        batch_list = dsa.join_batch(
            [
                dsa.memmove(DST2 + 0x8000, SRC, 64, completion=cr(20)),
                dsa.fill(DST2 + 0x9000, 0xAB, 64, completion=cr(21)),
            ]
        )
        mem[LIST : LIST + len(batch_list)] = batch_list
        descriptors = [
            dsa.noop(completion=cr(0)),
            dsa.memmove(DST, SRC, 4096, completion=cr(1)),
            dsa.fill(DST + 0x2000, 0x1122334455667788, 100, completion=cr(2)),
            dsa.compare(SRC, SRC, 4096, completion=cr(3)),
            dsa.compare(SRC, SRC2, 4096, completion=cr(4)),
            dsa.compval(0x60_1000, 0x0123456789ABCDEF, 64, completion=cr(5)),
            dsa.dualcast(DST2, DST2 + 0x1000, SRC, 256, completion=cr(6)),
            dsa.crcgen(0x60_0000, 9, completion=cr(7)),
            dsa.copy_crc(DST + 0x4000, 0x60_0000, 9, completion=cr(8)),
            dsa.create_delta(0x60_2000, 0x60_3000, 16, DELTA, 80, completion=cr(9)),
            dsa.cflush(DST, 4096, completion=cr(10)),
            dsa.batch(LIST, 2, completion=cr(11)),
            dsa.drain(completion=cr(12)),
            dsa.fill(DST + 0x6000, bytes(range(16)), 40, completion=cr(13)),
        ]
        records = await run_all(mdev, records_of(buf), descriptors)
        codes = [r.code for r in records]
        assert codes == [dsa.DSA_COMP_SUCCESS] * len(descriptors), [
            dsa.status_name(c) for c in codes
        ]
        assert mem[DST : DST + 4096] == data
        assert (
            mem[DST + 0x2000 : DST + 0x2000 + 100]
            == (struct.pack("<Q", 0x1122334455667788) * 13)[:100]
        )
        assert records[3].result == 0
        assert records[4].result == 1 and records[4].bytes_completed == 777
        assert records[5].result == 0
        assert mem[DST2 : DST2 + 256] == data[:256] == mem[DST2 + 0x1000 : DST2 + 0x1100]
        assert records[7].crc_val == 0xE3069283  # the CRC-32C check value
        assert records[8].crc_val == 0xE3069283 and mem[DST + 0x4000 : DST + 0x4009] == b"123456789"
        assert records[9].result == 1 and records[9].delta_rec_size == 10
        assert mem[DELTA : DELTA + 10] == bytes.fromhex("01001122334455667788")
        assert records[11].descs_completed == 2
        assert dsa.parse_completion(rec(records_of(buf), 20)).code == dsa.DSA_COMP_SUCCESS
        assert mem[DST2 + 0x8000 : DST2 + 0x8040] == data[:64]
        assert (
            mem[DST2 + 0x9000 : DST2 + 0x9040]
            == bytes([0xAB]) + bytes(7) + (bytes([0xAB]) + bytes(7)) * 7
        )
        assert mem[DST + 0x6000 : DST + 0x6028] == (bytes(range(16)) * 3)[:40]

        # apply the delta the create-delta wrote: the target becomes src2
        (done,) = await run_all(
            mdev, records_of(buf), [dsa.apply_delta(0x60_4000, DELTA, 10, 16, completion=cr(0))]
        )
        assert done.code == dsa.DSA_COMP_SUCCESS and mem[0x60_4000:0x60_4010] == delta_b

        # an overlapping MEMMOVE copies as memmove(3) does
        mem[SRC : SRC + 1100] = bytes(range(256)) * 4 + bytes(76)
        expected = bytearray(mem[SRC : SRC + 1100])
        expected[100:1100] = expected[0:1000]
        (done,) = await run_all(
            mdev, records_of(buf), [dsa.memmove(SRC + 100, SRC, 1000, completion=cr(0))]
        )
        assert done.code == dsa.DSA_COMP_SUCCESS and mem[SRC : SRC + 1100] == expected

        # CRC chaining: the CRC of a prefix seeds the rest
        (first,) = await run_all(
            mdev, records_of(buf), [dsa.crcgen(0x60_0000, 5, completion=cr(0))]
        )
        (rest,) = await run_all(
            mdev, records_of(buf), [dsa.crcgen(0x60_0005, 4, seed=first.crc_val, completion=cr(0))]
        )
        assert rest.crc_val == 0xE3069283


async def test_invalid_descriptors_complete_with_their_status(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, buf = await setup(client)
        bad_opcode = bytearray(dsa.noop(completion=cr(0)))
        bad_opcode[7] = dsa.DSA_OPCODE_TRANSL_FETCH  # not in OPCAP
        descriptors = [
            bytes(bad_opcode),
            dsa.memmove(DST, SRC, 64, completion=cr(1), flags=0x400000),  # reserved flag
            dsa.memmove(DST, SRC, (2 << 30) + 1, completion=cr(2)),  # over max transfer size
            dsa.batch(LIST, 1, completion=cr(3)),  # a batch of one
            dsa.batch(LIST + 8, 2, completion=cr(4)),  # list not 64-byte aligned
            dsa.dualcast(DST, DST2 + 8, SRC, 64, completion=cr(5)),  # bits 11:0 differ
            dsa.copy_crc(SRC + 8, SRC, 64, completion=cr(6)),  # overlapping buffers
            dsa.noop(completion=cr(7), flags=dsa.IDXD_OP_FLAG_RCI, int_handle=2),  # 2 vectors
            dsa.create_delta(SRC, SRC2, 64, DELTA, 79, completion=cr(8)),  # below 80 bytes
        ]
        records = await run_all(mdev, records_of(buf), descriptors)
        assert [r.code for r in records] == [
            dsa.DSA_COMP_BAD_OPCODE,
            dsa.DSA_COMP_INVALID_FLAGS,
            dsa.DSA_COMP_XFER_ERANGE,
            dsa.DSA_COMP_DESC_CNT_ERANGE,
            dsa.DSA_COMP_DESCLIST_ALIGN,
            dsa.DSA_COMP_DCAST_ERR,
            dsa.DSA_COMP_OVERLAP_BUFFERS,
            dsa.DSA_COMP_INT_HANDLE_INVAL,
            dsa.DSA_COMP_DR_ERANGE,
        ]
        assert records[1].invalid_flags == 0x400000
        # a misaligned completion record cannot be written: a software error reports it
        result = await mdev.submit(dsa.memmove(DST, SRC, 64, completion=CR + 8))
        assert result.all_accepted
        await asettle(lambda: bool(mdev.software_errors), "an EVENT_IRQ reports it", 5)
        swerr = mdev.software_errors[-1]
        assert swerr["status"] == dsa.DSA_COMP_CRA_ALIGN and swerr["completion_addr"] == CR + 8
        assert mdev.irq_counts[0] == 1


async def test_faults_complete_partially(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(4 * MiB)
        # map 3 pages of source, 8 of destination, and the records; leave the rest unmapped
        await client.map(mdev.domain_id, buf.phys, 3 * 4096, iova=0x10_0000)
        await client.map(mdev.domain_id, buf.phys + MiB, 2 * 4096, iova=0x20_0000)
        await client.map(mdev.domain_id, buf.phys + 3 * MiB, 4096, iova=CR)
        buf.view[: 3 * 4096] = os.urandom(3 * 4096)
        records = await run_all(
            mdev,
            buf.view[3 * MiB :],
            [
                dsa.memmove(0x20_0000, 0x10_0000, 2 * 4096, completion=cr(0)),  # fits
                dsa.memmove(0x20_0000, 0x10_0000 + 4096, 3 * 4096, completion=cr(1)),  # src
                dsa.memmove(0x20_0000 + 4096, 0x10_0000, 3 * 4096, completion=cr(2)),  # dst
                dsa.crcgen(0x10_0000, 4 * 4096, completion=cr(3)),
            ],
        )
        assert records[0].code == dsa.DSA_COMP_SUCCESS
        src_fault = records[1]
        assert src_fault.code == dsa.DSA_COMP_PAGE_FAULT_NOBOF and not src_fault.fault_on_write
        assert src_fault.bytes_completed == 2 * 4096
        assert src_fault.fault_addr == 0x10_0000 + 3 * 4096
        dst_fault = records[2]
        assert dst_fault.code == dsa.DSA_COMP_PAGE_FAULT_NOBOF and dst_fault.fault_on_write
        assert dst_fault.bytes_completed == 4096 and dst_fault.fault_addr == 0x20_0000 + 2 * 4096
        assert buf.view[MiB + 4096 : MiB + 2 * 4096] == buf.view[:4096]
        # a partial CRC is a seed: resume it after mapping the rest
        partial = records[3]
        assert partial.bytes_completed == 3 * 4096
        await client.map(mdev.domain_id, buf.phys + 3 * 4096, 4096, iova=0x10_0000 + 3 * 4096)
        (rest,) = await run_all(
            mdev,
            buf.view[3 * MiB :],
            [dsa.crcgen(0x10_0000 + 3 * 4096, 4096, seed=partial.crc_val, completion=cr(0))],
        )
        assert rest.crc_val == crc32c.crc32c(bytes(buf.view[: 4 * 4096]))


async def _page_request(client: siov.Client) -> siov.Event:
    """The next page request (the test subscribed with ``page_requests()`` before submitting:
    the request may arrive in the same read as SUBMIT's reply)."""
    with trio.fail_after(10):
        return await client.page_requests().receive()


async def test_block_on_fault_resumes_after_success(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        client.page_requests()
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(4 * MiB)
        buf.view[: 4 * 4096] = os.urandom(4 * 4096)
        await client.map(mdev.domain_id, buf.phys, 2 * 4096, iova=0x10_0000)
        await client.map(mdev.domain_id, buf.phys + MiB, 4 * 4096, iova=0x20_0000)
        await client.map(mdev.domain_id, buf.phys + 3 * MiB, 4096, iova=CR)
        records = buf.view[3 * MiB :]
        rec(records, 0)[:] = bytes(32)
        desc = dsa.memmove(
            0x20_0000, 0x10_0000, 4 * 4096, completion=cr(0), flags=dsa.IDXD_OP_FLAG_BOF
        )
        assert (await mdev.submit(desc)).all_accepted
        request = await _page_request(client)
        assert request.body["device"] == mdev.uuid
        assert request.body["iova"] == 0x10_0000 + 2 * 4096 and not request.body["write"]
        assert request.body["pasid"] == mdev.default_pasid
        assert request.body["domain"] == mdev.domain_id
        assert rec(records, 0)[0] == 0  # still waiting
        # other work keeps flowing meanwhile
        (other,) = await run_all(mdev, records, [dsa.noop(completion=cr(1))], start=1)
        assert other.code == dsa.DSA_COMP_SUCCESS
        await client.map(mdev.domain_id, buf.phys + 2 * 4096, 2 * 4096, iova=0x10_0000 + 2 * 4096)
        await client.page_response(request.body["request"], 0)
        with trio.fail_after(10):
            done = await mdev.wait(rec(records, 0))
        assert done.code == dsa.DSA_COMP_SUCCESS
        assert buf.view[MiB : MiB + 4 * 4096] == buf.view[: 4 * 4096]
        with pytest.raises(siov.NotFound):  # answered already
            await client.page_response(request.body["request"], 0)


async def test_block_on_fault_invalid_response_completes_with_the_fault(
    siovd: RunningDaemon,
) -> None:
    async with siov.connect(siovd.path) as client:
        client.page_requests()
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(4 * MiB)
        await client.map(mdev.domain_id, buf.phys, 4096, iova=0x10_0000)
        await client.map(mdev.domain_id, buf.phys + MiB, 4096, iova=0x20_0000)  # dst: 1 page
        await client.map(mdev.domain_id, buf.phys + 3 * MiB, 4096, iova=CR)
        records = buf.view[3 * MiB :]
        rec(records, 0)[:] = bytes(32)
        desc = dsa.fill(0x20_0000, 0x55, 3 * 4096, completion=cr(0), flags=dsa.IDXD_OP_FLAG_BOF)
        assert (await mdev.submit(desc)).all_accepted
        request = await _page_request(client)
        assert request.body["write"] and request.body["iova"] == 0x20_0000 + 4096
        async with siov.connect(siovd.path) as stranger:  # not the domain's owner
            with pytest.raises(siov.NotFound):
                await stranger.page_response(request.body["request"], 0)
        await client.page_response(request.body["request"], 1)  # INVALID
        with trio.fail_after(10):
            done = await mdev.wait(rec(records, 0))
        assert done.code == dsa.DSA_COMP_PAGE_FAULT_IR and done.fault_on_write
        assert done.bytes_completed == 4096 and done.fault_addr == 0x20_0000 + 4096


async def test_block_on_fault_times_out(
    nursery: trio.Nursery, sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """On virtual time: nobody answers, and the timeout fires as soon as every task waits."""
    cfg = make_config(iommu={"page_request_timeout_s": 0.2})
    running = await start_daemon(nursery, os.path.join(sock_dir, "t.sock"), cfg)
    async with siov.connect(running.path) as client:
        client.page_requests()
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(4 * MiB)
        await client.map(mdev.domain_id, buf.phys + 3 * MiB, 4096, iova=CR)
        records = buf.view[3 * MiB :]
        rec(records, 0)[:] = bytes(32)
        desc = dsa.crcgen(0x10_0000, 64, completion=cr(0), flags=dsa.IDXD_OP_FLAG_BOF)
        assert (await mdev.submit(desc)).all_accepted
        request = await _page_request(client)  # nobody answers it
        with trio.fail_after(10):
            done = await mdev.wait(rec(records, 0))
        assert done.code == dsa.DSA_COMP_PAGE_FAULT_IR and done.bytes_completed == 0
        stats = (await client.stats()).accel
        assert stats["page_timeouts"] == 1 and stats["page_requests_pending"] == 0
        with pytest.raises(siov.NotFound):
            await client.page_response(request.body["request"], 0)
    running.server.nursery.cancel_scope.cancel()


async def test_a_drain_waits_for_a_blocked_descriptor(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        client.page_requests()
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(4 * MiB)
        await client.map(mdev.domain_id, buf.phys + 3 * MiB, 4096, iova=CR)
        records = buf.view[3 * MiB :]
        for i in range(3):
            rec(records, i)[:] = bytes(32)
        result = await mdev.submit(
            [
                dsa.fill(0x10_0000, 1, 64, completion=cr(0), flags=dsa.IDXD_OP_FLAG_BOF),
                dsa.drain(completion=cr(1)),
                dsa.noop(completion=cr(2)),
            ]
        )
        assert result.all_accepted
        request = await _page_request(client)
        with trio.fail_after(10):
            await mdev.wait(rec(records, 2))  # later work passes the waiting drain
        assert rec(records, 1)[0] == 0 and rec(records, 0)[0] == 0
        await client.map(mdev.domain_id, buf.phys, 4096, iova=0x10_0000)
        await client.page_response(request.body["request"], 0)
        with trio.fail_after(10):
            assert (await mdev.wait(rec(records, 1))).code == dsa.DSA_COMP_SUCCESS
        assert dsa.parse_completion(rec(records, 0)).code == dsa.DSA_COMP_SUCCESS


async def test_shared_wq_answers_retry_when_full(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, _ = await setup(client, "dsa-1swq")
        wq = next(
            w
            for d in await client.accel_list()
            for g in d["groups"]
            for w in g.get("grouped_workqueues", [])
            if w["mode"] == "shared"
        )
        size, threshold = wq["size"], wq["threshold"]
        many = [dsa.noop(completion=cr(i % 64)) for i in range(size + 5)]
        result = await mdev.submit(many)
        assert result.accepted == size and result.retry == 5 and result.dropped == 0
        assert result.retried() == list(range(size, size + 5))
        limited = await mdev.submit(many, limited=True)  # the limited portal stops at threshold
        assert limited.accepted == threshold and limited.retry == size + 5 - threshold
        stats = (await client.stats()).accel["devices"]["dsa0"]["wqs"][wq["dev"]]
        assert stats["retried"] == 5 + size + 5 - threshold


async def test_dedicated_wq_overflow_is_dropped_and_counted(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, _ = await setup(client)
        with pytest.warns(siov.DescriptorsDropped, match="6 descriptor"):
            result = await mdev.submit([dsa.noop(completion=cr(0))] * 70)
        assert result.accepted == 64 and result.dropped == 6 and result.retry == 0
        stats = (await client.stats()).accel["devices"]["dsa0"]["wqs"]["wq0.0"]
        assert stats["dropped"] == 6 and stats["completed"] == 64
        wq = next(
            w
            for d in await client.accel_list()
            for g in d["groups"]
            for w in g["grouped_workqueues"]
            if w["dev"] == "wq0.0"
        )
        assert wq["dropped"] == 6 and [u["uuid"] for u in wq["mdevs"]] == [mdev.uuid]
        with pytest.raises(siov.InvalidArgument) as info:  # MOVDIR64B carries no PASID
            await mdev.submit(dsa.noop(), pasid=5)
        assert "dedicated" in info.value.message


async def test_shared_wq_pasids_go_through_their_domains(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, _ = await setup(client, "dsa-1swq")
        other = (await client.alloc_domain()).domain_id
        second = await client.alloc(SIZE)
        second.view[:8] = b"pasid-77"
        await client.map(other, second.phys, SIZE, iova=0)
        await client.attach_pasid(other, mdev.uuid, 77)
        # PASID 77 reads its own domain's memory; the default PASID reads the buffer's
        result = await mdev.submit(dsa.memmove(DST, 0, 8, completion=cr(0)), pasid=77)
        assert result.all_accepted
        # the record address is translated with PASID 77 too: it lands in `second`
        with trio.fail_after(5):
            done = await mdev.wait(second.view[CR : CR + 32])
        assert done.code == dsa.DSA_COMP_SUCCESS and second.view[DST : DST + 8] == b"pasid-77"
        # a PASID the mdev has not attached faults (PASID entry not present)
        events = client.events()
        assert (await mdev.submit(dsa.noop(completion=cr(1)), pasid=78)).all_accepted
        with trio.fail_after(5):
            fault = await events.receive()
        assert fault.command == Command.EVENT_FAULT and fault.body["reason"] == 0x59
        assert fault.body["pasid"] == 78
        stats = (await client.stats()).accel
        assert stats["software_errors"] == 1  # its record could not be written either
        assert mdev.software_errors[-1]["status"] & 0x7F == dsa.DSA_COMP_CRA_XLAT


async def test_outstanding_descriptors_limit(nursery: trio.Nursery, sock_dir: str) -> None:
    cfg = make_config(limits={"outstanding_descriptors": 4})
    running = await start_daemon(nursery, os.path.join(sock_dir, "l.sock"), cfg)
    async with siov.connect(running.path) as client:
        client.page_requests()
        mdev, _ = await setup(client)
        with pytest.raises(siov.TryAgain) as info:
            await mdev.submit([dsa.noop()] * 5)
        assert info.value.errno == errno.EAGAIN
        assert "limits.outstanding_descriptors = 4" in info.value.message
        # blocked work counts until it completes
        desc = dsa.crcgen(0x7F0_0000, 8, completion=cr(0), flags=dsa.IDXD_OP_FLAG_BOF)
        assert (await mdev.submit([desc] * 4)).all_accepted
        with pytest.raises(siov.TryAgain):
            await mdev.submit(dsa.noop())
        for _ in range(4):
            request = await _page_request(client)
            await client.page_response(request.body["request"], 1)
        with trio.fail_after(5):
            while (await client.stats()).accel["outstanding"]:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert (await mdev.submit([dsa.noop()] * 4)).all_accepted
    running.server.nursery.cancel_scope.cancel()


async def test_block_on_fault_without_a_pasid_entry_is_refused_at_once(
    siovd: RunningDaemon,
) -> None:
    """No PASID entry: the IOMMU has nowhere to route a page request, so it answers Invalid
    Request itself; the owner gets a fault record, never a page request."""
    async with siov.connect(siovd.path) as client:
        requests = client.page_requests()
        mdev, _ = await setup(client, "dsa-1swq")
        desc = dsa.fill(SRC, 0x77, 64, completion=cr(0), flags=dsa.IDXD_OP_FLAG_BOF)
        assert (await mdev.submit(desc, pasid=99)).all_accepted  # PASID 99: never attached
        await asettle(lambda: bool(mdev.software_errors), "an EVENT_IRQ reports it", 5)
        # The record itself lives behind PASID 99 too: it cannot be written, so the software
        # error reports the completion (page fault, Invalid Request) instead.
        assert mdev.software_errors[-1]["status"] == dsa.DSA_COMP_CRA_XLAT
        stats = (await client.stats()).accel
        assert stats["page_requests_refused"] == 1 and stats["page_requests_pending"] == 0
        assert stats["page_requests"] == 0
        with pytest.raises(trio.WouldBlock):
            requests.receive_nowait()
        fault = await client.next_event(Command.EVENT_FAULT)
        assert fault.body["pasid"] == 99 and fault.body["reason"] == 0x59


async def test_dif_family_through_the_socket(siovd: RunningDaemon) -> None:
    """DIF_INS, DIF_CHECK (good and corrupted), DIF_STRP, DIF_UPDT and DIX_GEN over the wire;
    the expected tuples come from the SDK's bit-serial T10 CRC."""
    async with siov.connect(siovd.path) as client:
        mdev, buf = await setup(client)
        mem = buf.view
        data = os.urandom(8 * 512)
        mem[SRC : SRC + len(data)] = data
        protected = b"".join(
            data[i * 512 : (i + 1) * 512]
            + struct.pack(">HHI", dsa.t10_crc16(data[i * 512 : (i + 1) * 512]), 0xFACE, 0xABBA + i)
            for i in range(8)
        )
        size = len(protected)
        bad = bytearray(protected)
        bad[3 * 520 + 100] ^= 1
        mem[SRC2 : SRC2 + size] = bytes(bad)
        tags = {"ref_tag": 0xABBA, "app_tag": 0xFACE}
        descriptors = [
            dsa.dif_insert(DST, SRC, len(data), completion=cr(0), **tags),
            dsa.dif_check(DST, size, completion=cr(1), **tags),
            dsa.dif_check(SRC2, size, completion=cr(2), **tags),
            dsa.dif_strip(DST2, DST, size, completion=cr(3), **tags),
            dsa.dix_gen(DELTA, SRC, len(data), completion=cr(4), **tags),
        ]
        records = await run_all(mdev, records_of(buf), descriptors[:1])
        records += await run_all(mdev, records_of(buf), descriptors[1:], start=1)
        assert [r.code for r in records] == [
            dsa.DSA_COMP_SUCCESS,
            dsa.DSA_COMP_SUCCESS,
            dsa.DSA_COMP_DIF_ERR,
            dsa.DSA_COMP_SUCCESS,
            dsa.DSA_COMP_SUCCESS,
        ]
        assert bytes(mem[DST : DST + size]) == protected
        assert records[0].field("dif_ins_ref_tag") == 0xABBA + 8
        assert (records[2].dif_status, records[2].bytes_completed) == (
            dsa.DIF_STATUS_GUARD,
            3 * 520,
        )
        assert records[2].field("dif_chk_ref_tag") == 0xABBA + 3
        assert bytes(mem[DST2 : DST2 + len(data)]) == data
        assert bytes(mem[DELTA : DELTA + 64]) == b"".join(
            protected[i * 520 + 512 : i * 520 + 520] for i in range(8)
        )
        update = dsa.dif_update(
            SRC2 + 0x8000,
            DST,
            size,
            src_ref_tag=0xABBA,
            src_app_tag=0xFACE,
            dest_ref_tag=7,
            dest_app_tag=0xFACE,
            dest_flags=dsa.DIF_DST_FIXED_REF_TAG,
            completion=cr(5),
        )
        (record,) = await run_all(mdev, records_of(buf), [update], start=5)
        assert record.code == dsa.DSA_COMP_SUCCESS
        out = bytes(mem[SRC2 + 0x8000 : SRC2 + 0x8000 + size])
        assert all(out[i * 520 + 516 : i * 520 + 520] == struct.pack(">I", 7) for i in range(8))
        assert strip_tuples(out) == data


def strip_tuples(protected: bytes) -> bytes:
    return b"".join(protected[i : i + 512] for i in range(0, len(protected), 520))


async def test_software_errors_land_in_the_event_log(siovd: RunningDaemon) -> None:
    """A record address that is not 32-byte aligned cannot carry the error: besides the
    software-error interrupt, the device writes a registers.h ``struct dsa_evl_entry``."""
    async with siov.connect(siovd.path) as client:
        mdev, _buf = await setup(client)
        # consume what earlier tests left, and arm the one-shot EVENT_EVL
        while True:
            drained = await client.accel_evl_read("dsa0", arm=True)
            if not drained.entries:
                break
        assert drained.size == 64 and drained.head == drained.tail
        result = await mdev.submit(dsa.memmove(DST, SRC, 64, completion=CR + 8))
        assert result.all_accepted
        with trio.fail_after(5):
            event = await client.next_event(Command.EVENT_EVL)
        assert event.body == {"device": "dsa0", "entries": 1}
        reply = await client.call(Command.ACCEL_EVL_READ, {"device": "dsa0"})
        assert reply["int_pending"] is True and reply["lost"] == 0
        entry = reply["entries"]
        assert len(entry) == 64
        word, _, _, _, fault_addr, _ = struct.unpack_from("<QHHIQQ", entry)
        assert word >> 2 & 1 and word >> 3 & 1  # desc_valid, wq_idx_valid
        assert not word >> 4 & 1  # not in a batch
        assert word >> 8 & 0xFF == dsa.DSA_COMP_CRA_ALIGN  # error
        assert word >> 32 & 0xFF == dsa.DSA_OPCODE_MEMMOVE  # operation
        assert fault_addr == CR + 8
        assert entry[32] == dsa.DSA_COMP_CRA_ALIGN  # the completion record it could not write
        again = await client.call(Command.ACCEL_EVL_READ, {"device": "dsa0"})
        assert again["entries"] == b"" and again["int_pending"] is False
