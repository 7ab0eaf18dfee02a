"""The checks a descriptor passes before its operation runs.

Per opcode: the op-specific flag bits it defines, whether it takes CR (check result), and which
bits of its fields are reserved. A flag outside those is ``INVALID_FLAGS`` (the offending bits
go to ``invalid_flags``); a nonzero reserved field is ``NOZERO_RESERVE``.
"""

from __future__ import annotations

from typing import Final

from siov_protocol.dsa import (
    IDXD_OP_FLAG_BYPASS_CRC_INV_REF,
    IDXD_OP_FLAG_BYPASS_DATA_REF,
    IDXD_OP_FLAG_COMMON_MASK,
    IDXD_OP_FLAG_CR,
    IDXD_OP_FLAG_CRAV,
    IDXD_OP_FLAG_DEST2_STS,
    IDXD_OP_FLAG_FILL_16B,
    IDXD_OP_FLAG_RCI,
    IDXD_OP_FLAG_RCR,
    IDXD_OP_FLAG_RDBACK_ADDR1,
    IDXD_OP_FLAG_RDBACK_ADDR2,
    IDXD_OP_FLAG_READ_CRC_SEED,
    DsaCompStatus,
    DsaOpcode,
)
from siovd.model.accel.results import Desc, Res, finished
from siovd.model.accel.wq import WorkItem

ALL: Final = (1 << 64) - 1
HI32: Final = ALL ^ 0xFFFFFFFF
U32_ALL: Final = 0xFFFFFFFF
# The defined bits of the DIF flag bytes at @40, @41, @42, in the u64 at @40.
_SRC_FLAGS: Final = 0xFF
_DST_FLAGS: Final = 0xF8 << 8
_DIF_FLAGS: Final = 0x0F << 16


# For each opcode: which op-specific flags it accepts, whether it takes CR (check result), and
# the bits of (@16, @24, @32, op@40, op@48, op@56) that are reserved (must be zero), with the
# flags that turn a reserved field into a used one.
Spec = tuple[int, bool, tuple[int, int, int, int, int, int], tuple[tuple[int, int], ...]]

SPECS: Final[dict[int, Spec]] = {
    DsaOpcode.NOOP: (0, False, (ALL, ALL, U32_ALL, ALL, ALL, ALL), ()),
    DsaOpcode.BATCH: (0, False, (0, ALL, 0, ALL, ALL, ALL), ()),
    DsaOpcode.DRAIN: (
        IDXD_OP_FLAG_RDBACK_ADDR1 | IDXD_OP_FLAG_RDBACK_ADDR2,
        False,
        (ALL, ALL, U32_ALL, ALL, ALL, ALL),
        ((IDXD_OP_FLAG_RDBACK_ADDR1, 0), (IDXD_OP_FLAG_RDBACK_ADDR2, 1)),
    ),
    DsaOpcode.MEMMOVE: (0, False, (0, 0, 0, ALL, ALL, ALL), ()),
    DsaOpcode.MEMFILL: (
        IDXD_OP_FLAG_FILL_16B,
        False,
        (0, 0, 0, ALL, ALL, ALL),
        ((IDXD_OP_FLAG_FILL_16B, 3),),
    ),
    DsaOpcode.COMPARE: (0, True, (0, 0, 0, ALL ^ 0xFF, ALL, ALL), ()),
    DsaOpcode.COMPVAL: (0, True, (0, 0, 0, ALL ^ 0xFF, ALL, ALL), ()),
    DsaOpcode.CR_DELTA: (0, True, (0, 0, 0, 0, HI32, ALL ^ 0xFF), ()),
    DsaOpcode.AP_DELTA: (0, False, (0, 0, 0, HI32, ALL, ALL), ()),
    DsaOpcode.DUALCAST: (IDXD_OP_FLAG_DEST2_STS, False, (0, 0, 0, 0, ALL, ALL), ()),
    DsaOpcode.CRCGEN: (
        IDXD_OP_FLAG_READ_CRC_SEED | IDXD_OP_FLAG_BYPASS_CRC_INV_REF | IDXD_OP_FLAG_BYPASS_DATA_REF,
        False,
        (0, ALL, 0, HI32, ALL, ALL),
        ((IDXD_OP_FLAG_READ_CRC_SEED, 4),),
    ),
    DsaOpcode.COPY_CRC: (
        IDXD_OP_FLAG_READ_CRC_SEED | IDXD_OP_FLAG_BYPASS_CRC_INV_REF | IDXD_OP_FLAG_BYPASS_DATA_REF,
        False,
        (0, 0, 0, HI32, ALL, ALL),
        ((IDXD_OP_FLAG_READ_CRC_SEED, 4),),
    ),
    DsaOpcode.CFLUSH: (0, False, (ALL, 0, 0, ALL, ALL, ALL), ()),
    # DIF (siovd.model.accel.dif): src flags @40, dest flags @41 (bits 2:0 reserved), dif
    # flags @42 (bits 7:4 reserved), source tags @48, destination tags @56 (linux/idxd.h).
    DsaOpcode.DIF_CHECK: (0, False, (0, ALL, 0, ALL ^ _SRC_FLAGS ^ _DIF_FLAGS, 0, ALL), ()),
    DsaOpcode.DIF_STRP: (0, False, (0, 0, 0, ALL ^ _SRC_FLAGS ^ _DIF_FLAGS, 0, ALL), ()),
    DsaOpcode.DIF_INS: (0, False, (0, 0, 0, ALL ^ _DST_FLAGS ^ _DIF_FLAGS, ALL, 0), ()),
    DsaOpcode.DIX_GEN: (0, False, (0, 0, 0, ALL ^ _DST_FLAGS ^ _DIF_FLAGS, ALL, 0), ()),
    DsaOpcode.DIF_UPDT: (
        0,
        False,
        (0, 0, 0, ALL ^ _SRC_FLAGS ^ _DST_FLAGS ^ _DIF_FLAGS, 0, 0),
        (),
    ),
}
# Operations whose @32 field is a transfer size checked against the WQ's max_transfer_size.
SIZED: Final = frozenset(
    int(op) for op in SPECS if op not in (DsaOpcode.NOOP, DsaOpcode.BATCH, DsaOpcode.DRAIN)
)


