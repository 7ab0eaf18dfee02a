"""An accelerator mdev as a vfio-user device: info, regions, the portal path, SET_IRQS and
interrupts; accel-config style configuration; the blocking SDK and siovctl."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys

import pytest
import trio

import siov
from siov import dsa
from siov_protocol import Command
from siov_protocol.auth import Role
from siov_protocol.messages_accel import (
    IRQ_MSIX,
    IRQ_SET_ACTION_MASK,
    IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
    REGION_FLAG_READ,
    REGION_FLAG_WRITE,
    SUBMIT_ACCEPTED,
    RegionInfo,
)
from siov_protocol.replies import DeviceDescription
from siovd.service.fds import CLOSER
from tests.conftest import DaemonProcess, RunningDaemon
from tests.helpers import asettle, expect

MiB = 1 << 20
CR = 0x10_0000
EVENTFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


async def mapped_mdev(
    client: siov.Client, type_id: str = "dsa-1dwq"
) -> tuple[siov.Mdev, siov.Buffer]:
    mdev = await client.create_dsa_mdev(type_id)
    buf = await client.alloc(2 * MiB)
    assert mdev.domain_id is not None
    await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
    return mdev, buf


def open_fds() -> int:
    # The daemon closes a memfd it was handed in its closer thread (siovd.service.fds): let
    # those closes land first, or one of them can fall between two counts.
    assert CLOSER.wait_idle()
    return len(os.listdir("/proc/self/fd"))


async def test_device_info_regions_and_registers(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, _ = await mapped_mdev(client)
        info = await mdev.device_info()
        assert (info.flags, info.num_regions, info.num_irqs) == (2, 9, 5)
        assert info.wq is not None and (info.wq.mode, info.wq.size) == ("dedicated", 64)
        bar0 = await mdev.region_info(0)
        assert bar0 == RegionInfo(index=0, flags=REGION_FLAG_READ, size=4096, offset=0)
        bar2 = await mdev.region_info(2)
        assert bar2.flags == REGION_FLAG_WRITE and bar2.size == 4 * 4096  # 4 portal pages
        assert (await mdev.region_info(1)).size == 0  # not implemented
        await expect(errno.EINVAL, mdev.region_info(9), "regions 0..8")
        registers = await mdev.read_registers()
        assert struct.unpack_from("<I", registers, 0)[0] == 0x200  # VER: DSA 2.0
        gencap = struct.unpack_from("<Q", registers, 0x10)[0]
        assert gencap & 1 and gencap >> 16 & 0x1F == 31  # block on fault; 2 GiB transfers
        wqcfg = struct.unpack_from("<I", registers, 0x500 + 8)[0]  # WQCFG dword 2 of WQ 0
        assert wqcfg & 1 and (wqcfg >> 8) & 0xFFFFF == mdev.default_pasid  # dedicated, PASID
        assert await mdev.read_registers(0x10, 8) == registers[0x10:0x18]
        body = {"device": mdev.uuid, "region": 0, "offset": 0xFF8, "count": 16}
        await expect(errno.EINVAL, client.call(Command.REGION_READ, body), "past BAR0")
        body = {"device": mdev.uuid, "region": 2, "offset": 0, "count": 8}
        await expect(errno.EINVAL, client.call(Command.REGION_READ, body), "not readable")


async def test_portal_writes_submit_one_descriptor(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, buf = await mapped_mdev(client)
        buf.view[:4096] = os.urandom(4096)
        record = buf.view[CR : CR + 32]
        result = await mdev.portal_write(dsa.memmove(0x8000, 0, 4096, completion=CR))
        assert result == SUBMIT_ACCEPTED
        with trio.fail_after(5):
            assert (await mdev.wait(record)).code == dsa.DSA_COMP_SUCCESS
        assert buf.view[0x8000:0x9000] == buf.view[:4096]
        await expect(errno.EINVAL, mdev.portal_write(dsa.noop(), offset=8), "64-byte aligned")
        await expect(errno.EINVAL, mdev.portal_write(dsa.noop()[:32]), "64-byte")
        await expect(errno.EINVAL, mdev.portal_write(dsa.noop(), offset=0x4000), "past the last")
        body = {"device": mdev.uuid, "region": 0, "offset": 0, "data": dsa.noop()}
        await expect(errno.EINVAL, client.call(Command.REGION_WRITE, body), "not writable")
        body = {"device": mdev.uuid, "region": 2, "offset": 0, "data": dsa.noop(), "count": 32}
        await expect(errno.EINVAL, client.call(Command.REGION_WRITE, body), "count 32")
        # the shared WQ's portal takes the PASID ENQCMD would carry
        shared, sbuf = await mapped_mdev(client, "dsa-1swq")
        record = sbuf.view[CR : CR + 32]
        assert await shared.portal_write(dsa.noop(completion=CR), offset=0x1000) == 0  # limited
        with trio.fail_after(5):
            assert (await shared.wait(record)).code == dsa.DSA_COMP_SUCCESS


async def test_device_commands_need_your_accelerator_mdev(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client, siov.connect(siovd.path) as other:
        mdev, _ = await mapped_mdev(client)
        body = {"device": mdev.uuid}
        await expect(errno.ENOENT, other.call(Command.DEVICE_GET_INFO, body))
        await expect(
            errno.ENOENT,
            other.call(Command.SUBMIT, {"device": mdev.uuid, "descriptors": dsa.noop()}),
        )
        plain = await client.create_mdev("siov_test", "siov_test-1")
        await expect(
            errno.ENODEV,
            client.call(Command.DEVICE_GET_INFO, {"device": plain.uuid}),
            "not an accelerator mdev",
        )
        await expect(errno.EINVAL, mdev.submit(dsa.noop()[:40]), "64-byte")


def irq_body(uuid: str, flags: int, start: int = 0, count: int = 0) -> dict[str, object]:
    return {"device": uuid, "flags": flags, "index": IRQ_MSIX, "start": start, "count": count}


async def test_set_irqs_follows_vfio_user_rules_and_closes_fds(siovd: RunningDaemon) -> None:
    trigger_fd = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER
    async with siov.connect(siovd.path) as client:
        mdev, _ = await mapped_mdev(client)
        uuid = mdev.uuid
        fds = [os.eventfd(0, EVENTFD_FLAGS) for _ in range(2)]
        try:
            before = open_fds()
            bad = [
                (irq_body(uuid, trigger_fd, 0, 1), fds, "needs 1 eventfds"),  # 2 fds, count 1
                (irq_body(uuid, trigger_fd, 1, 2), fds, "it has 2"),  # past vector 1
                (irq_body(uuid, trigger_fd, 0, 0), fds, "count 0 needs DATA_NONE"),
                (
                    irq_body(uuid, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 0, 2),
                    fds,
                    "only with DATA_EVENTFD",
                ),
                (
                    irq_body(uuid, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_MASK, 0, 2),
                    fds,
                    "cannot be masked",
                ),
                ({**irq_body(uuid, trigger_fd, 0, 1), "index": 0}, fds[:1], "it has 0"),
                (irq_body(uuid, IRQ_SET_DATA_EVENTFD, 0, 2), fds, "exactly one"),
            ]
            for body, passed, words in bad:
                await expect(
                    errno.EINVAL, client.call(Command.DEVICE_SET_IRQS, body, passed), words
                )
            read_end, write_end = os.pipe()
            try:
                body = irq_body(uuid, trigger_fd, 0, 1)
                await expect(
                    errno.EINVAL, client.call(Command.DEVICE_SET_IRQS, body, [read_end]), "eventfd"
                )
            finally:
                os.close(read_end)
                os.close(write_end)
            three = [*fds, fds[0]]
            await expect(
                errno.EINVAL,
                client.call(Command.DEVICE_SET_IRQS, irq_body(uuid, trigger_fd, 0, 2), three),
                "at most 2 fds",
            )
            assert open_fds() == before  # the daemon (in this process) closed every fd it got
            # a good one: the daemon keeps its copies until disabled
            await client.call(Command.DEVICE_SET_IRQS, irq_body(uuid, trigger_fd, 0, 2), fds)
            assert open_fds() == before + 2
            # DATA_NONE / DATA_BOOL with TRIGGER fire vectors (loopback)
            none = irq_body(uuid, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, 1, 1)
            await client.call(Command.DEVICE_SET_IRQS, none)
            assert os.eventfd_read(fds[1]) == 1
            boolean = {
                **irq_body(uuid, IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 0, 2),
                "data": b"\x01\x00",
            }
            await client.call(Command.DEVICE_SET_IRQS, boolean)
            assert os.eventfd_read(fds[0]) == 1
            with pytest.raises(BlockingIOError):
                os.eventfd_read(fds[1])
            # count 0 disables the index: the daemon closes its copies
            await mdev.disable_irqs()
            assert open_fds() == before
        finally:
            for fd in fds:
                os.close(fd)


async def test_interrupts_by_eventfd_and_by_event(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        mdev, buf = await mapped_mdev(client)
        rci = dsa.IDXD_OP_FLAG_RCI
        fds = [os.eventfd(0, EVENTFD_FLAGS) for _ in range(2)]
        try:
            await mdev.set_irqs(fds)  # our own eventfds: we read them
            descs = [dsa.noop(completion=CR + 32 * i, flags=rci, int_handle=1) for i in range(5)]
            assert (await mdev.submit(descs)).all_accepted
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(fds[1])
            assert os.eventfd_read(fds[1]) == 5  # one per descriptor, summed by the eventfd
            await mdev.disable_irqs()
        finally:
            for fd in fds:
                os.close(fd)
        # without an eventfd, EVENT_IRQ messages; the Mdev counts them and wakes wait()
        record = buf.view[CR : CR + 32]
        record[:] = bytes(32)
        assert (await mdev.submit(dsa.noop(completion=CR, flags=rci, int_handle=1))).all_accepted
        with trio.fail_after(5):
            await mdev.wait(record)
        await asettle(lambda: mdev.irq_counts[1] >= 1)
        # eventfds the Mdev makes and watches itself
        await mdev.set_irqs()
        descs = [dsa.noop(completion=CR, flags=rci, int_handle=1) for i in range(3)]
        assert (await mdev.submit(descs)).all_accepted
        await asettle(lambda: mdev.irq_counts[1] >= 2)
        # a client that did not open an Mdev (a raw MDEV_CREATE; create_mdev returns an Mdev,
        # which counts its own interrupts) gets EVENT_IRQ in its event stream
        body = {"parent": "dsa0", "type_id": "dsa-1swq"}
        raw: DeviceDescription = await client.call_typed(Command.MDEV_CREATE, body)
        buf2 = await client.alloc(2 * MiB)
        await client.map(raw.domain_id, buf2.phys, buf2.size, iova=0)
        body = {"device": raw.uuid, "descriptors": dsa.noop(flags=rci, int_handle=1)}
        await client.call(Command.SUBMIT, body)
        with trio.fail_after(5):
            event = await client.next_event(Command.EVENT_IRQ)
        assert event.body == {"device": raw.uuid, "vector": 1}


async def test_accel_config_commands(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        (device,) = await client.accel_list()
        assert next(iter(device)) == "dev" and device["dev"] == "dsa0"
        assert device["state"] == "enabled"
        wqs = {w["dev"]: w for g in device["groups"] for w in g.get("grouped_workqueues", [])}
        assert wqs["wq0.0"]["mode"] == "dedicated" and wqs["wq0.1"]["mode"] == "shared"
        await expect(errno.EPERM, client.accel_config_wq("dsa0/wq0.1", priority=5), "enabled")
        await expect(errno.ENODEV, client.accel_config_wq("dsa0/wq0.9", priority=5))
        await client.accel_disable_wq("dsa0/wq0.1")
        got = await client.accel_config_wq("dsa0/wq0.1", priority=5, threshold=32)
        assert got.priority == 5 and got.threshold == 32
        await expect(errno.EINVAL, client.accel_config_wq("wq0.1", threshold=65), "threshold")
        await client.accel_enable_wq("wq0.1")
        await expect(errno.EBUSY, client.accel_enable_wq("wq0.1"), "already enabled")
        # an mdev holds its WQ: disabling it is EBUSY until the mdev goes
        mdev = await client.create_dsa_mdev()
        await expect(errno.EBUSY, client.accel_disable_wq("dsa0/wq0.0"), "in use")
        await expect(errno.EBUSY, client.accel_disable_device("dsa0"), "in use")
        await mdev.remove()
        saved = await client.accel_save_config()
        await client.accel_disable_device("dsa0")
        await expect(errno.EINVAL, client.accel_config_group("dsa0/group0.0", traffic_class_a=9))
        await client.accel_config_engine("dsa0/engine0.3", group_id=1)
        await client.accel_config_device("dsa0", read_buffer_limit=10)
        listed = await client.accel_load_config(saved, enable=True)
        assert listed[0]["state"] == "enabled" and listed[0]["read_buffer_limit"] == 0
        assert await client.accel_save_config() == saved
        # configuration is for admins; listing is for everyone
        for session in siovd.daemon.sessions.values():
            session.role = Role.USER
        await expect(errno.EPERM, client.accel_disable_wq("wq0.1"), "admin")
        await expect(errno.EPERM, client.accel_load_config(saved), "admin")
        assert await client.accel_list()


def test_blocking_mdev(siovd_proc: DaemonProcess) -> None:
    with siov.BlockingClient(siovd_proc.path) as client:
        mdev = client.create_dsa_mdev()
        buf = client.alloc(2 * MiB)
        assert mdev.domain_id is not None
        client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        buf.view[:64] = bytes(range(64))
        done = mdev.run(dsa.memmove(0x1000, 0, 64, completion=CR), buf.view[CR : CR + 32])
        assert done.code == dsa.DSA_COMP_SUCCESS and buf.view[0x1000:0x1040] == bytes(range(64))
        again = client.open_mdev(mdev.uuid)
        assert again.uuid == mdev.uuid and again.device_info().num_regions == 9
        mdev.remove()


def siovctl(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siov.cli", "--socket", path, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_siovctl_accel(siovd_proc: DaemonProcess, tmp_path: object) -> None:
    path = siovd_proc.path
    listed = siovctl(path, "accel", "list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["dev"] == "dsa0"
    saved_file = os.path.join(str(tmp_path), "dsa.conf")
    assert siovctl(path, "accel", "save-config", "-s", saved_file).returncode == 0
    with open(saved_file) as fh:
        saved = json.load(fh)
    refused = siovctl(path, "accel", "config-wq", "dsa0/wq0.1", "-p", "3")
    assert refused.returncode == 1 and "EPERM" in refused.stderr and "enabled" in refused.stderr
    steps = [
        ("disable-wq", "dsa0/wq0.1"),
        ("config-wq", "dsa0/wq0.1", "-p", "3", "-t", "40"),
        ("enable-wq", "dsa0/wq0.1"),
    ]
    for step in steps:
        done = siovctl(path, "accel", *step)
        assert done.returncode == 0, done.stderr
    shown = json.loads(siovctl(path, "--json", "accel", "list").stdout)
    wq = next(
        w
        for g in shown[0]["groups"]
        for w in g.get("grouped_workqueues", [])
        if w["dev"] == "wq0.1"
    )
    assert wq["priority"] == 3 and wq["threshold"] == 40
    for step in (("disable-device", "dsa0"), ("load-config", "-c", saved_file, "-e")):
        done = siovctl(path, "accel", *step)
        assert done.returncode == 0, done.stderr
    assert json.loads(siovctl(path, "accel", "save-config", "-s", "-").stdout) == saved
