"""What the emulated device can do: the numbers its capability registers report.

Values follow a Sapphire Rapids DSA as accel-config and the kernel see it: 8 WQs, 4 engines,
4 groups, total WQ size 128, max transfer 2 GiB (shift 31), max batch 1024 (shift 10)
(dsa-perf-micros sample command lines; DML hardware_limits.h; intel/DTO accelConfig.sh).
"""

from __future__ import annotations

from typing import Final

from siov_protocol.dsa import DsaOpcode

DSA_VERSION: Final = 0x200  # DSA 2.0: the 16-byte MEMFILL pattern is a 2.0 feature
PCI_VENDOR_INTEL: Final = 0x8086
PCI_DEVICE_DSA_SPR: Final = 0x0B25

MAX_WQS: Final = 8
MAX_ENGINES: Final = 4
MAX_GROUPS: Final = 4
TOTAL_WQ_SIZE: Final = 128
MAX_XFER_SHIFT: Final = 31
MAX_BATCH_SHIFT: Final = 10
MAX_TRANSFER_SIZE: Final = 1 << MAX_XFER_SHIFT
MAX_BATCH_SIZE: Final = 1 << MAX_BATCH_SHIFT
MAX_READ_BUFFERS: Final = 96
MAX_PRIORITY: Final = 15
WQ_NAME_SIZE: Final = 1024  # kernel WQ_NAME_SIZE
#: A batch holds at least two descriptors (DML DML_STATUS_BATCH_LIMITS_ERROR below 2).
MIN_BATCH_SIZE: Final = 2

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
#: Each WQ owns four portal pages in BAR2: unlimited MSI-X, limited MSI-X, unlimited IMS,
#: limited IMS (drivers/dma/idxd/idxd.h idxd_get_wq_portal_full_offset).
PORTAL_PAGES_PER_WQ: Final = 4
PORTAL_STRIDE: Final = PORTAL_PAGES_PER_WQ << PAGE_SHIFT

#: The operations siov executes; OPCAP reports exactly these.
SUPPORTED_OPCODES: Final = frozenset(
    {
        DsaOpcode.NOOP,
        DsaOpcode.BATCH,
        DsaOpcode.DRAIN,
        DsaOpcode.MEMMOVE,
        DsaOpcode.MEMFILL,
        DsaOpcode.COMPARE,
        DsaOpcode.COMPVAL,
        DsaOpcode.CR_DELTA,
        DsaOpcode.AP_DELTA,
        DsaOpcode.DUALCAST,
        DsaOpcode.CRCGEN,
        DsaOpcode.COPY_CRC,
        DsaOpcode.CFLUSH,
        DsaOpcode.DIF_CHECK,
        DsaOpcode.DIF_INS,
        DsaOpcode.DIF_STRP,
        DsaOpcode.DIF_UPDT,
        DsaOpcode.DIX_GEN,
    }
)
OPCAP: Final = sum(1 << int(op) for op in SUPPORTED_OPCODES)

# GENCAP (BAR0 0x10) bits, drivers/dma/idxd/registers.h union gen_cap_reg.
GENCAP_BLOCK_ON_FAULT: Final = 1 << 0
GENCAP_OVERLAP_COPY: Final = 1 << 1
GENCAP_CACHE_CONTROL_MEM: Final = 1 << 2
GENCAP_CACHE_CONTROL_CACHE: Final = 1 << 3
GENCAP_DEST_READBACK: Final = 1 << 8
GENCAP_DRAIN_READBACK: Final = 1 << 9
#: GENCAP bits 14:13 evl_support. The device-level view (accel-config's gen_cap) sets it; an
#: mdev's BAR0 does not, since its registers are read-only and it has no EVLCFG to program.
GENCAP_EVL_SUPPORT: Final = 1 << 13
GENCAP_MAX_XFER_SHIFT_BIT: Final = 16
GENCAP_MAX_BATCH_SHIFT_BIT: Final = 21
GENCAP_CONFIG_EN: Final = 1 << 31

GENCAP: Final = (
    GENCAP_BLOCK_ON_FAULT
    | GENCAP_OVERLAP_COPY
    | GENCAP_CACHE_CONTROL_MEM
    | GENCAP_CACHE_CONTROL_CACHE
    | GENCAP_DEST_READBACK
    | GENCAP_DRAIN_READBACK
    | (MAX_XFER_SHIFT << GENCAP_MAX_XFER_SHIFT_BIT)
    | (MAX_BATCH_SHIFT << GENCAP_MAX_BATCH_SHIFT_BIT)
    | GENCAP_CONFIG_EN
)

# WQCAP (BAR0 0x20) bits, union wq_cap_reg.
WQCAP_SHARED: Final = 1 << 48
WQCAP_DEDICATED: Final = 1 << 49
WQCAP_ATS: Final = 1 << 50
WQCAP_PRIORITY: Final = 1 << 51
WQCAP_OCCUPANCY: Final = 1 << 52
WQCAP_OP_CONFIG: Final = 1 << 54
WQCAP_PRS: Final = 1 << 55
#: WQCFG entries are 1 << (5 + n) bytes; n = 1 gives 64 bytes, with the op_config words.
WQCFG_SIZE_FIELD: Final = 1
WQCFG_SIZE: Final = 1 << (5 + WQCFG_SIZE_FIELD)
GRPCFG_SIZE: Final = 64

# GRPCAP (BAR0 0x30) bits, union group_cap_reg.
GRPCAP_RDBUF_CTRL: Final = 1 << 16
GRPCAP_RDBUF_LIMIT: Final = 1 << 17


def wqcap(total_wq_size: int, num_wqs: int) -> int:
    return (
        total_wq_size
        | (num_wqs << 16)
        | (WQCFG_SIZE_FIELD << 24)
        | WQCAP_SHARED
        | WQCAP_DEDICATED
        | WQCAP_ATS
        | WQCAP_PRIORITY
        | WQCAP_OCCUPANCY
        | WQCAP_OP_CONFIG
        | WQCAP_PRS
    )


def grpcap(num_groups: int) -> int:
    return num_groups | (MAX_READ_BUFFERS << 8) | GRPCAP_RDBUF_CTRL | GRPCAP_RDBUF_LIMIT
