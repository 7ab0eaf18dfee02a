"""Every command's reply schema and every event's schema, in one table each.

:data:`REPLIES` maps each command to the schema of its successful reply body and
:data:`EVENTS` each event number to its body's schema. The daemon's handler table is checked
against :data:`REPLIES` (a handler whose reply does not decode is a bug the tests catch), the
daemon builds its events from :data:`EVENTS`' schemas, and the SDK decodes with both.

Fields typed ``X | None`` without a default are always present and may be nil; with a default
of None they may be absent. SPEC.md §10 lists the same fields (a test compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .commands import Command
from .ids import UUID_LEN
from .messages import AuthReply, Empty, InfoReply, PingReply, StatsReply, VersionReply
from .messages_accel import (
    SUBMIT_MAX_DESCRIPTORS,
    DeviceInfo,
    IrqEvent,
    RegionInfo,
    RegionReadReply,
    RegionWriteReply,
    SubmitReply,
)
from .messages_ats import AtsInvalidateEvent
from .messages_iommu import DeviceOwnerEvent, DeviceRemovedEvent, FaultEvent, PageRequestEvent
from .schema import U8, U32, U64, Record, encode, required, text, u

# ---- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemRegionInfo(Record):
    region: int = u(*U32)
    phys: int = u(*U64)
    size: int = u(*U64)
    access: str = text(2)  # "rw" or "ro"
    mapped: int = u(*U32)  # domains' mappings that pin it
    owner: int = u(*U64)  # the session that registered it


@dataclass(frozen=True, slots=True)
class MemListReply(Record):
    regions: list[MemRegionInfo] = required()


# ---- the bus --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceDescription(Record):
    """``dev`` in SPEC §8.4: what a reply says about a device."""

    uuid: str = text(UUID_LEN)
    bus: str = text(64)
    parent: str | None = text(64)  # nil for a device an external emulator registered
    type_id: str | None = text(64)
    name: str = text(64)
    group_id: int | None = u(*U32)
    domain_id: int | None = u(*U32)
    default_domain_id: int | None = u(*U32)
    default_pasid: int = u(*U32)
    pasid_bits: int = u(0, 20)
    external: bool = required()
    #: an external device owned by a claimant, not its registrant (SPEC EVENT_DEVICE_OWNER)
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class RegisteredDevice(Record):
    """BUS_REGISTER_DEVICE: the device and the one-time token to hand to its owner."""

    uuid: str = text(UUID_LEN)
    bus: str = text(64)
    parent: str | None = text(64)
    type_id: str | None = text(64)
    name: str = text(64)
    group_id: int | None = u(*U32)
    domain_id: int | None = u(*U32)
    default_domain_id: int | None = u(*U32)
    default_pasid: int = u(*U32)
    pasid_bits: int = u(0, 20)
    external: bool = required()
    token: str = text(128)


@dataclass(frozen=True, slots=True)
class MdevType(Record):
    parent: str = text(64)
    type_id: str = text(64)
    name: str = text(64)
    description: str = text(4096)
    device_api: str = text(64)
    available_instances: int = u(*U32)
    pasid_bits: int = u(0, 20)


@dataclass(frozen=True, slots=True)
class TypesListReply(Record):
    types: list[MdevType] = required()


@dataclass(frozen=True, slots=True)
class MdevListReply(Record):
    devices: list[DeviceDescription] = required()


@dataclass(frozen=True, slots=True)
class GroupPasid(Record):
    pasid: int = u(*U32)
    domain_id: int = u(*U32)


@dataclass(frozen=True, slots=True)
class GroupInfo(Record):
    group_id: int = u(*U32)
    devices: list[str] = required()
    domain_id: int = u(*U32)
    default_domain_id: int = u(*U32)
    pasids: list[GroupPasid] = required()


@dataclass(frozen=True, slots=True)
class GroupListReply(Record):
    groups: list[GroupInfo] = required()


# ---- domains and map ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainInfo(Record):
    domain_id: int = u(*U32)
    type: str = text(16)
    bus: str = text(32)
    levels: int = u(0, 5)
    user_managed: bool = required()
    lazy: bool = required()
    pt_root_phys: int | None = u(*U64)  # user-managed only
    default_of_group: int | None = u(*U32)
    groups: list[int] = required()
    pasids: list[list[Any]] = required()  # [device uuid, pasid] pairs
    mapped_bytes: int = u(*U64)
    areas: int = u(*U64)


@dataclass(frozen=True, slots=True)
class DomainListReply(Record):
    domains: list[DomainInfo] = required()


@dataclass(frozen=True, slots=True)
class MapReply(Record):
    iova: int = u(*U64)
    size: int = u(*U64)


@dataclass(frozen=True, slots=True)
class UnmapReply(Record):
    unmapped: int = u(*U64)
    #: devices whose ATS invalidation did not complete in time (now fenced, SPEC §8.21)
    ats_timed_out: list[str] | None = None
    #: invalidations owed by this connection's own devices (not waited for, SPEC §8.21)
    ats_unacked: list[int] | None = None


@dataclass(frozen=True, slots=True)
class IovaToPhysReply(Record):
    phys: int = u(*U64)
    page_size: int = u(*U64)  # the leaf's size: 4 KiB, 2 MiB, 1 GiB (0: identity domain)


@dataclass(frozen=True, slots=True)
class IotlbEntry(Record):
    pasid: int = u(*U32)  # the PASID tagging the entry (an mdev's default PASID: RID2PASID)
    iova: int = u(*U64)  # the page's first IOVA
    page_size: int = u(*U32)  # the leaf's size: 4096, 2 MiB or 1 GiB
    phys: int = u(*U64)
    writable: bool = required()
    dirty: bool = required()
    hits: int = u(*U64)  # lookups it answered since it was cached
    referenced: bool = required()  # the CLOCK mark: hit since eviction last passed it


@dataclass(frozen=True, slots=True)
class IotlbEntriesReply(Record):
    entries: list[IotlbEntry] = required()
    total: int = u(*U32)  # entries cached for the domain (and PASID) asked about
    # where the next request starts (start_pasid, start_iova) when this reply was cut short
    next_pasid: int | None = u(*U32, default=None, nil=True)
    next_iova: int | None = u(*U64, default=None, nil=True)


@dataclass(frozen=True, slots=True)
class DirtyBitmapReply(Record):
    bitmap: bytes = text(64 << 20)
    page_size: int = u(*U32)
    pages: int = u(*U64)


@dataclass(frozen=True, slots=True)
class InvalidateReply(Record):
    invalidated: int = u(*U64)


# ---- DMA for emulators ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmaReadReply(Record):
    data: bytes = text(64 << 20)


@dataclass(frozen=True, slots=True)
class DmaWriteReply(Record):
    written: int = u(*U64)


@dataclass(frozen=True, slots=True)
class TranslateRun(Record):
    iova: int = u(*U64)
    phys: int = u(*U64)
    length: int = u(*U64)
    prot: int = u(*U8)
    # the leaf size behind the run: 4096, 2 MiB, 1 GiB (0: identity domain, no page table)
    page_size: int = u(*U32, default=0)


@dataclass(frozen=True, slots=True)
class TranslateFault(Record):
    iova: int = u(*U64)
    write: bool = required()
    reason: int = u(*U8)
    pasid: int = u(*U32)
    reason_name: str = text(64, default="")  # the reason's VT-d name, "" when unnamed


@dataclass(frozen=True, slots=True)
class TranslateReply(Record):
    runs: list[TranslateRun] = required()
    translated: int = u(*U64)
    fault: TranslateFault | None = required()  # the first fault, nil when the range translated


# ---- IOMMU extensions (SPEC §8.16-§8.20) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResvRegion(Record):
    start: int = u(*U64)
    last: int = u(*U64)  # inclusive
    type: str = text(16)  # msi | direct | reserved


@dataclass(frozen=True, slots=True)
class ResvRegionsReply(Record):
    regions: list[ResvRegion] = required()


@dataclass(frozen=True, slots=True)
class IovaRangeInfo(Record):
    start: int = u(*U64)
    last: int = u(*U64)


@dataclass(frozen=True, slots=True)
class IovaRangesReply(Record):
    num_iovas: int = u(*U32)
    iova_alignment: int = u(*U64)
    ranges: list[IovaRangeInfo] = required()


@dataclass(frozen=True, slots=True)
class DirtyTrackingReply(Record):
    enabled: bool = required()


@dataclass(frozen=True, slots=True)
class UnmapDirtyReply(Record):
    unmapped: int = u(*U64)
    bitmap: bytes = text(64 << 20)
    page_size: int = u(*U32)
    pages: int = u(*U64)
    ats_timed_out: list[str] | None = None  # as UnmapReply's
    ats_unacked: list[int] | None = None


@dataclass(frozen=True, slots=True)
class HwInfoReply(Record):
    out_data_type: int = u(*U32)
    data_len: int = u(*U32)
    data: bytes = text(4096)
    flags: int = u(*U32)
    cap_reg: int = u(*U64)
    ecap_reg: int = u(*U64)
    capabilities: int = u(*U64)
    max_pasid_log2: int = u(*U8)
    decoded: dict[str, Any] = required()  # the registers read back (SPEC §8.18)


@dataclass(frozen=True, slots=True)
class PageRequestReply(Record):
    """PAGE_REQUEST and TRIGGER_IOPF: the request's cookie and, when known, the answer."""

    request: int | None = u(*U64, nil=True)
    queued: bool | None = None  # not the group's last request: no response is owed
    code: int | None = u(*U8, default=None)  # the response code (SUCCESS 0, INVALID 1, FAILURE 0xF)
    by_iommu: bool | None = None  # no owner to ask: the IOMMU answered itself
    timed_out: bool | None = None
    cancelled: bool | None = None  # the device went before an answer
    owner_gone: bool | None = None  # the owner left: answered INVALID for it (iommufd)


