"""SVA in the model, no event loop: maps parsing, the snapshot's rules, the DMA space over this
test process's own memory (its /proc/self/mem and maps), and the char-device rules."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from siov import dsa
from siov_protocol.dsa import DSA_COMP_STATUS_WRITE
from siovd.model.accel import embedded_default
from siovd.model.accel.cdev import SvaExecutor, as_enqcmd, closed, open_wq, opened
from siovd.model.accel.outcome import Blocked, Completed, PageResponse
from siovd.model.accel.wq import WorkItem
from siovd.model.errors import SiovError
from siovd.model.iommu.faults import FR_FS_NOT_PRESENT, FR_SM_WRITE
from siovd.model.iommu.sva import (
    MAX_RANGE,
    PERM_R,
    PERM_W,
    AddressSpace,
    SvaDmaSpace,
    SvaDomain,
    Vma,
    parse_maps,
)
from tests.unit.iommu_env import Env

PAGE = 4096
OWNER = 7

libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def own_mm() -> AddressSpace:
    return AddressSpace.from_fds(
        os.open("/proc/self/mem", os.O_RDWR), os.open("/proc/self/maps", os.O_RDONLY)
    )


class World:
    def __init__(self) -> None:
        self.env = Env()
        self.device = self.env.mdev(OWNER)
        self.mm = own_mm()
        self.domain = self.env.iommu.sva_bind(OWNER, self.device, self.mm)
        self.space = self.env.iommu.dma_space(self.device, self.domain.pasid, devtlb=True)

    def close(self) -> None:
        self.env.iommu.release_owner(OWNER)
        self.env.close()


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def anon(pages: int) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, pages * PAGE)
    holder = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(holder)
    del holder
    return m, addr


# ---- maps ------------------------------------------------------------------------------------


def test_parse_maps_merges_and_reads_permissions() -> None:
    text = (
        b"1000-3000 rw-p 00000000 00:00 0\n"
        b"3000-4000 rw-p 00000000 00:00 0          [heap]\n"
        b"4000-5000 r--p 00000000 fe:00 42         /usr/lib/x\n"
        b"6000-7000 ---p 00000000 00:00 0\n"
        b"8000-9000 -w-p 00000000 00:00 0\n"
    )
    assert parse_maps(text) == [
        Vma(0x1000, 0x4000, PERM_R | PERM_W),
        Vma(0x4000, 0x5000, PERM_R),
        Vma(0x6000, 0x7000, 0),
        Vma(0x8000, 0x9000, PERM_W),
    ]


@pytest.mark.parametrize(
    "text",
    [
        b"nonsense\n",
        b"1000 rw-p\n",
        b"3000-1000 rw-p 0 0 0\n",
        b"1001-2000 rw-p 0 0 0\n",
        b"2000-3000 rw-p 0 0 0\n1000-2800 rw-p 0 0 0\n",
        b"1000-2000 rw 0 0 0\n",
    ],
)
def test_parse_maps_refuses_what_is_not_maps(text: bytes) -> None:
    with pytest.raises(ValueError):
        parse_maps(text)


def test_the_snapshot_decides_permissions(world: World) -> None:
    mm = world.mm
    m, addr = anon(3)
    libc.mprotect(addr + PAGE, PAGE, mmap.PROT_READ)
    libc.mprotect(addr + 2 * PAGE, PAGE, 0)
    mm.refresh()
    assert mm.allowed(addr, PAGE, PERM_R | PERM_W) == (PAGE, None)
    assert mm.allowed(addr, 2 * PAGE, PERM_R) == (2 * PAGE, None)
    assert mm.allowed(addr, 2 * PAGE, PERM_R | PERM_W) == (PAGE, FR_SM_WRITE)
    assert mm.allowed(addr, 3 * PAGE, PERM_R) == (2 * PAGE, FR_FS_NOT_PRESENT)
    assert mm.allowed(1 << 47, 8, PERM_R)[1] == 0x80  # non-canonical
    assert mm.allowed((1 << 64) - PAGE, 8, PERM_R)[1] == 0x81  # the kernel's half
    m.close()


# ---- the DMA space ---------------------------------------------------------------------------


def test_reads_and_writes_reach_this_process(world: World) -> None:
    src = ctypes.create_string_buffer(b"hello, device", 64)
    dst = ctypes.create_string_buffer(64)
    views, fault = world.space.runs(ctypes.addressof(src), 13, False)
    assert fault is None and b"".join(views) == b"hello, device"
    views, fault = world.space.runs(ctypes.addressof(dst), 13, True)
    assert fault is None
    views[0][:] = b"written by it"
    assert dst.raw[:13] == bytes(13)  # not before the descriptor finishes
    assert isinstance(world.space, SvaDmaSpace)
    world.space.flush()
    assert dst.raw[:13] == b"written by it"


def test_a_write_to_a_read_only_page_faults_even_though_mem_could_write(world: World) -> None:
    m, addr = anon(1)
    m[:] = b"r" * PAGE
    libc.mprotect(addr, PAGE, mmap.PROT_READ)
    os.pwrite(world.mm.mem_fd, b"", addr)  # (the fd itself would: FOLL_FORCE)
    views, fault = world.space.runs(addr, PAGE, True)
    assert views == [] and fault is not None
    assert (fault.iova, fault.write, fault.reason) == (addr, True, FR_SM_WRITE)
    assert world.env.faults[-1][0] == OWNER  # the binding's owner hears of it
    libc.mprotect(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    m.close()


def test_a_hole_faults_at_its_first_byte(world: World) -> None:
    _m, addr = anon(2)
    libc.munmap(addr + PAGE, PAGE)
    views, fault = world.space.runs(addr + 100, PAGE, False)
    assert sum(map(len, views)) == PAGE - 100
    assert fault is not None and (fault.iova, fault.reason) == (addr + PAGE, FR_FS_NOT_PRESENT)


def test_untouched_pages_are_not_faults(world: World) -> None:
    m, addr = anon(16)  # never touched: nothing populated yet
    views, fault = world.space.runs(addr, 16 * PAGE, True)
    assert fault is None and sum(map(len, views)) == 16 * PAGE
    views[0][:] = b"\x42" * (16 * PAGE)
    world.space.flush()  # type: ignore[union-attr]
    assert m[:] == b"\x42" * (16 * PAGE)
    m.close()


def test_a_new_mapping_is_seen_at_once_a_removed_permission_after_invalidation(
    world: World,
) -> None:
    mm = world.mm
    reads = mm.maps_reads
    m, addr = anon(1)  # mapped after the snapshot: a miss re-reads the maps
    assert world.space.runs(addr, 8, True)[1] is None
    assert mm.maps_reads == reads + 1
    world.space.discard()  # type: ignore[union-attr]
    libc.mprotect(addr, PAGE, mmap.PROT_READ)
    # Until the IOMMU is told (the mmu-notifier's job), the snapshot still says writable:
    # the documented window. The invalidation closes it.
    assert world.space.runs(addr, 8, True)[1] is None
    world.space.discard()  # type: ignore[union-attr]
    world.env.iommu.iotlb_invalidate(OWNER, "domain", world.domain.id)
    fault = world.space.runs(addr, 8, True)[1]
    assert fault is not None and fault.reason == FR_SM_WRITE
    libc.mprotect(addr, PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    m.close()


def test_reads_see_writes_still_pending(world: World) -> None:
    buf = ctypes.create_string_buffer(b"old!" * 4, 16)
    addr = ctypes.addressof(buf)
    views, _ = world.space.runs(addr + 4, 4, True)
    views[0][:] = b"NEW!"
    seen, _ = world.space.runs(addr, 16, False)
    assert b"".join(seen) == b"old!NEW!old!old!"


def test_a_batch_whose_descriptors_feed_each_other(world: World) -> None:
    """A → B, then B → C in one batch: the second reads what the first wrote."""
    a = ctypes.create_string_buffer(os.urandom(PAGE), PAGE)
    b = ctypes.create_string_buffer(PAGE)
    c = ctypes.create_string_buffer(PAGE)
    raw = (ctypes.c_char * (64 * 3 + 64))()
    base = (ctypes.addressof(raw) + 63) & ~63
    records = (ctypes.c_char * 128)()
    rec = (ctypes.addressof(records) + 31) & ~31
    first = dsa.memmove(ctypes.addressof(b), ctypes.addressof(a), PAGE)
    second = dsa.memmove(
        ctypes.addressof(c), ctypes.addressof(b), PAGE, flags=dsa.IDXD_OP_FLAG_FENCE
    )
    ctypes.memmove(base, first + second, 128)
    wq = embedded_default().wqs[0]
    item = WorkItem(wq, dsa.batch(base, 2, completion=rec), world.domain.pasid, 1, None, None)
    outcome = SvaExecutor().run(item, world.space)
    assert isinstance(outcome, Completed)
    assert ctypes.c_uint8.from_address(rec).value == dsa.DSA_COMP_SUCCESS
    assert b.raw == a.raw and c.raw == a.raw


def test_block_on_fault_resumes_once_the_page_is_there(world: World) -> None:
    m, addr = anon(2)
    m[:] = b"x" * (2 * PAGE)
    libc.munmap(addr + PAGE, PAGE)
    dst = ctypes.create_string_buffer(2 * PAGE)
    records = (ctypes.c_char * 64)()
    rec = (ctypes.addressof(records) + 31) & ~31
    desc = dsa.memmove(
        ctypes.addressof(dst), addr, 2 * PAGE, completion=rec, flags=dsa.IDXD_OP_FLAG_BOF
    )
    wq = embedded_default().wqs[0]  # block_on_fault 1
    executor = SvaExecutor()
    outcome = executor.run(WorkItem(wq, desc, world.domain.pasid, 1, None, None), world.space)
    assert isinstance(outcome, Blocked) and outcome.fault.iova == addr + PAGE
    assert dst.raw[:PAGE] == b"x" * PAGE  # the part done is written back while it waits
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    got = libc.mmap(addr + PAGE, PAGE, 3, 0x22 | 0x100000, -1, 0)  # MAP_FIXED_NOREPLACE
    assert got == addr + PAGE
    ctypes.memset(addr + PAGE, ord("y"), PAGE)
    done = executor.resume(outcome.state, PageResponse.SUCCESS)
    assert isinstance(done, Completed)
    assert ctypes.c_uint8.from_address(rec).value == dsa.DSA_COMP_SUCCESS
    assert dst.raw == b"x" * PAGE + b"y" * PAGE


def test_a_write_fault_completion_has_the_write_bit(world: World) -> None:
    _m, addr = anon(1)
    libc.mprotect(addr, PAGE, mmap.PROT_READ)
    records = (ctypes.c_char * 64)()
    rec = (ctypes.addressof(records) + 31) & ~31
    src = ctypes.create_string_buffer(PAGE)
    wq = embedded_default().wqs[0]
    desc = dsa.memmove(addr, ctypes.addressof(src), PAGE, completion=rec)
    SvaExecutor().run(WorkItem(wq, desc, world.domain.pasid, 1, None, None), world.space)
    record = dsa.parse_completion(ctypes.string_at(rec, 32))
    assert record.status == 0x03 | DSA_COMP_STATUS_WRITE and record.fault_addr == addr


# ---- lifecycle -------------------------------------------------------------------------------


def test_unbind_frees_the_pasid_and_closes_the_fds() -> None:
    env = Env()
    device = env.mdev(OWNER)
    mm = own_mm()
    fds = (mm.mem_fd, mm.maps_fd)
    domain = env.iommu.sva_bind(OWNER, device, mm)
    assert isinstance(domain, SvaDomain) and domain.info()["type"] == "sva"
    pasid = domain.pasid
    assert pasid in env.iommu.pasids
    space = env.iommu.dma_space(device, pasid)
    env.iommu.sva_unbind(domain)
    assert pasid not in env.iommu.pasids and env.iommu.sva_domains() == []
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    fault = space.runs(0x1000, 8, False)[1]  # the entry is gone: 0x59, like any PASID
    assert fault is not None and fault.reason == 0x59
    env.iommu.sva_unbind(domain)  # twice is harmless
    env.close()


def test_release_owner_and_device_removal_unbind() -> None:
    env = Env()
    device = env.mdev(OWNER)
    other = env.mdev(OWNER)
    env.iommu.sva_bind(OWNER, device, own_mm())
    env.iommu.sva_bind(OWNER, other, own_mm())
    env.bus.remove_mdev(OWNER, device.uuid)
    assert len(env.iommu.sva_domains()) == 1
    env.iommu.release_owner(OWNER)
    assert env.iommu.sva_domains() == [] and len(env.iommu.pasids) == 1  # other's default
    env.close()


def test_sva_domains_are_not_allocated() -> None:
    env = Env()
    with pytest.raises(SiovError) as exc:
        env.iommu.domain_alloc(OWNER, "mdev", "sva")
    assert exc.value.errno == errno.EINVAL
    env.close()


# ---- the char device -------------------------------------------------------------------------


def test_char_device_open_rules() -> None:
    device = embedded_default()
    dwq, swq = device.wqs[0], device.wqs[1]
    for index, code in ((99, errno.ENODEV), (2, errno.ENXIO)):
        with pytest.raises(SiovError) as exc:
            open_wq(device, index)
        assert exc.value.errno == code
    assert open_wq(device, 0) is dwq
    opened(dwq, 5)
    assert (dwq.clients, dwq.pasid, dwq.pasid_en) == (1, 5, True)
    with pytest.raises(SiovError) as exc:
        open_wq(device, 0)
    assert exc.value.errno == errno.EBUSY
    opened(swq, 6)
    opened(swq, 7)
    assert open_wq(device, 1) is swq and swq.clients == 2
    closed(dwq)
    assert (dwq.clients, dwq.pasid_en) == (0, False)
    dwq.disable()
    with pytest.raises(SiovError) as exc:
        open_wq(device, 0)
    assert exc.value.errno == errno.ENXIO


def test_enqcmd_replaces_pasid_and_priv() -> None:
    raw = dsa.noop(pasid=0xABCDE) + dsa.noop(pasid=3)
    priv = bytearray(raw)
    struct.pack_into("<I", priv, 64, struct.unpack_from("<I", priv, 64)[0] | 1 << 31)
    out = as_enqcmd(bytes(priv), 42)
    assert [struct.unpack_from("<I", out, off)[0] for off in (0, 64)] == [42, 42]
    assert out[4:64] == raw[4:64] and out[68:] == raw[68:]
    with pytest.raises(SiovError) as exc:
        as_enqcmd(b"x" * 65, 1)
    assert exc.value.errno == errno.EINVAL


def test_random_descriptors_never_reach_past_the_processes_protections(world: World) -> None:
    """Thousands of random descriptors aimed around a writable area, a read-only canary and a
    hole: the executor never raises, the canary never changes, every record is written once."""
    import random

    rng = random.Random(1207)
    area_map, area = anon(8)
    canary_map, canary = anon(2)
    canary_map[:] = b"C" * (2 * PAGE)
    libc.mprotect(canary, 2 * PAGE, mmap.PROT_READ)
    hole_map, hole = anon(1)
    libc.munmap(hole, PAGE)
    records = (ctypes.c_char * (32 * 64 + 32))()
    rec_base = (ctypes.addressof(records) + 31) & ~31
    wq = embedded_default().wqs[1]
    executor = SvaExecutor()
    targets = [area, area + 3 * PAGE + 17, canary, canary + PAGE - 8, hole, hole + 100, 0, 1 << 47]
    opcodes = [0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x09, 0x10, 0x11, 0x20, 0x07, 0x08, 0x01]
    blocked = 0
    for n in range(3000):
        rec = rec_base + 32 * (n % 64)
        ctypes.memset(rec, 0, 32)
        fields = [rng.choice(targets) + rng.randrange(0, 64) * rng.choice((0, 1)) for _ in range(3)]
        size = rng.choice((0, 1, 8, 100, PAGE, 3 * PAGE, 9 * PAGE))
        opcode = rng.choice(opcodes)
        flags = rng.choice((0, 0x0C, 0x0E, 0x0D, 0x80C)) | rng.choice((0, 0, 0x10000))
        desc = struct.pack(
            "<IIQQQIHHQQQ",
            world.domain.pasid,
            flags | opcode << 24,
            rec,
            fields[0],
            fields[1],
            size,
            0,
            0,
            fields[2] if rng.random() < 0.5 else 0,
            rng.choice((0, 80, 8192)),
            0,
        )
        outcome = executor.run(WorkItem(wq, desc, world.domain.pasid, n, None, 2), world.space)
        if isinstance(outcome, Blocked):
            blocked += 1
            outcome = executor.resume(outcome.state, PageResponse.INVALID)
        assert isinstance(outcome, Completed)
        if outcome.written:
            assert ctypes.c_uint8.from_address(rec).value != 0
    assert canary_map[:] == b"C" * (2 * PAGE)
    assert blocked > 0
    libc.mprotect(canary, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    del area_map, hole_map


def test_emulator_dma_reaches_a_bound_process_and_translate_says_why_not(world: World) -> None:
    buf = ctypes.create_string_buffer(b"before..", 8)
    addr = ctypes.addressof(buf)
    iommu, device, pasid = world.env.iommu, world.device, world.domain.pasid
    assert iommu.dma_read(device, pasid, addr, 8) == (b"before..", None)
    assert iommu.dma_write(device, pasid, addr, b"after!!!") == (8, None)
    assert buf.raw == b"after!!!"
    with pytest.raises(SiovError) as exc:
        iommu.translate(device, pasid, addr, 8, False)
    assert exc.value.errno == errno.EOPNOTSUPP


def test_a_range_past_what_the_daemon_buffers_completes_partially(world: World) -> None:
    """The bytes pass through the daemon: a range ends at MAX_RANGE, as at a page fault
    (software resumes there), and no fault record is sent for it."""
    size = MAX_RANGE + 8 * PAGE
    big, addr = anon(size // PAGE)  # untouched: reading it costs no memory of ours
    records = (ctypes.c_char * 64)()
    rec = (ctypes.addressof(records) + 31) & ~31
    faults = len(world.env.faults)
    desc = dsa.compval(addr, 0, size, completion=rec)
    wq = embedded_default().wqs[0]
    wq.max_transfer_size = 1 << 31
    outcome = SvaExecutor().run(WorkItem(wq, desc, world.domain.pasid, 1, None, None), world.space)
    assert isinstance(outcome, Completed)
    record = dsa.parse_completion(ctypes.string_at(rec, 32))
    assert record.status == 0x03 and record.bytes_completed == MAX_RANGE
    assert record.fault_addr == addr + MAX_RANGE
    assert len(world.env.faults) == faults
    # the rest, resubmitted from there, completes
    desc = dsa.compval(addr + MAX_RANGE, 0, size - MAX_RANGE, completion=rec)
    SvaExecutor().run(WorkItem(wq, desc, world.domain.pasid, 2, None, None), world.space)
    assert dsa.parse_completion(ctypes.string_at(rec, 32)).status == dsa.DSA_COMP_SUCCESS
    del big
