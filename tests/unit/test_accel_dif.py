"""The T10 DIF family (0x12-0x15, 0x17) byte for byte.

Expected buffers are built here by an independent reference: the SDK's bit-serial
CRC-16/T10-DIF (``siov.dsa.t10_crc16``, itself pinned to the catalog check value) and the
tuple layout of accel-config ``test/dsa.c`` (guard, app tag, ref tag, big-endian, after each
block). The accel-config scenarios mirror ``init_dif_*`` (pattern 0x0123456789abcdef, app tag
0xFACE, ref tag 0xABBA), ``dsa_prep_dif_*`` and the checks of ``task_result_verify_dif`` /
``task_result_verify_dif_tags``; resumption follows ``dsa_reprep_dif`` exactly.
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from siov import dsa as sdk
from siov_protocol.dsa import (
    DIF_DST_APP_TAG_PASS,
    DIF_DST_FIXED_REF_TAG,
    DIF_DST_GUARD_PASS,
    DIF_DST_INC_APP_TAG,
    DIF_DST_REF_TAG_PASS,
    DIF_FLAG_INVERT_CRC_RESULT,
    DIF_FLAG_INVERT_CRC_SEED,
    DIF_SRC_ALL_F_DETECT,
    DIF_SRC_ALL_F_ERROR,
    DIF_SRC_APP_REF_TAG_F_DETECT,
    DIF_SRC_APP_TAG_F_DETECT,
    DIF_SRC_FIXED_REF_TAG,
    DIF_SRC_GUARD_CHECK_DISABLE,
    DIF_SRC_INC_APP_TAG,
    DIF_SRC_REF_TAG_CHECK_DISABLE,
    DIF_STATUS_ALL_F,
    DIF_STATUS_APP_TAG,
    DIF_STATUS_GUARD,
    DIF_STATUS_REF_TAG,
    DSA_COMP_BAD_OPCODE,
    DSA_COMP_BATCH_FAIL,
    DSA_COMP_DIF_ERR,
    DSA_COMP_INVALID_FLAGS,
    DSA_COMP_NOZERO_RESERVE,
    DSA_COMP_OVERLAP_BUFFERS,
    DSA_COMP_PAGE_FAULT_IR,
    DSA_COMP_PAGE_FAULT_NOBOF,
    DSA_COMP_STATUS_WRITE,
    DSA_COMP_SUCCESS,
    DSA_COMP_XFER_ERANGE,
    IDXD_OP_FLAG_BOF,
    IDXD_OP_FLAG_CR,
    CompletionRecord,
    Descriptor,
    DsaOpcode,
)
from siovd.model.accel import Blocked, Completed, PageResponse
from siovd.model.accel.dif import crc16_t10, guard
from tests.unit.dsa_fakes import PAGE, Rig

CR = Rig.CR
SRC = 0x10000
DST = 0x50000
M = DsaOpcode
BLOCKS = (512, 520, 4096, 4104)
ACCFG_PATTERN = struct.pack("<Q", 0x0123456789ABCDEF)
APP, REF = 0xFACE, 0xABBA

# --- known answers ------------------------------------------------------------------------------

# CRC-16/T10-DIF check value (reveng catalogue: width 16, poly 0x8bb7, init 0, no reflection,
# xorout 0, check 0xd0db); the others were derived with the bit-serial definition above.
KNOWN = [
    (b"123456789", 0, 0xD0DB),
    (b"123456789", 0xFFFF, 0x8E3C),
    (bytes(512), 0, 0x0000),
    (b"\xff" * 512, 0, 0xE6A1),
    (ACCFG_PATTERN * 64, 0, 0x03C7),
    (ACCFG_PATTERN * 512, 0, 0xA083),
    (bytes(range(256)) * 2, 0, 0x4F10),
]


@pytest.mark.parametrize(("data", "seed", "expect"), KNOWN)
def test_crc16_t10_known_answers(data: bytes, seed: int, expect: int) -> None:
    assert sdk.t10_crc16(data, seed) == expect
    assert crc16_t10(data, seed) == expect


def test_crc16_t10_table_agrees_with_the_bit_serial_reference() -> None:
    rnd = random.Random(11)
    for length in [0, 1, 2, 3, 511, 512, 520, 4095, 4104]:
        data = rnd.randbytes(length)
        seed = rnd.randrange(1 << 16)
        assert crc16_t10(data, seed) == sdk.t10_crc16(data, seed)
        # chaining: the register carries over
        assert crc16_t10(data[length // 2 :], crc16_t10(data[: length // 2])) == crc16_t10(data)


@pytest.mark.parametrize("length", [2, 9, 511, *BLOCKS])
def test_guard_by_parity_masks_agrees_with_the_bit_serial_reference(length: int) -> None:
    rnd = random.Random(length)
    for _ in range(3):
        data = rnd.randbytes(length)
        for flags in (0, DIF_FLAG_INVERT_CRC_SEED, DIF_FLAG_INVERT_CRC_RESULT, 0x0C):
            assert guard(data, flags) == ref_guard(data, flags)


def test_guard_seed_and_result_inversion() -> None:
    data = b"123456789"
    assert guard(data) == 0xD0DB
    assert guard(data, DIF_FLAG_INVERT_CRC_SEED) == 0x8E3C
    assert guard(data, DIF_FLAG_INVERT_CRC_RESULT) == 0xD0DB ^ 0xFFFF
    assert guard(data, DIF_FLAG_INVERT_CRC_SEED | DIF_FLAG_INVERT_CRC_RESULT) == 0x8E3C ^ 0xFFFF


# --- reference ----------------------------------------------------------------------------------


def ref_guard(data: bytes, dif_flags: int = 0) -> int:
    crc = sdk.t10_crc16(data, 0xFFFF if dif_flags & DIF_FLAG_INVERT_CRC_SEED else 0)
    return crc ^ 0xFFFF if dif_flags & DIF_FLAG_INVERT_CRC_RESULT else crc


def tuple_of(guard_tag: int, app: int, ref: int) -> bytes:
    return struct.pack(">HHI", guard_tag, app, ref)


def protect(
    data: bytes,
    block: int,
    ref: int = REF,
    app: int = APP,
    *,
    inc_ref: int = 1,
    inc_app: int = 0,
    dif_flags: int = 0,
    app_mask: int = 0,
) -> bytes:
    out = bytearray()
    for i in range(len(data) // block):
        chunk = data[i * block : (i + 1) * block]
        out += chunk + tuple_of(
            ref_guard(chunk, dif_flags),
            ((app + i * inc_app) & 0xFFFF) & ~app_mask & 0xFFFF,
            (ref + i * inc_ref) & 0xFFFFFFFF,
        )
    return bytes(out)


def strip(protected: bytes, block: int) -> bytes:
    step = block + 8
    return b"".join(protected[i : i + block] for i in range(0, len(protected), step))


def block_flag(block: int) -> int:
    return BLOCKS.index(block)


def accfg_blk_idx(xfer_size: int) -> int:
    """accel-config get_dif_blksz_flg: the largest block size dividing the transfer."""
    idx = 3
    while idx and xfer_size % BLOCKS[idx]:
        idx -= 1
    return idx


def run(rig: Rig, desc: bytes) -> CompletionRecord:
    rig.run(desc)
    return rig.record()


# --- accel-config dsa_test scenarios (0x12-0x15 at 512, 1K, 4K) ---------------------------------


@pytest.mark.parametrize("length", [512, 1024, 4096])
def test_accfg_dif_check(length: int) -> None:
    rig = Rig()
    block = BLOCKS[accfg_blk_idx(length)]
    data = (ACCFG_PATTERN * (length // 8 + 1))[:length]
    src = protect(data, block)
    rig.put(SRC, src)
    desc = Descriptor.new(
        M.DIF_CHECK,
        flags=0xC,
        completion_addr=CR,
        src_addr=SRC,
        xfer_size=len(src),
        chk_app_tag_seed=APP,
        chk_ref_tag_seed=REF,
        dif_chk_flags=accfg_blk_idx(length),
    ).pack()
    record = run(rig, desc)
    assert (record.status, record.dif_status) == (DSA_COMP_SUCCESS, 0)
    blocks = length // block
    assert record.field("dif_chk_ref_tag") == REF + blocks
    assert record.field("dif_chk_app_tag") == APP


@pytest.mark.parametrize("length", [512, 1024, 4096])
def test_accfg_dif_insert(length: int) -> None:
    rig = Rig()
    idx = accfg_blk_idx(length)
    block = BLOCKS[idx]
    data = (ACCFG_PATTERN * (length // 8 + 1))[:length]
    rig.put(SRC, data)
    desc = Descriptor.new(
        M.DIF_INS,
        flags=0xC,
        completion_addr=CR,
        src_addr=SRC,
        dst_addr=DST,
        xfer_size=length,
        ins_app_tag_seed=APP,
        ins_ref_tag_seed=REF,
        dif_ins_flags=idx,
    ).pack()
    assert run(rig, desc).status == DSA_COMP_SUCCESS
    out = rig.get(DST, length + 8 * (length // block))
    # task_result_verify_dif + task_result_verify_dif_tags
    for i in range(length // block):
        chunk = data[i * block : (i + 1) * block]
        at = (block + 8) * i
        assert out[at : at + block] == chunk
        assert out[at + block : at + block + 8] == tuple_of(sdk.t10_crc16(chunk), APP, REF + i)


@pytest.mark.parametrize("length", [512, 1024, 4096])
def test_accfg_dif_strip(length: int) -> None:
    rig = Rig()
    idx = accfg_blk_idx(length)
    block = BLOCKS[idx]
    data = (ACCFG_PATTERN * (length // 8 + 1))[:length]
    src = protect(data, block)
    rig.put(SRC, src)
    desc = Descriptor.new(
        M.DIF_STRP,
        flags=0xC,
        completion_addr=CR,
        src_addr=SRC,
        dst_addr=DST,
        xfer_size=len(src),
        chk_app_tag_seed=APP,
        chk_ref_tag_seed=REF,
        dif_chk_flags=idx,
    ).pack()
    assert run(rig, desc).status == DSA_COMP_SUCCESS
    assert rig.get(DST, length) == data


@pytest.mark.parametrize("length", [512, 1024, 4096])
def test_accfg_dif_update(length: int) -> None:
    rig = Rig()
    idx = accfg_blk_idx(length)
    block = BLOCKS[idx]
    data = (ACCFG_PATTERN * (length // 8 + 1))[:length]
    src = protect(data, block, inc_ref=0)  # init_dif_updt keeps the ref tag
    rig.put(SRC, src)
    desc = Descriptor.new(
        M.DIF_UPDT,
        flags=0xC,
        completion_addr=CR,
        src_addr=SRC,
        dst_addr=DST,
        xfer_size=len(src),
        src_app_tag_seed=APP,
        src_ref_tag_seed=REF,
        dest_app_tag_seed=APP,
        dest_ref_tag_seed=REF,
        src_upd_flags=0x80,
        upd_dest_flags=0x80,
        dif_upd_flags=idx,
    ).pack()
    record = run(rig, desc)
    assert record.status == DSA_COMP_SUCCESS
    assert rig.get(DST, len(src)) == src
    assert record.field("dif_upd_dest_ref_tag") == REF
    assert record.field("dif_upd_src_ref_tag") == REF


# --- every block size, every op -----------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS)
def test_every_block_size_round_trips(block: int) -> None:
    rig = Rig()
    data = os.urandom(3 * block)
    rig.put(SRC, data)
    ins = sdk.dif_insert(DST, SRC, len(data), block_size=block, ref_tag=7, app_tag=9, completion=CR)
    assert run(rig, ins).status == DSA_COMP_SUCCESS
    protected = protect(data, block, 7, 9)
    assert rig.get(DST, len(protected)) == protected
    chk = sdk.dif_check(DST, len(protected), block_size=block, ref_tag=7, app_tag=9, completion=CR)
    assert run(rig, chk).status == DSA_COMP_SUCCESS
    back = 0x90000
    strp = sdk.dif_strip(
        back, DST, len(protected), block_size=block, ref_tag=7, app_tag=9, completion=CR
    )
    assert run(rig, strp).status == DSA_COMP_SUCCESS
    assert rig.get(back, len(data)) == data
    dix = sdk.dix_gen(back + 0x10000, SRC, len(data), block_size=block, ref_tag=7, app_tag=9)
    rig.run(dix)
    tuples = b"".join(
        protected[i + block : i + block + 8] for i in range(0, len(protected), block + 8)
    )
    assert rig.get(back + 0x10000, 24) == tuples


def test_dix_gen_record_carries_the_next_tags() -> None:
    rig = Rig()
    rig.put(SRC, os.urandom(4 * 512))
    rig.run(sdk.dix_gen(DST, SRC, 4 * 512, ref_tag=100, app_tag=5, app_tag_mask=0xF, completion=CR))
    record = rig.record()
    assert record.status == DSA_COMP_SUCCESS
    assert record.field("dix_ref_tag") == 104
    assert (record.field("dix_app_tag"), record.field("dix_app_tag_mask")) == (5, 0xF)
    # the generated app tag is the seed with the mask's bits cleared
    assert struct.unpack(">HHI", rig.get(DST, 8))[1] == 5 & ~0xF


def test_zero_length_succeeds_without_touching_memory() -> None:
    rig = Rig()
    rig.put(DST, b"\x5a" * 64)
    for desc in (
        sdk.dif_check(SRC, 0, completion=CR),
        sdk.dif_insert(DST, SRC, 0, completion=CR),
        sdk.dif_strip(DST, SRC, 0, completion=CR),
        sdk.dif_update(DST, SRC, 0, completion=CR),
        sdk.dix_gen(DST, SRC, 0, completion=CR),
    ):
        assert run(rig, desc).status == DSA_COMP_SUCCESS
    assert rig.get(DST, 64) == b"\x5a" * 64


# --- dif_flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dif_flags",
    [0, DIF_FLAG_INVERT_CRC_SEED, DIF_FLAG_INVERT_CRC_RESULT, DIF_FLAG_INVERT_CRC_SEED | 8],
)
def test_crc_seed_and_result_flags(dif_flags: int) -> None:
    rig = Rig()
    data = os.urandom(1024)
    rig.put(SRC, data)
    rig.run(sdk.dif_insert(DST, SRC, 1024, dif_flags=dif_flags, completion=CR))
    expect = protect(data, 512, 0, 0, dif_flags=dif_flags)
    assert rig.get(DST, len(expect)) == expect
    # checking with the same flags passes, with other flags the guard fails
    assert run(rig, sdk.dif_check(DST, len(expect), dif_flags=dif_flags, completion=CR)).status == 1
    other = dif_flags ^ DIF_FLAG_INVERT_CRC_RESULT
    record = run(rig, sdk.dif_check(DST, len(expect), dif_flags=other, completion=CR))
    assert (record.status, record.dif_status) == (DSA_COMP_DIF_ERR, DIF_STATUS_GUARD)


# --- source flags and the DIF status bits -------------------------------------------------------


def check_status(
    rig: Rig, src: bytes, *, src_flags: int = 0, ref: int = REF, app: int = APP, mask: int = 0
) -> CompletionRecord:
    rig.put(SRC, src)
    return run(
        rig,
        sdk.dif_check(
            SRC,
            len(src),
            ref_tag=ref,
            app_tag=app,
            app_tag_mask=mask,
            src_flags=src_flags,
            completion=CR,
        ),
    )


def corrupt(src: bytes, offset: int, value: int) -> bytes:
    out = bytearray(src)
    out[offset] ^= value
    return bytes(out)


def test_each_mismatch_sets_its_status_bit_and_names_the_block() -> None:
    rig = Rig()
    src = protect(os.urandom(4 * 512), 512)
    step = 520
    cases = [
        (corrupt(src, 2 * step + 10, 1), DIF_STATUS_GUARD),  # data byte: guard mismatch
        (corrupt(src, 2 * step + 512, 1), DIF_STATUS_GUARD),  # guard byte
        (corrupt(src, 2 * step + 514, 1), DIF_STATUS_APP_TAG),
        (corrupt(src, 2 * step + 519, 1), DIF_STATUS_REF_TAG),
    ]
    for bad, bit in cases:
        record = check_status(rig, bad)
        assert (record.status, record.dif_status) == (DSA_COMP_DIF_ERR, bit)
        assert record.bytes_completed == 2 * step  # offset of the failing block
        assert record.field("dif_chk_ref_tag") == REF + 2  # the failing block's expected tag
        assert record.field("dif_chk_app_tag") == APP
    both = corrupt(corrupt(corrupt(src, 514, 1), 519, 1), 0, 1)
    assert check_status(rig, both).dif_status == (
        DIF_STATUS_GUARD | DIF_STATUS_APP_TAG | DIF_STATUS_REF_TAG
    )


def test_guard_and_ref_check_disable() -> None:
    rig = Rig()
    src = protect(os.urandom(1024), 512)
    bad = corrupt(corrupt(src, 0, 1), 519, 1)
    assert check_status(rig, bad).dif_status == DIF_STATUS_GUARD | DIF_STATUS_REF_TAG
    assert check_status(rig, bad, src_flags=DIF_SRC_GUARD_CHECK_DISABLE).dif_status == (
        DIF_STATUS_REF_TAG
    )
    assert check_status(rig, bad, src_flags=DIF_SRC_REF_TAG_CHECK_DISABLE).dif_status == (
        DIF_STATUS_GUARD
    )
    both = DIF_SRC_GUARD_CHECK_DISABLE | DIF_SRC_REF_TAG_CHECK_DISABLE
    assert check_status(rig, bad, src_flags=both).status == DSA_COMP_SUCCESS


def test_fixed_and_incrementing_tags() -> None:
    rig = Rig()
    data = os.urandom(4 * 512)
    fixed = protect(data, 512, inc_ref=0)
    assert check_status(rig, fixed).dif_status == DIF_STATUS_REF_TAG
    assert check_status(rig, fixed, src_flags=DIF_SRC_FIXED_REF_TAG).status == DSA_COMP_SUCCESS
    counting = protect(data, 512, inc_app=1)
    assert check_status(rig, counting).dif_status == DIF_STATUS_APP_TAG
    record = check_status(rig, counting, src_flags=DIF_SRC_INC_APP_TAG)
    assert record.status == DSA_COMP_SUCCESS and record.field("dif_chk_app_tag") == APP + 4
    wrap = protect(data, 512, ref=0xFFFFFFFE, app=0xFFFE, inc_app=1)
    record = check_status(rig, wrap, ref=0xFFFFFFFE, app=0xFFFE, src_flags=DIF_SRC_INC_APP_TAG)
    assert record.status == DSA_COMP_SUCCESS
    assert (record.field("dif_chk_ref_tag"), record.field("dif_chk_app_tag")) == (2, 2)


def test_app_tag_mask_excludes_bits() -> None:
    rig = Rig()
    src = protect(os.urandom(512), 512, app=0x12F0)
    assert check_status(rig, src, app=0x12FF).dif_status == DIF_STATUS_APP_TAG
    assert check_status(rig, src, app=0x12FF, mask=0x000F).status == DSA_COMP_SUCCESS
    assert check_status(rig, src, app=0x0000, mask=0xFFFF).status == DSA_COMP_SUCCESS
    assert check_status(rig, src, app=0x02F0, mask=0x0FFF).dif_status == DIF_STATUS_APP_TAG
    record = check_status(rig, src, app=0x12F0, mask=0x00FF)
    assert record.field("dif_chk_app_tag_mask") == 0x00FF


def all_f_block(data: bytes, tuple_bytes: bytes) -> bytes:
    return data[:512] + tuple_bytes


def test_all_f_detect_skips_or_fails() -> None:
    rig = Rig()
    good = protect(os.urandom(1024), 512)
    bad = good[:520] + all_f_block(good[520:], b"\xff" * 8)
    assert check_status(rig, bad).dif_status == (
        DIF_STATUS_GUARD | DIF_STATUS_APP_TAG | DIF_STATUS_REF_TAG
    )
    assert check_status(rig, bad, src_flags=DIF_SRC_ALL_F_DETECT).status == DSA_COMP_SUCCESS
    record = check_status(rig, bad, src_flags=DIF_SRC_ALL_F_DETECT | DIF_SRC_ALL_F_ERROR)
    assert (record.status, record.dif_status, record.bytes_completed) == (
        DSA_COMP_DIF_ERR,
        DIF_STATUS_ALL_F,
        520,
    )
    # the error bit alone detects nothing
    assert check_status(rig, bad, src_flags=DIF_SRC_ALL_F_ERROR).dif_status != DIF_STATUS_ALL_F


def test_app_tag_f_detect_and_app_ref_tag_f_detect() -> None:
    rig = Rig()
    good = protect(os.urandom(1024), 512)
    guard_tag = good[1032:1034]
    app_f = good[:520] + good[520:1032] + guard_tag + b"\xff\xff" + good[1036:1040]
    assert check_status(rig, app_f).dif_status == DIF_STATUS_APP_TAG
    assert check_status(rig, app_f, src_flags=DIF_SRC_APP_TAG_F_DETECT).status == 1
    # app+ref F detect needs the ref tag all-F too
    assert check_status(rig, app_f, src_flags=DIF_SRC_APP_REF_TAG_F_DETECT).status == (
        DSA_COMP_DIF_ERR
    )
    both_f = good[:520] + good[520:1032] + b"\x00\x00" + b"\xff" * 6
    assert check_status(rig, both_f, src_flags=DIF_SRC_APP_REF_TAG_F_DETECT).status == 1
    # a skipped block still advances the tags
    record = check_status(rig, both_f, src_flags=DIF_SRC_APP_REF_TAG_F_DETECT)
    assert record.field("dif_chk_ref_tag") == REF + 2


# --- destination flags (update) -----------------------------------------------------------------


def update(rig: Rig, src: bytes, **kw: int) -> CompletionRecord:
    rig.put(SRC, src)
    return run(rig, sdk.dif_update(DST, SRC, len(src), completion=CR, **kw))


def test_update_regenerates_tuples_with_destination_tags() -> None:
    rig = Rig()
    data = os.urandom(3 * 512)
    src = protect(data, 512, 10, 20)
    record = update(
        rig,
        src,
        src_ref_tag=10,
        src_app_tag=20,
        dest_ref_tag=1000,
        dest_app_tag=7,
        dest_flags=DIF_DST_INC_APP_TAG,
    )
    assert record.status == DSA_COMP_SUCCESS
    assert rig.get(DST, len(src)) == protect(data, 512, 1000, 7, inc_app=1)
    assert (record.field("dif_upd_src_ref_tag"), record.field("dif_upd_dest_ref_tag")) == (
        13,
        1003,
    )
    assert record.field("dif_upd_dest_app_tag") == 10


@pytest.mark.parametrize(
    "dest_flags", [DIF_DST_GUARD_PASS, DIF_DST_APP_TAG_PASS, DIF_DST_REF_TAG_PASS]
)
def test_update_pass_through(dest_flags: int) -> None:
    rig = Rig()
    data = os.urandom(2 * 512)
    src = protect(data, 512, 10, 20, dif_flags=DIF_FLAG_INVERT_CRC_SEED)
    record = update(
        rig,
        src,
        src_ref_tag=10,
        src_app_tag=20,
        dest_ref_tag=500,
        dest_app_tag=600,
        dest_flags=dest_flags | DIF_DST_FIXED_REF_TAG,
        dif_flags=DIF_FLAG_INVERT_CRC_SEED,
    )
    assert record.status == DSA_COMP_SUCCESS
    out = rig.get(DST, len(src))
    for i in range(2):
        got = struct.unpack(">HHI", out[520 * i + 512 : 520 * i + 520])
        old = struct.unpack(">HHI", src[520 * i + 512 : 520 * i + 520])
        assert out[520 * i : 520 * i + 512] == data[512 * i : 512 * (i + 1)]
        new = (ref_guard(data[512 * i : 512 * (i + 1)], DIF_FLAG_INVERT_CRC_SEED), 600, 500)
        assert got[0] == (old[0] if dest_flags == DIF_DST_GUARD_PASS else new[0])
        assert got[1] == (old[1] if dest_flags == DIF_DST_APP_TAG_PASS else new[1])
        assert got[2] == (old[2] if dest_flags == DIF_DST_REF_TAG_PASS else new[2])


def test_update_stops_at_a_bad_source_block() -> None:
    rig = Rig()
    rig.put(DST, bytes(3 * 520))
    src = corrupt(protect(os.urandom(3 * 512), 512, 0, 0), 2 * 520 + 3, 0x40)
    record = update(rig, src, dest_ref_tag=50)
    assert (record.status, record.dif_status, record.bytes_completed) == (
        DSA_COMP_DIF_ERR,
        DIF_STATUS_GUARD,
        2 * 520,
    )
    assert rig.get(DST, 2 * 520) == protect(strip(src, 512)[:1024], 512, 50, 0)
    assert rig.get(DST + 2 * 520, 520) == bytes(520)
    assert record.field("dif_upd_dest_ref_tag") == 52


def test_insert_destination_flags() -> None:
    rig = Rig()
    data = os.urandom(3 * 512)
    rig.put(SRC, data)
    rig.run(
        sdk.dif_insert(
            DST,
            SRC,
            len(data),
            ref_tag=9,
            app_tag=0xFFFF,
            dest_flags=DIF_DST_FIXED_REF_TAG | DIF_DST_INC_APP_TAG,
            completion=CR,
        )
    )
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST, 3 * 520) == protect(data, 512, 9, 0xFFFF, inc_ref=0, inc_app=1)
    assert rig.record().field("dif_ins_app_tag") == 2  # 0xFFFF + 3 wraps


def test_strip_checks_before_copying() -> None:
    rig = Rig()
    rig.put(DST, bytes(1024))
    data = os.urandom(1024)
    src = corrupt(protect(data, 512), 520 + 517, 1)  # block 1's ref tag
    rig.put(SRC, src)
    record = run(rig, sdk.dif_strip(DST, SRC, len(src), ref_tag=REF, app_tag=APP, completion=CR))
    assert (record.status, record.dif_status, record.bytes_completed) == (
        DSA_COMP_DIF_ERR,
        DIF_STATUS_REF_TAG,
        520,
    )
    assert rig.get(DST, 1024) == data[:512] + bytes(512)


# --- validation -----------------------------------------------------------------------------------


def raw(opcode: int, flags: int = 0xC, **fields: int) -> bytes:
    return Descriptor.new(opcode, flags=flags, completion_addr=CR, **fields).pack()


INVALID = [
    (raw(M.DIF_CHECK, src_addr=SRC, xfer_size=512), DSA_COMP_XFER_ERANGE),
    (raw(M.DIF_CHECK, src_addr=SRC, xfer_size=1041), DSA_COMP_XFER_ERANGE),
    (raw(M.DIF_STRP, src_addr=SRC, dst_addr=DST, xfer_size=4096, dif_chk_flags=2), 0x13),
    (raw(M.DIF_INS, src_addr=SRC, dst_addr=DST, xfer_size=520), DSA_COMP_XFER_ERANGE),
    (raw(M.DIX_GEN, src_addr=SRC, dst_addr=DST, xfer_size=100), DSA_COMP_XFER_ERANGE),
    (raw(M.DIF_UPDT, src_addr=SRC, dst_addr=DST, xfer_size=512), DSA_COMP_XFER_ERANGE),
    (raw(M.DIF_INS, src_addr=SRC, dst_addr=SRC + 512, xfer_size=1024), DSA_COMP_OVERLAP_BUFFERS),
    (raw(M.DIF_STRP, src_addr=SRC, dst_addr=SRC - 100, xfer_size=520), DSA_COMP_OVERLAP_BUFFERS),
    (raw(M.DIF_UPDT, src_addr=SRC, dst_addr=SRC + 519, xfer_size=520), DSA_COMP_OVERLAP_BUFFERS),
    (raw(M.DIX_GEN, src_addr=SRC, dst_addr=SRC + 1016, xfer_size=1024), DSA_COMP_OVERLAP_BUFFERS),
    # reserved bits of the flag bytes and reserved bytes
    (raw(M.DIF_CHECK, src_addr=SRC, xfer_size=520, dif_chk_flags=0x10), DSA_COMP_NOZERO_RESERVE),
    (raw(M.DIF_CHECK, src_addr=SRC, xfer_size=520, dest_dif_flag=0x80), DSA_COMP_NOZERO_RESERVE),
    (raw(M.DIF_CHECK, src_addr=SRC, dst_addr=DST, xfer_size=520), DSA_COMP_NOZERO_RESERVE),
    (raw(M.DIF_CHECK, src_addr=SRC, xfer_size=520, ins_ref_tag_seed=1), DSA_COMP_NOZERO_RESERVE),
    (raw(M.DIF_INS, src_addr=SRC, dst_addr=DST, xfer_size=512, dest_dif_flag=1), 0x12),
    (raw(M.DIF_INS, src_addr=SRC, dst_addr=DST, xfer_size=512, src_dif_flags=1), 0x12),
    (raw(M.DIF_INS, src_addr=SRC, dst_addr=DST, xfer_size=512, chk_ref_tag_seed=1), 0x12),
    (raw(M.DIX_GEN, src_addr=SRC, dst_addr=DST, xfer_size=512, dif_flags=0x80), 0x12),
    (raw(M.DIF_UPDT, src_addr=SRC, dst_addr=DST, xfer_size=520, upd_dest_flags=4), 0x12),
    (raw(M.DIF_STRP, src_addr=SRC, dst_addr=DST, xfer_size=520, delta_addr=1 << 24), 0x12),
    # no op-specific flag bits, no check-result flag
    (raw(M.DIF_CHECK, 0xC | 0x10000, src_addr=SRC, xfer_size=520), DSA_COMP_INVALID_FLAGS),
    (raw(M.DIF_INS, 0xC | IDXD_OP_FLAG_CR, src_addr=SRC, xfer_size=512), DSA_COMP_INVALID_FLAGS),
]


@pytest.mark.parametrize(("desc", "status"), INVALID)
def test_invalid_dif_descriptor_status(desc: bytes, status: int) -> None:
    rig = Rig()
    assert run(rig, desc).status == status


def test_dif_opcodes_obey_op_config() -> None:
    rig = Rig()
    rig.dwq.disable()
    rig.dwq.configure({"op_config": 1 << DsaOpcode.DIF_CHECK})
    rig.dwq.enable()
    rig.put(SRC, protect(bytes(512), 512, 0, 0))
    assert run(rig, sdk.dif_check(SRC, 520, completion=CR)).status == DSA_COMP_SUCCESS
    for desc in (
        sdk.dif_insert(DST, SRC, 512, completion=CR),
        sdk.dif_strip(DST, SRC, 520, completion=CR),
        sdk.dif_update(DST, SRC, 520, completion=CR),
        sdk.dix_gen(DST, SRC, 512, completion=CR),
    ):
        assert run(rig, desc).status == DSA_COMP_BAD_OPCODE


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="block size"):
        sdk.dif_check(SRC, 520, block_size=1024)
    with pytest.raises(ValueError, match="dif_flags"):
        sdk.dif_check(SRC, 520, dif_flags=3)
    with pytest.raises(ValueError, match="16 bits"):
        sdk.dif_insert(DST, SRC, 512, app_tag=1 << 16)


# --- partial completion and resumption ------------------------------------------------------------


def reprep(desc: bytes, record: CompletionRecord, block: int) -> bytes:
    """accel-config test/dsa_prep.c dsa_reprep_dif, field for field (DIX_GEN advances its
    tuple buffer by 8 bytes per block, as its layout implies)."""
    d = Descriptor.unpack(desc)
    op = d.opcode
    done = record.bytes_completed
    fields: dict[str, int] = {
        "src_addr": d.src_addr + done,
        "dst_addr": d.dst_addr,
        "xfer_size": d.xfer_size - done,
    }
    if op == M.DIF_CHECK:
        fields.update(
            src_dif_flags=d.field("src_dif_flags"),
            dif_chk_flags=d.field("dif_chk_flags"),
            chk_app_tag_mask=d.field("chk_app_tag_mask"),
            chk_app_tag_seed=record.field("dif_chk_app_tag"),
            chk_ref_tag_seed=record.field("dif_chk_ref_tag"),
        )
        del fields["dst_addr"]
    elif op == M.DIF_STRP:
        fields["dst_addr"] += block * (done // (block + 8))
        fields.update(
            src_dif_flags=d.field("src_dif_flags"),
            dif_chk_flags=d.field("dif_chk_flags"),
            chk_app_tag_mask=d.field("chk_app_tag_mask"),
            chk_app_tag_seed=record.field("dif_chk_app_tag"),
            chk_ref_tag_seed=record.field("dif_chk_ref_tag"),
        )
    elif op == M.DIF_INS or op == M.DIX_GEN:
        blocks = done // block
        fields["dst_addr"] += (done + 8 * blocks) if op == M.DIF_INS else 8 * blocks
        fields.update(
            dest_dif_flag=d.field("dest_dif_flag"),
            dif_ins_flags=d.field("dif_ins_flags"),
            ins_app_tag_mask=d.field("ins_app_tag_mask"),
            ins_app_tag_seed=record.field("dif_ins_app_tag"),
            ins_ref_tag_seed=record.field("dif_ins_ref_tag"),
        )
    else:
        fields["dst_addr"] += (block + 8) * (done // (block + 8))
        fields.update(
            src_upd_flags=d.field("src_upd_flags"),
            upd_dest_flags=d.field("upd_dest_flags"),
            dif_upd_flags=d.field("dif_upd_flags"),
            src_app_tag_mask=d.field("src_app_tag_mask"),
            dest_app_tag_mask=d.field("dest_app_tag_mask"),
            src_app_tag_seed=record.field("dif_upd_src_app_tag"),
            dest_app_tag_seed=record.field("dif_upd_dest_app_tag"),
            src_ref_tag_seed=record.field("dif_upd_src_ref_tag"),
            dest_ref_tag_seed=record.field("dif_upd_dest_ref_tag"),
        )
    return Descriptor.new(op, flags=d.flags, completion_addr=d.completion_addr, **fields).pack()


def scenario(op: int, block: int) -> tuple[bytes, bytes, int]:
    """(source bytes, descriptor, expected destination length) for 12 blocks."""
    data = bytes(random.Random(op * block).randbytes(12 * block))
    flag = block_flag(block)
    if op == M.DIF_CHECK:
        src = protect(data, block, 33, 44, inc_app=1)
        desc = sdk.dif_check(
            SRC, len(src), block_size=block, ref_tag=33, app_tag=44,
            src_flags=DIF_SRC_INC_APP_TAG, completion=CR,
        )  # fmt: skip
        return src, desc, 0
    if op == M.DIF_STRP:
        src = protect(data, block, 33, 44)
        return src, sdk.dif_strip(DST, SRC, len(src), block_size=block, ref_tag=33, app_tag=44,
                                  completion=CR), len(data)  # fmt: skip
    if op == M.DIF_UPDT:
        src = protect(data, block, 33, 44)
        desc = sdk.dif_update(
            DST, SRC, len(src), block_size=block, src_ref_tag=33, src_app_tag=44,
            dest_ref_tag=900, dest_app_tag=3, dest_flags=DIF_DST_INC_APP_TAG, completion=CR,
        )  # fmt: skip
        return src, desc, len(src)
    if op == M.DIF_INS:
        desc = sdk.dif_insert(DST, SRC, len(data), block_size=block, ref_tag=5, app_tag=6,
                              dest_flags=DIF_DST_INC_APP_TAG, completion=CR)  # fmt: skip
        return data, desc, len(data) + 96
    desc = sdk.dix_gen(DST, SRC, len(data), block_size=block, ref_tag=5, app_tag=6, completion=CR)
    assert flag == block_flag(block)
    return data, desc, 96


OPS = [M.DIF_CHECK, M.DIF_INS, M.DIF_STRP, M.DIF_UPDT, M.DIX_GEN]


def clean_run(op: int, block: int) -> tuple[bytes, CompletionRecord]:
    rig = Rig()
    src, desc, out_len = scenario(op, block)
    rig.put(SRC, src)
    record = run(rig, desc)
    assert record.status == DSA_COMP_SUCCESS
    return rig.get(DST, out_len), record


FAULT_CASES = [
    (op, block, side)
    for op in OPS
    for block in (512, 4104)
    for side in ("src", "dst")
    if not (op == M.DIF_CHECK and side == "dst")  # DIF_CHECK has no destination
]


@pytest.mark.parametrize(("op", "block", "side"), FAULT_CASES)
def test_page_fault_partial_completion_then_reprep_resume(op: int, block: int, side: str) -> None:
    expect, final = clean_run(op, block)
    rig = Rig(bof=False)
    src, desc, out_len = scenario(op, block)
    rig.put(SRC, src)
    base = SRC if side == "src" else DST
    span = len(src) if side == "src" else out_len
    # a page in the middle of the range, past its first page when it has more than one
    hole = (base + span // 2) & ~(PAGE - 1)
    if span > PAGE:
        hole = max(hole, base + PAGE)
    rig.dma.unmap(hole)
    record = run(rig, desc)
    write_bit = DSA_COMP_STATUS_WRITE if side == "dst" else 0
    assert record.status == DSA_COMP_PAGE_FAULT_NOBOF | write_bit
    assert record.fault_addr >= hole and record.fault_addr < hole + PAGE
    step = block + 8 if op in (M.DIF_CHECK, M.DIF_STRP, M.DIF_UPDT) else block
    assert record.bytes_completed % step == 0 and 0 <= record.bytes_completed < len(src)
    # dsa_wait_dif: resolve the fault, re-prepare from the record, submit again
    rig.dma.map(hole, hole)
    resumed = reprep(desc, record, block)
    second = run(rig, resumed)
    assert second.status == DSA_COMP_SUCCESS
    assert rig.get(DST, out_len) == expect
    assert second.op_specific == final.op_specific  # the same final tags


@pytest.mark.parametrize("op", OPS)
def test_block_on_fault_resumes_in_place(op: int) -> None:
    expect, final = clean_run(op, 512)
    rig = Rig()
    src, desc, out_len = scenario(op, 512)
    rig.put(SRC, src)
    hole = SRC + PAGE
    rig.dma.unmap(hole)
    bof = Descriptor.unpack(desc)
    desc = Descriptor(
        opcode=bof.opcode,
        flags=bof.flags | IDXD_OP_FLAG_BOF,
        completion_addr=bof.completion_addr,
        operands=bof.operands,
        op_specific=bof.op_specific,
    ).pack()
    outcome = rig.start(desc)
    assert isinstance(outcome, Blocked) and outcome.fault.iova == hole
    rig.dma.map(hole, hole)
    done = rig.executor.resume(outcome.state, PageResponse.SUCCESS)
    assert isinstance(done, Completed)
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST, out_len) == expect
    assert rig.record().op_specific == final.op_specific


def test_invalid_page_response_completes_with_the_partial_tags() -> None:
    rig = Rig()
    src, desc, _ = scenario(M.DIF_CHECK, 512)
    rig.put(SRC, src)
    rig.dma.unmap(SRC + PAGE)
    bof = Descriptor.unpack(desc)
    desc = Descriptor(
        opcode=bof.opcode,
        flags=bof.flags | IDXD_OP_FLAG_BOF,
        completion_addr=bof.completion_addr,
        operands=bof.operands,
        op_specific=bof.op_specific,
    ).pack()
    outcome = rig.start(desc)
    assert isinstance(outcome, Blocked)
    rig.executor.resume(outcome.state, PageResponse.INVALID)
    record = rig.record()
    blocks = PAGE // 520  # whole blocks before the hole
    assert (record.status, record.bytes_completed) == (DSA_COMP_PAGE_FAULT_IR, blocks * 520)
    assert record.field("dif_chk_ref_tag") == 33 + blocks
    assert record.field("dif_chk_app_tag") == 44 + blocks


def test_dif_in_a_batch() -> None:
    rig = Rig()
    data = os.urandom(1024)
    rig.put(SRC, data)
    good = protect(data, 512, 1, 2)
    rig.put(SRC + 0x2000, good)
    rig.put(SRC + 0x3000, corrupt(good, 3, 1))
    subs = [
        sdk.dif_insert(DST, SRC, 1024, ref_tag=1, app_tag=2, completion=CR + 0x100),
        sdk.dif_check(SRC + 0x2000, 1040, ref_tag=1, app_tag=2, completion=CR + 0x120),
        sdk.dif_check(SRC + 0x3000, 1040, ref_tag=1, app_tag=2, completion=CR + 0x140),
    ]
    rig.put(0x30000, sdk.join_batch(subs))
    rig.run(sdk.batch(0x30000, 3, completion=CR))
    assert rig.record().status == DSA_COMP_BATCH_FAIL
    assert [rig.record(CR + off).status for off in (0x100, 0x120, 0x140)] == [
        DSA_COMP_SUCCESS,
        DSA_COMP_SUCCESS,
        DSA_COMP_DIF_ERR,
    ]
    assert rig.get(DST, 1040) == good


def test_a_large_transfer_crosses_its_internal_batches() -> None:
    rig = Rig(size=4 << 20)
    data = os.urandom(600 * 512)  # more than one 256 KiB gathering step
    rig.put(SRC, data)
    dst = 0x200000
    rig.run(sdk.dif_insert(dst, SRC, len(data), ref_tag=1, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(dst, 600 * 520) == protect(data, 512, 1, 0)


# --- OPCAP and the fidelity fixes ---------------------------------------------------------------


def test_opcap_lists_exactly_what_runs() -> None:
    from siovd.model.accel import caps
    from siovd.model.accel.checks import SPECS

    running = {
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x17, 0x20,
    }  # fmt: skip
    assert {op for op in range(256) if caps.OPCAP >> op & 1} == running == set(SPECS)


@pytest.mark.parametrize("opcode", [0x0A, 0x21, *range(0x23, 0x28), *range(0x33, 0x38)])
def test_dsa2_operations_left_out_of_opcap_are_bad_opcodes(opcode: int) -> None:
    rig = Rig()
    assert run(rig, raw(opcode)).status == DSA_COMP_BAD_OPCODE


def test_create_delta_takes_accel_configs_max_delta_size() -> None:
    """dsa_test's init_cr_delta asks for 2 x xfer_size (8192 for 4 KiB) and expects SUCCESS;
    the record holds floor(max_delta_size / 10) entries."""
    rig = Rig()
    a = bytes(4096)
    b = bytes(range(256)) * 16  # every 8-byte word differs from zero
    rig.put(SRC, a)
    rig.put(DST, b)
    delta = 0x80000
    record = run(rig, sdk.create_delta(SRC, DST, 4096, delta, 8192, completion=CR))
    assert (record.status, record.result, record.delta_rec_size) == (DSA_COMP_SUCCESS, 1, 5120)
    # 95 bytes hold 9 entries: the tenth overflows
    record = run(rig, sdk.create_delta(SRC, DST, 4096, delta, 95, completion=CR))
    assert (record.status, record.result, record.delta_rec_size) == (DSA_COMP_SUCCESS, 2, 90)
