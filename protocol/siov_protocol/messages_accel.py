"""Bodies of the accelerator commands and the interrupt event.

Three groups:

* the vfio-user device commands, addressed to one device by UUID (one socket serves many
  devices): DEVICE_GET_INFO, DEVICE_GET_REGION_INFO, DEVICE_SET_IRQS, REGION_READ,
  REGION_WRITE. Their fields keep vfio-user's names and numbering (``linux/vfio.h``);
* submission: SUBMIT (descriptors in one ``bin``, the fast path); PAGE_RESPONSE's body is
  :class:`siov_protocol.messages_iommu.PageResponse`;
* configuration, accel-config style: ACCEL_* with accel-config's object names (``dsa0``,
  ``dsa0/wq0.1``, ``dsa0/group0.0``, ``dsa0/engine0.2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .ids import PASID_MAX, UUID_LEN
from .schema import U8, U32, U64, Record, items, required, text, u

DESC_SIZE: Final = 64
#: The most descriptors one SUBMIT carries (256 KiB of descriptors).
SUBMIT_MAX_DESCRIPTORS: Final = 4096

# vfio-pci region and IRQ indexes (linux/vfio.h VFIO_PCI_*_REGION_INDEX / *_IRQ_INDEX).
REGION_BAR0: Final = 0
REGION_BAR2: Final = 2
NUM_REGIONS: Final = 9  # BAR0-5, ROM, CONFIG, VGA
IRQ_INTX: Final = 0
IRQ_MSI: Final = 1
IRQ_MSIX: Final = 2
IRQ_ERR: Final = 3
IRQ_REQ: Final = 4
NUM_IRQS: Final = 5

# DEVICE_GET_INFO flags (VFIO_DEVICE_FLAGS_*).
DEVICE_FLAGS_RESET: Final = 1 << 0
DEVICE_FLAGS_PCI: Final = 1 << 1

# DEVICE_GET_REGION_INFO flags (VFIO_REGION_INFO_FLAG_*).
REGION_FLAG_READ: Final = 1 << 0
REGION_FLAG_WRITE: Final = 1 << 1
REGION_FLAG_MMAP: Final = 1 << 2

# DEVICE_SET_IRQS flags (VFIO_IRQ_SET_*).
IRQ_SET_DATA_NONE: Final = 1 << 0
IRQ_SET_DATA_BOOL: Final = 1 << 1
IRQ_SET_DATA_EVENTFD: Final = 1 << 2
IRQ_SET_ACTION_MASK: Final = 1 << 3
IRQ_SET_ACTION_UNMASK: Final = 1 << 4
IRQ_SET_ACTION_TRIGGER: Final = 1 << 5
IRQ_SET_DATA_TYPE_MASK: Final = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_TYPE_MASK: Final = (
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER
)

# One byte per descriptor in SUBMIT's ``results`` (and REGION_WRITE's ``result``).
SUBMIT_ACCEPTED: Final = 0
SUBMIT_RETRY: Final = 1  # ENQCMD answered ZF=1: the shared WQ is full
SUBMIT_DROPPED: Final = 2  # MOVDIR64B to a full (or disabled) dedicated WQ: lost

# PAGE_RESPONSE codes (iommufd's IOMMU_PAGE_RESP_*).
PAGE_RESP_SUCCESS: Final = 0
PAGE_RESP_INVALID: Final = 1
PAGE_RESP_FAILURE: Final = 2


# ---- vfio-user device commands -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfoRequest:
    device: str = text(UUID_LEN)


@dataclass(frozen=True, slots=True)
class WqInfo(Record):
    """The work queue an accelerator mdev submits to (SPEC §8.12): what a client needs to
    size its submissions without reading BAR0's WQCFG."""

    name: str = text(64)  # accel-config's: "wq0.1"
    mode: str = text(16)  # "dedicated" or "shared"
    size: int = u(*U32)  # entries: a dedicated WQ drops past them, a shared one answers retry
    threshold: int = u(*U32)  # shared: the limited portal's entries (0 for dedicated)
    block_on_fault: bool = required()
    max_batch_size: int = u(*U32)
    max_transfer_size: int = u(*U64)


@dataclass(frozen=True, slots=True)
class DeviceInfo(Record):
    flags: int = u(*U32)
    num_regions: int = u(*U32)
    num_irqs: int = u(*U32)
    wq: WqInfo | None = None  # the mdev's WQ (siov's addition to vfio-user's reply)


