"""An mdev served as a spec vfio-user device: negotiation, DMA_MAP/UNMAP with and without fds,
regions, config space, IRQs, the guest driver's register sequence, descriptors assembled from
8-byte portal writes, no stale translation after an unmap, and the error rules."""

from __future__ import annotations

import errno
import json
import mmap
import os
import select
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import siov
from siov_protocol import vfio_user as vu
from siov_protocol.dsa import (
    IDXD_OP_FLAG_CRAV,
    IDXD_OP_FLAG_RCI,
    IDXD_OP_FLAG_RCR,
    CompletionRecord,
    Descriptor,
    DsaCompStatus,
    DsaOpcode,
)
from siovd.model.accel import vdsa
from tests.daemonproc import LoggedDaemon, logged_siovd
from tests.helpers import settle
from tests.vfio_user_client import VfioUserClient

MiB = 1 << 20
BAR0, BAR2, CONFIG = vu.PCI_BAR0_REGION, vu.PCI_BAR2_REGION, vu.PCI_CONFIG_REGION


@pytest.fixture(scope="module")
def daemon() -> Iterator[LoggedDaemon]:
    with logged_siovd() as running:
        yield running
        assert running.alive() and not running.failures_logged()


@contextmanager
def exposed(daemon: LoggedDaemon, name: str) -> Iterator[tuple[siov.BlockingClient, str, str]]:
    with siov.BlockingClient(daemon.path) as owner:
        mdev = owner.create_mdev("dsa0", "dsa-1dwq")
        path = os.path.join(daemon.dir, name)
        owner.vfio_user_expose(mdev, path)
        yield owner, mdev.uuid, path


