"""Build DSA descriptors and read completion records.

Each builder returns the 64 bytes of one descriptor, ready for SUBMIT (or a portal write).
Addresses are I/O virtual addresses in the submitter's address space (its PASID's domain).

``completion`` is the address of a 32-byte aligned completion record; when it is given the
descriptor also gets ``IDXD_OP_FLAG_CRAV | IDXD_OP_FLAG_RCR`` (a record is always written), in
addition to ``flags``. Without it, success is silent and an error becomes a software-error
event. ``int_handle`` goes with ``IDXD_OP_FLAG_RCI`` in ``flags``::

    desc = dsa.memmove(dst, src, 4096, completion=cr_addr)
    ...
    record = dsa.parse_completion(memory[cr_addr : cr_addr + 32])
    assert record.code == dsa.DSA_COMP_SUCCESS

The ``linux/idxd.h`` names (``DSA_OPCODE_*``, ``IDXD_OP_FLAG_*``, ``DSA_COMP_*``) and the
:class:`Descriptor` / :class:`CompletionRecord` types are re-exported from here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import siov_protocol.dsa as _abi
from siov_protocol.dsa import *  # noqa: F403 - the uapi names, as <linux/idxd.h> gives them
from siov_protocol.dsa import (
    DESC_STRUCT,
    DIF_BLOCK_SIZES,
    DIF_FLAG_INVERT_CRC_RESULT,
    DIF_FLAG_INVERT_CRC_SEED,
    DSA_COMP_PAGE_FAULT_IR,
    DSA_COMP_PAGE_FAULT_NOBOF,
    DSA_COMP_RECORD_SIZE,
    DSA_DESC_SIZE,
    IDXD_OP_FLAG_BYPASS_CRC_INV_REF,
    IDXD_OP_FLAG_BYPASS_DATA_REF,
    IDXD_OP_FLAG_CRAV,
    IDXD_OP_FLAG_FILL_16B,
    IDXD_OP_FLAG_RCR,
    IDXD_OP_FLAG_RDBACK_ADDR1,
    IDXD_OP_FLAG_RDBACK_ADDR2,
    IDXD_OP_FLAG_READ_CRC_SEED,
    CompletionRecord,
    DsaCompStatus,
    DsaOpcode,
)
from siov_protocol.ids import PASID_BITS, PASID_LIMIT

__all__ = [
    "apply_delta",
    "batch",
    "cflush",
    "compare",
    "compval",
    "copy_crc",
    "crc32c",
    "crcgen",
    "create_delta",
    "dif_check",
    "dif_insert",
    "dif_strip",
    "dif_tags",
    "dif_update",
    "dix_gen",
    "drain",
    "dualcast",
    "fill",
    "join_batch",
    "memmove",
    "noop",
    "parse_completion",
    "remainder",
    "status_name",
    "t10_crc16",
]
__all__ += _abi.__all__

_pack = DESC_STRUCT.pack


def _build(
    opcode: int,
    flags: int,
    completion: int | None,
    int_handle: int,
    pasid: int,
    src: int = 0,
    dst: int = 0,
    size: int = 0,
    op0: int = 0,
    op1: int = 0,
    op2: int = 0,
) -> bytes:
    if completion is not None:
        flags |= IDXD_OP_FLAG_CRAV | IDXD_OP_FLAG_RCR
    if not 0 <= flags < 1 << 24:
        raise ValueError(f"flags {flags:#x} do not fit in 24 bits")
    if not 0 <= pasid < PASID_LIMIT:
        raise ValueError(f"pasid {pasid} does not fit in {PASID_BITS} bits")
    try:
        return _pack(
            pasid,
            flags | opcode << 24,
            completion or 0,
            src,
            dst,
            size,
            int_handle,
            0,
            op0,
            op1,
            op2,
        )
    except struct.error as exc:
        raise ValueError(f"descriptor field out of range: {exc}") from None


def noop(
    *, completion: int | None = None, flags: int = 0, int_handle: int = 0, pasid: int = 0
) -> bytes:
    """A descriptor that only completes (tests fences, interrupts, completion records)."""
    return _build(DsaOpcode.NOOP, flags, completion, int_handle, pasid)


def memmove(
    dst: int,
    src: int,
    size: int,
    *,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Copy ``size`` bytes from ``src`` to ``dst``; the ranges may overlap."""
    return _build(DsaOpcode.MEMMOVE, flags, completion, int_handle, pasid, src, dst, size)


