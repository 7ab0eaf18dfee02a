"""The DSA descriptor and completion-record ABI, byte for byte.

This is siov's "uapi": the 64-byte work descriptor (``struct dsa_hw_desc``) and the 32-byte
completion record (``struct dsa_completion_record``) of Linux ``include/uapi/linux/idxd.h``,
with the same opcode numbers, flag bits and status codes and the same names, so code written
against ``linux/idxd.h`` reads the same here. Nothing in this module does I/O.

The precompiled :data:`DESC_STRUCT` and :data:`COMP_STRUCT` are the fast paths: the executor
decodes and encodes with them directly; :class:`Descriptor` and :class:`CompletionRecord` are the
typed views for everything else (SDK, tests, logs).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from .ids import PASID_BITS, PASID_MAX

__all__ = [
    "COMP_FIELD_OFFSETS",
    "COMP_STRUCT",
    "DESC_FIELD_OFFSETS",
    "DESC_STRUCT",
    "DIF_BLOCK_SIZES",
    "DIF_DST_APP_TAG_PASS",
    "DIF_DST_FIXED_REF_TAG",
    "DIF_DST_GUARD_PASS",
    "DIF_DST_INC_APP_TAG",
    "DIF_DST_REF_TAG_PASS",
    "DIF_FLAG_BLOCK_512",
    "DIF_FLAG_BLOCK_520",
    "DIF_FLAG_BLOCK_4096",
    "DIF_FLAG_BLOCK_4104",
    "DIF_FLAG_INVERT_CRC_RESULT",
    "DIF_FLAG_INVERT_CRC_SEED",
    "DIF_SRC_ALL_F_DETECT",
    "DIF_SRC_ALL_F_ERROR",
    "DIF_SRC_APP_REF_TAG_F_DETECT",
    "DIF_SRC_APP_TAG_F_DETECT",
    "DIF_SRC_FIXED_REF_TAG",
    "DIF_SRC_GUARD_CHECK_DISABLE",
    "DIF_SRC_INC_APP_TAG",
    "DIF_SRC_REF_TAG_CHECK_DISABLE",
    "DIF_STATUS_ALL_F",
    "DIF_STATUS_APP_TAG",
    "DIF_STATUS_GUARD",
    "DIF_STATUS_REF_TAG",
    "DSA_COMP_ADDR_ALIGN",
    "DSA_COMP_BAD_OPCODE",
    "DSA_COMP_BATCH_EVL_ERR",
    "DSA_COMP_BATCH_FAIL",
    "DSA_COMP_BATCH_PAGE_FAULT",
    "DSA_COMP_CRA_ALIGN",
    "DSA_COMP_CRA_XLAT",
    "DSA_COMP_DCAST_ERR",
    "DSA_COMP_DESCLIST_ALIGN",
    "DSA_COMP_DESC_CNT_ERANGE",
    "DSA_COMP_DIF_ERR",
    "DSA_COMP_DRAIN_EVL",
    "DSA_COMP_DR_ERANGE",
    "DSA_COMP_DR_OFFSET_ERANGE",
    "DSA_COMP_DR_OFFSET_NOINC",
    "DSA_COMP_HW_ERR1",
    "DSA_COMP_HW_ERR_DRB",
    "DSA_COMP_INT_HANDLE_INVAL",
    "DSA_COMP_INVALID_FLAGS",
    "DSA_COMP_NONE",
    "DSA_COMP_NOZERO_RESERVE",
    "DSA_COMP_OVERLAP_BUFFERS",
    "DSA_COMP_PAGE_FAULT_IR",
    "DSA_COMP_PAGE_FAULT_NOBOF",
    "DSA_COMP_PFAULT_RDBA",
    "DSA_COMP_PRIV_BAD",
    "DSA_COMP_RECORD_ALIGN",
    "DSA_COMP_RECORD_SIZE",
    "DSA_COMP_STATUS",
    "DSA_COMP_STATUS_MASK",
    "DSA_COMP_STATUS_WRITE",
    "DSA_COMP_SUCCESS",
    "DSA_COMP_SUCCESS_PRED",
    "DSA_COMP_TRAFFIC_CLASS_CONF",
    "DSA_COMP_TRANSLATION_FAIL",
    "DSA_COMP_XFER_ERANGE",
    "DSA_DESC_LIST_ALIGN",
    "DSA_DESC_SIZE",
    "DSA_OPCODE_AP_DELTA",
    "DSA_OPCODE_BATCH",
    "DSA_OPCODE_CFLUSH",
    "DSA_OPCODE_COMPARE",
    "DSA_OPCODE_COMPVAL",
    "DSA_OPCODE_COPY_CRC",
    "DSA_OPCODE_CRCGEN",
    "DSA_OPCODE_CR_DELTA",
    "DSA_OPCODE_DIF_CHECK",
    "DSA_OPCODE_DIF_INS",
    "DSA_OPCODE_DIF_STRP",
    "DSA_OPCODE_DIF_UPDT",
    "DSA_OPCODE_DIX_GEN",
    "DSA_OPCODE_DRAIN",
    "DSA_OPCODE_DUALCAST",
    "DSA_OPCODE_MEMFILL",
    "DSA_OPCODE_MEMMOVE",
    "DSA_OPCODE_NOOP",
    "DSA_OPCODE_TRANSL_FETCH",
    "IDXD_OP_FLAG_ADDR1_TCS",
    "IDXD_OP_FLAG_ADDR2_TCS",
    "IDXD_OP_FLAG_ADDR3_TCS",
    "IDXD_OP_FLAG_BOF",
    "IDXD_OP_FLAG_BYPASS_CRC_INV_REF",
    "IDXD_OP_FLAG_BYPASS_DATA_REF",
    "IDXD_OP_FLAG_CC",
    "IDXD_OP_FLAG_COMMON_MASK",
    "IDXD_OP_FLAG_CR",
    "IDXD_OP_FLAG_CRAV",
    "IDXD_OP_FLAG_CRSTS",
    "IDXD_OP_FLAG_CR_TCS",
    "IDXD_OP_FLAG_DEST2_STS",
    "IDXD_OP_FLAG_DRDBK",
    "IDXD_OP_FLAG_DSTS",
    "IDXD_OP_FLAG_FENCE",
    "IDXD_OP_FLAG_FILL_16B",
    "IDXD_OP_FLAG_OPSPEC_MASK",
    "IDXD_OP_FLAG_RCI",
    "IDXD_OP_FLAG_RCR",
    "IDXD_OP_FLAG_RDBACK_ADDR1",
    "IDXD_OP_FLAG_RDBACK_ADDR2",
    "IDXD_OP_FLAG_READ_CRC_SEED",
    "IDXD_OP_FLAG_STORD",
    "CompletionRecord",
    "Descriptor",
    "DsaCompStatus",
    "DsaOpcode",
]

DSA_DESC_SIZE: Final = 64
DSA_COMP_RECORD_SIZE: Final = 32
#: Completion records must be 32-byte aligned (else status 0x1b).
DSA_COMP_RECORD_ALIGN: Final = 32
#: A batch's descriptor list must be 64-byte aligned (else status 0x18).
DSA_DESC_LIST_ALIGN: Final = 64

# ---------------------------------------------------------------------------------------------
# Descriptor flags, bits 15:0 of the 24-bit flags field (uapi names).

IDXD_OP_FLAG_FENCE: Final = 0x0001
IDXD_OP_FLAG_BOF: Final = 0x0002
IDXD_OP_FLAG_CRAV: Final = 0x0004
IDXD_OP_FLAG_RCR: Final = 0x0008
IDXD_OP_FLAG_RCI: Final = 0x0010
IDXD_OP_FLAG_CRSTS: Final = 0x0020
IDXD_OP_FLAG_CR: Final = 0x0080
IDXD_OP_FLAG_CC: Final = 0x0100
IDXD_OP_FLAG_ADDR1_TCS: Final = 0x0200
IDXD_OP_FLAG_ADDR2_TCS: Final = 0x0400
IDXD_OP_FLAG_ADDR3_TCS: Final = 0x0800
IDXD_OP_FLAG_CR_TCS: Final = 0x1000
IDXD_OP_FLAG_STORD: Final = 0x2000
IDXD_OP_FLAG_DRDBK: Final = 0x4000
IDXD_OP_FLAG_DSTS: Final = 0x8000

# Operation-specific flags, bits 23:16. The same bit means different things per opcode.
# CRCGEN / COPY_CRC (accel-config test/dsa.h; DML specific_flags.hpp):
IDXD_OP_FLAG_READ_CRC_SEED: Final = 0x010000
IDXD_OP_FLAG_BYPASS_CRC_INV_REF: Final = 0x020000
IDXD_OP_FLAG_BYPASS_DATA_REF: Final = 0x040000
# DUALCAST: steering-tag selector for destination 2 (accepted, no effect in siov).
IDXD_OP_FLAG_DEST2_STS: Final = 0x010000
# DRAIN: readback address 1 (@16) / 2 (@24) valid (DML specific_flags.hpp).
IDXD_OP_FLAG_RDBACK_ADDR1: Final = 0x010000
IDXD_OP_FLAG_RDBACK_ADDR2: Final = 0x020000
# MEMFILL: use the 16-byte pattern (pattern_lower @16, pattern_upper @40). DSA 2.0 adds the
# 16-byte fill; the spec that names its flag bit is not public, so siov assigns bit 16.
IDXD_OP_FLAG_FILL_16B: Final = 0x010000

# T10 DIF (DIF_CHECK, DIF_INS, DIF_STRP, DIF_UPDT, DIX_GEN). ``dif_flags`` byte @42: bits 1:0
# the block size, bit 2 CRC seed 0xFFFF, bit 3 invert the CRC (DML specific_flags.hpp).
DIF_FLAG_BLOCK_512: Final = 0
DIF_FLAG_BLOCK_520: Final = 1
DIF_FLAG_BLOCK_4096: Final = 2
DIF_FLAG_BLOCK_4104: Final = 3
DIF_FLAG_INVERT_CRC_SEED: Final = 0x04
DIF_FLAG_INVERT_CRC_RESULT: Final = 0x08
#: Protected block size per value of ``dif_flags`` bits 1:0.
DIF_BLOCK_SIZES: Final = (512, 520, 4096, 4104)
# ``src_dif_flags`` byte @40 (DIF_CHECK, DIF_STRP, DIF_UPDT source).
DIF_SRC_ALL_F_ERROR: Final = 0x01
DIF_SRC_ALL_F_DETECT: Final = 0x02
DIF_SRC_APP_TAG_F_DETECT: Final = 0x04
DIF_SRC_APP_REF_TAG_F_DETECT: Final = 0x08
DIF_SRC_INC_APP_TAG: Final = 0x10
DIF_SRC_GUARD_CHECK_DISABLE: Final = 0x20
DIF_SRC_REF_TAG_CHECK_DISABLE: Final = 0x40
DIF_SRC_FIXED_REF_TAG: Final = 0x80
# ``dest_dif_flags`` byte @41 (DIF_INS, DIF_UPDT, DIX_GEN); bits 2:0 are reserved.
DIF_DST_APP_TAG_PASS: Final = 0x08
DIF_DST_INC_APP_TAG: Final = 0x10
DIF_DST_GUARD_PASS: Final = 0x20
DIF_DST_REF_TAG_PASS: Final = 0x40
DIF_DST_FIXED_REF_TAG: Final = 0x80
# ``dif_status`` (the result byte) of a DSA_COMP_DIF_ERR completion (DML dmldefs.h).
DIF_STATUS_GUARD: Final = 0x01
DIF_STATUS_APP_TAG: Final = 0x02
DIF_STATUS_REF_TAG: Final = 0x04
DIF_STATUS_ALL_F: Final = 0x08

#: The common flag bits a descriptor may carry (bit 6 is reserved).
IDXD_OP_FLAG_COMMON_MASK: Final = 0xFFBF
IDXD_OP_FLAG_OPSPEC_MASK: Final = 0xFF0000


class DsaOpcode(enum.IntEnum):
    """``enum dsa_opcode``; each member is also exported as ``DSA_OPCODE_<NAME>``."""

    NOOP = 0x00
    BATCH = 0x01
    DRAIN = 0x02
    MEMMOVE = 0x03
    MEMFILL = 0x04
    COMPARE = 0x05
    COMPVAL = 0x06
    CR_DELTA = 0x07
    AP_DELTA = 0x08
    DUALCAST = 0x09
    TRANSL_FETCH = 0x0A
    CRCGEN = 0x10
    COPY_CRC = 0x11
    DIF_CHECK = 0x12
    DIF_INS = 0x13
    DIF_STRP = 0x14
    DIF_UPDT = 0x15
    DIX_GEN = 0x17
    CFLUSH = 0x20


DSA_OPCODE_NOOP: Final = DsaOpcode.NOOP
DSA_OPCODE_BATCH: Final = DsaOpcode.BATCH
DSA_OPCODE_DRAIN: Final = DsaOpcode.DRAIN
DSA_OPCODE_MEMMOVE: Final = DsaOpcode.MEMMOVE
DSA_OPCODE_MEMFILL: Final = DsaOpcode.MEMFILL
DSA_OPCODE_COMPARE: Final = DsaOpcode.COMPARE
DSA_OPCODE_COMPVAL: Final = DsaOpcode.COMPVAL
DSA_OPCODE_CR_DELTA: Final = DsaOpcode.CR_DELTA
DSA_OPCODE_AP_DELTA: Final = DsaOpcode.AP_DELTA
DSA_OPCODE_DUALCAST: Final = DsaOpcode.DUALCAST
DSA_OPCODE_TRANSL_FETCH: Final = DsaOpcode.TRANSL_FETCH
DSA_OPCODE_CRCGEN: Final = DsaOpcode.CRCGEN
DSA_OPCODE_COPY_CRC: Final = DsaOpcode.COPY_CRC
DSA_OPCODE_DIF_CHECK: Final = DsaOpcode.DIF_CHECK
DSA_OPCODE_DIF_INS: Final = DsaOpcode.DIF_INS
DSA_OPCODE_DIF_STRP: Final = DsaOpcode.DIF_STRP
DSA_OPCODE_DIF_UPDT: Final = DsaOpcode.DIF_UPDT
DSA_OPCODE_DIX_GEN: Final = DsaOpcode.DIX_GEN
DSA_OPCODE_CFLUSH: Final = DsaOpcode.CFLUSH


class DsaCompStatus(enum.IntEnum):
    """``enum dsa_completion_status``; each member is also exported as ``DSA_COMP_<NAME>``."""

    NONE = 0x00
    SUCCESS = 0x01
    SUCCESS_PRED = 0x02
    PAGE_FAULT_NOBOF = 0x03
    PAGE_FAULT_IR = 0x04
    BATCH_FAIL = 0x05
    BATCH_PAGE_FAULT = 0x06
    DR_OFFSET_NOINC = 0x07
    DR_OFFSET_ERANGE = 0x08
    DIF_ERR = 0x09
    BAD_OPCODE = 0x10
    INVALID_FLAGS = 0x11
    NOZERO_RESERVE = 0x12
    XFER_ERANGE = 0x13
    DESC_CNT_ERANGE = 0x14
    DR_ERANGE = 0x15
    OVERLAP_BUFFERS = 0x16
    DCAST_ERR = 0x17
    DESCLIST_ALIGN = 0x18
    INT_HANDLE_INVAL = 0x19
    CRA_XLAT = 0x1A
    CRA_ALIGN = 0x1B
    ADDR_ALIGN = 0x1C
    PRIV_BAD = 0x1D
    TRAFFIC_CLASS_CONF = 0x1E
    PFAULT_RDBA = 0x1F
    HW_ERR1 = 0x20
    HW_ERR_DRB = 0x21
    TRANSLATION_FAIL = 0x22
    DRAIN_EVL = 0x26
    BATCH_EVL_ERR = 0x27


DSA_COMP_NONE: Final = DsaCompStatus.NONE
DSA_COMP_SUCCESS: Final = DsaCompStatus.SUCCESS
DSA_COMP_SUCCESS_PRED: Final = DsaCompStatus.SUCCESS_PRED
DSA_COMP_PAGE_FAULT_NOBOF: Final = DsaCompStatus.PAGE_FAULT_NOBOF
DSA_COMP_PAGE_FAULT_IR: Final = DsaCompStatus.PAGE_FAULT_IR
DSA_COMP_BATCH_FAIL: Final = DsaCompStatus.BATCH_FAIL
DSA_COMP_BATCH_PAGE_FAULT: Final = DsaCompStatus.BATCH_PAGE_FAULT
DSA_COMP_DR_OFFSET_NOINC: Final = DsaCompStatus.DR_OFFSET_NOINC
DSA_COMP_DR_OFFSET_ERANGE: Final = DsaCompStatus.DR_OFFSET_ERANGE
DSA_COMP_DIF_ERR: Final = DsaCompStatus.DIF_ERR
DSA_COMP_BAD_OPCODE: Final = DsaCompStatus.BAD_OPCODE
DSA_COMP_INVALID_FLAGS: Final = DsaCompStatus.INVALID_FLAGS
DSA_COMP_NOZERO_RESERVE: Final = DsaCompStatus.NOZERO_RESERVE
DSA_COMP_XFER_ERANGE: Final = DsaCompStatus.XFER_ERANGE
DSA_COMP_DESC_CNT_ERANGE: Final = DsaCompStatus.DESC_CNT_ERANGE
DSA_COMP_DR_ERANGE: Final = DsaCompStatus.DR_ERANGE
DSA_COMP_OVERLAP_BUFFERS: Final = DsaCompStatus.OVERLAP_BUFFERS
DSA_COMP_DCAST_ERR: Final = DsaCompStatus.DCAST_ERR
DSA_COMP_DESCLIST_ALIGN: Final = DsaCompStatus.DESCLIST_ALIGN
DSA_COMP_INT_HANDLE_INVAL: Final = DsaCompStatus.INT_HANDLE_INVAL
DSA_COMP_CRA_XLAT: Final = DsaCompStatus.CRA_XLAT
DSA_COMP_CRA_ALIGN: Final = DsaCompStatus.CRA_ALIGN
DSA_COMP_ADDR_ALIGN: Final = DsaCompStatus.ADDR_ALIGN
DSA_COMP_PRIV_BAD: Final = DsaCompStatus.PRIV_BAD
DSA_COMP_TRAFFIC_CLASS_CONF: Final = DsaCompStatus.TRAFFIC_CLASS_CONF
DSA_COMP_PFAULT_RDBA: Final = DsaCompStatus.PFAULT_RDBA
DSA_COMP_HW_ERR1: Final = DsaCompStatus.HW_ERR1
DSA_COMP_HW_ERR_DRB: Final = DsaCompStatus.HW_ERR_DRB
DSA_COMP_TRANSLATION_FAIL: Final = DsaCompStatus.TRANSLATION_FAIL
DSA_COMP_DRAIN_EVL: Final = DsaCompStatus.DRAIN_EVL
DSA_COMP_BATCH_EVL_ERR: Final = DsaCompStatus.BATCH_EVL_ERR

DSA_COMP_STATUS_MASK: Final = 0x7F
#: Set in the status byte when the page fault that ended the operation was on a write.
DSA_COMP_STATUS_WRITE: Final = 0x80


def DSA_COMP_STATUS(status: int) -> int:
    """The status code without the write-fault bit, as the uapi macro computes it."""
    return status & DSA_COMP_STATUS_MASK


# ---------------------------------------------------------------------------------------------
# Wire layouts.

#: The descriptor as eleven integers: header (pasid:20, rsvd:11, priv:1), flags:24 | opcode << 24,
#: completion_addr, the @16 union, the @24 union, the @32 union, int_handle, rsvd1, and the
#: op-specific area as three u64 words at 40, 48 and 56.
DESC_STRUCT: Final = struct.Struct("<IIQQQIHHQQQ")
#: The completion record as eight integers: status, result, fault_info, rsvd, bytes_completed,
#: fault_addr, and the op-specific area as two u64 words at 16 and 24.
COMP_STRUCT: Final = struct.Struct("<BBBBIQQQ")

_DESC_HEAD = struct.Struct("<IIQQQIHH")
_COMP_HEAD = struct.Struct("<BBBBIQ")

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# Union members of the descriptor: name -> (byte offset, struct). Offsets are those of
# struct dsa_hw_desc; the op-specific ones are relative to the start of the descriptor.
_DESC_ALIASES: Final[dict[str, tuple[int, struct.Struct]]] = {
    # @16
    "src_addr": (16, _U64),
    "rdback_addr": (16, _U64),
    "pattern": (16, _U64),
    "desc_list_addr": (16, _U64),
    "pattern_lower": (16, _U64),
    "transl_fetch_addr": (16, _U64),
    # @24
    "dst_addr": (24, _U64),
    "rdback_addr2": (24, _U64),
    "src2_addr": (24, _U64),
    "comp_pattern": (24, _U64),
    # @32
    "xfer_size": (32, _U32),
    "desc_count": (32, _U32),
    "region_size": (32, _U32),
    # op-specific, @40..63
    "expected_res": (40, _U8),
    "delta_addr": (40, _U64),
    "max_delta_size": (48, _U32),
    "expected_res_mask": (56, _U8),
    "delta_rec_size": (40, _U32),
    "dest2": (40, _U64),
    "crc_seed": (40, _U32),
    "seed_addr": (48, _U64),
    "pattern_upper": (40, _U64),
    "region_stride": (48, _U32),
    # DIF check / strip
    "src_dif_flags": (40, _U8),
    "dif_chk_flags": (42, _U8),
    "chk_ref_tag_seed": (48, _U32),
    "chk_app_tag_mask": (52, _U16),
    "chk_app_tag_seed": (54, _U16),
    # DIF insert
    "dest_dif_flag": (41, _U8),
    "dif_ins_flags": (42, _U8),
    "ins_ref_tag_seed": (56, _U32),
    "ins_app_tag_mask": (60, _U16),
    "ins_app_tag_seed": (62, _U16),
    # DIF update
    "src_upd_flags": (40, _U8),
    "upd_dest_flags": (41, _U8),
    "dif_upd_flags": (42, _U8),
    "src_ref_tag_seed": (48, _U32),
    "src_app_tag_mask": (52, _U16),
    "src_app_tag_seed": (54, _U16),
    "dest_ref_tag_seed": (56, _U32),
    "dest_app_tag_mask": (60, _U16),
    "dest_app_tag_seed": (62, _U16),
    # DIX generate
    "dest_dif_flags": (41, _U8),
    "dif_flags": (42, _U8),
    "ref_tag_seed": (56, _U32),
    "app_tag_mask": (60, _U16),
    "app_tag_seed": (62, _U16),
}

# Fields stored directly in the dataclass, with their width in bits.
_DESC_PLAIN: Final[dict[str, int]] = {
    "pasid": 20,
    "rsvd": 11,
    "priv": 1,
    "flags": 24,
    "opcode": 8,
    "completion_addr": 64,
    "int_handle": 16,
    "rsvd1": 16,
}

_COMP_ALIASES: Final[dict[str, tuple[int, struct.Struct]]] = {
    "delta_rec_size": (16, _U32),
    "crc_val": (16, _U64),
    # DIF check & strip
    "dif_chk_ref_tag": (16, _U32),
    "dif_chk_app_tag_mask": (20, _U16),
    "dif_chk_app_tag": (22, _U16),
    # DIF insert
    "dif_ins_ref_tag": (24, _U32),
    "dif_ins_app_tag_mask": (28, _U16),
    "dif_ins_app_tag": (30, _U16),
    # DIF update
    "dif_upd_src_ref_tag": (16, _U32),
    "dif_upd_src_app_tag_mask": (20, _U16),
    "dif_upd_src_app_tag": (22, _U16),
    "dif_upd_dest_ref_tag": (24, _U32),
    "dif_upd_dest_app_tag_mask": (28, _U16),
    "dif_upd_dest_app_tag": (30, _U16),
    # DIX generate
    "dix_ref_tag": (24, _U32),
    "dix_app_tag_mask": (28, _U16),
    "dix_app_tag": (30, _U16),
}


def _check_width(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value:#x} does not fit in {bits} bits")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One 64-byte work descriptor, ``struct dsa_hw_desc``.

    The dataclass stores the layout's fixed fields and the raw bytes of the three unions that
    depend on the opcode; every union member of ``idxd.h`` is a read-only property at its real
    offset (``src_addr``, ``pattern``, ``desc_list_addr``, ``dst_addr``, ``src2_addr``,
    ``comp_pattern``, ``xfer_size``, ``desc_count``, ``expected_res``, ``delta_addr``,
    ``max_delta_size``, ``expected_res_mask``, ``delta_rec_size``, ``dest2``, ``crc_seed``,
    ``seed_addr``, ``pattern_upper``, ...). Build one with :meth:`new`, which takes those names.
    """

    opcode: int
    flags: int = 0
    pasid: int = 0
    priv: int = 0
    rsvd: int = 0
    completion_addr: int = 0
    int_handle: int = 0
    rsvd1: int = 0
    #: bytes 16..35 (the @16, @24 and @32 unions), little-endian as on the wire
    operands: bytes = bytes(20)
    #: bytes 40..63
    op_specific: bytes = bytes(24)

    def __post_init__(self) -> None:
        for name, bits in _DESC_PLAIN.items():
            _check_width(name, getattr(self, name), bits)
        if len(self.operands) != 20:
            raise ValueError("operands must be 20 bytes (offsets 16..35)")
        if len(self.op_specific) != 24:
            raise ValueError("op_specific must be 24 bytes (offsets 40..63)")

    @classmethod
    def new(
        cls,
        opcode: int,
        *,
        flags: int = 0,
        pasid: int = 0,
        priv: int = 0,
        completion_addr: int = 0,
        int_handle: int = 0,
        **fields: int,
    ) -> Descriptor:
        """Build a descriptor from ``idxd.h`` field names, e.g. ``src_addr=..., crc_seed=...``.

        Union members that share bytes may not both be given (``ValueError``); an unknown
        name is a ``TypeError``, as for any keyword argument.
        """
        raw = bytearray(DSA_DESC_SIZE)
        taken: dict[int, str] = {}
        for name, value in fields.items():
            try:
                offset, st = _DESC_ALIASES[name]
            except KeyError:
                raise TypeError(f"Descriptor.new() got an unexpected field {name!r}") from None
            _check_width(name, value, st.size * 8)
            for byte in range(offset, offset + st.size):
                other = taken.get(byte)
                if other is not None:
                    raise ValueError(f"{name} and {other} share bytes of the descriptor")
                taken[byte] = name
            st.pack_into(raw, offset, value)
        return cls(
            opcode=opcode,
            flags=flags,
            pasid=pasid,
            priv=priv,
            completion_addr=completion_addr,
            int_handle=int_handle,
            operands=bytes(raw[16:36]),
            op_specific=bytes(raw[40:64]),
        )

    def pack(self) -> bytes:
        """The 64 bytes as a device reads them."""
        head = _DESC_HEAD.pack(
            self.pasid | (self.rsvd << PASID_BITS) | (self.priv << 31),
            self.flags | (self.opcode << 24),
            self.completion_addr,
            0,
            0,
            0,
            self.int_handle,
            self.rsvd1,
        )
        return head[:16] + self.operands + head[36:40] + self.op_specific

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> Descriptor:
        """Decode 64 bytes; every bit lands in a field, so ``unpack(b).pack() == b``."""
        if len(buf) != DSA_DESC_SIZE:
            raise ValueError(f"a descriptor is {DSA_DESC_SIZE} bytes, got {len(buf)}")
        data = bytes(buf)
        header, flags_op, completion_addr, _, _, _, int_handle, rsvd1 = _DESC_HEAD.unpack_from(data)
        return cls(
            opcode=flags_op >> 24,
            flags=flags_op & 0xFFFFFF,
            pasid=header & PASID_MAX,
            rsvd=(header >> PASID_BITS) & 0x7FF,
            priv=header >> 31,
            completion_addr=completion_addr,
            int_handle=int_handle,
            rsvd1=rsvd1,
            operands=data[16:36],
            op_specific=data[40:64],
        )

    def _field(self, name: str) -> int:
        offset, st = _DESC_ALIASES[name]
        if offset < 40:
            return int(st.unpack_from(self.operands, offset - 16)[0])
        return int(st.unpack_from(self.op_specific, offset - 40)[0])

    # The @16 union
    @property
    def src_addr(self) -> int:
        return self._field("src_addr")

    rdback_addr = src_addr
    pattern = src_addr
    desc_list_addr = src_addr
    pattern_lower = src_addr
    transl_fetch_addr = src_addr

    # The @24 union
    @property
    def dst_addr(self) -> int:
        return self._field("dst_addr")

    rdback_addr2 = dst_addr
    src2_addr = dst_addr
    comp_pattern = dst_addr

    # The @32 union
    @property
    def xfer_size(self) -> int:
        return self._field("xfer_size")

    desc_count = xfer_size
    region_size = xfer_size

    # Op-specific members
    @property
    def expected_res(self) -> int:
        return self._field("expected_res")

    @property
    def delta_addr(self) -> int:
        return self._field("delta_addr")

    @property
    def max_delta_size(self) -> int:
        return self._field("max_delta_size")

    @property
    def expected_res_mask(self) -> int:
        return self._field("expected_res_mask")

    @property
    def delta_rec_size(self) -> int:
        return self._field("delta_rec_size")

    @property
    def dest2(self) -> int:
        return self._field("dest2")

    @property
    def crc_seed(self) -> int:
        return self._field("crc_seed")

    @property
    def seed_addr(self) -> int:
        return self._field("seed_addr")

    @property
    def pattern_upper(self) -> int:
        return self._field("pattern_upper")

    @property
    def region_stride(self) -> int:
        return self._field("region_stride")

    def field(self, name: str) -> int:
        """Any ``idxd.h`` union member by name (``chk_ref_tag_seed``, ``dif_ins_flags``, ...)."""
        return self._field(name)


