"""What executing a descriptor produces, for whoever drives the executor.

The model's :class:`~siovd.model.accel.scheduler.Scheduler` is that driver: one turn does::

    item = group.take()                            # or continue a Preempted one
    outcome = executor.run(item, dma, budget)      # Completed | Blocked | Preempted
    # Completed: the record is written; retire the item, deliver its events and interrupt.
    # Blocked:   block-on-fault; a page request waits (the service's adapter sends it) and
    #            executor.resume(outcome.state, response) continues the work.
    # Preempted: the budget ran out mid-way; executor.proceed(outcome.state, budget) goes on
    #            in a later turn, on the same engine.

Nothing waits inside a turn: a blocked item is set aside and the engine takes the next one.

``events`` carry what happened on the way: interrupts requested by descriptors inside a batch,
and software errors (an error status that no completion record could report).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from siov_protocol.dsa import DSA_COMP_STATUS_MASK, IDXD_OP_FLAG_RCI, CompletionRecord
from siovd.model.dma import DmaFault

_RCI = IDXD_OP_FLAG_RCI

if TYPE_CHECKING:
    from siovd.model.accel.ops import ResumeState
    from siovd.model.accel.wq import WorkItem


class PageResponse(enum.IntEnum):
    """The owner's answer to a page request (PCIe PRG response codes)."""

    SUCCESS = 0  # the page is mapped now: the work resumes where it stopped
    INVALID = 1  # Invalid Request: the work completes with DSA_COMP_PAGE_FAULT_IR


@dataclass(frozen=True, slots=True)
class Interrupt:
    """A completion interrupt a descriptor asked for (RCI) with its ``int_handle``."""

    int_handle: int
    #: index in the batch of the descriptor that asked, or None for a top-level descriptor
    batch_index: int | None = None


@dataclass(frozen=True, slots=True)
class SoftwareError:
    """An error the device logs in SWERR (and signals on vector 0) because no completion record
    reports it: the descriptor had no completion record address (CRAV=0), its address was
    misaligned (``DSA_COMP_CRA_ALIGN``), or writing the record faulted (``DSA_COMP_CRA_XLAT``).
    """

    status: int  # DSA_COMP_* (write-fault bit included)
    opcode: int
    pasid: int
    wq: str  # "dsa0/wq0.1"
    completion_addr: int
    fault_addr: int
    #: index in the batch of the failing descriptor, None for a top-level descriptor
    batch_index: int | None = None
    #: the failed translation (completion record write), if there was one
    fault: DmaFault | None = None
    #: the 32 bytes that could not be written
    record: bytes = b""


AccelEvent = Interrupt | SoftwareError


class CompletedRun:
    """Consecutive descriptors of one submitter that completed in the native core with nothing
    to tell it (no interrupt, no event; their records, when asked for, are in memory): a
    turn's plain completions counted at once instead of one :class:`Completed` each."""

    __slots__ = ("count", "owner")

    def __init__(self, owner: object, count: int) -> None:
        self.owner = owner
        self.count = count


def native_run_outcomes(
    owner: object, ran: int, last: WorkItem, record: bytes | None, written: bool
) -> list[Completed | CompletedRun]:
    """What a native run of ``ran`` descriptors of ``owner`` reports (the scheduler's runs and
    :meth:`~siovd.model.accel.ops.Executor.run_all`): one :class:`CompletedRun`; or, when the
    last asked for an interrupt (a run ends there), the others as a CompletedRun and the last
    as its own :class:`Completed` with ``record``, so its interrupt is signalled."""
    raw = last.desc
    if not raw[4] & _RCI:
        return [CompletedRun(owner, ran)]
    assert record is not None
    done = Completed(last, record, written, True, raw[36] | raw[37] << 8, ())
    return [CompletedRun(owner, ran - 1), done] if ran > 1 else [done]


class Completed:
    """The descriptor is done; its record is written (when requested and possible).

    ``record`` is what the completion record says (decoded on access from ``raw``);
    ``written`` tells whether it reached memory. ``interrupt`` means RCI was set: signal the
    submitter's vector ``int_handle``.
    """

    __slots__ = ("events", "int_handle", "interrupt", "item", "raw", "written")

    def __init__(
        self,
        item: WorkItem,
        raw: bytes,
        written: bool,
        interrupt: bool,
        int_handle: int,
        events: tuple[AccelEvent, ...],
    ) -> None:
        self.item = item
        self.raw = raw
        self.written = written
        self.interrupt = interrupt
        self.int_handle = int_handle
        self.events = events

    @property
    def record(self) -> CompletionRecord:
        return CompletionRecord.unpack(self.raw)

    @property
    def status(self) -> int:
        """The status code without the write-fault bit."""
        return self.raw[0] & DSA_COMP_STATUS_MASK

    def __repr__(self) -> str:
        return (
            f"<Completed {self.item!r} status={self.raw[0]:#x} written={self.written} "
            f"interrupt={self.interrupt} events={len(self.events)}>"
        )


class Blocked:
    """Block-on-fault: the work waits for the owner of ``fault.pasid`` to answer a page request.

    Deliver ``events`` now (they happened before the fault), send the page request for
    ``fault`` and call ``Executor.resume(state, response)`` with the answer.
    """

    __slots__ = ("events", "fault", "item", "state")

    def __init__(
        self,
        item: WorkItem,
        fault: DmaFault,
        state: ResumeState,
        events: tuple[AccelEvent, ...],
    ) -> None:
        self.item = item
        self.fault = fault
        self.state = state
        self.events = events

    def __repr__(self) -> str:
        return f"<Blocked {self.item!r} fault={self.fault}>"


class Preempted:
    """The work budget ran out in the middle of the descriptor (a big transfer, a long batch):
    it keeps its engine and continues with ``Executor.proceed(state, budget)`` in a later turn.
    Deliver ``events`` now (interrupts of batch entries that already completed)."""

    __slots__ = ("events", "item", "state")

    def __init__(self, item: WorkItem, state: ResumeState, events: tuple[AccelEvent, ...]) -> None:
        self.item = item
        self.state = state
        self.events = events

    def __repr__(self) -> str:
        return f"<Preempted {self.item!r}>"


Outcome = Completed | Blocked | Preempted