@dataclass(frozen=True, slots=True)
class RegionInfoRequest:
    device: str = text(UUID_LEN)
    index: int = u(*U32)


@dataclass(frozen=True, slots=True)
class RegionInfo(Record):
    index: int = u(*U32)
    flags: int = u(*U32)
    size: int = u(*U64)
    offset: int = u(*U64, default=0)


@dataclass(frozen=True, slots=True)
class SetIrqs:
    """``struct vfio_irq_set`` without argsz; eventfds ride on the message, one per vector
    of ``[start, start + count)`` (DATA_EVENTFD); DATA_BOOL puts ``count`` bytes in ``data``."""

    device: str = text(UUID_LEN)
    flags: int = u(*U32)
    index: int = u(*U32)
    start: int = u(*U32, default=0)
    count: int = u(*U32, default=0)
    data: bytes | None = text(256, default=None)


@dataclass(frozen=True, slots=True)
class RegionRead:
    device: str = text(UUID_LEN)
    region: int = u(*U32)
    offset: int = u(*U64)
    count: int = u(0, 1 << 20)


@dataclass(frozen=True, slots=True)
class RegionReadReply(Record):
    region: int = u(*U32)
    offset: int = u(*U64)
    count: int = u(*U32)
    data: bytes = text(1 << 20)


@dataclass(frozen=True, slots=True)
class RegionWrite:
    """A write into a region; into BAR2 it is a portal write (64 bytes, aligned): MOVDIR64B
    for a dedicated WQ, ENQCMD (with ``pasid``, default the mdev's) for a shared one."""

    device: str = text(UUID_LEN)
    region: int = u(*U32)
    offset: int = u(*U64)
    data: bytes = text(1 << 20)
    count: int | None = u(*U32, default=None)  # vfio-user's count; must equal len(data)
    pasid: int | None = u(1, PASID_MAX, default=None)


@dataclass(frozen=True, slots=True)
class RegionWriteReply(Record):
    region: int = u(*U32)
    offset: int = u(*U64)
    count: int = u(*U32)
    result: int = u(*U8)  # SUBMIT_ACCEPTED / SUBMIT_RETRY / SUBMIT_DROPPED


# ---- submission ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Descriptors for an accelerator mdev's WQ, 64 bytes each, back to back in one ``bin``."""

    device: str = text(UUID_LEN)
    descriptors: bytes = text(SUBMIT_MAX_DESCRIPTORS * DESC_SIZE)
    pasid: int | None = u(1, PASID_MAX, default=None)  # shared WQ only (ENQCMD's PASID)
    limited: bool = False  # shared WQ: the limited portal (the WQ's threshold applies)


@dataclass(frozen=True, slots=True)
class SubmitReply(Record):
    accepted: int = u(*U32)
    retry: int = u(*U32)
    dropped: int = u(*U32)
    results: bytes = text(SUBMIT_MAX_DESCRIPTORS)  # one SUBMIT_* byte per descriptor


# ---- configuration (accel-config) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccelDevice:
    device: str = text(64)


@dataclass(frozen=True, slots=True)
class AccelWq:
    wq: str = text(64)  # "dsa0/wq0.1" or "wq0.1"


@dataclass(frozen=True, slots=True)
class AccelConfigDevice:
    device: str = text(64)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccelEvlRead:
    device: str = text(64)
    max: int = u(1, 0xFFFF, default=64)  # entries to consume at most
    arm: bool = False  # send EVENT_EVL once when the next entry is written


@dataclass(frozen=True, slots=True)
class AccelConfigGroup:
    group: str = text(64)  # "dsa0/group0.0" or "group0.0"
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccelConfigEngine:
    engine: str = text(64)  # "dsa0/engine0.1" or "engine0.1"
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccelConfigWq:
    wq: str = text(64)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccelLoadConfig:
    """``accel-config load-config``: the JSON array ``save-config`` writes."""

    config: list[dict[str, Any]] = items(64)
    enable: bool = False
    #: ``-f``: disable a listed device that is enabled instead of skipping it
    force: bool = False


# ---- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IrqEvent(Record):
    """An interrupt of an accelerator mdev: ``vector`` 1 for completions, 0 for errors.

    ``swerr`` (vector 0) describes a software error, as the device's SWERR register does.
    """

    device: str = text(UUID_LEN)
    vector: int = u(*U32)
    swerr: dict[str, Any] | None = None
