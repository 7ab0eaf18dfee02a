"""Bodies of the IOMMU extension commands (SPEC §8.16-§8.20): reserved regions and IOVA ranges,
dirty-tracking control, hardware information."""

from __future__ import annotations

from dataclasses import dataclass

from .ids import PASID_MAX, UUID_LEN
from .schema import U32, U64, items, text, u


@dataclass(frozen=True, slots=True)
class ResvRegions:
    device: str = text(UUID_LEN)


@dataclass(frozen=True, slots=True)
class ResvAdd:
    device: str = text(UUID_LEN)
    start: int = u(*U64)
    last: int = u(*U64)
    type: str = text(16, default="reserved")  # direct | reserved


@dataclass(frozen=True, slots=True)
class IovaRanges:
    domain: int = u(*U32)
    num_iovas: int | None = u(*U32, default=None)  # the caller's array length; None: any


@dataclass(frozen=True, slots=True)
class IovaRange:
    start: int = u(*U64)
    last: int = u(*U64)


@dataclass(frozen=True, slots=True)
class AllowIovas:
    domain: int = u(*U32)
    ranges: list[IovaRange] = items(256)  # empty: the whole aperture again


@dataclass(frozen=True, slots=True)
class SetDirtyTracking:
    domain: int = u(*U32)
    enable: bool = False


@dataclass(frozen=True, slots=True)
class GetDirtyBitmap:
    domain: int = u(*U32)
    iova: int = u(*U64)
    size: int = u(*U64)
    page_size: int = u(*U64, default=4096)
    no_clear: bool = False  # iommufd IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR


@dataclass(frozen=True, slots=True)
class UnmapDirty:
    domain: int = u(*U32)
    iova: int = u(*U64)
    size: int = u(*U64)
    page_size: int = u(*U64, default=4096)


@dataclass(frozen=True, slots=True)
class GetHwInfo:
    device: str = text(UUID_LEN)
    data_len: int = u(0, 4096, default=24)  # bytes of iommu_hw_info_vtd wanted
    flags: int = u(*U32, default=0)  # none defined: non-zero is EOPNOTSUPP, as iommufd


@dataclass(frozen=True, slots=True)
class PageRequestMsg:
    """PAGE_REQUEST (an emulator's PRI request) and TRIGGER_IOPF (fault injection)."""

    device: str = text(UUID_LEN)
    iova: int = u(*U64)
    pasid: int | None = u(0, PASID_MAX, default=None)  # None: no PASID (the RID's)
    write: bool = False
    read: bool = True
    exec: bool = False
    priv: bool = False
    grpid: int = u(0, 511, default=0)  # PCIe PRG index, 9 bits
    last: bool = True  # the group's last request: only it gets a response


@dataclass(frozen=True, slots=True)
class NestedAlloc:
    parent: int = u(*U32)  # a domain allocated with nest_parent
    pgtbl_addr: int = u(*U64)  # stage-1 root, a stage-2 (guest-physical) address
    addr_width: int = u(0, 64, default=48)  # 48 (4 levels) or 57 (5 levels)
    flags: int = u(*U32, default=0)  # iommu_hwpt_vtd_s1: SRE 1, EAFE 2, WPE 4


@dataclass(frozen=True, slots=True)
class S1Invalidate:
    addr: int = u(*U64)
    npages: int = u(*U64)
    flags: int = u(*U32, default=0)  # IOMMU_VTD_INV_FLAGS_LEAF 1


@dataclass(frozen=True, slots=True)
class HwptInvalidate:
    domain: int = u(*U32)
    entries: list[S1Invalidate] = items(4096)


# -- interrupt remapping (SPEC §8.22) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IrTableSet:
    """IR_TABLE_SET: the caller's interrupt remapping table (IRTA); 0 entries removes it."""

    entries: int = u(0, 1 << 16)


@dataclass(frozen=True, slots=True)
class IrSetEntry:
    index: int = u(0, (1 << 16) - 1)
    vector: int = u(0, 255)  # the device's MSI-X vector the interrupt is delivered to
    dest_id: int = u(*U32, default=0)
    source: str | None = text(UUID_LEN, default=None)  # the device allowed (None: any, SVT=0)
    fpd: bool = False  # fault processing disable: block without a fault record
    present: bool = True
    rsvd: int = u(*U64, default=0)  # the entry's reserved bits (non-zero faults at use: 0x24)


@dataclass(frozen=True, slots=True)
class IrClearEntry:
    index: int = u(0, (1 << 16) - 1)


@dataclass(frozen=True, slots=True)
class IrInvalidateIec:
    """VT-d's IEC invalidate descriptor: global (``index`` None) or index-selective."""

    index: int | None = u(0, (1 << 16) - 1, default=None)
    mask: int = u(0, 31, default=0)  # IM: 2^mask entries from an aligned index


@dataclass(frozen=True, slots=True)
class SetMsiRemap:
    """DEVICE_SET_MSI_REMAP: program an MSI-X vector's message (address, data); ``address``
    None returns the vector to direct delivery."""

    device: str = text(UUID_LEN)
    vector: int = u(0, 255)
    address: int | None = u(*U32, default=None)
    data: int = u(*U32, default=0)
