"""The SDK's newcomer-facing shape (issue 18): no stale domain, no endless wait, one event API,
objects accepted where ids are, DMA faults with fields, real signatures in the blocking client."""

from __future__ import annotations

import errno
import inspect

import pytest
import trio

import siov
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