@dataclass(frozen=True, slots=True)
class NestedDomainInfo(Record):
    domain_id: int = u(*U32)
    type: str = text(16)
    bus: str = text(32)
    levels: int = u(0, 5)
    user_managed: bool = required()
    lazy: bool = required()
    pt_root_phys: int | None = u(*U64)
    default_of_group: int | None = u(*U32)
    groups: list[int] = required()
    pasids: list[list[Any]] = required()
    mapped_bytes: int = u(*U64)
    areas: int = u(*U64)
    parent: int = u(*U32)  # the nest-parent (stage-2) domain
    pgtbl_addr: int = u(*U64)  # the stage-1 root, a guest-physical address


@dataclass(frozen=True, slots=True)
class HwptInvalidateReply(Record):
    entry_num: int = u(*U32)  # entries done, in order (iommufd's entry_num out)


@dataclass(frozen=True, slots=True)
class IrTableReply(Record):
    entries: int = u(0, 1 << 16)


@dataclass(frozen=True, slots=True)
class IrEntryReply(Record):
    index: int = u(0, (1 << 16) - 1)
    cached: bool = False  # the IEC holds a copy: it stays in use until IR_INVALIDATE_IEC


@dataclass(frozen=True, slots=True)
class IrInvalidateReply(Record):
    dropped: int = u(0, 1 << 16)  # cached entries the invalidation dropped


