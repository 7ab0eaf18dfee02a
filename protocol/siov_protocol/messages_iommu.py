"""Bodies of the memory, bus, IOMMU and DMA commands, and of the IOMMU's events.

Ids: memory regions, groups and domains are small integers the daemon assigns; devices are
UUID strings. Addresses and sizes are u64.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import PASID_BITS, PASID_MAX, UUID_LEN
from .schema import U8, U32, U64, Record, text, u

# prot bits of MAP, as iommufd's IOMMU_IOAS_MAP_READABLE/WRITEABLE mean them
PROT_READ = 1
PROT_WRITE = 2


# ---- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemRegister:
    """One fd rides with the message: the memory (a memfd or any mmap-able file)."""

    size: int = u(1, 1 << 46)
    offset: int = u(*U64, default=0)
    access: str = text(2, default="rw")  # "rw" or "ro": what devices may do there


@dataclass(frozen=True, slots=True)
class MemRegion:
    region: int = u(*U32)


# ---- bus ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MdevCreate:
    parent: str = text(64)
    type_id: str = text(64)
    uuid: str | None = text(UUID_LEN, default=None)


@dataclass(frozen=True, slots=True)
class DeviceRef:
    uuid: str = text(UUID_LEN)


@dataclass(frozen=True, slots=True)
class BusRegisterDevice:
    name: str = text(64)
    pasid_bits: int = u(0, PASID_BITS, default=PASID_BITS)


@dataclass(frozen=True, slots=True)
class DeviceClaim:
    uuid: str = text(UUID_LEN)
    token: str | None = text(128, default=None)  # not needed for a started definition


@dataclass(frozen=True, slots=True)
class GroupRef:
    group: int = u(*U32)


# ---- domains and attach ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainAlloc:
    bus: str = text(32, default="mdev")
    type: str = text(16, default="paging")  # paging | identity | blocked
    levels: int = u(4, 5, default=4)
    user_managed: bool = False
    lazy: bool = False
    pt_root: int | None = u(*U64, default=None)  # user-managed: root table in your memory
    dirty_tracking: bool = False  # SPEC §8.17: D set only while SET_DIRTY_TRACKING enables
    nest_parent: bool = False  # SPEC §8.20: may be the stage 2 of nested domains


@dataclass(frozen=True, slots=True)
class DomainRef:
    domain: int = u(*U32)


@dataclass(frozen=True, slots=True)
class AttachDevice:
    domain: int = u(*U32)
    device: str = text(UUID_LEN)


@dataclass(frozen=True, slots=True)
class DetachDevice:
    device: str = text(UUID_LEN)
    domain: int | None = u(*U32, default=None)  # when given, must be the attached domain


@dataclass(frozen=True, slots=True)
class PasidAttach:
    domain: int = u(*U32)
    device: str = text(UUID_LEN)
    pasid: int = u(*U32)


@dataclass(frozen=True, slots=True)
class PasidDetach:
    device: str = text(UUID_LEN)
    pasid: int = u(*U32)
    domain: int | None = u(*U32, default=None)


# ---- map / unmap ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Map:
    domain: int = u(*U32)
    phys: int = u(*U64)
    size: int = u(*U64)  # 0 is EINVAL (the model's rule, as the kernel's)
    iova: int | None = u(*U64, default=None)  # None: the daemon picks one (auto-IOVA)
    prot: int = u(1, 3, default=PROT_READ | PROT_WRITE)


@dataclass(frozen=True, slots=True)
class Unmap:
    domain: int = u(*U32)
    iova: int = u(*U64)
    size: int = u(*U64)  # iova 0 and size 2**64-1 unmap everything


@dataclass(frozen=True, slots=True)
class IovaToPhys:
    domain: int = u(*U32)
    iova: int = u(*U64)


@dataclass(frozen=True, slots=True)
class IotlbEntries:
    """What the IOTLB caches for a domain: every PASID entry of it, or ``pasid``'s only,
    from (``pasid``, ``iova``) on (``after`` continues a listing a reply cut short)."""

    domain: int = u(*U32)
    pasid: int | None = u(0, PASID_MAX, default=None, nil=True)
    start_pasid: int = u(0, PASID_MAX, default=0)
    start_iova: int = u(*U64, default=0)
    max_entries: int = u(1, 4096, default=1024)


@dataclass(frozen=True, slots=True)
class DirtyBitmap:
    domain: int = u(*U32)
    iova: int = u(*U64)
    size: int = u(1, 1 << 40)
    clear: bool = False


@dataclass(frozen=True, slots=True)
class IotlbInvalidate:
    scope: str = text(16)  # global | domain | pasid | range
    domain: int | None = u(*U32, default=None)
    device: str | None = text(UUID_LEN, default=None)
    pasid: int | None = u(0, PASID_MAX, default=None)
    iova: int | None = u(*U64, default=None)
    am: int = u(0, 52, default=0)  # range: 2**am pages of 4 KiB, aligned


@dataclass(frozen=True, slots=True)
class PageResponse:
    request: int = u(*U64)
    code: int = u(0, 2)  # iommufd: SUCCESS 0, INVALID 1, FAILURE 2


# ---- external emulators: DMA through the IOMMU --------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmaRead:
    device: str = text(UUID_LEN)
    iova: int = u(*U64)
    length: int = u(0, 1 << 26)
    pasid: int = u(0, PASID_MAX, default=0)


@dataclass(frozen=True, slots=True)
class DmaWrite:
    device: str = text(UUID_LEN)
    iova: int = u(*U64)
    data: bytes = text(1 << 26)
    pasid: int = u(0, PASID_MAX, default=0)


@dataclass(frozen=True, slots=True)
class Translate:
    device: str = text(UUID_LEN)
    iova: int = u(*U64)
    length: int = u(1, U64[1])
    write: bool = False
    pasid: int = u(0, PASID_MAX, default=0)


# ---- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultEvent(Record):
    device: str
    pasid: int = u(*U32)
    iova: int = u(*U64)
    reason: int = u(*U8)  # VT-d fault reason
    write: bool = False
    reason_name: str = text(64, default="")
    domain: int | None = u(*U32, default=None, nil=True)
    # The descriptor whose DMA faulted (absent for an emulator's DMA_READ/DMA_WRITE): its WQ,
    # opcode, completion-record address and index in its batch (nil: not in a batch).
    wq: str | None = text(64, default=None, nil=True)
    opcode: int | None = u(*U8, default=None, nil=True)
    completion_addr: int | None = u(*U64, default=None, nil=True)
    batch_index: int | None = u(*U32, default=None, nil=True)


@dataclass(frozen=True, slots=True)
class PageRequestPage(Record):
    iova: int = u(*U64)
    perm: int = u(0, 15)


@dataclass(frozen=True, slots=True)
class PageRequestEvent(Record):
    request: int = u(*U64)
    device: str = text(UUID_LEN)
    pasid: int = u(*U32)
    iova: int = u(*U64)
    write: bool = False
    domain: int | None = u(*U32, default=None, nil=True)
    # PRI fields (SPEC §8.19); absent in a block-on-fault request of the accelerator
    pasid_valid: bool | None = None  # False: a request without PASID (the RID's)
    grpid: int | None = u(0, 511, default=None)  # PCIe page request group index
    perm: int | None = u(0, 15, default=None)  # READ 1, WRITE 2, EXEC 4, PRIV 8
    pages: list[PageRequestPage] | None = None  # every request of the group, in order
    last: bool | None = None  # the group's last request (the one answered)


@dataclass(frozen=True, slots=True)
class DeviceRemovedEvent(Record):
    uuid: str = text(UUID_LEN)
    reason: str = text(64, default="")


@dataclass(frozen=True, slots=True)
class DeviceOwnerEvent(Record):
    """To an external emulator: another client claimed its device, or released it (the
    owner left; the device is reset and the emulator's own again)."""

    uuid: str = text(UUID_LEN)
    change: str = text(16)  # "claimed" | "released"
    client: str = text(64, default="")  # the claimant's VERSION name
