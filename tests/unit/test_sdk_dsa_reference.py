"""siov.dsa's CRC-32C reference and the remainder of a partial completion, checked against the
DSA fact sheet's known answers, the daemon's own CRC and hand-built records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siov import dsa
from siov_protocol.dsa import CompletionRecord
from siovd.model.accel.crc import dsa_crc32c

INV_REF = dsa.IDXD_OP_FLAG_BYPASS_CRC_INV_REF
DATA_REF = dsa.IDXD_OP_FLAG_BYPASS_DATA_REF


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"a", 0xC1D04330),
        (bytes(4096), 0x98F94189),
    ],
)
def test_known_answers(data: bytes, expected: int) -> None:
    assert dsa.crc32c(data) == expected


@given(
    st.binary(max_size=300),
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, INV_REF, DATA_REF, INV_REF | DATA_REF]),
    st.integers(0, 300),
)
def test_agrees_with_the_daemon_and_chains(data: bytes, seed: int, flags: int, cut: int) -> None:
    whole = dsa.crc32c(data, seed, flags)
    assert whole == dsa_crc32c([data], seed, flags)
    cut = min(cut, len(data))
    # a partial result seeds the rest: how a partial completion resumes
    assert dsa.crc32c(data[cut:], dsa.crc32c(data[:cut], seed, flags), flags) == whole


def record(status: int, done: int, crc: int | None = None) -> bytes:
    return CompletionRecord.new(status, bytes_completed=done, fault_addr=0x5000, crc_val=crc).pack()


def test_remainder_advances_addresses_and_keeps_the_crc() -> None:
    desc = dsa.memmove(0x9000, 0x1000, 0x4000, completion=0x100)
    rest = dsa.Descriptor.unpack(dsa.remainder(desc, record(dsa.DSA_COMP_PAGE_FAULT_NOBOF, 0x1800)))
    assert (rest.src_addr, rest.dst_addr, rest.xfer_size) == (0x2800, 0xA800, 0x2800)
    assert rest.completion_addr == 0x100 and rest.opcode == dsa.DsaOpcode.MEMMOVE
    crc = dsa.crcgen(0x1000, 0x4000, seed_addr=0x40, completion=0x100)
    partial = record(dsa.DSA_COMP_PAGE_FAULT_IR, 0x1000, crc=0xDEADBEEF)
    rest = dsa.Descriptor.unpack(dsa.remainder(crc, partial))
    assert (rest.src_addr, rest.xfer_size, rest.crc_seed, rest.seed_addr) == (
        0x2000,
        0x3000,
        0xDEADBEEF,
        0,
    )
    assert not rest.flags & dsa.IDXD_OP_FLAG_READ_CRC_SEED  # the seed is in the descriptor now
    cast = dsa.Descriptor.unpack(
        dsa.remainder(
            dsa.dualcast(0x10000, 0x20000, 0x1000, 0x2000),
            record(dsa.DSA_COMP_PAGE_FAULT_NOBOF | 0x80, 0x800),  # write fault bit set
        )
    )
    assert (cast.src_addr, cast.dst_addr, cast.dest2) == (0x1800, 0x10800, 0x20800)


def test_remainder_refuses_what_it_cannot_resume() -> None:
    desc = dsa.memmove(0x9000, 0x1000, 0x4000)
    with pytest.raises(ValueError, match="not a partial completion"):
        dsa.remainder(desc, record(dsa.DSA_COMP_SUCCESS, 0))
    with pytest.raises(ValueError, match="cannot be resumed"):
        dsa.remainder(dsa.batch(0x1000, 4), record(dsa.DSA_COMP_PAGE_FAULT_NOBOF, 0))
    with pytest.raises(ValueError, match="past the descriptor's size"):
        dsa.remainder(desc, record(dsa.DSA_COMP_PAGE_FAULT_NOBOF, 0x5000))
    with pytest.raises(ValueError, match="64 bytes"):
        dsa.remainder(desc[:32], record(dsa.DSA_COMP_PAGE_FAULT_NOBOF, 0))