@dataclass(frozen=True, slots=True)
class MsiRemapReply(Record):
    vector: int = u(0, 255)
    index: int | None = u(0, (1 << 16) - 1, default=None, nil=True)  # None: direct delivery


# ---- the accelerator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccelDevicesReply(Record):
    devices: list[dict[str, Any]] = required()  # accel-config list's JSON, one map per device


@dataclass(frozen=True, slots=True)
class AccelSaveConfigReply(Record):
    config: list[dict[str, Any]] = required()


@dataclass(frozen=True, slots=True)
class AccelConfigDeviceReply(Record):
    dev: str = text(64)
    read_buffer_limit: int = u(*U32)
    event_log_size: int = u(*U32)


@dataclass(frozen=True, slots=True)
class AccelLoadConfigReply(Record):
    devices: list[dict[str, Any]] = required()  # as ACCEL_LIST
    messages: list[str] = required()  # what accel-config would print while loading
    enabled: list[str] = required()  # devices and WQs the load enabled


@dataclass(frozen=True, slots=True)
class AccelConfigGroupReply(Record):
    dev: str = text(64)
    read_buffers_reserved: int = u(*U32)
    use_read_buffer_limit: int = u(0, 1)
    read_buffers_allowed: int = u(*U32)
    traffic_class_a: int = u(*U8)
    traffic_class_b: int = u(*U8)


