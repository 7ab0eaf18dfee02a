"""Features: what VERSION negotiates beyond limits, and what each one gates (SPEC §6.1).

A feature is a name. The client proposes a list; the agreed list is the daemon's features that
the client named (unknown names are left out, so a newer client can talk to an older daemon and
read the reply to learn what it got). A proposal without ``features`` asks for every feature; an
empty list asks for none. A command gated by a feature that was not agreed is refused with
``EOPNOTSUPP`` before its body is read; an event gated by one is never sent.
"""

from __future__ import annotations

import errno
from collections.abc import Collection, Iterable

from .commands import Command

EVENTS = "events"
FD_MEMORY = "fd-memory"
DMA = "dma"
DSA = "dsa"
SVA = "sva"

FEATURES: tuple[str, ...] = (EVENTS, FD_MEMORY, DMA, DSA, SVA)

# Commands that need a feature. Everything not listed needs none.
COMMAND_FEATURE: dict[int, str] = {
    Command.MEM_REGISTER: FD_MEMORY,
    Command.MEM_UNREGISTER: FD_MEMORY,
    Command.MEM_LIST: FD_MEMORY,
    Command.DMA_READ: DMA,
    Command.DMA_WRITE: DMA,
    Command.TRANSLATE: DMA,
    Command.ATS_INVALIDATE_DONE: DMA,  # only a device that translates is invalidated
    Command.DEVICE_GET_INFO: DSA,
    Command.DEVICE_GET_REGION_INFO: DSA,
    Command.DEVICE_SET_IRQS: DSA,
    Command.REGION_READ: DSA,
    Command.REGION_WRITE: DSA,
    Command.SUBMIT: DSA,
    Command.PAGE_RESPONSE: DSA,
    Command.ACCEL_LIST: DSA,
    Command.ACCEL_CONFIG_DEVICE: DSA,
    Command.ACCEL_CONFIG_GROUP: DSA,
    Command.ACCEL_CONFIG_ENGINE: DSA,
    Command.ACCEL_CONFIG_WQ: DSA,
    Command.ACCEL_ENABLE_DEVICE: DSA,
    Command.ACCEL_DISABLE_DEVICE: DSA,
    Command.ACCEL_ENABLE_WQ: DSA,
    Command.ACCEL_DISABLE_WQ: DSA,
    Command.ACCEL_LOAD_CONFIG: DSA,
    Command.ACCEL_SAVE_CONFIG: DSA,
    Command.ACCEL_EVL_READ: DSA,
    # interrupt remapping serves the accelerator's MSI-X vectors (SPEC §8.22)
    Command.IR_TABLE_SET: DSA,
    Command.IR_SET_ENTRY: DSA,
    Command.IR_CLEAR_ENTRY: DSA,
    Command.IR_INVALIDATE_IEC: DSA,
    Command.DEVICE_SET_MSI_REMAP: DSA,
    Command.VFIO_USER_EXPOSE: DSA,
    Command.VFIO_USER_UNEXPOSE: DSA,
    Command.SVA_BIND: SVA,
    Command.SVA_UNBIND: SVA,
    Command.WQ_OPEN: SVA,
    Command.WQ_SUBMIT: SVA,
    Command.WQ_CLOSE: SVA,
}

# Events need "events"; these need another feature as well.
EVENT_FEATURE: dict[int, str] = {
    Command.EVENT_PAGE_REQUEST: DSA,
    Command.EVENT_IRQ: DSA,
    Command.EVENT_EVL: DSA,
    Command.EVENT_ATS_INVALIDATE: DMA,
}


def negotiate(proposed: Iterable[str] | None) -> list[str]:
    """The agreed features, in the daemon's order: ``None`` (not proposed) means all."""
    if proposed is None:
        return list(FEATURES)
    wanted = set(proposed)
    return [f for f in FEATURES if f in wanted]


def command_refusal(command: int, agreed: Collection[str], name: str) -> tuple[int, str] | None:
    """Why ``command`` may not run on a connection that agreed ``agreed``, or None."""
    feature = COMMAND_FEATURE.get(command)
    if feature is None or feature in agreed:
        return None
    return errno.EOPNOTSUPP, f"{name} needs the feature {feature!r}, not negotiated by VERSION"


def accelerator_refusal(agreed: Collection[str], what: str) -> tuple[int, str] | None:
    """Why an accelerator device may not be created or claimed here (parent ``dsa*``)."""
    if DSA in agreed:
        return None
    return errno.EOPNOTSUPP, f"{what} needs the feature 'dsa', not negotiated by VERSION"


def event_allowed(command: int, agreed: Collection[str]) -> bool:
    """Whether an event may be sent on a connection that agreed ``agreed``."""
    if EVENTS not in agreed:
        return False
    feature = EVENT_FEATURE.get(command)
    return feature is None or feature in agreed