def fill(
    dst: int,
    pattern: int | bytes,
    size: int,
    *,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Fill ``size`` bytes at ``dst`` with an 8-byte pattern (an int, little-endian, or 8
    bytes), or a 16-byte pattern (16 bytes; sets ``IDXD_OP_FLAG_FILL_16B``)."""
    upper = 0
    if isinstance(pattern, bytes):
        if len(pattern) == 16:
            flags |= IDXD_OP_FLAG_FILL_16B
            upper = int.from_bytes(pattern[8:], "little")
        elif len(pattern) != 8:
            raise ValueError(f"a fill pattern is 8 or 16 bytes, got {len(pattern)}")
        lower = int.from_bytes(pattern[:8], "little")
    else:
        lower = pattern
    return _build(DsaOpcode.MEMFILL, flags, completion, int_handle, pasid, lower, dst, size, upper)


def compare(
    src1: int,
    src2: int,
    size: int,
    *,
    expected_res: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Compare two ranges: result 0 equal, 1 different (``bytes_completed`` = offset of the
    first difference). With ``IDXD_OP_FLAG_CR`` a result other than ``expected_res`` completes
    with ``DSA_COMP_SUCCESS_PRED``."""
    return _build(
        DsaOpcode.COMPARE, flags, completion, int_handle, pasid, src1, src2, size, expected_res
    )


def compval(
    src: int,
    pattern: int,
    size: int,
    *,
    expected_res: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Compare a range against a repeated 8-byte pattern."""
    return _build(
        DsaOpcode.COMPVAL, flags, completion, int_handle, pasid, src, pattern, size, expected_res
    )


def dualcast(
    dst1: int,
    dst2: int,
    src: int,
    size: int,
    *,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Copy ``src`` to two destinations whose bits 11:0 are equal."""
    return _build(DsaOpcode.DUALCAST, flags, completion, int_handle, pasid, src, dst1, size, dst2)


def _crc_flags(flags: int, seed_addr: int | None) -> int:
    return flags | IDXD_OP_FLAG_READ_CRC_SEED if seed_addr is not None else flags


def crcgen(
    src: int,
    size: int,
    *,
    seed: int = 0,
    seed_addr: int | None = None,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """CRC-32C of ``size`` bytes at ``src``, reported in ``crc_val``. ``seed_addr`` reads the
    32-bit seed from memory instead (``IDXD_OP_FLAG_READ_CRC_SEED``); ``flags`` may add
    ``IDXD_OP_FLAG_BYPASS_CRC_INV_REF`` / ``IDXD_OP_FLAG_BYPASS_DATA_REF``."""
    return _build(
        DsaOpcode.CRCGEN,
        _crc_flags(flags, seed_addr),
        completion,
        int_handle,
        pasid,
        src,
        0,
        size,
        0 if seed_addr is not None else seed,
        seed_addr or 0,
    )


def copy_crc(
    dst: int,
    src: int,
    size: int,
    *,
    seed: int = 0,
    seed_addr: int | None = None,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """MEMMOVE and CRCGEN in one: copy ``src`` to ``dst`` and report the CRC of the data."""
    return _build(
        DsaOpcode.COPY_CRC,
        _crc_flags(flags, seed_addr),
        completion,
        int_handle,
        pasid,
        src,
        dst,
        size,
        0 if seed_addr is not None else seed,
        seed_addr or 0,
    )


def create_delta(
    src1: int,
    src2: int,
    size: int,
    delta_addr: int,
    max_delta_size: int,
    *,
    expected_res_mask: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Record where ``src2`` differs from ``src1`` (8-byte words) as 10-byte entries at
    ``delta_addr``; the record's size is reported in ``delta_rec_size``."""
    return _build(
        DsaOpcode.CR_DELTA,
        flags,
        completion,
        int_handle,
        pasid,
        src1,
        src2,
        size,
        delta_addr,
        max_delta_size,
        expected_res_mask,
    )


def apply_delta(
    dst: int,
    delta_addr: int,
    delta_size: int,
    size: int,
    *,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Apply a delta record of ``delta_size`` bytes to the ``size`` bytes at ``dst``."""
    return _build(
        DsaOpcode.AP_DELTA, flags, completion, int_handle, pasid, delta_addr, dst, size, delta_size
    )


def drain(
    *,
    readback1: int | None = None,
    readback2: int | None = None,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Complete once every earlier descriptor of this WQ and PASID has completed."""
    if readback1 is not None:
        flags |= IDXD_OP_FLAG_RDBACK_ADDR1
    if readback2 is not None:
        flags |= IDXD_OP_FLAG_RDBACK_ADDR2
    return _build(
        DsaOpcode.DRAIN, flags, completion, int_handle, pasid, readback1 or 0, readback2 or 0
    )


def batch(
    desc_list_addr: int,
    count: int,
    *,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Run ``count`` descriptors stored at ``desc_list_addr`` (64-byte aligned); the record
    reports ``descs_completed``."""
    return _build(DsaOpcode.BATCH, flags, completion, int_handle, pasid, desc_list_addr, 0, count)


def join_batch(descriptors: Iterable[bytes]) -> bytes:
    """The bytes of a batch's descriptor list."""
    out = b"".join(descriptors)
    if len(out) % DSA_DESC_SIZE:
        raise ValueError("every descriptor is 64 bytes")
    return out


def cflush(
    addr: int,
    size: int,
    *,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Flush ``size`` bytes at ``addr`` from CPU caches."""
    return _build(DsaOpcode.CFLUSH, flags, completion, int_handle, pasid, 0, addr, size)


def dif_tags(ref_tag: int = 0, app_tag: int = 0, app_tag_mask: int = 0) -> int:
    """The 8 bytes of a DIF tag seed (ref u32, app mask u16, app u16) as the u64 the
    descriptor stores at @48 (source) or @56 (destination)."""
    if not (0 <= ref_tag < 1 << 32 and 0 <= app_tag < 1 << 16 and 0 <= app_tag_mask < 1 << 16):
        raise ValueError("ref_tag is 32 bits, app_tag and app_tag_mask 16 bits")
    return ref_tag | app_tag_mask << 32 | app_tag << 48


def _dif_byte(block_size: int, dif_flags: int) -> int:
    try:
        index = DIF_BLOCK_SIZES.index(block_size)
    except ValueError:
        raise ValueError(f"DIF block size is one of {DIF_BLOCK_SIZES}, got {block_size}") from None
    if dif_flags & ~(DIF_FLAG_INVERT_CRC_SEED | DIF_FLAG_INVERT_CRC_RESULT):
        raise ValueError(f"dif_flags {dif_flags:#x}: only the invert-seed/result bits")
    return index | dif_flags


def _dif_op0(src_flags: int, dest_flags: int, block_size: int, dif_flags: int) -> int:
    if not (0 <= src_flags < 256 and 0 <= dest_flags < 256):
        raise ValueError("DIF source and destination flags are one byte each")
    return src_flags | dest_flags << 8 | _dif_byte(block_size, dif_flags) << 16


def dif_check(
    src: int,
    size: int,
    *,
    block_size: int = 512,
    ref_tag: int = 0,
    app_tag: int = 0,
    app_tag_mask: int = 0,
    src_flags: int = 0,
    dif_flags: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Check the 8-byte T10 tuple after each ``block_size`` block of ``src``; ``size``
    counts data and tuples. ``ref_tag``/``app_tag`` are the first block's expected tags
    (``DIF_SRC_*`` in ``src_flags`` say how they advance and what is checked); a mismatch
    completes with ``DSA_COMP_DIF_ERR`` and ``dif_status`` bits."""
    return _build(
        DsaOpcode.DIF_CHECK,
        flags,
        completion,
        int_handle,
        pasid,
        src,
        0,
        size,
        _dif_op0(src_flags, 0, block_size, dif_flags),
        dif_tags(ref_tag, app_tag, app_tag_mask),
    )


def dif_strip(
    dst: int,
    src: int,
    size: int,
    *,
    block_size: int = 512,
    ref_tag: int = 0,
    app_tag: int = 0,
    app_tag_mask: int = 0,
    src_flags: int = 0,
    dif_flags: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Check like :func:`dif_check` and copy the data without its tuples to ``dst``."""
    return _build(
        DsaOpcode.DIF_STRP,
        flags,
        completion,
        int_handle,
        pasid,
        src,
        dst,
        size,
        _dif_op0(src_flags, 0, block_size, dif_flags),
        dif_tags(ref_tag, app_tag, app_tag_mask),
    )


def dif_insert(
    dst: int,
    src: int,
    size: int,
    *,
    block_size: int = 512,
    ref_tag: int = 0,
    app_tag: int = 0,
    app_tag_mask: int = 0,
    dest_flags: int = 0,
    dif_flags: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Copy ``size`` bytes of data (whole blocks) to ``dst`` with a generated tuple after
    each block (``dst`` takes ``size + 8 * blocks`` bytes)."""
    return _build(
        DsaOpcode.DIF_INS,
        flags,
        completion,
        int_handle,
        pasid,
        src,
        dst,
        size,
        _dif_op0(0, dest_flags, block_size, dif_flags),
        0,
        dif_tags(ref_tag, app_tag, app_tag_mask),
    )


def dif_update(
    dst: int,
    src: int,
    size: int,
    *,
    block_size: int = 512,
    src_ref_tag: int = 0,
    src_app_tag: int = 0,
    src_app_tag_mask: int = 0,
    dest_ref_tag: int = 0,
    dest_app_tag: int = 0,
    dest_app_tag_mask: int = 0,
    src_flags: int = 0,
    dest_flags: int = 0,
    dif_flags: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """Check the source tuples and copy the blocks to ``dst`` with new tuples (or fields
    passed through, ``DIF_DST_*_PASS``)."""
    return _build(
        DsaOpcode.DIF_UPDT,
        flags,
        completion,
        int_handle,
        pasid,
        src,
        dst,
        size,
        _dif_op0(src_flags, dest_flags, block_size, dif_flags),
        dif_tags(src_ref_tag, src_app_tag, src_app_tag_mask),
        dif_tags(dest_ref_tag, dest_app_tag, dest_app_tag_mask),
    )


def dix_gen(
    dst: int,
    src: int,
    size: int,
    *,
    block_size: int = 512,
    ref_tag: int = 0,
    app_tag: int = 0,
    app_tag_mask: int = 0,
    dest_flags: int = 0,
    dif_flags: int = 0,
    completion: int | None = None,
    flags: int = 0,
    int_handle: int = 0,
    pasid: int = 0,
) -> bytes:
    """DSA 2.0: generate the tuples of ``src``'s blocks into a separate buffer at ``dst``
    (8 bytes per block, DIX)."""
    return _build(
        DsaOpcode.DIX_GEN,
        flags,
        completion,
        int_handle,
        pasid,
        src,
        dst,
        size,
        _dif_op0(0, dest_flags, block_size, dif_flags),
        0,
        dif_tags(ref_tag, app_tag, app_tag_mask),
    )


def t10_crc16(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/T10-DIF (polynomial 0x8BB7, MSB first, no reflection, no final XOR), the
    guard of a DIF tuple, computed bit by bit: to check what the device reports."""
    for byte in bytes(data):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8BB7) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def parse_completion(buf: bytes | bytearray | memoryview) -> CompletionRecord:
    """Decode a 32-byte completion record (``status`` 0 means not written yet)."""
    return CompletionRecord.unpack(buf)


def status_name(status: int) -> str:
    """``DSA_COMP_SUCCESS``, ..., for a status byte (the write-fault bit is shown as
    ``|WRITE``)."""
    code = status & 0x7F
    try:
        name = "DSA_COMP_" + DsaCompStatus(code).name
    except ValueError:
        name = f"DSA_COMP_{code:#x}"
    return name + ("|WRITE" if status & 0x80 else "")


# ---- software references and resumption -----------------------------------------------------

_M32 = 0xFFFFFFFF
_BITREV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        reg = byte
        for _ in range(8):
            reg = (reg >> 1) ^ 0x82F63B78 if reg & 1 else reg >> 1
        table.append(reg)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _bitrev32(value: int) -> int:
    return int(f"{value & _M32:032b}"[::-1], 2)


def crc32c(data: bytes | bytearray | memoryview, seed: int = 0, flags: int = 0) -> int:
    """The ``crc_val`` CRCGEN (and COPY_CRC) reports for ``data``: DSA's CRC-32C (polynomial
    0x1EDC6F41, processed reflected) with its seed and bypass rules, to check a result.

    By default the register starts at ``~seed`` and the result is ``~register``: seed 0 is the
    standard CRC-32C (``crc32c(b"123456789") == 0xE3069283``) and a result seeds the next
    chunk (``crc32c(b, seed=crc32c(a)) == crc32c(a + b)``), which is how a partial
    completion resumes. ``IDXD_OP_FLAG_BYPASS_CRC_INV_REF`` bit-reverses seed and result
    instead of inverting them; ``IDXD_OP_FLAG_BYPASS_DATA_REF`` feeds each byte MSB-first
    (accel-config ``test/dsa.c``; Intel DML ``crc.cpp``). Pure Python, table-driven, written
    apart from the daemon's so it checks it: a few MB/s, meant for tests."""
    plain = not flags & IDXD_OP_FLAG_BYPASS_CRC_INV_REF
    reg = (~seed & _M32) if plain else _bitrev32(seed)
    raw = bytes(data)
    if flags & IDXD_OP_FLAG_BYPASS_DATA_REF:
        raw = raw.translate(_BITREV8)
    table = _CRC32C_TABLE
    for byte in raw:
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return (~reg & _M32) if plain else _bitrev32(reg)


#: Where each resumable opcode keeps its addresses (descriptor offsets advanced by
#: ``bytes_completed``): DML partial_completion.hpp, accel-config test/dsa_prep.c dsa_reprep_*.
_ADVANCE: dict[int, tuple[int, ...]] = {
    DsaOpcode.MEMMOVE: (16, 24),
    DsaOpcode.MEMFILL: (24,),
    DsaOpcode.COMPARE: (16, 24),
    DsaOpcode.COMPVAL: (16,),
    DsaOpcode.CR_DELTA: (16, 24),
    DsaOpcode.DUALCAST: (16, 24, 40),
    DsaOpcode.CRCGEN: (16,),
    DsaOpcode.COPY_CRC: (16, 24),
    DsaOpcode.CFLUSH: (16,),
}


def remainder(descriptor: bytes, record: bytes | bytearray | memoryview) -> bytes:
    """The descriptor that finishes what ``descriptor`` began, from its completion record
    after a partial completion (``DSA_COMP_PAGE_FAULT_NOBOF`` or ``PAGE_FAULT_IR``), as DML
    resumes for you: addresses advance and the size shrinks by ``bytes_completed``; CRCGEN
    and COPY_CRC continue from ``crc_val`` as their seed (and no longer read it from
    ``seed_addr``); CREATE_DELTA appends after the ``delta_rec_size`` bytes already written
    (the new record's offsets count from the resumed position). Map the faulting page
    (``fault_addr``) first, then submit the result with the same completion address.

    ``ValueError`` for a record that is not a partial completion, or an opcode with no
    byte-wise resumption here (BATCH: resume from its descriptors' own records; the DIF
    family, APPLY_DELTA, NOOP, DRAIN)."""
    if len(descriptor) != DSA_DESC_SIZE:
        raise ValueError(f"a descriptor is {DSA_DESC_SIZE} bytes, got {len(descriptor)}")
    done = CompletionRecord.unpack(bytes(record[:DSA_COMP_RECORD_SIZE]))
    if done.code not in (DSA_COMP_PAGE_FAULT_NOBOF, DSA_COMP_PAGE_FAULT_IR):
        raise ValueError(f"not a partial completion: status {status_name(done.code)}")
    out = bytearray(descriptor)
    flags_op = int.from_bytes(out[4:8], "little")
    opcode = flags_op >> 24
    fields = _ADVANCE.get(opcode)
    if fields is None:
        raise ValueError(f"opcode {opcode:#x} cannot be resumed byte-wise")
    n = done.bytes_completed
    size = int.from_bytes(out[32:36], "little")
    if n > size:
        raise ValueError(f"bytes_completed {n} is past the descriptor's size {size}")
    for offset in fields:
        value = int.from_bytes(out[offset : offset + 8], "little") + n
        out[offset : offset + 8] = (value & (1 << 64) - 1).to_bytes(8, "little")
    out[32:36] = (size - n).to_bytes(4, "little")
    if opcode in (DsaOpcode.CRCGEN, DsaOpcode.COPY_CRC):
        out[40:44] = (done.crc_val & _M32).to_bytes(4, "little")
        out[48:56] = bytes(8)
        flags_op &= ~IDXD_OP_FLAG_READ_CRC_SEED
        out[4:8] = flags_op.to_bytes(4, "little")
    elif opcode == DsaOpcode.CR_DELTA:
        written = done.delta_rec_size
        delta = int.from_bytes(out[40:48], "little") + written
        out[40:48] = delta.to_bytes(8, "little")
        room = int.from_bytes(out[48:52], "little")
        out[48:52] = max(room - written, 0).to_bytes(4, "little")
    return bytes(out)
