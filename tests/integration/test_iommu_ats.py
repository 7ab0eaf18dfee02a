"""Device-TLB (ATS) invalidations to external emulators over a real socket (SPEC §8.21): a
device that translated is told of every change to what it may hold, and the change's reply
waits for its answer (VT-d's Device-TLB Invalidate Descriptor and its wait descriptor)."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import siov
from siov_protocol import Command
from tests.conftest import RunningDaemon, make_config, start_daemon
from tests.integration.test_iommu_socket import expect


@pytest.fixture
async def slow_ats(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[RunningDaemon]:
    """A daemon that waits long for devices: a wait here ends by the answer, not the clock."""
    cfg = make_config(iommu={"ats_invalidation_timeout_s": 60.0})
    running = await start_daemon(nursery, os.path.join(sock_dir, "ats.sock"), cfg)
    yield running
    running.server.nursery.cancel_scope.cancel()


async def claimed(emu: siov.Client, owner: siov.Client) -> tuple[str, int, int]:
    """An emulator's device claimed and attached by ``owner``; two 4 KiB pages mapped at
    0x10000 and 0x11000 (two mappings). Returns (uuid, domain, phys of the buffer)."""
    dev = await emu.register_device("nic")
    await owner.claim_device(dev.uuid, dev.token)
    dom = (await owner.alloc_domain()).domain_id
    await owner.attach_device(dom, dev.uuid)
    buf = await owner.alloc(8192)
    await owner.map(dom, buf.phys, 4096, iova=0x10000)
    await owner.map(dom, buf.phys + 4096, 4096, iova=0x11000)
    return dev.uuid, dom, buf.phys


async def ats_stats(client: siov.Client) -> dict[str, Any]:
    stats = await client.call(Command.STATS, {})
    return {k: v for k, v in stats["iommu"].items() if k.startswith("ats_")}


async def test_an_unmap_waits_for_the_device_that_translated(slow_ats: RunningDaemon) -> None:
    async with siov.connect(slow_ats.path) as emu, siov.connect(slow_ats.path) as owner:
        uuid, dom, phys = await claimed(emu, owner)
        got = await emu.translate(uuid, 0x10000, 8192)
        assert got.translated == 8192
        replies: list[dict[str, Any]] = []

        async def unmapping() -> None:
            replies.append(await owner.unmap_report(dom, 0x11000, 4096))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(unmapping)
            body = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body
            # only what changed: the second page, one page (am 0), the PASID it translated
            assert (body["device"], body["pasid"], body["iova"], body["am"], body["all"]) == (
                uuid,
                0,
                0x11000,
                0,
                False,
            )
            # strict: no reply until the device answers (nothing else can end the wait here)
            assert replies == []
            # (asked on the emulator's connection: the owner's waits for its UNMAP's reply)
            assert (await ats_stats(emu))["ats_invalidations_pending"] == 1
            await emu.ats_invalidate_done(uuid, body["cookie"])
        assert replies == [{"unmapped": 4096}]
        # a cookie is answered once; the other page is still the device's to hold
        await expect(errno.ENOENT, emu.ats_invalidate_done(uuid, body["cookie"]))
        stats = await ats_stats(owner)
        assert stats["ats_invalidations_sent"] == stats["ats_invalidations_completed"] == 1
        # the first page was translated too: its unmap invalidates it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner.unmap, dom, 0x10000, 4096)
            body = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body
            assert (body["iova"], body["am"]) == (0x10000, 0)
            await emu.ats_invalidate_done(uuid, body["cookie"])
        # the device holds nothing now: a new mapping's unmap sends nothing
        await owner.map(dom, phys, 4096, iova=0x10000)
        assert await owner.unmap(dom, 0x10000, 4096) == 4096
        assert (await ats_stats(owner))["ats_invalidations_sent"] == 2


async def test_devices_that_never_translated_get_nothing(slow_ats: RunningDaemon) -> None:
    async with siov.connect(slow_ats.path) as emu, siov.connect(slow_ats.path) as owner:
        uuid, dom, _phys = await claimed(emu, owner)
        await emu.dma_read(uuid, 0x10000, 64)  # the daemon translates for DMA_READ: no caching
        assert await owner.unmap(dom, 0x10000, 8192) == 8192
        assert (await ats_stats(owner))["ats_invalidations_sent"] == 0


async def test_a_range_covers_what_the_device_holds(slow_ats: RunningDaemon) -> None:
    """The invalidation is one naturally aligned power-of-two block, as VT-d's address mask:
    0x11000..0x12fff (two pages straddling a 8 KiB boundary) takes 16 KiB at 0x10000."""
    async with siov.connect(slow_ats.path) as emu, siov.connect(slow_ats.path) as owner:
        dev = await emu.register_device("nic")
        await owner.claim_device(dev.uuid, dev.token)
        dom = (await owner.alloc_domain()).domain_id
        await owner.attach_device(dom, dev.uuid)
        buf = await owner.alloc(8192)
        await owner.map(dom, buf.phys, 8192, iova=0x11000)
        await emu.translate(dev.uuid, 0x11000, 8192)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner.unmap, dom, 0x11000, 8192)
            body = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body
            assert (body["iova"], body["am"]) == (0x10000, 2)
            await emu.ats_invalidate_done(dev.uuid, body["cookie"])


async def test_pasid_detach_and_replace_invalidate_the_whole_pasid(
    slow_ats: RunningDaemon,
) -> None:
    async with siov.connect(slow_ats.path) as emu, siov.connect(slow_ats.path) as owner:
        uuid, _dom, phys = await claimed(emu, owner)
        pdom = (await owner.alloc_domain()).domain_id
        other = (await owner.alloc_domain()).domain_id
        await owner.map(pdom, phys, 4096, iova=0x40000)
        await owner.map(other, phys, 4096, iova=0x40000)
        await owner.attach_pasid(pdom, uuid, 7)
        await emu.translate(uuid, 0x40000, 4096, pasid=7)
        for change in (owner.replace_pasid(other, uuid, 7), owner.detach_pasid(uuid, 7)):
            assert (await emu.translate(uuid, 0x40000, 1, pasid=7)).translated == 1
            async with trio.open_nursery() as nursery:

                async def run(coro: Any = change) -> None:
                    await coro

                nursery.start_soon(run)
                body = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body
                assert (body["pasid"], body["all"], body["iova"], body["am"]) == (7, True, 0, 52)
                await emu.ats_invalidate_done(uuid, body["cookie"])


async def test_a_device_that_does_not_answer_is_fenced(sock_dir: str) -> None:
    """VT-d's Invalidation Time-out Error: the unmap completes (the mapping is gone) and says
    which devices did not answer; those devices' TRANSLATE is ETIMEDOUT until they answer."""
    cfg = make_config(iommu={"ats_invalidation_timeout_s": 0.05})
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, os.path.join(sock_dir, "t.sock"), cfg)
        async with siov.connect(daemon.path) as emu, siov.connect(daemon.path) as owner:
            uuid, dom, _phys = await claimed(emu, owner)
            await emu.translate(uuid, 0x10000, 8192)
            reply = await owner.unmap_report(dom, 0x10000, 4096)
            assert reply == {"unmapped": 4096, "ats_timed_out": [uuid]}
            cookie = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body["cookie"]
            assert await owner.iova_to_phys(dom, 0x11000)  # the other mapping is untouched
            await expect(errno.ETIMEDOUT, emu.translate(uuid, 0x11000, 4096))
            # a fenced device is told of later changes but not waited for again
            reply = await owner.unmap_report(dom, 0x11000, 4096)
            assert reply["ats_timed_out"] == [uuid]
            late = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body["cookie"]
            await emu.ats_invalidate_done(uuid, cookie)  # late answers are accepted
            await expect(errno.ETIMEDOUT, emu.translate(uuid, 0x11000, 4096))
            await emu.ats_invalidate_done(uuid, late)
            assert (await emu.translate(uuid, 0x11000, 4096)).fault is not None  # unmapped
            stats = await ats_stats(owner)
            assert stats["ats_invalidation_timeouts"] == 1
        nursery.cancel_scope.cancel()


