"""Bodies of the device-TLB (ATS) invalidation command and event (SPEC §8.21)."""

from __future__ import annotations

from dataclasses import dataclass

from .ids import PASID_MAX, UUID_LEN
from .schema import U64, Record, required, text, u


@dataclass(frozen=True, slots=True)
class AtsInvalidateDone:
    """The device has dropped every cached translation the invalidation ``cookie`` named."""

    device: str = text(UUID_LEN)
    cookie: int = u(1, U64[1])


@dataclass(frozen=True, slots=True)
class AtsInvalidateEvent(Record):
    """A device-TLB invalidation, as VT-d's Device-TLB Invalidate Descriptor: the PASID, and
    ``4096 << am`` bytes at ``iova`` (aligned to that size); ``all``: every address of it."""

    cookie: int = u(*U64)
    device: str = text(UUID_LEN)
    pasid: int = u(0, PASID_MAX)  # as the device gave it to TRANSLATE (0: without PASID)
    iova: int = u(*U64)
    am: int = u(0, 52)
    all: bool = required()
