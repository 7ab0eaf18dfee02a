"""The descriptor and completion-record layouts, byte for byte against linux/idxd.h."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siov import dsa as sdk
from siov_protocol import dsa
from siov_protocol.dsa import CompletionRecord, Descriptor, DsaCompStatus, DsaOpcode

# (field, offset, size) from struct dsa_hw_desc
DESC_UNION_FIELDS = [
    ("src_addr", 16, 8),
    ("rdback_addr", 16, 8),
    ("pattern", 16, 8),
    ("desc_list_addr", 16, 8),
    ("pattern_lower", 16, 8),
    ("transl_fetch_addr", 16, 8),
    ("dst_addr", 24, 8),
    ("rdback_addr2", 24, 8),
    ("src2_addr", 24, 8),
    ("comp_pattern", 24, 8),
    ("xfer_size", 32, 4),
    ("desc_count", 32, 4),
    ("region_size", 32, 4),
    ("expected_res", 40, 1),
    ("delta_addr", 40, 8),
    ("max_delta_size", 48, 4),
    ("expected_res_mask", 56, 1),
    ("delta_rec_size", 40, 4),
    ("dest2", 40, 8),
    ("crc_seed", 40, 4),
    ("seed_addr", 48, 8),
    ("pattern_upper", 40, 8),
    ("region_stride", 48, 4),
]


def _value(size: int) -> int:
    return int.from_bytes(bytes(range(0xA1, 0xA1 + size)), "little")


@pytest.mark.parametrize(("name", "offset", "size"), DESC_UNION_FIELDS)
def test_descriptor_union_member_lands_at_its_offset(name: str, offset: int, size: int) -> None:
    value = _value(size)
    desc = Descriptor.new(DsaOpcode.NOOP, **{name: value})
    raw = desc.pack()
    assert len(raw) == 64
    assert raw[offset : offset + size] == value.to_bytes(size, "little")
    assert raw[:offset] == bytes(offset) or offset == 0
    assert raw[offset + size :] == bytes(64 - offset - size)
    assert getattr(desc, name) == value
    assert getattr(Descriptor.unpack(raw), name) == value
    assert dsa.DESC_FIELD_OFFSETS[name] == (offset, size)


def test_descriptor_header_bitfields() -> None:
    desc = Descriptor(
        opcode=0xAB,
        flags=0x123456,
        pasid=0xABCDE,
        priv=1,
        completion_addr=0x1122334455667788,
        int_handle=0xBEEF,
        rsvd1=0x0102,
    )
    raw = desc.pack()
    assert raw[0:4] == (0xABCDE | 1 << 31).to_bytes(4, "little")  # pasid:20, rsvd:11, priv:1
    assert raw[4:7] == bytes([0x56, 0x34, 0x12])  # flags:24
    assert raw[7] == 0xAB  # opcode
    assert raw[8:16] == (0x1122334455667788).to_bytes(8, "little")
    assert raw[36:38] == (0xBEEF).to_bytes(2, "little")
    assert raw[38:40] == (0x0102).to_bytes(2, "little")
    assert Descriptor.unpack(raw) == desc


def test_descriptor_union_members_that_share_bytes_cannot_both_be_set() -> None:
    with pytest.raises(ValueError, match="share bytes"):
        Descriptor.new(DsaOpcode.CRCGEN, crc_seed=1, delta_addr=2)
    with pytest.raises(TypeError):
        Descriptor.new(DsaOpcode.NOOP, no_such_field=1)
    with pytest.raises(ValueError, match="does not fit"):
        Descriptor.new(DsaOpcode.NOOP, xfer_size=1 << 32)
    with pytest.raises(ValueError, match="does not fit"):
        Descriptor(opcode=1, pasid=1 << 20)
    with pytest.raises(ValueError):
        Descriptor.unpack(bytes(63))


def test_descriptor_fields_that_share_no_bytes_combine() -> None:
    desc = Descriptor.new(
        DsaOpcode.CR_DELTA, delta_addr=0x1000, max_delta_size=80, expected_res_mask=0x5
    )
    raw = desc.pack()
    assert raw[40:48] == (0x1000).to_bytes(8, "little")
    assert raw[48:52] == (80).to_bytes(4, "little")
    assert raw[56] == 0x5
    assert (desc.delta_addr, desc.max_delta_size, desc.expected_res_mask) == (0x1000, 80, 5)


@given(st.binary(min_size=64, max_size=64))
def test_descriptor_round_trip_keeps_every_bit(raw: bytes) -> None:
    desc = Descriptor.unpack(raw)
    assert desc.pack() == raw
    fields = dsa.DESC_STRUCT.unpack(raw)
    assert desc.pasid == fields[0] & 0xFFFFF
    assert desc.priv == fields[0] >> 31
    assert desc.rsvd == (fields[0] >> 20) & 0x7FF
    assert (desc.opcode, desc.flags) == (raw[7], fields[1] & 0xFFFFFF)
    assert (desc.src_addr, desc.dst_addr, desc.xfer_size) == fields[3:6]
    assert (desc.int_handle, desc.rsvd1) == fields[6:8]
    assert desc.delta_addr == fields[8]
    assert desc.seed_addr == fields[9]
    assert desc.expected_res_mask == fields[10] & 0xFF


@given(
    st.integers(0, 255),
    st.integers(0, 2**24 - 1),
    st.integers(0, 2**20 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
def test_descriptor_new_pack_unpack(
    opcode: int, flags: int, pasid: int, src: int, dst: int, size: int
) -> None:
    desc = Descriptor.new(
        opcode, flags=flags, pasid=pasid, src_addr=src, dst_addr=dst, xfer_size=size
    )
    again = Descriptor.unpack(desc.pack())
    assert again == desc
    assert (again.src_addr, again.dst_addr, again.xfer_size) == (src, dst, size)


COMP_FIELDS = [
    ("status", 0, 1),
    ("result", 1, 1),
    ("fault_info", 2, 1),
    ("bytes_completed", 4, 4),
    ("fault_addr", 8, 8),
]


@pytest.mark.parametrize(("name", "offset", "size"), COMP_FIELDS)
def test_completion_record_field_offsets(name: str, offset: int, size: int) -> None:
    value = _value(size)
    record = CompletionRecord(**{"status": 0, name: value})
    raw = record.pack()
    assert len(raw) == 32
    assert raw[offset : offset + size] == value.to_bytes(size, "little")
    assert CompletionRecord.unpack(raw) == record
    assert dsa.COMP_FIELD_OFFSETS[name] == (offset, size)


def test_completion_record_op_specific_members() -> None:
    crc = CompletionRecord.new(1, crc_val=0xE3069283)
    assert crc.pack()[16:24] == (0xE3069283).to_bytes(8, "little")
    assert crc.crc_val == 0xE3069283
    delta = CompletionRecord.new(1, result=1, delta_rec_size=10)
    assert delta.pack()[16:20] == (10).to_bytes(4, "little") and delta.delta_rec_size == 10
    bad = CompletionRecord.new(0x11, invalid_flags=0x40)
    assert bad.pack()[16:19] == bytes([0x40, 0, 0]) and bad.invalid_flags == 0x40
    batch = CompletionRecord.new(5, bytes_completed=7)
    assert batch.descs_completed == 7
    with pytest.raises(ValueError, match="share bytes"):
        CompletionRecord.new(1, crc_val=1, delta_rec_size=2)


def test_completion_status_byte_write_bit() -> None:
    record = CompletionRecord(status=0x83, bytes_completed=4096, fault_addr=0x5000)
    assert record.code == DsaCompStatus.PAGE_FAULT_NOBOF
    assert record.fault_on_write
    assert dsa.DSA_COMP_STATUS(0x83) == dsa.DSA_COMP_PAGE_FAULT_NOBOF


@given(st.binary(min_size=32, max_size=32))
def test_completion_record_round_trip(raw: bytes) -> None:
    record = CompletionRecord.unpack(raw)
    assert record.pack() == raw
    assert record.bytes_completed == int.from_bytes(raw[4:8], "little")
    assert record.crc_val == int.from_bytes(raw[16:24], "little")


def test_numbers_match_idxd_h() -> None:
    assert [int(op) for op in DsaOpcode] == [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A,
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x17, 0x20,
    ]  # fmt: skip
    assert dsa.DSA_OPCODE_MEMMOVE == 3 and dsa.DSA_OPCODE_CFLUSH == 0x20
    assert dsa.DSA_COMP_SUCCESS == 1 and dsa.DSA_COMP_BAD_OPCODE == 0x10
    assert dsa.DSA_COMP_TRANSLATION_FAIL == 0x22 and dsa.DSA_COMP_BATCH_EVL_ERR == 0x27
    assert (dsa.DSA_COMP_STATUS_MASK, dsa.DSA_COMP_STATUS_WRITE) == (0x7F, 0x80)
    flags = [
        dsa.IDXD_OP_FLAG_FENCE,
        dsa.IDXD_OP_FLAG_BOF,
        dsa.IDXD_OP_FLAG_CRAV,
        dsa.IDXD_OP_FLAG_RCR,
        dsa.IDXD_OP_FLAG_RCI,
        dsa.IDXD_OP_FLAG_CRSTS,
        dsa.IDXD_OP_FLAG_CR,
        dsa.IDXD_OP_FLAG_CC,
        dsa.IDXD_OP_FLAG_ADDR1_TCS,
        dsa.IDXD_OP_FLAG_ADDR2_TCS,
        dsa.IDXD_OP_FLAG_ADDR3_TCS,
        dsa.IDXD_OP_FLAG_CR_TCS,
        dsa.IDXD_OP_FLAG_STORD,
        dsa.IDXD_OP_FLAG_DRDBK,
        dsa.IDXD_OP_FLAG_DSTS,
    ]
    assert flags == [
        0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x80, 0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000,
        0x4000, 0x8000,
    ]  # fmt: skip
    assert (
        dsa.IDXD_OP_FLAG_READ_CRC_SEED,
        dsa.IDXD_OP_FLAG_BYPASS_CRC_INV_REF,
        dsa.IDXD_OP_FLAG_BYPASS_DATA_REF,
    ) == (0x10000, 0x20000, 0x40000)


# --- SDK builders -----------------------------------------------------------------------------

CR = dsa.IDXD_OP_FLAG_CRAV | dsa.IDXD_OP_FLAG_RCR


def test_sdk_memmove_sets_completion_flags() -> None:
    desc = Descriptor.unpack(sdk.memmove(0x2000, 0x1000, 4096, completion=0x3000))
    assert desc.opcode == dsa.DSA_OPCODE_MEMMOVE
    assert desc.flags == CR
    assert (desc.src_addr, desc.dst_addr, desc.xfer_size) == (0x1000, 0x2000, 4096)
    assert desc.completion_addr == 0x3000
    quiet = Descriptor.unpack(sdk.memmove(0x2000, 0x1000, 8, flags=dsa.IDXD_OP_FLAG_BOF))
    assert quiet.flags == dsa.IDXD_OP_FLAG_BOF and quiet.completion_addr == 0
    rci = Descriptor.unpack(
        sdk.memmove(1, 2, 3, completion=64, flags=dsa.IDXD_OP_FLAG_RCI, int_handle=1)
    )
    assert rci.flags == CR | dsa.IDXD_OP_FLAG_RCI and rci.int_handle == 1


def test_sdk_builders_fill_the_right_fields() -> None:
    fill = Descriptor.unpack(sdk.fill(0x2000, 0x0102030405060708, 64))
    assert (fill.opcode, fill.pattern, fill.dst_addr, fill.xfer_size) == (
        4,
        0x0102030405060708,
        0x2000,
        64,
    )
    fill16 = Descriptor.unpack(sdk.fill(0x2000, bytes(range(16)), 64))
    assert fill16.flags & dsa.IDXD_OP_FLAG_FILL_16B
    assert fill16.pattern_lower == int.from_bytes(bytes(range(8)), "little")
    assert fill16.pattern_upper == int.from_bytes(bytes(range(8, 16)), "little")
    cmp = Descriptor.unpack(sdk.compare(0x10, 0x20, 8, expected_res=1, flags=dsa.IDXD_OP_FLAG_CR))
    assert (cmp.src_addr, cmp.src2_addr, cmp.expected_res, cmp.flags) == (0x10, 0x20, 1, 0x80)
    cv = Descriptor.unpack(sdk.compval(0x10, 0xAA, 8))
    assert (cv.opcode, cv.comp_pattern) == (dsa.DSA_OPCODE_COMPVAL, 0xAA)
    dc = Descriptor.unpack(sdk.dualcast(0x1000, 0x3000, 0x5000, 16))
    assert (dc.dst_addr, dc.dest2, dc.src_addr) == (0x1000, 0x3000, 0x5000)
    crc = Descriptor.unpack(sdk.crcgen(0x100, 9, seed=7))
    assert (crc.opcode, crc.crc_seed, crc.flags) == (0x10, 7, 0)
    crc_mem = Descriptor.unpack(sdk.crcgen(0x100, 9, seed_addr=0x800))
    assert crc_mem.flags == dsa.IDXD_OP_FLAG_READ_CRC_SEED and crc_mem.seed_addr == 0x800
    ccrc = Descriptor.unpack(sdk.copy_crc(0x200, 0x100, 9, seed=3))
    assert (ccrc.opcode, ccrc.dst_addr, ccrc.src_addr, ccrc.crc_seed) == (0x11, 0x200, 0x100, 3)
    cd = Descriptor.unpack(sdk.create_delta(0x100, 0x200, 64, 0x300, 80, expected_res_mask=2))
    assert (cd.src_addr, cd.src2_addr, cd.delta_addr, cd.max_delta_size) == (
        0x100,
        0x200,
        0x300,
        80,
    )
    assert cd.expected_res_mask == 2
    ad = Descriptor.unpack(sdk.apply_delta(0x400, 0x300, 20, 64))
    assert (ad.opcode, ad.dst_addr, ad.src_addr, ad.delta_rec_size, ad.xfer_size) == (
        8,
        0x400,
        0x300,
        20,
        64,
    )
    dr = Descriptor.unpack(sdk.drain(readback1=0x40, readback2=0x80))
    assert dr.flags == dsa.IDXD_OP_FLAG_RDBACK_ADDR1 | dsa.IDXD_OP_FLAG_RDBACK_ADDR2
    assert (dr.rdback_addr, dr.rdback_addr2) == (0x40, 0x80)
    bt = Descriptor.unpack(sdk.batch(0x1000, 4, completion=0x40))
    assert (bt.opcode, bt.desc_list_addr, bt.desc_count) == (1, 0x1000, 4)
    cf = Descriptor.unpack(sdk.cflush(0x1000, 64))
    assert (cf.opcode, cf.dst_addr, cf.xfer_size) == (0x20, 0x1000, 64)
    assert Descriptor.unpack(sdk.noop(completion=0x40)).flags == CR
    assert len(sdk.join_batch([sdk.noop(), sdk.noop()])) == 128


def test_sdk_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        sdk.memmove(-1, 0, 1)
    with pytest.raises(ValueError):
        sdk.memmove(0, 0, 1 << 32)
    with pytest.raises(ValueError):
        sdk.noop(flags=1 << 24)
    with pytest.raises(ValueError):
        sdk.fill(0, b"abc", 8)


def test_sdk_parse_completion() -> None:
    raw = CompletionRecord.new(0x83, bytes_completed=100, fault_addr=0x7000).pack()
    record = sdk.parse_completion(raw)
    assert record.code == sdk.DSA_COMP_PAGE_FAULT_NOBOF and record.fault_on_write
    assert (record.bytes_completed, record.fault_addr) == (100, 0x7000)
    assert sdk.status_name(0x83) == "DSA_COMP_PAGE_FAULT_NOBOF|WRITE"
    assert sdk.status_name(1) == "DSA_COMP_SUCCESS"