def validate(item: WorkItem, desc: Desc, opcode: int, in_batch: bool) -> Res | None:
    """The checks every descriptor passes before its operation runs, in the order the
    status codes are reported here."""
    flags = desc[1] & 0xFFFFFF
    if flags & IDXD_OP_FLAG_CRAV and desc[2] & 31:
        return finished(DsaCompStatus.CRA_ALIGN)
    spec = SPECS.get(opcode)
    wq = item.wq
    if spec is None or not (wq.op_config >> opcode) & 1 or (in_batch and opcode == DsaOpcode.BATCH):
        return finished(DsaCompStatus.BAD_OPCODE)
    opspec, takes_cr, reserved, unreserve = spec
    invalid = flags & ~(IDXD_OP_FLAG_COMMON_MASK | opspec)
    if flags & IDXD_OP_FLAG_CR and not takes_cr:
        invalid |= IDXD_OP_FLAG_CR
    if flags & IDXD_OP_FLAG_RCR and not flags & IDXD_OP_FLAG_CRAV:
        invalid |= IDXD_OP_FLAG_RCR
    if invalid:
        return finished(DsaCompStatus.INVALID_FLAGS, word=invalid)
    if desc[7]:
        return finished(DsaCompStatus.NOZERO_RESERVE)
    if unreserve:
        masks = list(reserved)
        for flag, index in unreserve:
            if flags & flag:
                masks[index] = 0
        reserved = (masks[0], masks[1], masks[2], masks[3], masks[4], masks[5])
    if (
        desc[3] & reserved[0]
        or desc[4] & reserved[1]
        or desc[5] & reserved[2]
        or desc[8] & reserved[3]
        or desc[9] & reserved[4]
        or desc[10] & reserved[5]
    ):
        return finished(DsaCompStatus.NOZERO_RESERVE)
    if flags & IDXD_OP_FLAG_RCI and item.irq_count is not None and desc[6] >= item.irq_count:
        return finished(DsaCompStatus.INT_HANDLE_INVAL)
    if opcode in SIZED and desc[5] > wq.max_transfer_size:
        return finished(DsaCompStatus.XFER_ERANGE)
    return None
