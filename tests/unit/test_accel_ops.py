"""Each operation against known results, and every invalid descriptor with its status."""

from __future__ import annotations

import os
import random

import pytest

from siov import dsa as sdk
from siov_protocol.dsa import (
    DSA_COMP_ADDR_ALIGN,
    DSA_COMP_BAD_OPCODE,
    DSA_COMP_BATCH_FAIL,
    DSA_COMP_BATCH_PAGE_FAULT,
    DSA_COMP_CRA_ALIGN,
    DSA_COMP_CRA_XLAT,
    DSA_COMP_DCAST_ERR,
    DSA_COMP_DESC_CNT_ERANGE,
    DSA_COMP_DESCLIST_ALIGN,
    DSA_COMP_DR_ERANGE,
    DSA_COMP_DR_OFFSET_ERANGE,
    DSA_COMP_DR_OFFSET_NOINC,
    DSA_COMP_INT_HANDLE_INVAL,
    DSA_COMP_INVALID_FLAGS,
    DSA_COMP_NOZERO_RESERVE,
    DSA_COMP_OVERLAP_BUFFERS,
    DSA_COMP_PFAULT_RDBA,
    DSA_COMP_SUCCESS,
    DSA_COMP_SUCCESS_PRED,
    DSA_COMP_XFER_ERANGE,
    IDXD_OP_FLAG_CR,
    IDXD_OP_FLAG_CRAV,
    IDXD_OP_FLAG_FENCE,
    IDXD_OP_FLAG_RCI,
    IDXD_OP_FLAG_RCR,
    Descriptor,
    DsaOpcode,
)
from siovd.model.accel import Interrupt, SoftwareError
from tests.unit.dsa_fakes import PAGE, Rig

CR = Rig.CR
SRC = 0x10000
DST = 0x40000


def status_of(rig: Rig, desc: bytes, **kw: object) -> int:
    rig.run(desc, **kw)  # type: ignore[arg-type]
    return rig.record().status


# --- operations ---------------------------------------------------------------------------------


def test_noop_writes_a_success_record() -> None:
    rig = Rig()
    out = rig.run(sdk.noop(completion=CR))
    assert out.written and not out.interrupt and out.events == ()
    record = rig.record()
    assert (record.status, record.bytes_completed, record.fault_addr) == (DSA_COMP_SUCCESS, 0, 0)
    assert out.record == record


def test_success_without_rcr_writes_no_record() -> None:
    rig = Rig()
    desc = Descriptor.new(DsaOpcode.NOOP, flags=IDXD_OP_FLAG_CRAV, completion_addr=CR).pack()
    out = rig.run(desc)
    assert not out.written and rig.record().status == 0