@dataclass(frozen=True, slots=True)
class AccelConfigEngineReply(Record):
    dev: str = text(64)
    group_id: int = u(-1, 0xFFFF)


@dataclass(frozen=True, slots=True)
class AccelConfigWqReply(Record):
    dev: str = text(64)
    group_id: int = u(-1, 0xFFFF)
    mode: str = text(16)
    size: int = u(*U32)
    type: str = text(16)
    name: str = text(64)
    driver_name: str = text(64)
    priority: int = u(*U32)
    prs_disable: int = u(0, 1)
    block_on_fault: int = u(0, 1)
    threshold: int = u(*U32)
    max_transfer_size: int = u(*U64)
    max_batch_size: int = u(*U32)
    ats_disable: int = u(0, 1)
    op_config: str = text(128)


# ---- persistent definitions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefinitionInfo(Record):
    uuid: str = text(UUID_LEN)
    parent: str = text(64)
    mdev_type: str = text(64)
    start: str = text(16)
    attrs: list[dict[str, Any]] = required()
    running: bool = required()
    claimed: bool = required()


@dataclass(frozen=True, slots=True)
class DefinitionRef(Record):
    uuid: str = text(UUID_LEN)
    parent: str = text(64)


@dataclass(frozen=True, slots=True)
class UndefineReply(Record):
    undefined: list[DefinitionRef] = required()  # every definition the UUID (and parent) named


@dataclass(frozen=True, slots=True)
class MdevDefineReply(Record):
    """One definition (the fields of :class:`DefinitionInfo`), or, for a batch define,
    ``definitions`` alone."""

    uuid: str | None = text(UUID_LEN, default=None)
    parent: str | None = text(64, default=None)
    mdev_type: str | None = text(64, default=None)
    start: str | None = text(16, default=None)
    attrs: list[dict[str, Any]] | None = None
    running: bool | None = None
    claimed: bool | None = None
    definitions: list[DefinitionInfo] | None = None

    @classmethod
    def one(cls, info: DefinitionInfo) -> MdevDefineReply:
        """The reply for one definition: its fields at the top level."""
        return cls(
            uuid=info.uuid,
            parent=info.parent,
            mdev_type=info.mdev_type,
            start=info.start,
            attrs=info.attrs,
            running=info.running,
            claimed=info.claimed,
        )

    def single(self) -> DefinitionInfo:
        """A one-definition reply as the :class:`DefinitionInfo` it carries."""
        if self.uuid is None or self.parent is None or self.mdev_type is None:
            raise ValueError("a batch define reply carries definitions, not one")
        return DefinitionInfo(
            uuid=self.uuid,
            parent=self.parent,
            mdev_type=self.mdev_type,
            start=self.start or "manual",
            attrs=self.attrs or [],
            running=bool(self.running),
            claimed=bool(self.claimed),
        )


