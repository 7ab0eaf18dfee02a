"""The accelerator under concurrency and when clients leave: every descriptor completes exactly
once with its interrupt, and a client that goes away takes its work with it and nobody else's."""

from __future__ import annotations

import os
import struct

import pytest
import trio

import siov
from siov import dsa
from siovd.model.owner import HOST
from tests.conftest import RunningDaemon
from tests.helpers import asettle

MiB = 1 << 20
SLOT = 4096  # each descriptor fills its own slot
SLOTS = 0x40_0000  # slots start here; records at CR
CR = 0x10_0000
ROUNDS = 12
PER_ROUND = 16


async def worker(
    client: siov.Client, type_id: str, tag: int, counts: dict[int, int]
) -> tuple[siov.Mdev, siov.Buffer]:
    """Fill ROUNDS * PER_ROUND slots through one mdev, each descriptor asking for an interrupt
    on its own eventfd; check every slot and record; count the interrupts."""
    mdev = await client.create_dsa_mdev(type_id)
    assert mdev.domain_id is not None
    buf = await client.alloc(8 * MiB)
    await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
    irq = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        await mdev.set_irqs([irq], start=1)
        total = ROUNDS * PER_ROUND
        for round_ in range(ROUNDS):
            pending = []
            for i in range(PER_ROUND):
                n = round_ * PER_ROUND + i
                pattern = tag << 32 | n
                pending.append(
                    (
                        n,
                        dsa.fill(
                            SLOTS + n * SLOT,
                            pattern,
                            SLOT,
                            completion=CR + 32 * n,
                            flags=dsa.IDXD_OP_FLAG_RCI,
                            int_handle=1,
                        ),
                    )
                )
                buf.view[CR + 32 * n : CR + 32 * n + 32] = bytes(32)
            while pending:  # a shared WQ may answer retry: submit those again
                result = await mdev.submit([d for _, d in pending])
                assert result.dropped == 0
                pending = [p for p, r in zip(pending, result.results, strict=True) if r]
                if pending:
                    await trio.lowlevel.checkpoint()
            with trio.fail_after(20):
                for i in range(PER_ROUND):
                    n = round_ * PER_ROUND + i
                    done = await mdev.wait(buf.view[CR + 32 * n : CR + 32 * n + 32])
                    assert done.code == dsa.DSA_COMP_SUCCESS
        received = 0
        with trio.fail_after(20):
            while received < total:
                await trio.lowlevel.wait_readable(irq)
                try:
                    received += os.eventfd_read(irq)
                except BlockingIOError:
                    continue
        counts[tag] = received
        for n in range(total):
            slot = buf.view[SLOTS + n * SLOT : SLOTS + (n + 1) * SLOT]
            assert slot == struct.pack("<Q", tag << 32 | n) * (SLOT // 8), (tag, n)
        return mdev, buf
    finally:
        await mdev.disable_irqs()
        os.close(irq)


async def test_every_descriptor_completes_exactly_once_under_concurrency(
    siovd: RunningDaemon,
) -> None:
    # A tiny time slice: SUBMIT runs one descriptor or so, the engine tasks run the rest,
    # interleaved with the connections of three clients.
    siovd.daemon.accel_runtime.time_slice = 1e-5
    counts: dict[int, int] = {}
    async with (
        siov.connect(siovd.path) as a,
        siov.connect(siovd.path) as b,
        siov.connect(siovd.path) as c,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, a, "dsa-1dwq", 1, counts)
            nursery.start_soon(worker, b, "dsa-1swq", 2, counts)
            nursery.start_soon(worker, b, "dsa-1swq", 3, counts)
            nursery.start_soon(worker, c, "dsa-1swq", 4, counts)
        assert counts == {tag: ROUNDS * PER_ROUND for tag in (1, 2, 3, 4)}
        stats = (await a.stats()).accel
    wqs = stats["devices"]["dsa0"]["wqs"]
    assert wqs["wq0.0"]["completed"] == wqs["wq0.0"]["submitted"] == ROUNDS * PER_ROUND
    assert wqs["wq0.1"]["completed"] == wqs["wq0.1"]["submitted"] == 3 * ROUNDS * PER_ROUND
    engines = stats["devices"]["dsa0"]["engines"]
    assert sum(engines.values()) == 4 * ROUNDS * PER_ROUND
    assert sum(1 for n in engines.values() if n) > 1  # the group's engines shared the work
    assert stats["completed"] == stats["submitted"] and stats["outstanding"] == 0
    assert stats["irqs_eventfd"] == 4 * ROUNDS * PER_ROUND  # one interrupt per descriptor


async def test_a_client_that_leaves_takes_its_work_and_only_its_own(
    siovd: RunningDaemon,
) -> None:
    daemon = siovd.daemon
    runtime = daemon.accel_runtime
    async with siov.connect(siovd.path) as stayer:
        (stayer_id,) = daemon.sessions
        mdev_b = await stayer.create_dsa_mdev("dsa-1swq")
        assert mdev_b.domain_id is not None
        buf_b = await stayer.alloc(8 * MiB)
        await stayer.map(mdev_b.domain_id, buf_b.phys, buf_b.size, iova=0)
        async with siov.connect(siovd.path) as leaver:
            (leaver_id,) = daemon.sessions.keys() - {stayer_id}
            leaver.page_requests()
            mdev_a = await leaver.create_dsa_mdev("dsa-1swq")  # shares the WQ with B's
            assert mdev_a.domain_id is not None
            buf_a = await leaver.alloc(8 * MiB)
            await leaver.map(mdev_a.domain_id, buf_a.phys, 4 * MiB, iova=0)
            await mdev_a.set_irqs()
            # one descriptor blocks on a fault, a drain waits behind it, and with a tiny time
            # slice much of the rest is still queued when the client goes
            runtime.time_slice = 1e-6
            descriptors = [dsa.fill(6 * MiB, 1, 64, flags=dsa.IDXD_OP_FLAG_BOF, completion=CR)]
            descriptors.append(dsa.drain(completion=CR + 32))
            descriptors += [dsa.fill(SLOTS, 7, 256 * 1024, completion=CR + 64)] * 40
            result = await mdev_a.submit(descriptors)
            assert result.all_accepted
            with trio.fail_after(10):
                await leaver.page_requests().receive()
            assert runtime.requests and runtime.outstanding(leaver_id) > 0
        # the leaver is gone: nothing of it is waiting, queued or mapped any more
        await asettle(lambda: leaver_id not in daemon.sessions, "the server releases it", 10)
        runtime.time_slice = 0.002
        stats = (await stayer.stats()).accel
        assert stats["page_requests_pending"] == 0 and stats["page_requests_cancelled"] == 1
        assert runtime.outstanding(leaver_id) == 0 and mdev_a.uuid not in runtime.mdevs
        wq = stats["devices"]["dsa0"]["wqs"]["wq0.1"]
        assert wq["occupancy"] == 0 and wq["inflight"] == 0
        assert wq["aborted"] >= 1 and wq["completed"] + wq["aborted"] == wq["submitted"]
        owners = {region.owner for region in daemon.memory.regions(None) if region.owner}
        assert owners == {stayer_id}
        assert daemon.counters["handler_failures"] == 0
        # the stayer's work on the same WQ goes on, engines and all
        done = await mdev_b.run(dsa.fill(SLOTS, 9, 4096, completion=CR), buf_b.view[CR : CR + 32])
        assert done.code == dsa.DSA_COMP_SUCCESS
        assert buf_b.view[SLOTS : SLOTS + 8] == struct.pack("<Q", 9)


@pytest.mark.parametrize("answer", [0, 1])
async def test_a_page_response_after_the_mdev_is_gone(siovd: RunningDaemon, answer: int) -> None:
    async with siov.connect(siovd.path) as client:
        requests = client.page_requests()
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(2 * MiB)
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        desc = dsa.crcgen(8 * MiB, 64, completion=CR, flags=dsa.IDXD_OP_FLAG_BOF)
        assert (await mdev.submit(desc)).all_accepted
        with trio.fail_after(10):
            request = await requests.receive()
        await mdev.remove()  # its blocked descriptor is abandoned with it
        with pytest.raises(siov.NotFound):
            await client.page_response(request.body["request"], answer)
        stats = (await client.stats()).accel
        assert stats["outstanding"] == 0 and stats["page_requests_pending"] == 0
        assert buf.view[CR] == 0  # never completed
        assert stats["page_requests_cancelled"] == 1


async def test_a_started_definition_goes_back_to_the_host_empty(siovd: RunningDaemon) -> None:
    """A persistent definition's mdev outlives its claimant: the work the claimant left is
    aborted, and the next claimant finds a quiet WQ on a reset domain."""
    async with siov.connect(siovd.path) as admin:
        uuid = (await admin.define("dsa0", "dsa-1dwq")).uuid
        await admin.start(uuid)
    runtime = siovd.daemon.accel_runtime
    async with siov.connect(siovd.path) as vmm:
        requests = vmm.page_requests()
        mdev = siov.Mdev(vmm, await vmm.claim_device(uuid))
        assert mdev.domain_id is not None
        buf = await vmm.alloc(8 * MiB)
        await vmm.map(mdev.domain_id, buf.phys, 4 * MiB, iova=0)
        runtime.time_slice = 1e-6
        descriptors = [dsa.fill(6 * MiB, 1, 64, flags=dsa.IDXD_OP_FLAG_BOF, completion=CR)]
        descriptors += [dsa.fill(SLOTS, 7, 256 * 1024, completion=CR + 64)] * 40
        assert (await mdev.submit(descriptors)).all_accepted
        with trio.fail_after(10):
            await requests.receive()
    device = siovd.daemon.bus.device(None, uuid)
    await asettle(lambda: device.owner == HOST, "the server releases the claimant", 10)
    runtime.time_slice = 0.002
    wq = runtime.daemon.dsa_parents["dsa0"].mdev(uuid).wq
    assert wq.occupancy == 0 and wq.inflight == 0 and not runtime.requests
    assert runtime.outstanding(0) == 0 and uuid not in runtime.mdevs
    async with siov.connect(siovd.path) as successor:
        mdev = siov.Mdev(successor, await successor.claim_device(uuid))
        assert mdev.domain_id is not None
        buf = await successor.alloc(2 * MiB)
        await successor.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        done = await mdev.run(dsa.fill(0x1000, 5, 64, completion=CR), buf.view[CR : CR + 32])
        assert done.code == dsa.DSA_COMP_SUCCESS
        assert buf.view[0x1000:0x1008] == struct.pack("<Q", 5)
