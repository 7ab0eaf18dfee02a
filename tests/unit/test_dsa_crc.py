"""CRCGEN / COPY_CRC: CRC-32C with DSA's seed, inversion and reflection rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siov import dsa as sdk
from siov_protocol.dsa import (
    DSA_COMP_SUCCESS,
    IDXD_OP_FLAG_BYPASS_CRC_INV_REF,
    IDXD_OP_FLAG_BYPASS_DATA_REF,
)
from siovd.model.accel.crc import bitrev32, dsa_crc32c
from tests.unit.dsa_fakes import Rig

INV_REF = IDXD_OP_FLAG_BYPASS_CRC_INV_REF
DATA_REF = IDXD_OP_FLAG_BYPASS_DATA_REF

# RFC 3720 B.4: an iSCSI SCSI Read (10) command PDU, 48 bytes
RFC3720_READ_PDU = bytes.fromhex(
    "01c00000" "00000000" "00000000" "00000000" "14000000" "00000400"
    "00000014" "00000018" "28000000" "00000000" "02000000" "00000000"
)  # fmt: skip

# (input, expected crc_val) from the fact sheet (RFC 3720 B.4 and the CRC-32C check value)
VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (RFC3720_READ_PDU, 0xD9963A56),
    (b"a", 0xC1D04330),
    (bytes(4096), 0x98F94189),
]


def reference_crc(data: bytes, seed: int, flags: int) -> int:
    """Bit-by-bit model of the rules: register = ~seed (or bitrev(seed) with BYPASS_CRC_INV_REF),
    bytes LSB-first (MSB-first with BYPASS_DATA_REF), result = ~register (or bitrev)."""
    crc = bitrev32(seed) if flags & INV_REF else ~seed & 0xFFFFFFFF
    for byte in data:
        if flags & DATA_REF:
            byte = int(f"{byte:08b}"[::-1], 2)
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return bitrev32(crc) if flags & INV_REF else ~crc & 0xFFFFFFFF


def test_rfc3720_read_pdu_vector_is_48_bytes() -> None:
    assert len(RFC3720_READ_PDU) == 48


@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_crcgen_known_answers(data: bytes, expected: int) -> None:
    rig = Rig()
    rig.put(0x1000, data)
    out = rig.run(sdk.crcgen(0x1000, len(data), completion=Rig.CR))
    record = rig.record()
    assert out.written and record.code == DSA_COMP_SUCCESS
    assert record.crc_val == expected
    assert reference_crc(data, 0, 0) == expected


def test_seed_chaining_equals_one_pass() -> None:
    a, b = b"12345", b"6789"
    assert dsa_crc32c([b], dsa_crc32c([a])) == dsa_crc32c([a + b]) == 0xE3069283
    rig = Rig()
    rig.put(0x1000, a + b)
    rig.run(sdk.crcgen(0x1000, len(a), completion=Rig.CR))
    first = rig.record().crc_val
    rig.run(sdk.crcgen(0x1000 + len(a), len(b), seed=first, completion=Rig.CR))
    assert rig.record().crc_val == 0xE3069283


@pytest.mark.parametrize("flags", [0, INV_REF, DATA_REF, INV_REF | DATA_REF])
@pytest.mark.parametrize("seed", [0, 1, 0x12345678, 0xFFFFFFFF])
def test_bypass_flags_follow_the_rules(flags: int, seed: int) -> None:
    data = bytes(range(7, 250, 3))
    rig = Rig()
    rig.put(0x1000, data)
    rig.run(sdk.crcgen(0x1000, len(data), seed=seed, completion=Rig.CR, flags=flags))
    assert rig.record().crc_val == reference_crc(data, seed, flags)


@given(
    st.binary(max_size=200),
    st.binary(max_size=200),
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, INV_REF, DATA_REF, INV_REF | DATA_REF]),
)
def test_chaining_holds_for_every_flag_combination(
    a: bytes, b: bytes, seed: int, flags: int
) -> None:
    whole = dsa_crc32c([a + b], seed, flags)
    assert whole == reference_crc(a + b, seed, flags)
    assert dsa_crc32c([b], dsa_crc32c([a], seed, flags), flags) == whole


def test_read_crc_seed_takes_the_seed_from_memory() -> None:
    data = b"hello, dsa"
    rig = Rig()
    rig.put(0x1000, data)
    rig.put(0x2000, (0x12345678).to_bytes(4, "little"))
    rig.run(sdk.crcgen(0x1000, len(data), seed_addr=0x2000, completion=Rig.CR))
    assert rig.record().crc_val == reference_crc(data, 0x12345678, 0)


def test_copy_crc_copies_and_reports_the_crc() -> None:
    data = bytes(range(256)) * 3
    rig = Rig()
    rig.put(0x1000, data)
    rig.run(sdk.copy_crc(0x4000, 0x1000, len(data), seed=5, completion=Rig.CR))
    assert rig.get(0x4000, len(data)) == data
    assert rig.record().crc_val == reference_crc(data, 5, 0)


def test_partial_crc_after_a_fault_is_the_next_seed() -> None:
    data = bytes((i * 7) & 0xFF for i in range(3 * 4096))
    rig = Rig(bof=False)
    rig.put(0x10000, data)
    rig.dma.unmap(0x12000)  # third page
    rig.run(sdk.crcgen(0x10000, len(data), completion=Rig.CR))
    record = rig.record()
    assert record.code == sdk.DSA_COMP_PAGE_FAULT_NOBOF and not record.fault_on_write
    assert record.bytes_completed == 0x2000
    assert record.fault_addr == 0x12000
    assert record.crc_val == dsa_crc32c([data[:0x2000]])
    rig.dma.map(0x12000, 0x12000)
    done = record.bytes_completed
    rig.run(sdk.crcgen(0x10000 + done, len(data) - done, seed=record.crc_val, completion=Rig.CR))
    assert rig.record().crc_val == dsa_crc32c([data])
