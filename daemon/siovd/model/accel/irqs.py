"""An accelerator mdev's interrupts as vfio-user sets them (libvfio-user ``irq.c``): which
DEVICE_SET_IRQS requests are valid and what each asks for. The service installs the eventfds
and signals them; the rules are the device's and live here.

The mdev has MSI-X (index ``IRQ_MSIX``) with :data:`~siovd.model.accel.parent.MDEV_IRQ_COUNT`
vectors and no other interrupts; MSI-X vectors cannot be masked.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

from siov_protocol.messages_accel import (
    IRQ_MSIX,
    IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_ACTION_TYPE_MASK,
    IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
    IRQ_SET_DATA_TYPE_MASK,
    NUM_IRQS,
)
from siovd.model.accel.parent import MDEV_IRQ_COUNT
from siovd.model.errors import SiovError


@dataclass(frozen=True, slots=True)
class IrqPlan:
    """What a valid DEVICE_SET_IRQS does: ``disable`` every vector of the index (when it is
    MSI-X), ``install`` the message's eventfds for ``vectors``, or ``fire`` ``vectors``."""

    action: Literal["disable", "install", "fire"]
    vectors: tuple[int, ...] = ()
    msix: bool = True


def plan_set_irqs(
    flags: int, index: int, start: int, count: int, fds: int, data: bytes | None
) -> IrqPlan:
    """Check a DEVICE_SET_IRQS (``fds`` eventfds on the message) against vfio-user's rules:
    one data type and one action; eventfds only with DATA_EVENTFD and exactly one per vector;
    ``count`` 0 with DATA_NONE disables the whole index. ``EINVAL`` with the rule otherwise."""
    data_type = flags & IRQ_SET_DATA_TYPE_MASK
    action = flags & IRQ_SET_ACTION_TYPE_MASK
    if flags & ~(IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK):
        raise SiovError(errno.EINVAL, f"flags {flags:#x} has unknown bits")
    if data_type.bit_count() != 1 or action.bit_count() != 1:
        raise SiovError(errno.EINVAL, "flags need exactly one DATA_* and one ACTION_* bit")
    if index >= NUM_IRQS:
        raise SiovError(errno.EINVAL, f"IRQ index {index}: the device has 0..{NUM_IRQS - 1}")
    vectors = MDEV_IRQ_COUNT if index == IRQ_MSIX else 0
    if data_type != IRQ_SET_DATA_EVENTFD and fds:
        raise SiovError(errno.EINVAL, "eventfds come only with DATA_EVENTFD")
    if action != IRQ_SET_ACTION_TRIGGER:
        raise SiovError(errno.EINVAL, "MSI-X vectors cannot be masked or unmasked")
    if count == 0:
        if data_type != IRQ_SET_DATA_NONE or start != 0:
            raise SiovError(errno.EINVAL, "count 0 needs DATA_NONE and start 0 (disable all)")
        return IrqPlan("disable", msix=index == IRQ_MSIX)
    if start + count > vectors:
        raise SiovError(
            errno.EINVAL,
            f"vectors {start}..{start + count - 1} of index {index}: it has {vectors}",
        )
    chosen = tuple(range(start, start + count))
    if data_type == IRQ_SET_DATA_EVENTFD:
        if fds != count:
            raise SiovError(
                errno.EINVAL,
                f"DATA_EVENTFD needs {count} eventfds (one per vector), got {fds}",
            )
        return IrqPlan("install", chosen)
    if data_type == IRQ_SET_DATA_BOOL:
        raw = data or b""
        if len(raw) != count:
            raise SiovError(errno.EINVAL, f"DATA_BOOL needs {count} bytes, got {len(raw)}")
        chosen = tuple(v for v, flag in zip(chosen, raw, strict=True) if flag)
    return IrqPlan("fire", chosen)