@pytest.mark.parametrize("size", [0, 1, 63, 4096, 3 * PAGE + 17])
def test_memmove_copies(size: int) -> None:
    rig = Rig()
    data = os.urandom(size)
    rig.put(SRC + 5, data)
    rig.run(sdk.memmove(DST + 3, SRC + 5, size, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST + 3, size) == data


def test_memmove_through_scattered_physical_pages() -> None:
    rig = Rig()
    # IOVA 0x80000.. maps to physical pages in reverse order: every page is its own run
    for i in range(4):
        rig.dma.map(0x80000 + i * PAGE, 0x70000 - i * PAGE)
    data = os.urandom(4 * PAGE - 100)
    rig.put(SRC, data)
    rig.run(sdk.memmove(0x80000 + 50, SRC, len(data) - 50, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    out = b"".join(rig.get(0x70000 - i * PAGE, PAGE) for i in range(4))
    assert out[50 : len(data)] == data[: len(data) - 50]


@pytest.mark.parametrize("shift", [-4097, -100, -1, 1, 100, 4097])
def test_memmove_overlapping_is_a_memmove(shift: int) -> None:
    rig = Rig()
    # scatter the pages so the copy takes several pieces
    for i in range(6):
        rig.dma.map(0x80000 + i * PAGE, 0x20000 + ((i * 5) % 6) * PAGE)
    base = 0x80000 + 2 * PAGE
    region = bytearray(os.urandom(6 * PAGE))
    for i in range(6):
        rig.put(0x20000 + ((i * 5) % 6) * PAGE, bytes(region[i * PAGE : (i + 1) * PAGE]))
    size = 2 * PAGE + 123
    src, dst = base, base + shift
    rig.run(sdk.memmove(dst, src, size, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    expect = bytearray(region)
    s, d = src - 0x80000, dst - 0x80000
    expect[d : d + size] = region[s : s + size]
    got = b"".join(rig.get(0x20000 + ((i * 5) % 6) * PAGE, PAGE) for i in range(6))
    assert got == bytes(expect)


def test_memfill_8_and_16_byte_patterns() -> None:
    rig = Rig()
    rig.run(sdk.fill(DST + 1, 0x0807060504030201, 3 * PAGE + 5, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST + 1, 3 * PAGE + 5) == (bytes(range(1, 9)) * PAGE)[: 3 * PAGE + 5]
    assert rig.get(DST, 1) == b"\0" and rig.get(DST + 1 + 3 * PAGE + 5, 1) == b"\0"
    pattern = bytes(range(0x40, 0x50))
    rig.run(sdk.fill(SRC, pattern, 1000, completion=CR))
    assert rig.get(SRC, 1000) == (pattern * 100)[:1000]


def test_memfill_keeps_the_pattern_phase_across_pages() -> None:
    rig = Rig()
    for i in range(3):
        rig.dma.map(0x80000 + i * PAGE, 0x30000 + (2 - i) * PAGE)
    rig.run(sdk.fill(0x80000 + 4093, bytes(range(16)), 2 * PAGE, completion=CR))
    data = rig.get(0x30000 + 2 * PAGE + 4093, 3) + rig.get(0x30000 + PAGE, PAGE)
    assert data == (bytes(range(16)) * 300)[: PAGE + 3]


@pytest.mark.parametrize("where", [0, 1, 4095, 4096, 9000])
def test_compare_reports_the_first_difference(where: int) -> None:
    rig = Rig()
    data = os.urandom(3 * PAGE)
    other = bytearray(data)
    other[where] ^= 0x5A
    other[where + 7] ^= 0x11
    rig.put(SRC, data)
    rig.put(DST, bytes(other))
    rig.run(sdk.compare(SRC, DST, len(data), completion=CR))
    record = rig.record()
    assert (record.status, record.result, record.bytes_completed) == (DSA_COMP_SUCCESS, 1, where)
    rig.put(DST, data)
    rig.run(sdk.compare(SRC, DST, len(data), completion=CR))
    assert (rig.record().status, rig.record().result) == (DSA_COMP_SUCCESS, 0)


def test_compare_check_result_predicate() -> None:
    rig = Rig()
    rig.put(SRC, b"abcd")
    rig.put(DST, b"abcx")
    flags = IDXD_OP_FLAG_CR
    assert (
        status_of(rig, sdk.compare(SRC, DST, 4, completion=CR, flags=flags))
        == DSA_COMP_SUCCESS_PRED
    )
    assert rig.record().result == 1
    desc = sdk.compare(SRC, DST, 4, expected_res=1, completion=CR, flags=flags)
    assert status_of(rig, desc) == DSA_COMP_SUCCESS


def test_compval() -> None:
    rig = Rig()
    pattern = 0x1122334455667788
    data = bytearray(pattern.to_bytes(8, "little") * 100)
    rig.put(SRC, bytes(data))
    rig.run(sdk.compval(SRC, pattern, 797, completion=CR))
    assert (rig.record().status, rig.record().result) == (DSA_COMP_SUCCESS, 0)
    data[333] ^= 1
    rig.put(SRC, bytes(data))
    rig.run(sdk.compval(SRC, pattern, 797, completion=CR))
    record = rig.record()
    assert (record.result, record.bytes_completed) == (1, 328)  # 8-byte granularity


def test_create_delta_matches_the_sheet_example() -> None:
    rig = Rig()
    rig.put(SRC, bytes(16))
    rig.put(DST, bytes(8) + bytes.fromhex("1122334455667788"))
    rig.run(sdk.create_delta(SRC, DST, 16, 0x60000, 80, completion=CR))
    record = rig.record()
    assert (record.status, record.result, record.delta_rec_size) == (DSA_COMP_SUCCESS, 1, 10)
    assert rig.get(0x60000, 10) == bytes.fromhex("0100") + bytes.fromhex("1122334455667788")


def test_create_delta_equal_and_overflow() -> None:
    rig = Rig()
    rig.put(SRC, bytes(800))
    rig.put(DST, bytes(800))
    rig.run(sdk.create_delta(SRC, DST, 800, 0x60000, 80, completion=CR))
    assert (rig.record().result, rig.record().delta_rec_size) == (0, 0)
    rig.put(DST, b"\x01" * 800)  # 100 differing words, room for 8
    rig.run(sdk.create_delta(SRC, DST, 800, 0x60000, 80, completion=CR))
    record = rig.record()
    assert (record.status, record.result, record.delta_rec_size) == (DSA_COMP_SUCCESS, 2, 80)


@pytest.mark.parametrize(("mask", "status"), [(0b001, 2), (0b010, 1), (0b110, 1), (0b000, 2)])
def test_create_delta_check_result_mask(mask: int, status: int) -> None:
    rig = Rig()
    rig.put(SRC, bytes(64))
    rig.put(DST, b"\x01" + bytes(63))
    desc = sdk.create_delta(
        SRC, DST, 64, 0x60000, 80, expected_res_mask=mask, completion=CR, flags=IDXD_OP_FLAG_CR
    )
    assert status_of(rig, desc) == status  # result is 1: allowed when bit 1 of the mask is set


def test_delta_round_trip() -> None:
    rng = random.Random(7)
    rig = Rig()
    size = 8 * 4096
    old = bytearray(rng.randbytes(size))
    new = bytearray(old)
    for _ in range(300):
        new[rng.randrange(size)] = rng.randrange(256)
    rig.put(SRC, bytes(old))
    rig.put(DST, bytes(new))
    rig.run(sdk.create_delta(SRC, DST, size, 0x80000, 4000, completion=CR))
    record = rig.record()
    assert record.result == 1
    delta_size = record.delta_rec_size
    assert delta_size % 10 == 0 and 0 < delta_size <= 3000
    rig.put(0xC0000, bytes(old))
    rig.run(sdk.apply_delta(0xC0000, 0x80000, delta_size, size, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(0xC0000, size) == bytes(new)


def test_apply_delta_offset_errors() -> None:
    rig = Rig()
    entry = lambda index, value: index.to_bytes(2, "little") + value.to_bytes(8, "little")  # noqa: E731
    rig.put(0x60000, entry(3, 1) + entry(2, 2))
    assert (
        status_of(rig, sdk.apply_delta(DST, 0x60000, 20, 64, completion=CR))
        == DSA_COMP_DR_OFFSET_NOINC
    )
    assert rig.record().bytes_completed == 10
    rig.put(0x60000, entry(1, 1) + entry(8, 2))
    assert (
        status_of(rig, sdk.apply_delta(DST, 0x60000, 20, 64, completion=CR))
        == DSA_COMP_DR_OFFSET_ERANGE
    )
    assert rig.get(DST + 8, 8) == (1).to_bytes(8, "little")  # the first entry was applied


def test_dualcast_writes_both_destinations() -> None:
    rig = Rig()
    data = os.urandom(5000)
    rig.put(SRC, data)
    rig.run(sdk.dualcast(DST + 0x10, DST + 0x10010, SRC, len(data), completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST + 0x10, len(data)) == data == rig.get(DST + 0x10010, len(data))


def test_cflush_and_drain() -> None:
    rig = Rig()
    assert status_of(rig, sdk.cflush(DST, 3 * PAGE, completion=CR)) == DSA_COMP_SUCCESS
    assert status_of(rig, sdk.drain(completion=CR)) == DSA_COMP_SUCCESS
    assert (
        status_of(rig, sdk.drain(readback1=SRC, readback2=DST, completion=CR)) == DSA_COMP_SUCCESS
    )
    rig.dma.unmap(DST)
    assert status_of(rig, sdk.drain(readback2=DST + 8, completion=CR)) == DSA_COMP_PFAULT_RDBA
    assert rig.record().fault_addr == DST + 8


def test_completion_interrupt() -> None:
    rig = Rig()
    out = rig.run(sdk.noop(completion=CR, flags=IDXD_OP_FLAG_RCI, int_handle=1), irq_count=2)
    assert out.interrupt and out.int_handle == 1
    out = rig.run(sdk.noop(completion=CR, flags=IDXD_OP_FLAG_RCI, int_handle=2), irq_count=2)
    assert not out.interrupt and rig.record().status == DSA_COMP_INT_HANDLE_INVAL


# --- batch ----------------------------------------------------------------------------------------

LIST = 0x30000


def put_batch(rig: Rig, descs: list[bytes]) -> None:
    rig.put(LIST, sdk.join_batch(descs))


def test_batch_runs_its_descriptors() -> None:
    rig = Rig()
    data = os.urandom(3 * 1000)
    rig.put(SRC, data)
    put_batch(
        rig,
        [
            sdk.memmove(DST + i * 1000, SRC + i * 1000, 1000, completion=0xE000 + 32 * i)
            for i in range(3)
        ],
    )
    out = rig.run(sdk.batch(LIST, 3, completion=CR))
    record = rig.record()
    assert (record.status, record.descs_completed) == (DSA_COMP_SUCCESS, 3)
    assert rig.get(DST, 3000) == data
    assert [rig.record(0xE000 + 32 * i).status for i in range(3)] == [DSA_COMP_SUCCESS] * 3
    assert out.events == ()


def test_batch_with_a_failing_descriptor() -> None:
    rig = Rig()
    bad = Descriptor.new(0x30, flags=IDXD_OP_FLAG_CRAV | IDXD_OP_FLAG_RCR, completion_addr=0xE020)
    nested = sdk.batch(LIST, 2, completion=0xE040)
    put_batch(rig, [sdk.noop(completion=0xE000), bad.pack(), nested, sdk.noop(completion=0xE060)])
    rig.run(sdk.batch(LIST, 4, completion=CR))
    record = rig.record()
    assert (record.status, record.descs_completed) == (DSA_COMP_BATCH_FAIL, 4)
    assert rig.record(0xE020).status == DSA_COMP_BAD_OPCODE
    assert rig.record(0xE040).status == DSA_COMP_BAD_OPCODE  # no batch inside a batch
    assert rig.record(0xE060).status == DSA_COMP_SUCCESS


def test_batch_fence_after_a_false_predicate_abandons_the_rest() -> None:
    rig = Rig()
    rig.put(SRC, b"same")
    rig.put(DST, b"diff")
    check = sdk.compare(SRC, DST, 4, completion=0xE000, flags=IDXD_OP_FLAG_CR)
    fenced = sdk.memmove(DST + 100, SRC, 4, completion=0xE020, flags=IDXD_OP_FLAG_FENCE)
    put_batch(rig, [check, fenced, sdk.noop(completion=0xE040)])
    rig.run(sdk.batch(LIST, 3, completion=CR))
    record = rig.record()
    assert (record.status, record.descs_completed) == (DSA_COMP_BATCH_FAIL, 1)
    assert rig.record(0xE000).status == DSA_COMP_SUCCESS_PRED
    assert rig.record(0xE020).status == 0 and rig.record(0xE040).status == 0
    assert rig.get(DST + 100, 4) == bytes(4)
    # the same batch where the predicate holds runs to the end
    rig.put(DST, b"same")
    rig.run(sdk.batch(LIST, 3, completion=CR))
    assert (rig.record().status, rig.record().descs_completed) == (DSA_COMP_SUCCESS, 3)
    assert rig.get(DST + 100, 4) == b"same"


def test_batch_interrupts_and_software_errors_become_events() -> None:
    rig = Rig()
    quiet_bad = Descriptor.new(0x30).pack()  # no completion record: a software error
    put_batch(rig, [sdk.noop(flags=IDXD_OP_FLAG_RCI, int_handle=1), quiet_bad])
    out = rig.run(sdk.batch(LIST, 2, completion=CR, flags=IDXD_OP_FLAG_RCI))
    assert out.interrupt and out.int_handle == 0
    assert out.events[0] == Interrupt(1, 0)
    err = out.events[1]
    assert isinstance(err, SoftwareError)
    assert (err.status, err.batch_index, err.wq) == (DSA_COMP_BAD_OPCODE, 1, "dsa0/wq0.0")


def test_batch_descriptor_checks() -> None:
    rig = Rig()
    assert status_of(rig, sdk.batch(LIST, 1, completion=CR)) == DSA_COMP_DESC_CNT_ERANGE
    assert status_of(rig, sdk.batch(LIST, 1025, completion=CR)) == DSA_COMP_DESC_CNT_ERANGE
    assert status_of(rig, sdk.batch(LIST + 32, 2, completion=CR)) == DSA_COMP_DESCLIST_ALIGN
    rig.dma.unmap(LIST + PAGE)
    assert (
        status_of(rig, sdk.batch(LIST + PAGE - 64, 2, completion=CR)) == DSA_COMP_BATCH_PAGE_FAULT
    )
    assert rig.record().fault_addr == LIST + PAGE


def test_batch_size_follows_the_wq_limit() -> None:
    rig = Rig()
    rig.dwq.disable()
    rig.dwq.configure({"max_batch_size": 3})  # rounded up to 4
    rig.dwq.enable()
    assert rig.dwq.max_batch_size == 4
    put_batch(rig, [sdk.noop()] * 5)
    assert status_of(rig, sdk.batch(LIST, 5, completion=CR)) == DSA_COMP_DESC_CNT_ERANGE
    assert status_of(rig, sdk.batch(LIST, 4, completion=CR)) == DSA_COMP_SUCCESS


# --- invalid descriptors --------------------------------------------------------------------------

FLAGS = IDXD_OP_FLAG_CRAV | IDXD_OP_FLAG_RCR


def raw(opcode: int, flags: int = FLAGS, **fields: int) -> bytes:
    return Descriptor.new(opcode, flags=flags, completion_addr=CR, **fields).pack()


M = DsaOpcode
SZ = {"xfer_size": 64}
DELTA = {"src_addr": SRC, "src2_addr": DST, "delta_addr": 0x60000, "max_delta_size": 80}
MOVE = {"src_addr": SRC, "dst_addr": DST, "xfer_size": 8}
INVALID = [
    (raw(0x30), DSA_COMP_BAD_OPCODE),
    (raw(0x16, src_addr=SRC, xfer_size=512), DSA_COMP_BAD_OPCODE),
    (raw(M.TRANSL_FETCH), DSA_COMP_BAD_OPCODE),
    (raw(0xFF), DSA_COMP_BAD_OPCODE),
    (raw(M.MEMMOVE, FLAGS | 0x40, **MOVE), DSA_COMP_INVALID_FLAGS),
    (raw(M.MEMMOVE, FLAGS | IDXD_OP_FLAG_CR, **MOVE), DSA_COMP_INVALID_FLAGS),
    (raw(M.MEMMOVE, FLAGS | 0x10000, **MOVE), DSA_COMP_INVALID_FLAGS),
    (raw(M.CRCGEN, FLAGS | 0x80000, src_addr=SRC, xfer_size=8), DSA_COMP_INVALID_FLAGS),
    (raw(M.MEMMOVE, **MOVE, pattern_upper=1), DSA_COMP_NOZERO_RESERVE),
    (raw(M.CRCGEN, **MOVE), DSA_COMP_NOZERO_RESERVE),
    (raw(M.CRCGEN, src_addr=SRC, xfer_size=8, seed_addr=SRC), DSA_COMP_NOZERO_RESERVE),
    (raw(M.NOOP, xfer_size=1), DSA_COMP_NOZERO_RESERVE),
    (raw(M.COMPARE, **MOVE, crc_seed=0x100), DSA_COMP_NOZERO_RESERVE),
    (raw(M.MEMMOVE, src_addr=SRC, dst_addr=DST, xfer_size=2**31 + 1), DSA_COMP_XFER_ERANGE),
    (raw(M.COPY_CRC, src_addr=SRC, dst_addr=SRC + 8, **SZ), DSA_COMP_OVERLAP_BUFFERS),
    (raw(M.DUALCAST, src_addr=SRC, dst_addr=DST, dest2=DST + 0x1008, **SZ), DSA_COMP_DCAST_ERR),
    (
        raw(M.DUALCAST, src_addr=SRC, dst_addr=DST, dest2=DST + 0x1000, xfer_size=0x2000),
        DSA_COMP_OVERLAP_BUFFERS,
    ),
    (
        raw(M.DUALCAST, src_addr=DST + 0x800, dst_addr=DST, dest2=SRC, xfer_size=0x1000),
        DSA_COMP_OVERLAP_BUFFERS,
    ),
    (raw(M.CR_DELTA, **{**DELTA, "src_addr": SRC + 4}, **SZ), DSA_COMP_ADDR_ALIGN),
    (raw(M.CR_DELTA, **{**DELTA, "delta_addr": 0x60004}, **SZ), DSA_COMP_ADDR_ALIGN),
    (raw(M.CR_DELTA, **DELTA, xfer_size=60), DSA_COMP_XFER_ERANGE),
    (raw(M.CR_DELTA, **DELTA, xfer_size=0x80008), DSA_COMP_XFER_ERANGE),
    (raw(M.CR_DELTA, **{**DELTA, "max_delta_size": 70}, **SZ), DSA_COMP_DR_ERANGE),
    (raw(M.CR_DELTA, **{**DELTA, "max_delta_size": 79}, **SZ), DSA_COMP_DR_ERANGE),
    (
        raw(M.AP_DELTA, src_addr=DST + 8, dst_addr=DST, delta_rec_size=10, **SZ),
        DSA_COMP_OVERLAP_BUFFERS,
    ),
    (raw(M.AP_DELTA, src_addr=SRC, dst_addr=DST + 1, delta_rec_size=10, **SZ), DSA_COMP_ADDR_ALIGN),
    (raw(M.AP_DELTA, src_addr=SRC, dst_addr=DST, delta_rec_size=15, **SZ), DSA_COMP_DR_ERANGE),
]


@pytest.mark.parametrize(("desc", "status"), INVALID)
def test_invalid_descriptor_status(desc: bytes, status: int) -> None:
    rig = Rig()
    out = rig.run(desc)
    assert out.written
    assert rig.record().status == status
    assert rig.record().code == status


def test_invalid_flags_reports_the_bits() -> None:
    rig = Rig()
    rig.run(raw(DsaOpcode.NOOP, FLAGS | 0x40 | 0x20000))
    assert (rig.record().status, rig.record().invalid_flags) == (DSA_COMP_INVALID_FLAGS, 0x20040)


def test_nonzero_reserved_word_at_38() -> None:
    rig = Rig()
    desc = Descriptor(opcode=DsaOpcode.NOOP, flags=FLAGS, completion_addr=CR, rsvd1=1).pack()
    assert status_of(rig, desc) == DSA_COMP_NOZERO_RESERVE


def test_transfer_size_follows_the_wq_limit() -> None:
    rig = Rig()
    rig.dwq.disable()
    rig.dwq.configure({"max_transfer_size": 4096})
    rig.dwq.enable()
    assert status_of(rig, sdk.memmove(DST, SRC, 4097, completion=CR)) == DSA_COMP_XFER_ERANGE
    assert status_of(rig, sdk.memmove(DST, SRC, 4096, completion=CR)) == DSA_COMP_SUCCESS


def test_opcode_outside_op_config_is_refused() -> None:
    rig = Rig()
    rig.dwq.disable()
    rig.dwq.configure({"op_config": (1 << DsaOpcode.NOOP) | (1 << DsaOpcode.BATCH)})
    rig.dwq.enable()
    assert status_of(rig, sdk.memmove(DST, SRC, 8, completion=CR)) == DSA_COMP_BAD_OPCODE
    assert status_of(rig, sdk.noop(completion=CR)) == DSA_COMP_SUCCESS


def test_rcr_without_crav_is_an_invalid_flag_reported_as_software_error() -> None:
    rig = Rig()
    out = rig.run(Descriptor.new(DsaOpcode.NOOP, flags=IDXD_OP_FLAG_RCR).pack())
    assert not out.written
    (err,) = out.events
    assert isinstance(err, SoftwareError) and err.status == DSA_COMP_INVALID_FLAGS


def test_misaligned_completion_record_cannot_be_written() -> None:
    rig = Rig()
    out = rig.run(sdk.noop(completion=CR + 16))
    assert not out.written and rig.record(CR + 16).status == 0
    (err,) = out.events
    assert isinstance(err, SoftwareError)
    assert (err.status, err.completion_addr) == (DSA_COMP_CRA_ALIGN, CR + 16)


def test_completion_record_translation_fault() -> None:
    rig = Rig()
    rig.dma.unmap(CR)
    out = rig.run(sdk.memmove(DST, SRC, 64, completion=CR, flags=IDXD_OP_FLAG_RCI))
    assert not out.written and out.interrupt
    assert out.record.status == DSA_COMP_SUCCESS  # what the record would have said
    (err,) = out.events
    assert isinstance(err, SoftwareError)
    assert (err.status, err.fault_addr) == (DSA_COMP_CRA_XLAT, CR)
    assert err.fault is not None and err.fault.write
    assert err.record[0] == DSA_COMP_SUCCESS


def test_error_without_completion_record_is_a_software_error() -> None:
    rig = Rig()
    out = rig.run(Descriptor.new(0x30, pasid=0).pack(), shared=True, pasid=9)
    (err,) = out.events
    assert isinstance(err, SoftwareError)
    assert (err.status, err.opcode, err.pasid, err.wq) == (
        DSA_COMP_BAD_OPCODE,
        0x30,
        9,
        "dsa0/wq0.1",
    )