@dataclass(frozen=True, slots=True)
class ListDefinedReply(Record):
    definitions: list[DefinitionInfo] = required()
    dumpjson: list[dict[str, Any]] | None = None  # without uuid: mdevctl's --dumpjson
    config: dict[str, Any] | None = None  # with uuid: that definition's single JSON


# ---- SVA and the user WQ char device -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SvaBindReply(Record):
    pasid: int = u(*U32)
    domain: int = u(*U32)


@dataclass(frozen=True, slots=True)
class WqOpenReply(Record):
    handle: int = u(*U64)
    pasid: int = u(*U32)
    mode: str = text(16)
    size: int = u(*U32)
    wq: str = text(64)
    domain: int = u(*U32)


@dataclass(frozen=True, slots=True)
class WqSubmitReply(Record):
    results: bytes = text(SUBMIT_MAX_DESCRIPTORS)  # one SUBMIT_* byte per descriptor


# ---- vfio-user endpoints --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VfioUserEndpoint(Record):
    uuid: str = text(UUID_LEN)
    path: str = text(4096)
    domain_id: int = u(*U32)
    dma_maps: int = u(*U32)


@dataclass(frozen=True, slots=True)
class AccelEvlReadReply(Record):
    size: int = u(*U32)
    head: int = u(*U32)
    tail: int = u(*U32)
    int_pending: bool = required()
    lost: int = u(*U64)
    entries: bytes = text(64 << 20)  # whole ``struct dsa_evl_entry`` records, head first


# ---- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShutdownEvent(Record):
    grace_s: float = required()


@dataclass(frozen=True, slots=True)
class EvlEvent(Record):
    device: str = text(64)
    entries: int = u(*U32)  # entries in the log (unread) when the event was raised


