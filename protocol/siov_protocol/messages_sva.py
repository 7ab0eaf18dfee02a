"""Bodies of the SVA commands: binding a PASID to a client process's own address space, and
the char-device view of user work queues (``/dev/dsa/wqD.Q``: open, submit, close).

SVA_BIND and WQ_OPEN carry two fds, in this order: the bound process's own ``/proc/self/mem``
(opened ``O_RDWR`` by that process: its consent) and its ``/proc/self/maps`` (``O_RDONLY``).
The PASID is always the daemon's choice. See SPEC.md §8.13.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .ids import PASID_MAX, UUID_LEN
from .schema import U32, text, u

DESC_SIZE: Final = 64
#: The fds SVA_BIND and WQ_OPEN take: /proc/self/mem, then /proc/self/maps.
SVA_FDS: Final = 2
#: The most descriptors one WQ_SUBMIT carries.
WQ_SUBMIT_MAX_DESCRIPTORS: Final = 4096

# One byte per descriptor in WQ_SUBMIT's ``results`` (the same values as SUBMIT's).
WQ_ACCEPTED: Final = 0
WQ_RETRY: Final = 1  # ENQCMD's ZF=1: the shared WQ is full, submit it again
WQ_DROPPED: Final = 2  # a posted MOVDIR64B to a full dedicated WQ: lost, and counted

WQ_MODE_DEDICATED: Final = "dedicated"
WQ_MODE_SHARED: Final = "shared"


@dataclass(frozen=True, slots=True)
class SvaBind:
    """``iommu_sva_bind_device(dev, mm)``: two fds ride with the message (mem, maps)."""

    dev: str = text(UUID_LEN)


@dataclass(frozen=True, slots=True)
class SvaBindReply:
    pasid: int = u(1, PASID_MAX)
    domain: int = u(*U32)  # the SVA domain's id (for IOTLB_INVALIDATE and fault records)


@dataclass(frozen=True, slots=True)
class SvaUnbind:
    dev: str = text(UUID_LEN)
    pasid: int = u(1, PASID_MAX)


@dataclass(frozen=True, slots=True)
class WqOpen:
    """``open("/dev/dsa/wqD.Q", O_RDWR)``: two fds ride with the message (mem, maps)."""

    device: str = text(64)  # "dsa0"
    wq: int = u(0, 255)  # the WQ's index: 1 for wq0.1


@dataclass(frozen=True, slots=True)
class WqOpenReply:
    handle: int = u(*U32)
    pasid: int = u(1, PASID_MAX)
    mode: str = text(16)  # "dedicated" | "shared"
    size: int = u(*U32)
    wq: str = text(64)  # "wq0.1"
    domain: int = u(*U32)


@dataclass(frozen=True, slots=True)
class WqSubmit:
    """Descriptors written to the opened WQ's portal, 64 bytes each, back to back."""

    handle: int = u(*U32)
    descriptors: bytes = text(WQ_SUBMIT_MAX_DESCRIPTORS * DESC_SIZE)


@dataclass(frozen=True, slots=True)
class WqSubmitReply:
    results: bytes = text(WQ_SUBMIT_MAX_DESCRIPTORS)


@dataclass(frozen=True, slots=True)
class WqClose:
    handle: int = u(*U32)
