"""PCI configuration space of the DSA function a guest sees for an mdev.

A type 0 header with the ids of a Sapphire Rapids DSA (8086:0b25, ``PCI_DEVICE_ID_INTEL_DSA_SPR0``),
class 0x0880 ("other system peripheral"), two 64-bit memory BARs (BAR0 the registers, BAR2 the
portals: ``IDXD_MMIO_BAR`` 0 and ``IDXD_WQ_BAR`` 2 in ``drivers/dma/idxd/registers.h``), and two
capabilities: PCI Express (v2, a root-complex integrated endpoint, as DSA is) and MSI-X with its
table and PBA in BAR0. No PASID/ATS/PRI extended capability: the emulated IOMMU in front of a
guest (QEMU's) would have to support them too, and the guest's kernel WQs need none. The
extended space from 0x100 holds a zero header: no extended capabilities.

Writes go through a per-byte write mask, as a device's configuration registers ignore writes to
read-only bits; BARs answer the sizing protocol (all ones, then read back the size mask).
"""

from __future__ import annotations

import struct
from typing import Final

from siovd.model.accel import caps

CONFIG_SIZE: Final = 0x1000
PCI_CLASS_SYSTEM_OTHER: Final = 0x088000  # class 0x08, subclass 0x80, prog-if 0

CAP_PCIE: Final = 0x40
CAP_MSIX: Final = 0x80
PCI_CAP_ID_EXP: Final = 0x10
PCI_CAP_ID_MSIX: Final = 0x11
PCIE_CAP_SIZE: Final = 0x3C  # a v2 PCI Express capability
PCI_EXP_TYPE_RC_END: Final = 0x9

PCI_COMMAND: Final = 0x04
PCI_COMMAND_MEMORY: Final = 1 << 1
PCI_COMMAND_MASTER: Final = 1 << 2
PCI_COMMAND_INTX_DISABLE: Final = 1 << 10
PCI_STATUS_CAP_LIST: Final = 1 << 4
PCI_BAR_MEM_TYPE_64: Final = 0x4

MSIX_ENABLE: Final = 1 << 15
MSIX_MASKALL: Final = 1 << 14


class ConfigSpace:
    """4 KiB of configuration space with its write mask."""

    def __init__(
        self,
        *,
        bar_sizes: dict[int, int],
        msix_vectors: int,
        msix_table: tuple[int, int],
        msix_pba: tuple[int, int],
    ) -> None:
        self.bar_sizes = dict(bar_sizes)
        self.data = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        d = self.data
        struct.pack_into("<HH", d, 0x00, caps.PCI_VENDOR_INTEL, caps.PCI_DEVICE_DSA_SPR)
        struct.pack_into("<H", d, 0x06, PCI_STATUS_CAP_LIST)
        struct.pack_into("<I", d, 0x08, PCI_CLASS_SYSTEM_OTHER << 8)  # revision 0
        struct.pack_into("<HH", d, 0x2C, caps.PCI_VENDOR_INTEL, 0)  # subsystem ids
        d[0x34] = CAP_PCIE
        d[0x3D] = 0  # no INTx pin: MSI-X only
        self._mask(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE)
        self._mask(0x0C, 0xFF, 1)  # cache line size
        self._mask(0x3C, 0xFF, 1)  # interrupt line
        for bar, size in self.bar_sizes.items():
            offset = 0x10 + 4 * bar
            struct.pack_into("<I", d, offset, PCI_BAR_MEM_TYPE_64)
            self._mask(offset, ~(size - 1) & 0xFFFFFFF0, 4)
            self._mask(offset + 4, 0xFFFFFFFF, 4)
        # PCI Express capability: v2, RC integrated endpoint; device control is writable
        d[CAP_PCIE] = PCI_CAP_ID_EXP
        d[CAP_PCIE + 1] = CAP_MSIX
        struct.pack_into("<H", d, CAP_PCIE + 2, 2 | PCI_EXP_TYPE_RC_END << 4)
        struct.pack_into("<I", d, CAP_PCIE + 4, 0x1 << 15)  # devcap: role-based error reporting
        self._mask(CAP_PCIE + 8, 0xFFFF, 2)  # device control
        self._mask(CAP_PCIE + 0x28, 0xFFFF, 2)  # device control 2
        # MSI-X: table size N-1, enable and function mask writable
        d[CAP_MSIX] = PCI_CAP_ID_MSIX
        d[CAP_MSIX + 1] = 0
        struct.pack_into("<H", d, CAP_MSIX + 2, msix_vectors - 1)
        self._mask(CAP_MSIX + 2, MSIX_ENABLE | MSIX_MASKALL, 2)
        table_bar, table_offset = msix_table
        pba_bar, pba_offset = msix_pba
        struct.pack_into("<II", d, CAP_MSIX + 4, table_offset | table_bar, pba_offset | pba_bar)
        self._reset_image = bytes(d)

    def _mask(self, offset: int, bits: int, size: int = 2) -> None:
        for i in range(size):
            self.wmask[offset + i] |= (bits >> (8 * i)) & 0xFF

    def reset(self) -> None:
        self.data[:] = self._reset_image

    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset``; past the end reads as zeros (the caller bounds it)."""
        return bytes(self.data[offset : offset + count]).ljust(count, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        d, m = self.data, self.wmask
        for i, value in enumerate(data):
            pos = offset + i
            if pos >= CONFIG_SIZE:
                break
            d[pos] = (d[pos] & ~m[pos]) | (value & m[pos])

    @property
    def command(self) -> int:
        return int(struct.unpack_from("<H", self.data, PCI_COMMAND)[0])

    @property
    def msix_enabled(self) -> bool:
        control = struct.unpack_from("<H", self.data, CAP_MSIX + 2)[0]
        return bool(control & MSIX_ENABLE)