REPLIES: dict[int, type] = {
    Command.VERSION: VersionReply,
    Command.AUTH: AuthReply,
    Command.PING: PingReply,
    Command.INFO: InfoReply,
    Command.STATS: StatsReply,
    Command.MEM_REGISTER: MemRegionInfo,
    Command.MEM_UNREGISTER: Empty,
    Command.MEM_LIST: MemListReply,
    Command.TYPES_LIST: TypesListReply,
    Command.MDEV_CREATE: DeviceDescription,
    Command.MDEV_REMOVE: Empty,
    Command.MDEV_LIST: MdevListReply,
    Command.BUS_REGISTER_DEVICE: RegisteredDevice,
    Command.BUS_UNREGISTER_DEVICE: Empty,
    Command.DEVICE_CLAIM: DeviceDescription,
    Command.GROUP_INFO: GroupInfo,
    Command.GROUP_LIST: GroupListReply,
    Command.DOMAIN_ALLOC: DomainInfo,
    Command.DOMAIN_FREE: Empty,
    Command.DOMAIN_LIST: DomainListReply,
    Command.ATTACH_DEVICE: DeviceDescription,
    Command.DETACH_DEVICE: DeviceDescription,
    Command.ATTACH_PASID: Empty,
    Command.REPLACE_PASID: Empty,
    Command.DETACH_PASID: Empty,
    Command.MAP: MapReply,
    Command.UNMAP: UnmapReply,
    Command.IOVA_TO_PHYS: IovaToPhysReply,
    Command.IOTLB_ENTRIES: IotlbEntriesReply,
    Command.DIRTY_BITMAP: DirtyBitmapReply,
    Command.IOTLB_INVALIDATE: InvalidateReply,
    Command.PAGE_RESPONSE: Empty,
    Command.DMA_READ: DmaReadReply,
    Command.DMA_WRITE: DmaWriteReply,
    Command.TRANSLATE: TranslateReply,
    Command.DEVICE_GET_INFO: DeviceInfo,
    Command.DEVICE_GET_REGION_INFO: RegionInfo,
    Command.DEVICE_SET_IRQS: Empty,
    Command.REGION_READ: RegionReadReply,
    Command.REGION_WRITE: RegionWriteReply,
    Command.SUBMIT: SubmitReply,
    Command.ACCEL_LIST: AccelDevicesReply,
    Command.ACCEL_SAVE_CONFIG: AccelSaveConfigReply,
    Command.ACCEL_EVL_READ: AccelEvlReadReply,
    Command.ACCEL_LOAD_CONFIG: AccelLoadConfigReply,
    Command.ACCEL_CONFIG_DEVICE: AccelConfigDeviceReply,
    Command.ACCEL_CONFIG_GROUP: AccelConfigGroupReply,
    Command.ACCEL_CONFIG_ENGINE: AccelConfigEngineReply,
    Command.ACCEL_CONFIG_WQ: AccelConfigWqReply,
    Command.ACCEL_ENABLE_DEVICE: Empty,
    Command.ACCEL_DISABLE_DEVICE: Empty,
    Command.ACCEL_ENABLE_WQ: Empty,
    Command.ACCEL_DISABLE_WQ: Empty,
    Command.MDEV_DEFINE: MdevDefineReply,
    Command.MDEV_SET_ATTRS: Empty,
    Command.SVA_BIND: SvaBindReply,
    Command.SVA_UNBIND: Empty,
    Command.WQ_OPEN: WqOpenReply,
    Command.WQ_SUBMIT: WqSubmitReply,
    Command.WQ_CLOSE: Empty,
    Command.VFIO_USER_EXPOSE: VfioUserEndpoint,
    Command.VFIO_USER_UNEXPOSE: Empty,
    Command.MDEV_UNDEFINE: UndefineReply,
    Command.MDEV_START: DeviceDescription,
    Command.MDEV_STOP: Empty,
    Command.MDEV_LIST_DEFINED: ListDefinedReply,
    Command.DEVICE_RESV_REGIONS: ResvRegionsReply,
    Command.DEVICE_RESV_ADD: ResvRegionsReply,
    Command.IOVA_RANGES: IovaRangesReply,
    Command.ALLOW_IOVAS: Empty,
    Command.SET_DIRTY_TRACKING: DirtyTrackingReply,
    Command.GET_DIRTY_BITMAP: DirtyBitmapReply,
    Command.GET_HW_INFO: HwInfoReply,
    Command.UNMAP_DIRTY: UnmapDirtyReply,
    Command.PAGE_REQUEST: PageRequestReply,
    Command.TRIGGER_IOPF: PageRequestReply,
    Command.NESTED_ALLOC: NestedDomainInfo,
    Command.HWPT_INVALIDATE: HwptInvalidateReply,
    Command.ATS_INVALIDATE_DONE: Empty,
    Command.IR_TABLE_SET: IrTableReply,
    Command.IR_SET_ENTRY: IrEntryReply,
    Command.IR_CLEAR_ENTRY: IrEntryReply,
    Command.IR_INVALIDATE_IEC: IrInvalidateReply,
    Command.DEVICE_SET_MSI_REMAP: MsiRemapReply,
}

EVENTS: dict[int, type] = {
    Command.EVENT_FAULT: FaultEvent,
    Command.EVENT_PAGE_REQUEST: PageRequestEvent,
    Command.EVENT_IRQ: IrqEvent,
    Command.EVENT_DEVICE_REMOVED: DeviceRemovedEvent,
    Command.EVENT_DEVICE_OWNER: DeviceOwnerEvent,
    Command.EVENT_SHUTDOWN: ShutdownEvent,
    Command.EVENT_EVL: EvlEvent,
    Command.EVENT_ATS_INVALIDATE: AtsInvalidateEvent,
}
_EVENT_NUMBERS = {schema: command for command, schema in EVENTS.items()}


def event_message(event: Any) -> tuple[int, dict[str, Any]]:
    """``(command, body)`` of an event schema instance, ready to queue or send."""
    return _EVENT_NUMBERS[type(event)], encode(event)
