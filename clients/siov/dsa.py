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
    DSA_DESC_SIZE,
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

__all__ = [
    "apply_delta",
    "batch",
    "cflush",
    "compare",
    "compval",
    "copy_crc",
    "crcgen",
    "create_delta",
    "drain",
    "dualcast",
    "fill",
    "join_batch",
    "memmove",
    "noop",
    "parse_completion",
    "status_name",
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
    if not 0 <= pasid < 1 << 20:
        raise ValueError(f"pasid {pasid} does not fit in 20 bits")
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
