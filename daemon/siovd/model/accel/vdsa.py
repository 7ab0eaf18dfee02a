"""The DSA PCI function a guest driver sees for one dedicated-WQ mdev (``dsa-1dwq``).

The guest gets a whole small DSA: one group, the engines of the mdev's group, one work queue,
and the registers ``drivers/dma/idxd/registers.h`` defines, which the guest's own idxd driver
programs as on hardware: it reads the capabilities, writes GRPCFG and WQCFG, issues commands
through CMD (completion in CMDSTS, an MSI-X interrupt on vector 0 when ``int_req`` is set,
INTCAUSE bit CMD), and submits descriptors to the BAR2 portal. This is what Intel's VDCM did
for an mdev in software, with the configuration held here; the data path is siov's own: each
descriptor the portal assembles goes to the mdev's real siov WQ (``submit``), so the guest and
SDK clients share the same engines and rules, and the DMA goes through siov's IOMMU with the
mdev's PASID.

BAR0 (64 KiB):

====== ==================================================================================
0x00   VER (DSA 1.0)                  0x10 GENCAP  0x20 WQCAP  0x30 GRPCAP  0x38 ENGCAP
0x40   OPCAP (256 bits)               0x60 table offsets (GRPCFG 0x400, WQCFG 0x500,
                                           MSI-X permissions 0x700; no IMS, no perfmon)
0x80   GENCFG  0x88 GENCTRL  0x90 GENSTS  0x98 INTCAUSE (write 1 to clear)
0xa0   CMD  0xa8 CMDSTS  0xb0 CMDCAP  0xc0 SWERR (4 x u64; write VALID|OVERFLOW to clear)
0x2000 MSI-X table, 0x3000 PBA (QEMU emulates both for the guest; kept here as storage)
====== ==================================================================================

BAR2: the WQ's four portal pages (16 KiB). A descriptor arrives as one aligned 64-byte write
(MOVDIR64B) or as eight 8-byte writes in ascending order (a guest that emulates MOVDIR64B;
QEMU splits MMIO into 8-byte accesses). Anything else is dropped and counted, as a device
drops a malformed portal write; so is a write to a disabled WQ.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from siov_protocol.dsa import DSA_DESC_SIZE
from siovd.model.accel import caps
from siovd.model.accel.parent import MDEV_IRQ_COUNT, DsaMdev
from siovd.model.accel.pci import ConfigSpace
from siovd.model.accel.registers import (
    CMD_OFFSET,
    CMDSTS_OFFSET,
    ENGCAP_OFFSET,
    GENCAP_OFFSET,
    GENCFG_OFFSET,
    GENCTRL_OFFSET,
    GENSTS_OFFSET,
    GRPCAP_OFFSET,
    GRPCFG_TABLE,
    MSIX_PERM_TABLE,
    OPCAP_OFFSET,
    SWERR_OFFSET,
    TABLE_MULT,
    TABLE_OFFSET,
    VER_OFFSET,
    WQCAP_OFFSET,
    WQCFG_TABLE,
)
from siovd.model.accel.wq import SubmitResult

BAR0_SIZE: Final = 0x10000
BAR2_SIZE: Final = caps.PORTAL_STRIDE
MSIX_TABLE_OFFSET: Final = 0x2000
MSIX_PBA_OFFSET: Final = 0x3000
INTCAUSE_OFFSET: Final = 0x98
CMDCAP_OFFSET: Final = 0xB0
DEVICE_VERSION: Final = 0x100

# CMD (union idxd_command_reg) and the commands (enum idxd_cmd)
CMD_INT_REQ: Final = 1 << 31
CMD_ENABLE_DEVICE: Final = 1
CMD_DISABLE_DEVICE: Final = 2
CMD_DRAIN_ALL: Final = 3
CMD_ABORT_ALL: Final = 4
CMD_RESET_DEVICE: Final = 5
CMD_ENABLE_WQ: Final = 6
CMD_DISABLE_WQ: Final = 7
CMD_DRAIN_WQ: Final = 8
CMD_ABORT_WQ: Final = 9
CMD_RESET_WQ: Final = 10
CMD_DRAIN_PASID: Final = 11
CMD_ABORT_PASID: Final = 12
#: Every command but the interrupt-handle ones (no IMS): what CMDCAP reports.
SUPPORTED_COMMANDS: Final = frozenset(range(CMD_ENABLE_DEVICE, CMD_ABORT_PASID + 1))

# CMDSTS error codes (enum idxd_cmdsts_err)
CMDSTS_SUCCESS: Final = 0
CMDSTS_INVAL_CMD: Final = 1
CMDSTS_INVAL_WQIDX: Final = 2
CMDSTS_ERR_DEV_ENABLED: Final = 0x10
CMDSTS_ERR_CONFIG: Final = 0x11
CMDSTS_ERR_WQ_SIZE_ERANGE: Final = 0x14
CMDSTS_ERR_GRP_CONFIG: Final = 0x15
CMDSTS_ERR_DEV_NOTEN: Final = 0x20
CMDSTS_ERR_WQ_ENABLED: Final = 0x21
CMDSTS_ERR_WQ_SIZE: Final = 0x22
CMDSTS_ERR_WQ_PRIOR: Final = 0x23
CMDSTS_ERR_WQ_MODE: Final = 0x24
CMDSTS_ERR_BOF_EN: Final = 0x25
CMDSTS_ERR_PASID_EN: Final = 0x26
CMDSTS_ERR_MAX_BATCH_SIZE: Final = 0x27
CMDSTS_ERR_MAX_XFER_SIZE: Final = 0x28
CMDSTS_ERR_DIS_DEV_EN: Final = 0x31
CMDSTS_ERR_DEV_NOT_EN: Final = 0x32

# INTCAUSE bits
INTC_ERR: Final = 0x01
INTC_CMD: Final = 0x02

GENSTS_DISABLED: Final = 0
GENSTS_ENABLED: Final = 1
SWERR_ACK: Final = 0x3  # VALID | OVERFLOW

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_WQCFG_DWORDS: Final = caps.WQCFG_SIZE // 4
_WQ_STATE_SHIFT: Final = 30


@dataclass(slots=True)
class VdsaStats:
    commands: int = 0
    command_errors: int = 0
    descriptors: int = 0
    portal_dropped: int = 0  # malformed, partial or to a disabled WQ
    wq_dropped: int = 0  # the siov WQ dropped it (full)
    interrupts: int = 0


class VirtualDsa:
    """Registers, portal and command engine of the guest-visible DSA for ``mdev``.

    ``submit(offset, descriptor)`` hands an assembled descriptor to the mdev's siov WQ (through
    the runtime, which runs its engines); ``interrupt(vector)`` raises an MSI-X vector;
    ``drain()`` runs the WQ until none of the mdev's descriptors is outstanding; ``abort()``
    drops the mdev's queued descriptors.
    """

    def __init__(
        self,
        mdev: DsaMdev,
        num_engines: int,
        *,
        submit: Callable[[int, bytes], SubmitResult],
        interrupt: Callable[[int], None],
        drain: Callable[[], None],
        abort: Callable[[], None],
    ) -> None:
        self.mdev = mdev
        self.num_engines = max(1, min(num_engines, 64))
        self._submit = submit
        self._interrupt = interrupt
        self._drain = drain
        self._abort = abort
        self.stats = VdsaStats()
        self.config = ConfigSpace(
            bar_sizes={0: BAR0_SIZE, 2: BAR2_SIZE},
            msix_vectors=MDEV_IRQ_COUNT,
            msix_table=(0, MSIX_TABLE_OFFSET),
            msix_pba=(0, MSIX_PBA_OFFSET),
        )
        self.bar0 = bytearray(BAR0_SIZE)
        self.wmask = bytearray(BAR0_SIZE)
        self._portal: dict[int, bytearray] = {}  # 64-byte slot -> the 8-byte writes so far
        self._build()

    # -- the register image -------------------------------------------------------------------

    @property
    def total_wq_size(self) -> int:
        return self.mdev.wq.size

    def _gencap(self) -> int:
        wq = self.mdev.wq
        return (
            caps.GENCAP_OVERLAP_COPY
            | caps.GENCAP_CACHE_CONTROL_MEM
            | 1 << 4  # cmd_cap: CMDCAP is valid
            | (wq.max_transfer_size.bit_length() - 1) << caps.GENCAP_MAX_XFER_SHIFT_BIT
            | (wq.max_batch_size.bit_length() - 1) << caps.GENCAP_MAX_BATCH_SHIFT_BIT
            | caps.GENCAP_CONFIG_EN
        )

    def _wqcap(self) -> int:
        # dedicated mode only (a guest has no ENQCMD), priorities, 64-byte WQCFG
        return (
            self.total_wq_size
            | 1 << 16
            | caps.WQCFG_SIZE_FIELD << 24
            | caps.WQCAP_DEDICATED
            | caps.WQCAP_PRIORITY
            | caps.WQCAP_OCCUPANCY
        )

    def _build(self) -> None:
        b = self.bar0
        b[:] = bytes(BAR0_SIZE)
        self.wmask[:] = bytes(BAR0_SIZE)
        _U32.pack_into(b, VER_OFFSET, DEVICE_VERSION)
        _U64.pack_into(b, GENCAP_OFFSET, self._gencap())
        _U64.pack_into(b, WQCAP_OFFSET, self._wqcap())
        _U64.pack_into(b, GRPCAP_OFFSET, 1 | caps.MAX_READ_BUFFERS << 8)
        _U64.pack_into(b, ENGCAP_OFFSET, self.num_engines)
        for word in range(4):
            _U64.pack_into(b, OPCAP_OFFSET + 8 * word, (caps.OPCAP >> (64 * word)) & (2**64 - 1))
        offsets = (
            (GRPCFG_TABLE // TABLE_MULT)
            | (WQCFG_TABLE // TABLE_MULT) << 16
            | (MSIX_PERM_TABLE // TABLE_MULT) << 32
        )
        _U64.pack_into(b, TABLE_OFFSET, offsets)
        _U32.pack_into(b, CMDCAP_OFFSET, sum(1 << c for c in SUPPORTED_COMMANDS))
        self._writable(GENCFG_OFFSET, 0x000030FF, 4)  # rdbuf_limit, user_int_en, evl_en
        self._writable(GENCTRL_OFFSET, 0x3, 4)  # softerr_int_en, halt_int_en
        self._writable(CMD_OFFSET, 0xFFFFFFFF, 4)
        # GRPCFG of group 0: WQ bitmap (one WQ), engine bitmap, flags
        self._writable(GRPCFG_TABLE, 0x1, 8)
        self._writable(GRPCFG_TABLE + 32, (1 << self.num_engines) - 1, 8)
        self._writable(GRPCFG_TABLE + 40, 0x0FF0FFBF, 8)
        # WQCFG of WQ 0: size, threshold, mode/bof/priority/pasid, shifts, occupancy ints,
        # op_config; dword 6 (occupancy, state) is read-only
        wq = WQCFG_TABLE
        self._writable(wq + 0, 0xFFFF, 4)
        self._writable(wq + 4, 0xFFFF, 4)
        self._writable(wq + 8, 0x3FFFFFFF, 4)
        self._writable(wq + 12, 0x1FF, 4)
        self._writable(wq + 16, 0x1FFFF, 4)
        self._writable(wq + 20, 0x1FFFF, 4)
        for word in range(4):
            self._writable(wq + 32 + 8 * word, 2**64 - 1, 8)
        _U32.pack_into(b, wq + 24, 1 << 29)  # mode_support: dedicated
        self._writable(MSIX_PERM_TABLE, 0xFFFFF00C, 4)
        self._writable(MSIX_PERM_TABLE + 8, 0xFFFFF00C, 4)
        for vector in range(MDEV_IRQ_COUNT):
            entry = MSIX_TABLE_OFFSET + 16 * vector
            self._writable(entry, 2**64 - 1, 8)
            self._writable(entry + 8, 0xFFFFFFFF, 4)
            self._writable(entry + 12, 0x1, 4)
            _U32.pack_into(b, entry + 12, 1)  # masked at reset
        self._portal.clear()

    def _writable(self, offset: int, bits: int, size: int) -> None:
        for i in range(size):
            self.wmask[offset + i] = (bits >> (8 * i)) & 0xFF

    def _u32(self, offset: int) -> int:
        return int(_U32.unpack_from(self.bar0, offset)[0])

    def _put32(self, offset: int, value: int) -> None:
        _U32.pack_into(self.bar0, offset, value & 0xFFFFFFFF)

    # -- state the registers hold -------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._u32(GENSTS_OFFSET) & 0x3 == GENSTS_ENABLED

    @property
    def wq_enabled(self) -> bool:
        return (self._u32(WQCFG_TABLE + 24) >> _WQ_STATE_SHIFT) & 0x3 == 1

    def _set_wq_enabled(self, on: bool) -> None:
        dword = self._u32(WQCFG_TABLE + 24) & ~(3 << _WQ_STATE_SHIFT)
        self._put32(WQCFG_TABLE + 24, dword | (int(on) << _WQ_STATE_SHIFT))
        if not on:
            self._portal.clear()

    def wqcfg(self) -> dict[str, int]:
        """The guest's WQCFG, decoded (for tests and introspection)."""
        base = WQCFG_TABLE
        dword2 = self._u32(base + 8)
        return {
            "size": self._u32(base) & 0xFFFF,
            "threshold": self._u32(base + 4) & 0xFFFF,
            "dedicated": dword2 & 1,
            "bof": (dword2 >> 1) & 1,
            "priority": (dword2 >> 4) & 0xF,
            "pasid_en": (dword2 >> 28) & 1,
            "max_xfer_shift": self._u32(base + 12) & 0x1F,
            "max_batch_shift": (self._u32(base + 12) >> 5) & 0xF,
            "enabled": int(self.wq_enabled),
        }

    def wq_in_group(self) -> bool:
        return bool(self.bar0[GRPCFG_TABLE] & 1)

    def group_engines(self) -> int:
        return int(_U64.unpack_from(self.bar0, GRPCFG_TABLE + 32)[0])

    # -- BAR0 ---------------------------------------------------------------------------------

    def read_bar0(self, offset: int, count: int) -> bytes:
        if offset == WQCFG_TABLE + 24 and count >= 2:
            occupancy = min(self.mdev.wq.occupancy, 0xFFFF)
            _U32.pack_into(self.bar0, offset, (self._u32(offset) & ~0xFFFF) | occupancy)
        return bytes(self.bar0[offset : offset + count]).ljust(count, b"\0")

    def write_bar0(self, offset: int, data: bytes) -> None:
        """A register write. Writes to read-only bits are ignored; GRPCFG changes only while the
        device is disabled and WQCFG only while the WQ is, as on the device."""
        end = offset + len(data)
        if offset < GRPCFG_TABLE + caps.GRPCFG_SIZE and end > GRPCFG_TABLE and self.enabled:
            return
        if offset < WQCFG_TABLE + caps.WQCFG_SIZE and end > WQCFG_TABLE and self.wq_enabled:
            return
        if offset <= INTCAUSE_OFFSET < end:  # write 1 to clear
            shift = 8 * (INTCAUSE_OFFSET - offset)
            value = int.from_bytes(data, "little") >> shift
            self._put32(INTCAUSE_OFFSET, self._u32(INTCAUSE_OFFSET) & ~value)
        if offset <= SWERR_OFFSET < end:
            value = int.from_bytes(data, "little") >> (8 * (SWERR_OFFSET - offset))
            if value & SWERR_ACK:
                self._put32(SWERR_OFFSET, self._u32(SWERR_OFFSET) & ~(value & SWERR_ACK))
        b, m = self.bar0, self.wmask
        for i, value in enumerate(data):
            pos = offset + i
            if pos >= BAR0_SIZE:
                break
            b[pos] = (b[pos] & ~m[pos]) | (value & m[pos])
        if offset <= CMD_OFFSET and end >= CMD_OFFSET + 4:
            self._command(self._u32(CMD_OFFSET))

    # -- commands -----------------------------------------------------------------------------

    def _command(self, value: int) -> None:
        self.stats.commands += 1
        cmd = (value >> 20) & 0x1F
        operand = value & 0xFFFFF
        status, result = self._execute(cmd, operand)
        if status:
            self.stats.command_errors += 1
        self._put32(CMDSTS_OFFSET, status | result << 8)  # active bit clear: done at once
        if value & CMD_INT_REQ:
            self._put32(INTCAUSE_OFFSET, self._u32(INTCAUSE_OFFSET) | INTC_CMD)
            self._raise(0)

    def _raise(self, vector: int) -> None:
        self.stats.interrupts += 1
        self._interrupt(vector)

    def _wq_operand(self, operand: int) -> bool:
        """Disable/drain/abort/reset WQ name WQs as a 16-bit mask and a block of 16 in the
        operand (``BIT(id % 16) | (id / 16) << 16``, drivers/dma/idxd/device.c)."""
        return operand == 1

    def _execute(self, cmd: int, operand: int) -> tuple[int, int]:
        if cmd not in SUPPORTED_COMMANDS:
            return CMDSTS_INVAL_CMD, 0
        if cmd == CMD_RESET_DEVICE:
            self._abort()
            self._build()
            return CMDSTS_SUCCESS, 0
        if cmd == CMD_ENABLE_DEVICE:
            return self._enable_device(), 0
        if cmd == CMD_ENABLE_WQ:
            if operand != 0:
                return CMDSTS_INVAL_WQIDX, 0
            return self._enable_wq(), 0
        if not self.enabled:
            if cmd == CMD_DISABLE_DEVICE:
                return CMDSTS_ERR_DIS_DEV_EN, 0
            return CMDSTS_ERR_DEV_NOT_EN, 0
        if cmd == CMD_DISABLE_DEVICE:
            self._drain()
            self._set_wq_enabled(False)
            self._put32(GENSTS_OFFSET, GENSTS_DISABLED)
            return CMDSTS_SUCCESS, 0
        if cmd in (CMD_DRAIN_ALL, CMD_DRAIN_PASID):
            self._drain()
            return CMDSTS_SUCCESS, 0
        if cmd in (CMD_ABORT_ALL, CMD_ABORT_PASID):
            self._abort()
            return CMDSTS_SUCCESS, 0
        if not self._wq_operand(operand):
            return CMDSTS_INVAL_WQIDX, 0
        if cmd == CMD_DRAIN_WQ:
            self._drain()
        elif cmd == CMD_ABORT_WQ:
            self._abort()
        elif cmd == CMD_DISABLE_WQ:
            self._drain()
            self._set_wq_enabled(False)
        else:  # CMD_RESET_WQ
            self._abort()
            self._set_wq_enabled(False)
            base = WQCFG_TABLE
            for dword in range(_WQCFG_DWORDS):
                if dword != 6:
                    self._put32(base + 4 * dword, 0)
        return CMDSTS_SUCCESS, 0

    def _enable_device(self) -> int:
        if self.enabled:
            return CMDSTS_ERR_DEV_ENABLED
        size = self._u32(WQCFG_TABLE) & 0xFFFF
        if size > self.total_wq_size:
            return CMDSTS_ERR_WQ_SIZE_ERANGE
        if self.wq_in_group() and not self.group_engines():
            return CMDSTS_ERR_GRP_CONFIG
        self._put32(GENSTS_OFFSET, GENSTS_ENABLED)
        return CMDSTS_SUCCESS

    def _enable_wq(self) -> int:
        if not self.enabled:
            return CMDSTS_ERR_DEV_NOTEN
        if self.wq_enabled:
            return CMDSTS_ERR_WQ_ENABLED
        cfg = self.wqcfg()
        if not 0 < cfg["size"] <= self.total_wq_size or not self.wq_in_group():
            return CMDSTS_ERR_WQ_SIZE
        if cfg["priority"] == 0:
            return CMDSTS_ERR_WQ_PRIOR
        if not cfg["dedicated"]:
            return CMDSTS_ERR_WQ_MODE  # no shared mode: a guest has no ENQCMD
        if cfg["bof"]:
            return CMDSTS_ERR_BOF_EN  # GENCAP offers no block-on-fault
        wq = self.mdev.wq
        if cfg["max_batch_shift"] > wq.max_batch_size.bit_length() - 1:
            return CMDSTS_ERR_MAX_BATCH_SIZE
        if cfg["max_xfer_shift"] > wq.max_transfer_size.bit_length() - 1:
            return CMDSTS_ERR_MAX_XFER_SIZE
        self._set_wq_enabled(True)
        return CMDSTS_SUCCESS

    # -- BAR2: the portal ---------------------------------------------------------------------

    def write_portal(self, offset: int, data: bytes) -> None:
        """One MMIO write into BAR2."""
        if not 0 <= offset < BAR2_SIZE or offset + len(data) > BAR2_SIZE:
            self.stats.portal_dropped += 1
            return
        if len(data) == DSA_DESC_SIZE and offset % DSA_DESC_SIZE == 0:
            self._portal.pop(offset, None)
            self._deliver(offset, bytes(data))
            return
        slot = offset - offset % DSA_DESC_SIZE
        if len(data) != 8 or offset % 8:
            self._portal.pop(slot, None)
            self.stats.portal_dropped += 1
            return
        part = self._portal.get(slot)
        if offset == slot:
            if part is not None:
                self.stats.portal_dropped += 1  # an unfinished descriptor, overwritten
            part = self._portal[slot] = bytearray()
        elif part is None or slot + len(part) != offset:
            self._portal.pop(slot, None)
            self.stats.portal_dropped += 1  # out of order: not a descriptor
            return
        part += data
        if len(part) == DSA_DESC_SIZE:
            del self._portal[slot]
            self._deliver(slot, bytes(part))

    def _deliver(self, offset: int, descriptor: bytes) -> None:
        if not (self.enabled and self.wq_enabled):
            self.stats.portal_dropped += 1
            return
        result = self._submit(offset, descriptor)
        if result is SubmitResult.ACCEPTED:
            self.stats.descriptors += 1
        else:
            self.stats.wq_dropped += 1

    # -- software errors ----------------------------------------------------------------------

    def software_error(self, status: int, opcode: int, fault_addr: int) -> None:
        """Log an error no completion record could report in SWERR and raise INTCAUSE ERR
        (vector 0) when GENCTRL enables it."""
        first = self._u32(SWERR_OFFSET)
        if first & 1:
            self._put32(SWERR_OFFSET, first | 2)  # overflow
        else:
            word0 = 1 | 1 << 2 | 1 << 3 | (status & 0xFF) << 8 | (opcode & 0xFF) << 32
            _U64.pack_into(self.bar0, SWERR_OFFSET, word0)
            _U64.pack_into(self.bar0, SWERR_OFFSET + 16, fault_addr)
        self._put32(INTCAUSE_OFFSET, self._u32(INTCAUSE_OFFSET) | INTC_ERR)
        if self._u32(GENCTRL_OFFSET) & 1:
            self._raise(0)

    def reset(self) -> None:
        """Function-level reset (vfio-user DEVICE_RESET)."""
        self._abort()
        self.config.reset()
        self._build()