def memfd(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("guest-ram", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


def eventfd_count(fd: int) -> int:
    readable, _, _ = select.select([fd], [], [], 0)
    return int.from_bytes(os.read(fd, 8), "little") if readable else 0


def drive_like_idxd(c: VfioUserClient, wq_size: int = 16) -> None:
    """What drivers/dma/idxd does from probe to an enabled dedicated kernel WQ."""
    c.write32(BAR0, vdsa.CMD_OFFSET, vdsa.CMD_RESET_DEVICE << 20)
    assert c.read32(BAR0, vdsa.CMDSTS_OFFSET) == 0
    c.write(BAR0, vdsa.GRPCFG_TABLE, struct.pack("<Q", 1))  # WQ 0 in group 0
    c.write(BAR0, vdsa.GRPCFG_TABLE + 32, struct.pack("<Q", 1))  # engine 0
    c.write32(BAR0, vdsa.WQCFG_TABLE, wq_size)
    c.write32(BAR0, vdsa.WQCFG_TABLE + 8, 1 | 1 << 4)  # dedicated, priority 1
    c.write32(BAR0, vdsa.WQCFG_TABLE + 12, 20 | 5 << 5)  # max_xfer 1 MiB, max_batch 32
    c.write32(BAR0, vdsa.CMD_OFFSET, vdsa.CMD_INT_REQ | vdsa.CMD_ENABLE_DEVICE << 20)
    assert c.read32(BAR0, vdsa.CMDSTS_OFFSET) == vdsa.CMDSTS_SUCCESS
    assert c.read32(BAR0, vdsa.INTCAUSE_OFFSET) & vdsa.INTC_CMD
    c.write32(BAR0, vdsa.INTCAUSE_OFFSET, vdsa.INTC_CMD)  # write 1 to clear
    assert c.read32(BAR0, vdsa.INTCAUSE_OFFSET) == 0
    c.write32(BAR0, vdsa.CMD_OFFSET, vdsa.CMD_INT_REQ | vdsa.CMD_ENABLE_WQ << 20)
    assert c.read32(BAR0, vdsa.CMDSTS_OFFSET) == vdsa.CMDSTS_SUCCESS
    assert c.read32(BAR0, vdsa.WQCFG_TABLE + 24) >> 30 == 1  # wq_state enabled


def submit_8byte(c: VfioUserClient, desc: bytes, offset: int = 0x1000) -> None:
    """MOVDIR64B as a TCG guest performs it: eight posted 8-byte writes, lowest first."""
    for i in range(8):
        c.write(BAR2, offset + 8 * i, desc[8 * i : 8 * i + 8], posted=True)


def test_version_and_device_info(daemon: LoggedDaemon) -> None:
    with exposed(daemon, "v.sock") as (_, _, path), VfioUserClient(path) as c:
        assert c.error(vu.Cmd.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)) == errno.EINVAL
        assert c.error(vu.Cmd.VERSION, struct.pack("<HH", 1, 0)) == errno.ENOTSUP
        assert c.error(vu.Cmd.VERSION, struct.pack("<HH", 0, 0) + b"{") == errno.EINVAL
        no_nul = struct.pack("<HH", 0, 0) + b'{"capabilities":{}}'
        assert c.error(vu.Cmd.VERSION, no_nul) == errno.EINVAL
        not_object = struct.pack("<HH", 0, 0) + b'{"capabilities":3}\0'
        assert c.error(vu.Cmd.VERSION, not_object) == errno.EINVAL
        bad = vu.pack_version(0, 0, {"max_msg_fds": "many"})
        assert c.error(vu.Cmd.VERSION, bad) == errno.EINVAL
        version = c.negotiate({"max_msg_fds": 8, "max_data_xfer_size": MiB})
        assert (version.major, version.minor) == (0, 2)
        assert version.capabilities["max_msg_fds"] == vu.MAX_MSG_FDS
        assert version.capabilities["pgsizes"] == 4096
        assert c.error(vu.Cmd.VERSION, vu.pack_version(0, 2, {})) == errno.EINVAL  # twice
        info = c.ok(vu.Cmd.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
        argsz, flags, regions, irqs = struct.unpack("<IIII", info)
        assert argsz == vu.DEVICE_INFO_SIZE
        assert flags == vu.DEVICE_FLAGS_RESET | vu.DEVICE_FLAGS_PCI
        assert (regions, irqs) == (vu.PCI_NUM_REGIONS, vu.PCI_NUM_IRQS)
        assert c.error(vu.Cmd.DEVICE_GET_INFO, struct.pack("<I", 4)) == errno.EINVAL


def test_regions_config_space_and_irq_info(daemon: LoggedDaemon) -> None:
    with exposed(daemon, "r.sock") as (_, _, path), VfioUserClient(path) as c:
        c.negotiate()
        sizes = {}
        for index in range(vu.PCI_NUM_REGIONS):
            reply = c.ok(
                vu.Cmd.DEVICE_GET_REGION_INFO, struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0)
            )
            _, flags, got, _, size, _ = struct.unpack("<IIIIQQ", reply[:32])
            assert got == index and not flags & vu.REGION_INFO_FLAG_MMAP
            sizes[index] = size
        assert sizes[BAR0] == 0x10000 and sizes[BAR2] == 0x4000 and sizes[CONFIG] == 0x1000
        assert sizes[1] == sizes[6] == 0
        ask = struct.pack("<IIIIQQ", 32, 0, 9, 0, 0, 0)
        assert c.error(vu.Cmd.DEVICE_GET_REGION_INFO, ask) == errno.EINVAL
        vendor, device = struct.unpack("<HH", c.read(CONFIG, 0, 4))
        assert (vendor, device) == (0x8086, 0x0B25)
        assert c.read(CONFIG, 0x09, 3) == bytes([0, 0x80, 0x08])  # class 0x0880
        cap = c.read(CONFIG, 0x34, 1)[0]
        caps = {}
        while cap:
            cap_id, nxt = c.read(CONFIG, cap, 2)
            caps[cap_id] = cap
            cap = nxt
        assert set(caps) == {0x10, 0x11}  # PCI Express, MSI-X
        control, table, pba = struct.unpack("<HII", c.read(CONFIG, caps[0x11] + 2, 10))
        assert control & 0x7FF == 1  # two vectors
        assert (table, pba) == (vdsa.MSIX_TABLE_OFFSET, vdsa.MSIX_PBA_OFFSET)  # in BAR0
        # BAR sizing: all ones, then the size mask reads back; the vendor id is read-only
        c.write32(CONFIG, 0x10, 0xFFFFFFFF)
        assert c.read32(CONFIG, 0x10) == (~(0x10000 - 1) & 0xFFFFFFFF) | 0x4
        c.write32(CONFIG, 0x00, 0)
        assert c.read32(CONFIG, 0x00) == 0x0B258086
        assert c.error(vu.Cmd.REGION_READ, vu.pack_region_access(0xFFE, CONFIG, 4)) == errno.EINVAL
        assert c.error(vu.Cmd.REGION_READ, vu.pack_region_access(0, 1, 4)) == errno.EINVAL
        irq = struct.pack("<IIII", 16, 0, vu.PCI_MSIX_IRQ, 0)
        _, flags, index, count = struct.unpack("<IIII", c.ok(vu.Cmd.DEVICE_GET_IRQ_INFO, irq))
        assert (index, count) == (vu.PCI_MSIX_IRQ, 2) and flags & vu.IRQ_INFO_EVENTFD
        irq = struct.pack("<IIII", 16, 0, 5, 0)
        assert c.error(vu.Cmd.DEVICE_GET_IRQ_INFO, irq) == errno.EINVAL


def test_guest_sequence_copies_and_no_stale_translation(daemon: LoggedDaemon) -> None:
    with exposed(daemon, "g.sock") as (owner, uuid, path), VfioUserClient(path) as c:
        c.negotiate()
        irqs = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
        flags = vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_TRIGGER
        c.ok(vu.Cmd.DEVICE_SET_IRQS, struct.pack("<IIIII", 20, flags, 2, 0, 2), tuple(irqs))
        ram_fd, ram = memfd(4 * MiB)
        # guest RAM as QEMU maps it: one fd-backed range, one range without an fd (a ROM)
        c.dma_map(0x100000, 2 * MiB, fd=ram_fd, offset=0)
        c.dma_map(0x400000, MiB, fd=ram_fd, offset=2 * MiB)
        c.dma_map(0xF0000000, 0x10000)
        drive_like_idxd(c)
        assert eventfd_count(irqs[0]) == 2  # two commands with int_req
        src, dst, cr = 0x100000, 0x180000, 0x400000
        ram[0:4096] = bytes(range(256)) * 16

        def copy(to: int) -> CompletionRecord:
            ram[2 * MiB : 2 * MiB + 32] = bytes(32)
            desc = Descriptor.new(
                DsaOpcode.MEMMOVE,
                flags=IDXD_OP_FLAG_CRAV | IDXD_OP_FLAG_RCR | IDXD_OP_FLAG_RCI,
                completion_addr=cr,
                int_handle=1,
                src_addr=src,
                dst_addr=to,
                xfer_size=4096,
            )
            submit_8byte(c, desc.pack())
            c.read32(BAR0, 0)  # a read passes no posted write: the descriptor ran
            return CompletionRecord.unpack(ram[2 * MiB : 2 * MiB + 32])

        record = copy(dst)
        assert record.status == DsaCompStatus.SUCCESS
        assert ram[0x80000 : 0x80000 + 4096] == ram[0:4096]
        assert eventfd_count(irqs[1]) == 1  # the completion interrupt, vector 1
        # the guest unmaps the destination's range: a later copy there faults, no stale hit
        c.dma_unmap(0x100000, 2 * MiB)
        c.dma_map(0x100000, 0x80000, fd=ram_fd, offset=0)  # the source stays reachable
        record = copy(dst)
        assert record.status & 0x3F == DsaCompStatus.PAGE_FAULT_NOBOF
        assert record.fault_addr == dst
        record = copy(0xF0000000)  # mapped without an fd: the device cannot reach it
        assert record.status & 0x3F == DsaCompStatus.PAGE_FAULT_NOBOF
        # no completion record to report a fault in: the device logs it in SWERR and raises
        # INTCAUSE ERR on vector 0 (GENCTRL softerr_int_en), as idxd's misc handler expects
        c.write32(BAR0, 0x88, 1)
        eventfd_count(irqs[0])
        bare = Descriptor.new(DsaOpcode.MEMMOVE, src_addr=src, dst_addr=dst, xfer_size=4096)
        submit_8byte(c, bare.pack())
        swerr = struct.unpack("<QQQQ", c.read(BAR0, vdsa.SWERR_OFFSET, 32))
        assert swerr[0] & 1 and (swerr[0] >> 32) & 0xFF == DsaOpcode.MEMMOVE
        assert swerr[2] == dst
        assert c.read32(BAR0, vdsa.INTCAUSE_OFFSET) & vdsa.INTC_ERR
        assert eventfd_count(irqs[0]) == 1
        c.write(BAR0, vdsa.SWERR_OFFSET, struct.pack("<Q", vdsa.SWERR_ACK))
        assert c.read32(BAR0, vdsa.SWERR_OFFSET) & 3 == 0
        stats = owner.stats().vfio_user[uuid]
        assert stats["device_descriptors"] == 4 and stats["maps"] == 3
        # UNMAP_ALL; then the next DMA_MAP at the same address works again
        c.dma_unmap(0, 0, vu.UNMAP_ALL)
        assert owner.stats().vfio_user[uuid]["maps"] == 0
        c.dma_map(0x100000, 2 * MiB, fd=ram_fd)
        os.close(ram_fd)
        for fd in irqs:
            os.close(fd)
        ram.close()


def test_dma_map_rules(daemon: LoggedDaemon) -> None:
    with exposed(daemon, "dm.sock") as (_, _, path), VfioUserClient(path) as c:
        c.negotiate()
        fd, ram = memfd(2 * MiB)
        c.dma_map(0x200000, MiB, fd=fd)

        def map_errno(addr: int, size: int, flags: int = 3, offset: int = 0) -> int:
            payload = struct.pack("<IIQQQ", 32, flags, offset, addr, size)
            return c.error(vu.Cmd.DMA_MAP, payload, (fd,))

        assert map_errno(0x200000, MiB) == errno.EEXIST  # the spec's rule for an overlap
        assert map_errno(0x300000, 0x800) == errno.EINVAL  # unaligned
        assert map_errno(0x400000, 4 * MiB) == errno.EINVAL  # past the end of the file
        assert map_errno(0x400000, MiB, flags=0x10) == errno.EINVAL  # unknown flag
        assert map_errno(0x400000, MiB, offset=0x800) == errno.EINVAL
        unmap = struct.pack("<IIQQ", 24, 0, 0x280000, 0x1000)
        assert c.error(vu.Cmd.DMA_UNMAP, unmap) == errno.EINVAL  # would split a mapping
        unmap = struct.pack("<IIQQ", 24, vu.UNMAP_GET_DIRTY_BITMAP, 0x200000, MiB)
        assert c.error(vu.Cmd.DMA_UNMAP, unmap) == errno.EOPNOTSUPP
        # a range covering whole mappings unmaps them (what QEMU's vIOMMU sends)
        c.dma_unmap(0, 1 << 40)
        c.dma_map(0x200000, MiB, fd=fd)
        os.close(fd)
        ram.close()


def test_set_irqs_rules(daemon: LoggedDaemon) -> None:
    with exposed(daemon, "i.sock") as (_, _, path), VfioUserClient(path) as c:
        c.negotiate()
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        rfd, wfd = os.pipe()
        trig = vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_TRIGGER
        sets = struct.pack("<IIIII", 20, trig, 2, 0, 1)
        assert c.error(vu.Cmd.DEVICE_SET_IRQS, sets, (rfd,)) == errno.EINVAL  # not an eventfd
        sets = struct.pack("<IIIII", 20, trig, 2, 1, 2)
        assert c.error(vu.Cmd.DEVICE_SET_IRQS, sets, (efd,)) == errno.EINVAL  # past vector 1
        both = vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_DATA_BOOL | vu.IRQ_SET_ACTION_TRIGGER
        sets = struct.pack("<IIIII", 20, both, 2, 0, 1)
        assert c.error(vu.Cmd.DEVICE_SET_IRQS, sets) == errno.EINVAL
        c.ok(vu.Cmd.DEVICE_SET_IRQS, struct.pack("<IIIII", 20, trig, 2, 0, 1), (efd,))
        # DATA_BOOL trigger fires the vector (loopback), DATA_NONE too
        boolean = vu.IRQ_SET_DATA_BOOL | vu.IRQ_SET_ACTION_TRIGGER
        c.ok(vu.Cmd.DEVICE_SET_IRQS, struct.pack("<IIIII", 21, boolean, 2, 0, 1) + b"\1")
        assert eventfd_count(efd) == 1
        # no fds de-assigns; count 0 with DATA_NONE disables the index
        c.ok(vu.Cmd.DEVICE_SET_IRQS, struct.pack("<IIIII", 20, trig, 2, 0, 1))
        none = vu.IRQ_SET_DATA_NONE | vu.IRQ_SET_ACTION_TRIGGER
        c.ok(vu.Cmd.DEVICE_SET_IRQS, struct.pack("<IIIII", 20, none, 2, 0, 0))
        for fd in (efd, rfd, wfd):
            os.close(fd)


def test_bad_input_gets_error_replies_and_touches_no_one_else(daemon: LoggedDaemon) -> None:
    with (
        exposed(daemon, "b.sock") as (owner, _, path),
        siov.BlockingClient(daemon.path) as bystander,
    ):
        fds_before = daemon.fds()
        with VfioUserClient(path) as c:
            c.negotiate()
            # a second vfio-user client is turned away while the first is connected
            # a bare socket: the subject is the connection being closed before any byte
            other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            other.settimeout(10)
            other.connect(path)
            assert other.recv(16) == b""
            other.close()
            for cmd in (vu.Cmd.DMA_MAP, vu.Cmd.DMA_UNMAP, vu.Cmd.DEVICE_SET_IRQS):
                assert c.error(cmd, b"\0" * 3) == errno.EINVAL  # short payloads
            assert c.error(99) == errno.EINVAL  # unknown command
            assert c.error(vu.Cmd.DMA_READ, struct.pack("<QQ", 0, 8)) == errno.EINVAL
            assert c.error(vu.Cmd.DEVICE_FEATURE, struct.pack("<II", 8, 1)) == errno.ENOTTY
            assert c.error(vu.Cmd.DEVICE_GET_REGION_IO_FDS, bytes(16)) == errno.EOPNOTSUPP
            # fds on a command that takes none: refused, and the daemon closes them
            junk = os.eventfd(0)
            assert c.error(vu.Cmd.DEVICE_RESET, b"", (junk,)) == errno.EINVAL
            os.close(junk)
            big = vu.pack_region_access(0, BAR0, 1 << 21)
            assert c.error(vu.Cmd.REGION_READ, big) == errno.EINVAL
            write = vu.pack_region_access(0, BAR0, 8, b"\0" * 4)  # count lies
            assert c.error(vu.Cmd.REGION_WRITE, write) == errno.EINVAL
            assert c.ok(vu.Cmd.DEVICE_RESET) == b""
            # a malformed portal write is dropped, as a device drops it, and counted
            c.write(BAR2, 0x1004, b"\0" * 4)
            assert bystander.ping(b"still here") == b"still here"
            # a header that lies about its size ends this connection only
            c.send_raw(struct.pack("<HHIII", 7, 4, 8, 0, 0))
            with pytest.raises(ConnectionError):
                c.reply()
        settle(lambda: daemon.fds() <= fds_before, "the daemon closed every fd it was given")
        assert bystander.ping(b"x") == b"x"
        # the endpoint serves the next client after a bad one
        with VfioUserClient(path) as c:
            c.negotiate()
            assert c.read32(CONFIG, 0) == 0x0B258086
        assert owner.stats().vfio_user


def test_expose_rules(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as a, siov.BlockingClient(daemon.path) as b:
        mdev = a.create_mdev("dsa0", "dsa-1dwq").uuid
        shared = a.create_mdev("dsa0", "dsa-1swq").uuid
        path = os.path.join(daemon.dir, "e.sock")
        with pytest.raises(siov.SiovError) as info:
            b.vfio_user_expose(mdev, path)  # not b's mdev
        assert info.value.errno == errno.ENOENT
        with pytest.raises(siov.SiovError) as info:
            a.vfio_user_expose(shared, path)
        assert info.value.errno == errno.EOPNOTSUPP
        with pytest.raises(siov.SiovError) as info:
            a.vfio_user_expose(mdev, daemon.log_path)  # exists
        assert info.value.errno == errno.EEXIST
        with pytest.raises(siov.SiovError) as info:
            a.vfio_user_expose(mdev, "relative.sock")
        assert info.value.errno == errno.EINVAL
        served = a.vfio_user_expose(mdev, path)
        assert served.path == path and os.path.exists(path)
        with pytest.raises(siov.SiovError) as info:
            a.vfio_user_expose(mdev, path + "2")
        assert info.value.errno == errno.EBUSY
        with pytest.raises(siov.SiovError) as info:
            b.vfio_user_unexpose(mdev)
        assert info.value.errno == errno.ENOENT
        a.vfio_user_unexpose(mdev)
        assert not os.path.exists(path)
        # exposing again works, and removing the mdev closes the endpoint
        a.vfio_user_expose(mdev, path)
        a.remove_mdev(mdev)
        assert not os.path.exists(path)
        assert json.dumps(a.stats().vfio_user) == "{}"


def test_unexpose_before_the_endpoint_serves_leaves_the_daemon_up(daemon: LoggedDaemon) -> None:
    """An endpoint closed before its task first runs (expose and unexpose pipelined) once
    ended the daemon: the task met a closed socket. It must simply end."""
    with siov.BlockingClient(daemon.path) as a:
        mdev = a.create_mdev("dsa0", "dsa-1dwq").uuid
        path = os.path.join(daemon.dir, "quick.sock")
        for _ in range(50):
            a.vfio_user_expose(mdev, path)
            a.vfio_user_unexpose(mdev)
        a.ping()  # the daemon still answers (raises if it is gone)
        assert json.dumps(a.stats().vfio_user) == "{}"
        a.remove_mdev(mdev)
    assert daemon.alive()
    assert daemon.failures_logged() == []


def test_siovctl_vfio_user_serves_until_interrupted(daemon: LoggedDaemon) -> None:
    import signal
    import subprocess
    import sys

    path = os.path.join(daemon.dir, "ctl.sock")
    argv = [sys.executable, "-m", "siov.cli", "--socket", daemon.path, "--json", "vfio-user", path]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        settle(lambda: os.path.exists(path) or proc.poll() is not None, "siovctl serving")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with VfioUserClient(path) as c:
            c.negotiate()
            assert c.read32(CONFIG, 0) == 0x0B258086
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    first, *rest = out.splitlines()
    assert first.startswith("siovctl: serving mdev") and path in first
    assert json.loads("\n".join(rest))["path"] == path
    settle(lambda: not os.path.exists(path), "the socket removed with siovctl's connection")
