"""BAR0: the register image a driver reads, at the offsets of ``drivers/dma/idxd/registers.h``.

The image is built on demand from the current configuration and is read-only: siov configures
the device with ACCEL_* commands, not with MMIO writes to GRPCFG/WQCFG/CMD.

Layout: VER 0x00, GENCAP 0x10, WQCAP 0x20, GRPCAP 0x30, ENGCAP 0x38, OPCAP 0x40 (256 bits),
table offsets 0x60 (in units of 0x100), GENCFG 0x80, GENSTS 0x90, then GRPCFG (64 bytes per
group) at 0x400 and WQCFG (64 bytes per WQ, op_config in the upper half) at 0x500.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from siovd.model.accel import caps

BAR0_SIZE: Final = 0x1000

VER_OFFSET: Final = 0x00
GENCAP_OFFSET: Final = 0x10
WQCAP_OFFSET: Final = 0x20
GRPCAP_OFFSET: Final = 0x30
ENGCAP_OFFSET: Final = 0x38
OPCAP_OFFSET: Final = 0x40
TABLE_OFFSET: Final = 0x60
GENCFG_OFFSET: Final = 0x80
GENCTRL_OFFSET: Final = 0x88
GENSTS_OFFSET: Final = 0x90
CMD_OFFSET: Final = 0xA0
CMDSTS_OFFSET: Final = 0xA8
SWERR_OFFSET: Final = 0xC0

TABLE_MULT: Final = 0x100
GRPCFG_TABLE: Final = 0x400
WQCFG_TABLE: Final = 0x500
MSIX_PERM_TABLE: Final = 0x700

GENSTS_DISABLED: Final = 0
GENSTS_ENABLED: Final = 1

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class WqRegs:
    """What one WQCFG entry holds."""

    size: int
    threshold: int
    dedicated: bool
    bof: bool
    ats_disable: bool
    prs_disable: bool
    priority: int
    pasid: int
    pasid_en: bool
    max_xfer_shift: int
    max_batch_shift: int
    occupancy: int
    enabled: bool
    op_config: int


@dataclass(frozen=True, slots=True)
class GroupRegs:
    """What one GRPCFG entry holds."""

    wq_bitmap: int
    engine_bitmap: int
    traffic_class_a: int
    traffic_class_b: int
    use_read_buffer_limit: bool
    read_buffers_reserved: int
    read_buffers_allowed: int


def wqcfg_bytes(regs: WqRegs) -> bytes:
    """One 64-byte WQCFG entry (union wqcfg)."""
    entry = bytearray(caps.WQCFG_SIZE)
    _U32.pack_into(entry, 0, regs.size)
    _U32.pack_into(entry, 4, regs.threshold)
    dword2 = (
        int(regs.dedicated)
        | int(regs.bof) << 1
        | int(regs.ats_disable) << 2
        | int(regs.prs_disable) << 3
        | (regs.priority & 0xF) << 4
        | (regs.pasid & 0xFFFFF) << 8
        | int(regs.pasid_en) << 28
    )
    _U32.pack_into(entry, 8, dword2)
    _U32.pack_into(entry, 12, regs.max_xfer_shift | regs.max_batch_shift << 5)
    _U32.pack_into(entry, 24, (regs.occupancy & 0xFFFF) | int(regs.enabled) << 30)
    for word in range(4):
        _U64.pack_into(entry, 32 + 8 * word, (regs.op_config >> (64 * word)) & (2**64 - 1))
    return bytes(entry)


def grpcfg_bytes(regs: GroupRegs) -> bytes:
    """One 64-byte GRPCFG entry: WQ bitmap (4 x u64), engine bitmap, flags."""
    entry = bytearray(caps.GRPCFG_SIZE)
    for word in range(4):
        _U64.pack_into(entry, 8 * word, (regs.wq_bitmap >> (64 * word)) & (2**64 - 1))
    _U64.pack_into(entry, 32, regs.engine_bitmap)
    flags = (
        (regs.traffic_class_a & 7)
        | (regs.traffic_class_b & 7) << 3
        | int(regs.use_read_buffer_limit) << 7
        | (regs.read_buffers_reserved & 0xFF) << 8
        | (regs.read_buffers_allowed & 0xFF) << 20
    )
    _U64.pack_into(entry, 40, flags)
    return bytes(entry)


def bar0_image(
    *,
    enabled: bool,
    total_wq_size: int,
    num_engines: int,
    read_buffer_limit: int,
    groups: Sequence[GroupRegs],
    wqs: Sequence[WqRegs],
) -> bytes:
    image = bytearray(BAR0_SIZE)
    _U32.pack_into(image, VER_OFFSET, caps.DSA_VERSION)
    _U64.pack_into(image, GENCAP_OFFSET, caps.GENCAP)
    _U64.pack_into(image, WQCAP_OFFSET, caps.wqcap(total_wq_size, len(wqs)))
    _U64.pack_into(image, GRPCAP_OFFSET, caps.grpcap(len(groups)))
    _U64.pack_into(image, ENGCAP_OFFSET, num_engines)
    for word in range(4):
        _U64.pack_into(image, OPCAP_OFFSET + 8 * word, (caps.OPCAP >> (64 * word)) & (2**64 - 1))
    offsets = (
        (GRPCFG_TABLE // TABLE_MULT)
        | (WQCFG_TABLE // TABLE_MULT) << 16
        | (MSIX_PERM_TABLE // TABLE_MULT) << 32
    )
    _U64.pack_into(image, TABLE_OFFSET, offsets)
    _U32.pack_into(image, GENCFG_OFFSET, read_buffer_limit & 0xFF)
    _U32.pack_into(image, GENSTS_OFFSET, GENSTS_ENABLED if enabled else GENSTS_DISABLED)
    for index, group in enumerate(groups):
        start = GRPCFG_TABLE + index * caps.GRPCFG_SIZE
        image[start : start + caps.GRPCFG_SIZE] = grpcfg_bytes(group)
    for index, wq in enumerate(wqs):
        start = WQCFG_TABLE + index * caps.WQCFG_SIZE
        image[start : start + caps.WQCFG_SIZE] = wqcfg_bytes(wq)
    return bytes(image)
