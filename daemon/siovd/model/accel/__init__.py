"""The idxd-like accelerator: device model (groups, engines, work queues), the mdev parent,
and the descriptor executor. Plain synchronous code; the server's engine tasks drive it."""

from siovd.model.accel.config import Accelerators, device_to_json
from siovd.model.accel.device import DsaDevice, Engine, Group, embedded_default
from siovd.model.accel.ops import Executor, ResumeState
from siovd.model.accel.outcome import (
    AccelEvent,
    Blocked,
    Completed,
    Interrupt,
    Outcome,
    PageResponse,
    Preempted,
    SoftwareError,
)
from siovd.model.accel.parent import MDEV_IRQ_COUNT, TYPE_1DWQ, TYPE_1SWQ, DsaMdev, DsaParent
from siovd.model.accel.registers import BAR0_SIZE
from siovd.model.accel.wq import SubmitResult, WorkItem, WorkQueue

__all__ = [
    "BAR0_SIZE",
    "MDEV_IRQ_COUNT",
    "TYPE_1DWQ",
    "TYPE_1SWQ",
    "AccelEvent",
    "Accelerators",
    "Blocked",
    "Completed",
    "DsaDevice",
    "DsaMdev",
    "DsaParent",
    "Engine",
    "Executor",
    "Group",
    "Interrupt",
    "Outcome",
    "PageResponse",
    "Preempted",
    "ResumeState",
    "SoftwareError",
    "SubmitResult",
    "WorkItem",
    "WorkQueue",
    "device_to_json",
    "embedded_default",
]
