"""Page requests from any device over a real socket (PCIe PRI through the IOMMU's page
request queue, iommufd's fault queue and TRIGGER_IOPF; SPEC §8.19)."""

from __future__ import annotations

import contextlib
import errno
import os

import trio

import siov
from siov_protocol import Command
from tests.conftest import RunningDaemon, make_config, start_daemon
from tests.integration.test_iommu_socket import expect


async def owned_device(emu: siov.Client, owner: siov.Client) -> tuple[str, int]:
    """An emulator's device claimed by ``owner`` and attached to a paging domain of it."""
    dev = await emu.register_device("nic")
    await owner.claim_device(dev.uuid, dev.token)
    dom = (await owner.alloc_domain()).domain_id
    await owner.attach_device(dom, dev.uuid)
    return dev.uuid, dom


async def test_the_owner_answers_an_emulators_request(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu, siov.connect(siovd.path) as owner:
        uuid, dom = await owned_device(emu, owner)
        buf = await owner.alloc(4096)
        result: dict[str, object] = {}

        async def device_side() -> None:
            result.update(await emu.page_request(uuid, 0x7000, write=True, grpid=5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(device_side)
            event = await owner.next_event(Command.EVENT_PAGE_REQUEST)
            body = event.body
            assert (body["device"], body["iova"], body["write"], body["domain"]) == (
                uuid,
                0x7000,
                True,
                dom,
            )
            assert body["grpid"] == 5 and body["perm"] == 3 and not body["pasid_valid"]
            await owner.map(dom, buf.phys, 4096, iova=0x7000)  # fault the page in
            await owner.page_response(body["request"], 0)
        assert result["code"] == 0 and result["timed_out"] is False
        assert result["request"] == body["request"]
        # the same cookie cannot be answered twice
        await expect(errno.ENOENT, owner.page_response(body["request"], 0))


async def test_groups_and_pasids(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu, siov.connect(siovd.path) as owner:
        uuid, _dom = await owned_device(emu, owner)
        pdom = (await owner.alloc_domain()).domain_id
        await owner.attach_pasid(pdom, uuid, 9)
        # earlier requests of a group get no response; the last carries the group
        assert (await emu.page_request(uuid, 0x1000, pasid=9, grpid=2, last=False))["queued"]
        assert (await emu.page_request(uuid, 0x2000, pasid=9, grpid=2, last=False))["queued"]
        answer: dict[str, object] = {}

        async def last() -> None:
            answer.update(await emu.page_request(uuid, 0x3000, pasid=9, grpid=2, exec=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(last)
            body = (await owner.next_event(Command.EVENT_PAGE_REQUEST)).body
            assert body["pasid"] == 9 and body["pasid_valid"] and body["domain"] == pdom
            assert [p["iova"] for p in body["pages"]] == [0x1000, 0x2000, 0x3000]
            assert body["perm"] == 1 | 4  # READ | EXEC
            await owner.page_response(body["request"], 1)  # INVALID
        assert answer["code"] == 1
        # a PASID with no entry, and a blocked domain: the IOMMU answers Invalid itself
        got = await emu.page_request(uuid, 0x1000, pasid=10)
        assert got == {"request": None, "code": 1, "by_iommu": True}
        blocked = (await owner.alloc_domain("blocked")).domain_id
        await owner.attach_pasid(blocked, uuid, 11)
        assert (await emu.page_request(uuid, 0x1000, pasid=11))["by_iommu"] is True


async def test_page_request_errnos(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as emu, siov.connect(siovd.path) as owner:
        uuid, _dom = await owned_device(emu, owner)
        await expect(
            errno.ENOENT, owner.page_request(uuid, 0x1000), "no device"
        )  # not its emulator
        await expect(errno.EINVAL, emu.page_request(uuid, 0x1001), "aligned")
        await expect(errno.EINVAL, emu.page_request(uuid, 0x1000, read=False))
        await expect(errno.EINVAL, emu.page_request(uuid, 0x1000, pasid=0))
        await expect(errno.EINVAL, emu.page_request(uuid, 0x1000, exec=True), "need a PASID")
        body = {"device": uuid, "iova": 0x1000, "grpid": 512}
        await expect(errno.ERANGE, emu.call(Command.PAGE_REQUEST, body))
        narrow = (await emu.register_device("narrow", pasid_bits=4)).uuid
        await expect(errno.EINVAL, emu.page_request(narrow, 0x1000, pasid=16), "outside")
        for g in range(64):
            await emu.page_request(uuid, 0x1000, grpid=g, last=False)
        await expect(errno.ENOSPC, emu.page_request(uuid, 0x1000, grpid=100, last=False))
        await expect(errno.ENOENT, owner.trigger_iopf("00000000-0000-0000-0000-000000000000", 0))


async def test_trigger_iopf_and_timeout(sock_dir: str) -> None:
    cfg = make_config(iommu={"page_request_timeout_s": 0.2})
    async with trio.open_nursery() as nursery:
        daemon = await start_daemon(nursery, os.path.join(sock_dir, "t.sock"), cfg)
        async with siov.connect(daemon.path) as emu, siov.connect(daemon.path) as owner:
            uuid, dom = await owned_device(emu, owner)
            # TRIGGER_IOPF by the owner: a cookie at once, an event, an answer by that cookie
            cookie = (await owner.trigger_iopf(uuid, 0x5000, write=True))["request"]
            body = (await owner.next_event(Command.EVENT_PAGE_REQUEST)).body
            assert body["request"] == cookie and body["iova"] == 0x5000 and body["domain"] == dom
            await owner.page_response(cookie, 0)
            await expect(errno.ENOENT, owner.page_response(cookie, 0))
            # nobody answers: the emulator's request ends Invalid when the timeout passes
            got = await emu.page_request(uuid, 0x6000)
            assert got["code"] == 1 and got["timed_out"] is True
            stale = (await owner.next_event(Command.EVENT_PAGE_REQUEST)).body["request"]
            await expect(errno.ENOENT, owner.page_response(stale, 0))
        nursery.cancel_scope.cancel()


async def test_an_owner_that_leaves_answers_invalid(siovd: RunningDaemon) -> None:
    """iommufd answers the faults pending on a fault fd that is closed with
    IOMMU_PAGE_RESP_INVALID; here the owner's connection going does the same."""
    async with siov.connect(siovd.path) as emu:
        ready = trio.Event()
        device: list[str] = []

        async def owner_side() -> None:
            async with siov.connect(siovd.path) as owner:
                device.append((await owned_device(emu, owner))[0])
                ready.set()
                await owner.next_event(Command.EVENT_PAGE_REQUEST)
            # it leaves with the request unanswered

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner_side)
            await ready.wait()
            result = await emu.page_request(device[0], 0x2000)
        assert result["code"] == 1 and result["owner_gone"] is True
        assert result["timed_out"] is False and result["cancelled"] is False


async def test_a_requester_that_leaves_is_owed_nothing(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as owner:
        cookie = None
        async with siov.connect(siovd.path) as emu:
            uuid, _dom = await owned_device(emu, owner)
            async with trio.open_nursery() as nursery:

                async def device_side() -> None:
                    with contextlib.suppress(Exception):
                        await emu.page_request(uuid, 0x2000)

                nursery.start_soon(device_side)
                cookie = (await owner.next_event(Command.EVENT_PAGE_REQUEST)).body["request"]
                nursery.cancel_scope.cancel()  # the emulator leaves with its request waiting
        await owner.next_event(Command.EVENT_DEVICE_REMOVED)  # its device with it
        # the request went with its device: its cookie is answered like none
        await expect(errno.ENOENT, owner.page_response(cookie, 0))
        assert await owner.ping(b"x") == b"x"


async def test_a_request_to_its_own_connection_is_edeadlk(siovd: RunningDaemon) -> None:
    """The requester's connection reads nothing while its PAGE_REQUEST waits, so a request it
    would have to answer itself is refused rather than left to time out."""
    async with siov.connect(siovd.path) as emu:
        dev = await emu.register_device("nic")
        dom = (await emu.alloc_domain()).domain_id
        await emu.attach_device(dom, dev.uuid)
        await expect(errno.EDEADLK, emu.page_request(dev.uuid, 0x1000))
        # not the group's last: nothing waits, so nothing is refused
        assert (await emu.page_request(dev.uuid, 0x1000, grpid=1, last=False))["queued"]
        # TRIGGER_IOPF does not wait: it is the way to ask oneself
        got = await emu.trigger_iopf(dev.uuid, 0x2000)
        assert got["request"] is not None