@dataclass(frozen=True, slots=True)
class CompletionRecord:
    """One 32-byte completion record, ``struct dsa_completion_record``.

    ``status`` is the whole status byte as written, write-fault bit included; :attr:`code` is
    the status without it and :attr:`fault_on_write` the bit. ``op_specific`` holds bytes 16..31,
    read through :attr:`crc_val`, :attr:`delta_rec_size` and :attr:`invalid_flags`.
    """

    status: int
    result: int = 0
    fault_info: int = 0
    rsvd: int = 0
    bytes_completed: int = 0
    fault_addr: int = 0
    op_specific: bytes = bytes(16)

    def __post_init__(self) -> None:
        for name, bits in (
            ("status", 8),
            ("result", 8),
            ("fault_info", 8),
            ("rsvd", 8),
            ("bytes_completed", 32),
            ("fault_addr", 64),
        ):
            _check_width(name, getattr(self, name), bits)
        if len(self.op_specific) != 16:
            raise ValueError("op_specific must be 16 bytes (offsets 16..31)")

    @classmethod
    def new(
        cls,
        status: int,
        *,
        result: int = 0,
        fault_info: int = 0,
        bytes_completed: int = 0,
        fault_addr: int = 0,
        crc_val: int | None = None,
        delta_rec_size: int | None = None,
        invalid_flags: int | None = None,
    ) -> CompletionRecord:
        """Build a record; at most one of the op-specific members may be given."""
        given = [
            (n, v)
            for n, v in (
                ("crc_val", crc_val),
                ("delta_rec_size", delta_rec_size),
                ("invalid_flags", invalid_flags),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(f"{given[0][0]} and {given[1][0]} share bytes of the record")
        word = 0
        if given:
            name, value = given[0]
            bits = {"crc_val": 64, "delta_rec_size": 32, "invalid_flags": 24}[name]
            _check_width(name, value, bits)
            word = value
        return cls(
            status=status,
            result=result,
            fault_info=fault_info,
            bytes_completed=bytes_completed,
            fault_addr=fault_addr,
            op_specific=_U64.pack(word) + bytes(8),
        )

    def pack(self) -> bytes:
        return (
            _COMP_HEAD.pack(
                self.status,
                self.result,
                self.fault_info,
                self.rsvd,
                self.bytes_completed,
                self.fault_addr,
            )
            + self.op_specific
        )

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> CompletionRecord:
        if len(buf) != DSA_COMP_RECORD_SIZE:
            raise ValueError(f"a completion record is {DSA_COMP_RECORD_SIZE} bytes, got {len(buf)}")
        data = bytes(buf)
        status, result, fault_info, rsvd, done, fault_addr = _COMP_HEAD.unpack_from(data)
        return cls(status, result, fault_info, rsvd, done, fault_addr, data[16:32])

    @property
    def code(self) -> int:
        """The status code without the write-fault bit (``DSA_COMP_STATUS(status)``)."""
        return self.status & DSA_COMP_STATUS_MASK

    @property
    def fault_on_write(self) -> bool:
        return bool(self.status & DSA_COMP_STATUS_WRITE)

    @property
    def descs_completed(self) -> int:
        """Batch records count descriptors where others count bytes."""
        return self.bytes_completed

    @property
    def crc_val(self) -> int:
        return int(_U64.unpack_from(self.op_specific)[0])

    @property
    def delta_rec_size(self) -> int:
        return int(_U32.unpack_from(self.op_specific)[0])

    @property
    def invalid_flags(self) -> int:
        return int(_U32.unpack_from(self.op_specific)[0]) & 0xFFFFFF

    @property
    def dif_status(self) -> int:
        """The result byte of a DIF operation: 0x01 guard, 0x02 app tag, 0x04 ref tag
        mismatch, 0x08 all-F detected."""
        return self.result

    def field(self, name: str) -> int:
        """An op-specific member by its ``idxd.h`` name (``dif_chk_ref_tag``, ...)."""
        offset, st = _COMP_ALIASES[name]
        return int(st.unpack_from(self.op_specific, offset - 16)[0])


#: Offsets of every descriptor field, for documentation and tests: name -> (offset, size).
DESC_FIELD_OFFSETS: Final[dict[str, tuple[int, int]]] = {
    "completion_addr": (8, 8),
    "int_handle": (36, 2),
    "rsvd1": (38, 2),
    **{name: (off, st.size) for name, (off, st) in _DESC_ALIASES.items()},
}
COMP_FIELD_OFFSETS: Final[dict[str, tuple[int, int]]] = {
    "status": (0, 1),
    "result": (1, 1),
    "fault_info": (2, 1),
    "bytes_completed": (4, 4),
    "fault_addr": (8, 8),
    "invalid_flags": (16, 3),
    **{name: (off, st.size) for name, (off, st) in _COMP_ALIASES.items()},
}
