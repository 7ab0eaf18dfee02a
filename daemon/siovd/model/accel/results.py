"""What an operation reports back to the executor, as plain tuples (this is the hot path)."""

from __future__ import annotations

from typing import Final

from siov_protocol.dsa import DsaCompStatus
from siovd.model.dma import DmaFault

# A decoded descriptor: DESC_STRUCT's eleven integers.
Desc = tuple[int, int, int, int, int, int, int, int, int, int, int]
# What an operation reports: status, result, bytes_completed, fault_addr, the op-specific
# completion word at 16 (crc_val / delta_rec_size / invalid_flags), the fault that stopped it
# (None unless it stopped on one) and the progress needed to resume it.
Res = tuple[int, int, int, int, int, DmaFault | None, object]

SUCCESS: Final = int(DsaCompStatus.SUCCESS)
SUCCESS_PRED: Final = int(DsaCompStatus.SUCCESS_PRED)
PF_NOBOF: Final = int(DsaCompStatus.PAGE_FAULT_NOBOF)
PF_IR: Final = int(DsaCompStatus.PAGE_FAULT_IR)
#: Status used inside the executor for "stopped on a fault and will wait for a page response".
BLOCK: Final = -1
#: Status used inside the executor for "the work budget ran out; continue from the progress".
PREEMPT: Final = -2

OK: Final[Res] = (SUCCESS, 0, 0, 0, 0, None, None)


def finished(
    status: int, result: int = 0, completed: int = 0, fault_addr: int = 0, word: int = 0
) -> Res:
    """A finished operation (successful or not) that no fault stopped."""
    return (status, result, completed, fault_addr, word, None, None)


def partial(
    fault: DmaFault, completed: int, progress: object, result: int = 0, word: int = 0
) -> Res:
    """An operation a fault stopped after ``completed`` bytes; ``progress`` resumes it."""
    return (PF_NOBOF, result, completed, fault.iova, word, fault, progress)


def preempted(progress: object, completed: int = 0) -> Res:
    """An operation that stopped because its work budget ran out; ``progress`` continues it."""
    return (PREEMPT, 0, completed, 0, 0, None, progress)
