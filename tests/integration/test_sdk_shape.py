"""The SDK's newcomer-facing shape (issue 18): no stale domain, no endless wait, one event API,
objects accepted where ids are, DMA faults with fields, real signatures in the blocking client."""

from __future__ import annotations

import errno
import inspect

import pytest
import trio

import siov
import siov_protocol.dsa
from siov import dsa
from siov_protocol import Command
from tests.conftest import DaemonProcess, RunningDaemon

MiB = 1 << 20
CR = 0x1000


async def test_mdev_domain_id_follows_attach_and_detach(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_dsa_mdev()
        default = mdev.domain_id
        assert default is not None and mdev.default_domain_id == default
        dom = await client.alloc_domain()
        reply = await client.attach_device(dom, mdev)  # objects, not ids
        assert mdev.domain_id == dom.domain_id == reply.domain_id != default
        buf = await client.alloc(2 * MiB)
        await client.map(mdev, buf.phys, 2 * MiB, iova=0)  # the domain it is on now
        assert await client.iova_to_phys(dom, 0) == buf.phys
        done = await mdev.run(dsa.noop(completion=CR), buf.view[CR : CR + 32])
        assert done.code == dsa.DSA_COMP_SUCCESS
        await client.detach_device(mdev)
        assert mdev.domain_id == default
        await client.free_domain(dom)
        await client.remove_mdev(mdev)
        assert await client.devices() == []


async def test_run_fails_fast_on_a_record_it_cannot_write(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_dsa_mdev()
        buf = await client.alloc(2 * MiB)
        await client.map(mdev, buf.phys, 2 * MiB, iova=0)
        # a record in memory the device's domain does not map: it can never be written
        with pytest.raises(siov.RecordNotWritten) as info:
            await mdev.run(dsa.noop(completion=4 * MiB), buf.view[CR : CR + 32], timeout=None)
        assert info.value.errno == errno.EFAULT
        assert info.value.swerr["completion_addr"] == 4 * MiB
        assert info.value.status & 0x7F == dsa.DSA_COMP_CRA_XLAT
        assert "0x400000" in info.value.message
        # misaligned, with the remainder of the buffer mapped
        with pytest.raises(siov.RecordNotWritten) as info:
            await mdev.run(dsa.noop(completion=CR + 8), buf.view[CR : CR + 32], timeout=None)
        assert info.value.status == dsa.DSA_COMP_CRA_ALIGN
        assert len(mdev.software_errors) == 2 and mdev.software_error_count == 2


async def test_wait_has_a_finite_default_timeout() -> None:
    params = inspect.signature(siov.Mdev.wait).parameters
    assert params["timeout"].default == siov.mdev.DEFAULT_TIMEOUT
    assert 0 < siov.mdev.DEFAULT_TIMEOUT < float("inf")
    assert inspect.signature(siov.Mdev.run).parameters["timeout"].default > 0


async def test_next_event_filters_without_discarding(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        await client.ping()
        (session,) = siovd.daemon.sessions.values()
        session.push_event(Command.EVENT_FAULT, {"iova": 0x1000, "reason": 0x71})
        session.push_event(Command.EVENT_EVL, {"device": "dsa0"})
        session.push_event(Command.EVENT_FAULT, {"iova": 0x2000, "reason": 0x71})
        evl = await client.next_event("evl")
        assert evl.command == Command.EVENT_EVL
        second = await client.next_event(siov.Command.EVENT_FAULT)  # exported from siov
        assert second.body["iova"] == 0x1000
        third = await client.events().receive()  # nothing was thrown away
        assert third.body["iova"] == 0x2000
        with pytest.raises(TimeoutError):
            await client.next_event(timeout=0)
        with pytest.raises(ValueError, match="no event named"):
            await client.next_event("nonsense")


def test_blocking_client_has_the_same_shape(siovd_proc: DaemonProcess) -> None:
    with siov.BlockingClient(siovd_proc.path) as client:
        mdev = client.create_dsa_mdev()
        assert isinstance(mdev, siov.BlockingMdev)
        assert mdev.group_id is not None and list(mdev.software_errors) == []
        dom = client.alloc_domain()
        client.attach_device(dom, mdev)
        assert mdev.domain_id == dom.domain_id
        with pytest.raises(TimeoutError):
            client.next_event(timeout=0.0)
        with pytest.raises(TimeoutError):
            client.next_event("fault", timeout=0.0)
        assert inspect.isgeneratorfunction(siov.BlockingClient.events)
        assert inspect.isgeneratorfunction(siov.BlockingClient.page_requests)
        assert list(client.page_requests(timeout=0.0)) == []
        client.remove_mdev(mdev)
        assert client.devices() == []


def test_blocking_wrappers_have_real_signatures() -> None:
    for name in ("map", "attach_device", "dma_write", "next_event"):
        text = str(inspect.signature(getattr(siov.BlockingClient, name)))
        assert "P.args" not in text and "*args" not in text, (name, text)
    map_sig = inspect.signature(siov.BlockingClient.map)
    assert list(map_sig.parameters)[:4] == ["self", "domain", "phys", "size"]
    assert map_sig.return_annotation is int
    run_sig = inspect.signature(siov.BlockingMdev.run)
    assert "descriptor" in run_sig.parameters and "timeout" in run_sig.parameters


async def test_dma_fault_carries_its_fields(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu, siov.connect(siovd.path) as owner:
        dev = await emu.register_device("emu")
        await owner.claim_device(dev.uuid, dev.token)
        buf = await owner.alloc(8192)
        dom = await owner.alloc_domain()
        await owner.attach_device(dom, dev.uuid)
        await owner.map(dom, buf.phys, 4096, iova=0x10000)
        with pytest.raises(siov.DmaFault) as info:
            await emu.dma_write(dev, 0x10000 + 4000, b"x" * 200)
        fault = info.value
        assert fault.errno == errno.EFAULT and fault.command == Command.DMA_WRITE
        assert (fault.iova, fault.done, fault.write) == (0x11000, 96, True)
        assert fault.reason == 0x71 and fault.reason_name == "first-stage entry not present"
        assert bytes(buf.view[4000:4096]) == b"x" * 96  # the partial write is in memory
        with pytest.raises(siov.DmaFault) as info:
            await emu.dma_read(dev, 0x20000, 8)
        assert (info.value.iova, info.value.done, info.value.write) == (0x20000, 0, False)
        with trio.fail_after(5):
            ev = await owner.next_event("fault")
        assert ev.typed.reason_name == "first-stage entry not present"


async def test_emulator_is_told_of_claim_and_release(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu:
        dev = await emu.register_device("emu")
        assert [(d.uuid, d.claimed) for d in await emu.devices()] == [(dev.uuid, False)]
        async with siov.connect(siovd.path, name="the-owner") as owner:
            await owner.claim_device(dev, dev.token)
            with trio.fail_after(5):
                ev = await emu.next_event(Command.EVENT_DEVICE_OWNER)
            assert ev.typed.change == "claimed" and ev.typed.client == "the-owner"
            # still listed for its emulator, with who has it
            (listed,) = await emu.devices()
            assert listed.uuid == dev.uuid and listed.claimed is True
            (owned,) = await owner.devices()
            assert owned.claimed is True  # the same device, owned by a claimant
        with trio.fail_after(5):
            ev = await emu.next_event("device_owner")
        assert ev.typed.change == "released" and ev.typed.uuid == dev.uuid
        (listed,) = await emu.devices()  # no polling: the event comes after the change
        assert listed.claimed is False


async def test_a_descriptor_fault_names_its_descriptor(siovd: RunningDaemon) -> None:
    """EVENT_FAULT carries the WQ, opcode, completion record and batch index of the work whose
    DMA faulted: three faults at one address in one batch tell their descriptors apart."""
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_dsa_mdev()
        buf = await client.alloc(2 * MiB)
        await client.map(mdev, buf.phys, 2 * MiB, iova=0)
        hole = 4 * MiB  # unmapped: every sub-descriptor reading it faults there
        subs = [dsa.noop(completion=0x2000)]
        subs += [dsa.crcgen(hole, 64, completion=0x2000 + 32 * i) for i in (1, 2, 3)]
        buf.view[0x4000 : 0x4000 + 256] = dsa.join_batch(subs)
        done = await mdev.run(dsa.batch(0x4000, 4, completion=CR), buf.view[CR : CR + 32])
        assert done.code == siov_protocol.dsa.DSA_COMP_BATCH_FAIL
        faults = []
        with trio.fail_after(5):
            for _ in range(3):
                faults.append((await client.next_event("fault")).typed)
        assert {f.iova for f in faults} == {hole}
        assert all(isinstance(f, siov.FaultEvent) for f in faults)  # Event.typed, exported
        assert [(f.batch_index, f.completion_addr) for f in faults] == [
            (i, 0x2000 + 32 * i) for i in (1, 2, 3)
        ]
        assert {f.opcode for f in faults} == {dsa.DsaOpcode.CRCGEN}
        assert len({f.wq for f in faults}) == 1 and faults[0].wq.startswith("dsa0/wq")
        # a lone descriptor: no batch index; the batch descriptor's own list read: its record
        await mdev.run(dsa.crcgen(hole, 64, completion=CR), buf.view[CR : CR + 32])
        with trio.fail_after(5):
            lone = (await client.next_event("fault")).typed
        assert (lone.batch_index, lone.completion_addr) == (None, CR), lone
        await mdev.run(dsa.batch(hole, 4, completion=CR), buf.view[CR : CR + 32])
        with trio.fail_after(5):
            outer = (await client.next_event("fault")).typed
        assert (outer.opcode, outer.batch_index) == (dsa.DsaOpcode.BATCH, None)
        # an emulator's own DMA names no descriptor
        dev = await client.register_device("emu")
        with pytest.raises(siov.DmaFault):
            await client.dma_read(dev, 0x20000, 8)
        with trio.fail_after(5):
            own = (await client.next_event("fault")).typed
        assert own.wq is own.opcode is own.completion_addr is own.batch_index is None


async def test_iotlb_entries_show_pages_sizes_and_hits(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev = await client.create_dsa_mdev()
        dom = mdev.domain_id
        assert dom is not None
        buf = await client.alloc(4 * MiB)
        await client.map(mdev, buf.phys, 2 * MiB, iova=0)  # one 2 MiB leaf
        await client.map(mdev, buf.phys + 2 * MiB, 4 * 4096, iova=4 * MiB)  # four 4 KiB leaves
        leaf = await client.iova_leaf(mdev, 4 * MiB + 0x1234)
        assert (leaf.phys, leaf.page_size) == (buf.phys + 2 * MiB + 0x1234, 4096)
        assert (await client.iova_leaf(mdev, 0x1234)).page_size == 2 * MiB
        assert await client.iotlb_entries(dom) == []
        copy = dsa.memmove(0x8000, 4 * MiB, 4 * 4096, completion=CR)  # dst, src
        await mdev.run(copy, buf.view[CR : CR + 32])
        entries = await client.iotlb_entries(dom)
        pasid = mdev.default_pasid
        assert [(e.pasid, e.iova, e.page_size) for e in entries] == [
            (pasid, 0, 2 * MiB),
            *[(pasid, 4 * MiB + i * 4096, 4096) for i in range(4)],
        ]
        big = entries[0]
        assert isinstance(big, siov.IotlbEntry)
        assert big.phys == buf.phys and big.writable and big.dirty  # the copy wrote there
        assert not entries[1].dirty  # only read
        again = await client.iotlb_entries(dom, pasid=pasid, page=2)  # three requests
        assert again == entries  # an inspection changes nothing
        assert await client.iotlb_entries(dom, pasid=7) == []
        # TRANSLATE reports the leaf size of each run (a 2 MiB leaf and a 4 KiB one do not
        # merge) and, with no device TLB in front, every lookup after the first is a hit
        dev = await client.register_device("emu")
        other = await client.alloc_domain()
        await client.attach_device(other, dev)
        await client.map(other, buf.phys, 2 * MiB + 4096, iova=0)
        for _ in range(3):
            out = await client.translate(dev, 0, 2 * MiB + 4096)
        runs = [(r.length, r.page_size) for r in out.runs]
        assert runs == [(2 * MiB, 2 * MiB), (4096, 4096)]
        cached = await client.iotlb_entries(other)
        assert [(e.page_size, e.hits) for e in cached] == [(2 * MiB, 2), (4096, 2)]
        assert all(e.referenced and not e.dirty for e in cached)
        # bad input: what each gets
        with pytest.raises(siov.SiovError) as info:
            await client.iotlb_entries(999)
        assert info.value.errno == errno.ENOENT
        for bad in ({"max_entries": 0}, {"max_entries": 4097}, {"pasid": 1 << 20}):
            with pytest.raises(siov.SiovError) as info:
                await client.call(Command.IOTLB_ENTRIES, {"domain": dom, **bad})
            assert info.value.errno == errno.ERANGE, bad  # out of the field's range (SPEC §5)
        with pytest.raises(siov.SiovError) as info:
            await client.iova_leaf(mdev, 8 * MiB)
        assert info.value.errno == errno.ENOENT