async def test_an_emulators_own_unmap_names_the_cookie(slow_ats: RunningDaemon) -> None:
    """The emulator that maps into its own device's domain cannot answer while its UNMAP
    waits: the reply names the cookie its device owes instead of waiting."""
    async with siov.connect(slow_ats.path) as emu:
        dev = await emu.register_device("nic")
        dom = (await emu.alloc_domain()).domain_id
        await emu.attach_device(dom, dev.uuid)
        buf = await emu.alloc(4096)
        await emu.map(dom, buf.phys, 4096, iova=0x20000)
        await emu.translate(dev.uuid, 0x20000, 4096)
        reply = await emu.unmap_report(dom, 0x20000, 4096)
        body = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body
        assert reply == {"unmapped": 4096, "ats_unacked": [body["cookie"]]}
        # nothing waits for it, so no answer is needed (and one is answered like none)
        await expect(errno.ENOENT, emu.ats_invalidate_done(dev.uuid, body["cookie"]))


async def test_ats_invalidate_done_errnos(slow_ats: RunningDaemon) -> None:
    async with (
        siov.connect(slow_ats.path) as emu,
        siov.connect(slow_ats.path) as owner,
        siov.connect(slow_ats.path) as stranger,
    ):
        uuid, dom, _phys = await claimed(emu, owner)
        await emu.translate(uuid, 0x10000, 4096)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner.unmap, dom, 0x10000, 4096)
            cookie = (await emu.next_event(Command.EVENT_ATS_INVALIDATE)).body["cookie"]
            # another client's answer for the device is no answer: ENOENT, as for no cookie
            await expect(errno.ENOENT, stranger.ats_invalidate_done(uuid, cookie))
            await expect(errno.ENOENT, emu.ats_invalidate_done(uuid, cookie + 100))
            await expect(errno.ENOENT, emu.ats_invalidate_done("no-such-device", cookie))
            await expect(errno.ERANGE, emu.ats_invalidate_done(uuid, 0))  # cookies start at 1
            await emu.ats_invalidate_done(uuid, cookie)


async def test_a_device_that_leaves_ends_the_wait(slow_ats: RunningDaemon) -> None:
    async with siov.connect(slow_ats.path) as owner:
        replies: list[int] = []
        async with siov.connect(slow_ats.path) as emu:
            uuid, dom, _phys = await claimed(emu, owner)
            await emu.translate(uuid, 0x10000, 4096)
            async with trio.open_nursery() as nursery:

                async def unmapping() -> None:
                    replies.append(await owner.unmap(dom, 0x10000, 4096))

                nursery.start_soon(unmapping)
                await emu.next_event(Command.EVENT_ATS_INVALIDATE)
                await emu.unregister_device(uuid)  # it holds nothing once it is gone
        assert replies == [4096]
