"""The accelerator at run time: submissions from clients, engines running descriptors through
the IOMMU, completions, interrupts and page requests. Plain Python;
:mod:`siovd.service.engines` gives it the trio tasks it needs.

Who is who: every accelerator mdev the clients use gets an :class:`MdevState` (its bus device,
its DSA parent, its interrupt eventfds and its DMA spaces, one per PASID). Work items carry the
mdev UUID as their ``owner``, so a completion finds its way back to the mdev and to the session
that owns it.

Execution: a SUBMIT (or a portal write) queues descriptors in the mdev's WQ and then gives its
group's engines one turn at once, in the handler; the engine tasks take over from there
(:meth:`AccelRuntime.run_group`). A turn is the model's
(:class:`~siovd.model.accel.scheduler.Scheduler`): it runs descriptors under a work budget
(:attr:`AccelRuntime.work_budget` bytes and :attr:`AccelRuntime.time_slice` seconds) and stops a
big transfer or a batch mid-way, to continue it next turn, so no client's descriptor holds the
loop for more than a turn. This module is the adapter around it: it turns each outcome into
counts, interrupts, events and page requests.

Block-on-fault: a descriptor that stops on a fault (BOF in the descriptor and block_on_fault on
its WQ) leaves its engine and waits as a page request of the IOMMU's queue
(:mod:`siovd.model.iommu.prq`, at most ``limits.blocked_descriptors`` per client); the owner
of the domain the faulting PASID reaches gets EVENT_PAGE_REQUEST and answers with
PAGE_RESPONSE. SUCCESS resumes the descriptor where it stopped; INVALID, FAILURE or the
timeout (``iommu.page_request_timeout_s``) complete it with ``DSA_COMP_PAGE_FAULT_IR``. Other
work keeps running meanwhile; a DRAIN waits for it, like for any earlier descriptor of its mdev
and PASID.

Interrupts: a completion interrupt (RCI) signals the mdev's eventfd for the descriptor's
``int_handle`` (an 8-byte write of 1, as ``vfu_irq_trigger`` does) or, without one, sends
EVENT_IRQ. A software error (what the device logs in SWERR: no completion record could report
the error) always sends EVENT_IRQ on vector 0 with the details, and signals vector 0's eventfd.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import structlog

from siov_protocol import Command
from siov_protocol.dsa import DSA_DESC_SIZE
from siov_protocol.features import event_allowed
from siov_protocol.messages_accel import (
    SUBMIT_ACCEPTED,
    SUBMIT_RETRY,
    IrqEvent,
)
from siov_protocol.messages_iommu import PageRequestEvent
from siov_protocol.replies import EvlEvent, event_message
from siovd.model.accel import (
    MDEV_IRQ_COUNT,
    Blocked,
    Completed,
    DsaMdev,
    DsaParent,
    Engine,
    Group,
    Interrupt,
    PageResponse,
    Preempted,
    SoftwareError,
    SubmitResult,
    WorkItem,
    fastpath,
)
from siovd.model.accel.cdev import SvaExecutor
from siovd.model.accel.evl import pack_entry
from siovd.model.accel.outcome import CompletedRun
from siovd.model.accel.scheduler import Outcome, Scheduler
from siovd.model.budget import Budget
from siovd.model.device import Device
from siovd.model.dma import DmaSpace
from siovd.model.errors import SiovError
from siovd.model.iommu import irq_remap
from siovd.model.iommu.faults import FaultRecord
from siovd.model.iommu.prq import PageAnswer, PageRequest, PageRequestQueue
from siovd.model.iommu.translate import resolve

if TYPE_CHECKING:
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session

log = structlog.get_logger("siovd.accel")

#: How long one run of a group's engines may go on before other tasks get the loop back.
TIME_SLICE_S: Final = 0.002
#: Bytes of data one turn of a group's engines may touch (about a millisecond of copying).
WORK_BUDGET: Final = 4 << 20
_ONE: Final = (1).to_bytes(8, "little")


class MdevState:
    """What the runtime keeps for one accelerator mdev a client uses."""

    #: A user-WQ char-device open (siovd.service.sva.CdevState), never reachable by mdev
    #: commands (SUBMIT, REGION_WRITE, ...): its PASID tagging is the char device's.
    cdev: ClassVar[bool] = False

    __slots__ = (
        "device",
        "irq_fds",
        "mdev",
        "msi",
        "outstanding",
        "parent",
        "session",
        "spaces",
        "uuid",
    )

    def __init__(self, device: Device, parent: DsaParent, mdev: DsaMdev) -> None:
        self.uuid = device.uuid
        self.device = device
        self.parent = parent
        self.mdev = mdev
        self.session = device.owner
        #: One DMA space per PASID the mdev's work is tagged with.
        self.spaces: dict[int, DmaSpace] = {}
        #: The eventfd of each MSI-X vector, or None: then interrupts go as EVENT_IRQ.
        self.irq_fds: list[int | None] = [None] * MDEV_IRQ_COUNT
        #: Each vector's MSI message (address, data) when programmed for interrupt remapping
        #: (DEVICE_SET_MSI_REMAP, SPEC §8.22); None: direct delivery.
        self.msi: list[tuple[int, int] | None] = [None] * MDEV_IRQ_COUNT
        #: Descriptors accepted and not yet completed (queued, running or blocked).
        self.outstanding = 0

    def close_irqs(self, start: int = 0, count: int = MDEV_IRQ_COUNT) -> None:
        for vector in range(start, start + count):
            fd = self.irq_fds[vector]
            if fd is not None:
                self.irq_fds[vector] = None
                try:
                    os.close(fd)
                except OSError:
                    pass


@dataclass(slots=True)
class RuntimeStats:
    submitted: int = 0
    completed: int = 0
    page_requests: int = 0
    page_responses: int = 0
    page_timeouts: int = 0
    page_requests_cancelled: int = 0
    page_requests_refused: int = 0  # no PASID entry to route them: answered INVALID at once
    page_requests_over_limit: int = 0  # limits.blocked_descriptors reached: answered INVALID
    irqs_eventfd: int = 0
    irqs_event: int = 0
    irq_write_failures: int = 0
    irqs_remapped: int = 0
    irqs_blocked: int = 0
    software_errors: int = 0
    evl_entries: int = 0
    evl_lost: int = 0


class AccelRuntime:
    """Submission, execution and completion for every accelerator mdev of the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.scheduler = Scheduler(
            SvaExecutor(), runs=True
        )  # an Executor that writes SVA results back
        self.executor = self.scheduler.executor
        if self.executor.native:
            log.info("executor", native=True, opcodes=sorted(fastpath.OPCODES))
        elif fastpath.AVAILABLE:
            log.info("executor", native=False, reason="turned off (SIOVD_NATIVE=0)")
        else:
            log.warning(
                "executor",
                native=False,
                reason="native core not built",
                error=fastpath.IMPORT_ERROR,
            )
        self.mdevs: dict[str, MdevState] = {}
        #: Each client's interrupt remapping table (IR_TABLE_SET, SPEC §8.22).
        self.ir_tables: dict[int, irq_remap.IrTable] = {}
        self.stats = RuntimeStats()
        #: device name -> sessions that asked (ACCEL_EVL_READ arm) for one EVENT_EVL
        self.evl_armed: dict[str, set[int]] = {}
        self._session_outstanding: dict[int, int] = {}
        #: How long one run of a group's engines may hold the event loop.
        self.time_slice = TIME_SLICE_S
        #: How much data one run of a group's engines may touch.
        self.work_budget = WORK_BUDGET
        #: Hooks the trio layer sets (siovd.service.engines): run a group's engines later; start a
        #: task that waits for a page request's answer.
        self.wake_engines: Callable[[Group], None] = lambda group: None
        self.start_waiter: Callable[[PageRequest], None] = lambda request: None
        #: mdev UUID -> who logs its software errors instead (a vfio-user device's SWERR)
        self.software_error_hooks: dict[str, Callable[[SoftwareError], None]] = {}

    # -- lookup -------------------------------------------------------------------------------

    def state(self, session: Session, uuid: str) -> MdevState:
        """The caller's accelerator mdev ``uuid``: ``ENOENT`` if it is not the caller's,
        ``ENODEV`` if it is not an accelerator mdev."""
        state = self.mdevs.get(uuid)
        if state is not None and state.session == session.id and not state.cdev:
            return state
        device = self.daemon.bus.device(session.id, uuid)
        parent = self.daemon.dsa_parents.get(device.parent or "")
        if parent is None:
            raise SiovError(errno.ENODEV, f"device {uuid} is not an accelerator mdev")
        state = MdevState(device, parent, parent.mdev(device.uuid))
        self.mdevs[device.uuid] = state
        return state

    def _space(self, state: MdevState, pasid: int) -> DmaSpace:
        space = state.spaces.get(pasid)
        if space is None:
            space = state.spaces[pasid] = self.daemon.iommu.dma_space(
                state.device, pasid, devtlb=True
            )
        return space

    def outstanding(self, session_id: int) -> int:
        return self._session_outstanding.get(session_id, 0)

    # -- submission ---------------------------------------------------------------------------

    def _check_limit(self, state: MdevState, count: int) -> None:
        blocked = self.prq.blocked(state.session)
        cap = self.prq.limit
        if blocked >= cap:
            raise SiovError(
                errno.ENOSPC,
                f"limit reached: limits.blocked_descriptors = {cap} "
                f"({blocked} descriptors wait for page responses)",
            )
        limit = self.daemon.config.limits.outstanding_descriptors
        have = self._session_outstanding.get(state.session, 0)
        if have + count > limit:
            raise SiovError(
                errno.EAGAIN,
                f"limit reached: limits.outstanding_descriptors = {limit} "
                f"({have} outstanding, {count} more submitted)",
            )

    def _pasid(self, state: MdevState, pasid: int | None) -> int | None:
        if state.mdev.dedicated:
            if pasid is not None:
                raise SiovError(
                    errno.EINVAL,
                    f"{state.mdev.wq.path} is dedicated: its work carries the PASID programmed "
                    "in the WQ (MOVDIR64B has none), do not give one",
                )
            return None
        return state.mdev.default_pasid if pasid is None else pasid

    def submit(
        self, state: MdevState, descriptors: bytes, pasid: int | None = None, limited: bool = False
    ) -> tuple[int, int, int, bytes]:
        """SUBMIT: write each descriptor to the mdev's WQ portal, in order, then run the WQ's
        group. Returns ``(accepted, retry, dropped, results)``, one result byte per descriptor.
        """
        size = len(descriptors)
        if size == 0 or size % DSA_DESC_SIZE:
            raise SiovError(
                errno.EINVAL, f"descriptors: {size} bytes is not a whole number of 64-byte ones"
            )
        count = size // DSA_DESC_SIZE
        self._check_limit(state, count)
        tag = self._pasid(state, pasid)
        wq = state.mdev.wq
        group = wq.group
        if wq.occupancy and group is not None:
            # Work left over from an earlier time slice: the device has had the time since
            # then to run it, so it does, before these portal writes arrive.
            self.run_group(group)
        results = wq.submit_many(
            descriptors, tag, limited=limited, owner=state.uuid, irq_count=MDEV_IRQ_COUNT
        )
        refused = count - results.count(SUBMIT_ACCEPTED)
        accepted = count - refused
        retry = results.count(SUBMIT_RETRY) if refused else 0
        self._accepted(state, accepted)
        if accepted and group is not None:
            self.run_group(group)
        return accepted, retry, refused - retry, bytes(results)

    def portal_write(
        self, state: MdevState, offset: int, data: bytes, pasid: int | None = None
    ) -> SubmitResult:
        """A 64-byte write into the mdev's BAR2 (the faithful path)."""
        self._check_limit(state, 1)
        tag = self._pasid(state, pasid)
        result = state.parent.mdev_portal_write(state.uuid, offset, data, tag)
        if result is SubmitResult.ACCEPTED:
            self._accepted(state, 1)
            group = state.mdev.wq.group
            if group is not None:
                self.run_group(group)
        return result

    def _accepted(self, state: MdevState, count: int) -> None:
        if count:
            state.outstanding += count
            sid = state.session
            self._session_outstanding[sid] = self._session_outstanding.get(sid, 0) + count
            self.stats.submitted += count

    # -- engines ------------------------------------------------------------------------------

    def run_group(self, group: Group, engine: Engine | None = None) -> bool:
        """One turn of the group's engines (or just ``engine``) under a work budget of
        :attr:`work_budget` bytes and :attr:`time_slice` seconds, whichever ends first (the
        model's :class:`~siovd.model.accel.scheduler.Scheduler` stops big transfers and
        batches mid-way and continues them next turn); then the engine tasks continue.
        Returns whether work was left."""
        clock = time.perf_counter
        deadline = clock() + self.time_slice
        turn = self.scheduler.run(
            group, Budget(self.work_budget, lambda: clock() > deadline), self._space_for, engine
        )
        self._settle_turn(turn.outcomes)
        if turn.more:
            self.wake_engines(group)
        return turn.more

    def _space_for(self, item: WorkItem) -> DmaSpace | None:
        state = self.mdevs.get(item.owner)  # type: ignore[call-overload]
        if state is None:
            return None
        space = state.spaces.get(item.pasid)
        return space if space is not None else self._space(state, item.pasid)

    def _settle_turn(self, outcomes: list[Outcome]) -> None:
        """:meth:`_settled` for a turn's outcomes, in order; a run of plain completions (no
        interrupt, no event) of one mdev is counted at once: the common case of a SUBMIT of
        64 costs one count, not 64 (the scheduler's native runs come as one CompletedRun)."""
        owner: object = None
        state: MdevState | None = None
        done = 0
        mdevs = self.mdevs
        for outcome in outcomes:
            if type(outcome) is CompletedRun:
                item_owner = outcome.owner
                count = outcome.count
            elif type(outcome) is Completed and not outcome.events and not outcome.interrupt:
                item_owner = outcome.item.owner
                count = 1
            else:
                if done:
                    self._count_done(state, done)
                    done = 0
                owner = state = None  # _settled may forget an mdev: look it up again
                assert not isinstance(outcome, CompletedRun)
                self._settled(outcome)
                continue
            if item_owner is not owner:
                if done:
                    self._count_done(state, done)
                    done = 0
                owner = item_owner
                state = mdevs.get(owner)  # type: ignore[call-overload]
            if state is not None:
                done += count
        if done:
            self._count_done(state, done)

    def _settled(self, outcome: Completed | Blocked | Preempted) -> None:
        """Turn one outcome of the model into counts, interrupts, events and page requests."""
        state = self.mdevs.get(outcome.item.owner)  # type: ignore[call-overload]
        if state is None:
            return
        if type(outcome) is Completed:
            self._count_done(state, 1)
            if outcome.events:
                self._deliver(state, outcome.events)
            if outcome.interrupt:
                self._signal(state, outcome.int_handle)
        elif type(outcome) is Blocked:
            self._block(state, outcome)
        elif outcome.events:
            self._deliver(state, outcome.events)

    def _count_done(self, state: MdevState | None, done: int) -> None:
        assert state is not None
        state.outstanding -= done
        self._session_outstanding[state.session] -= done
        self.stats.completed += done

    def _resume(self, blocked: Blocked, response: PageResponse) -> None:
        clock = time.perf_counter
        deadline = clock() + self.time_slice
        budget = Budget(self.work_budget, lambda: clock() > deadline)
        self._settled(self.scheduler.resume(blocked.state, response, budget))

    def _deliver(self, state: MdevState, events: tuple[Interrupt | SoftwareError, ...]) -> None:
        for event in events:
            if isinstance(event, Interrupt):
                self._signal(state, event.int_handle)
            else:
                self._software_error(state, event)

    # -- interrupts ---------------------------------------------------------------------------

    def _signal(self, state: MdevState, vector: int) -> None:
        routed = self._route(state, vector)
        if routed is None:
            return
        vector = routed
        fd = state.irq_fds[vector] if 0 <= vector < MDEV_IRQ_COUNT else None
        if fd is not None:
            try:
                os.write(fd, _ONE)
            except OSError as exc:
                self.stats.irq_write_failures += 1
                log.warning("eventfd write failed", mdev=state.uuid, vector=vector, error=str(exc))
            else:
                self.stats.irqs_eventfd += 1
                return
        self._irq_event(state, vector, None)

    def _route(self, state: MdevState, vector: int) -> int | None:
        """Where an interrupt the mdev raises on ``vector`` is delivered: that vector when it
        has no MSI message (direct delivery); otherwise through the owner's interrupt
        remapping table and IEC (VT-d §5.1), or None when the IOMMU blocked it (then the
        owner gets EVENT_FAULT with the IR reason unless the entry's FPD is set)."""
        msi = state.msi[vector] if 0 <= vector < MDEV_IRQ_COUNT else None
        if msi is None:
            return vector
        table = self.ir_tables.get(state.session)
        try:
            remapped = irq_remap.remap(table, msi[0], msi[1], state.uuid)
        except irq_remap.IrBlocked as blocked:
            fault = blocked.fault
            self.stats.irqs_blocked += 1
            log.info(
                "interrupt blocked",
                mdev=state.uuid,
                vector=vector,
                index=fault.index,
                reason=fault.reason,
                recorded=fault.record,
            )
            on_fault = self.daemon.iommu.on_fault
            if fault.record and on_fault is not None:
                record = FaultRecord(
                    device=state.uuid,
                    pasid=0,
                    iova=fault.index,  # an IR fault record's FI holds the interrupt index
                    write=True,  # an MSI is a DMA write to 0xFEExxxxx
                    reason=fault.reason,
                    domain=None,
                )
                on_fault(state.session, record)
            return None
        self.stats.irqs_remapped += 1
        return remapped.vector

    def _irq_event(self, state: MdevState, vector: int, swerr: dict[str, Any] | None) -> None:
        session = self.daemon.sessions.get(state.session)
        if session is None:
            return
        event = IrqEvent(device=state.uuid, vector=vector, swerr=swerr)
        if session.push_event(*event_message(event)):
            self.stats.irqs_event += 1

    def _software_error(self, state: MdevState, error: SoftwareError) -> None:
        self.stats.software_errors += 1
        hook = self.software_error_hooks.get(state.uuid)
        if hook is not None:
            hook(error)
            return
        swerr: dict[str, Any] = {
            "status": error.status,
            "opcode": error.opcode,
            "pasid": error.pasid,
            "wq": error.wq,
            "completion_addr": error.completion_addr,
            "fault_addr": error.fault_addr,
            "record": error.record,
        }
        if error.batch_index is not None:
            swerr["batch_index"] = error.batch_index
        self._log_event(state, error)
        # The error interrupt is vector 0's MSI, routed like any other: a blocked one reaches
        # nobody; the SWERR is in the event log all the same.
        vector = self._route(state, 0)
        if vector is None:
            return
        fd = state.irq_fds[vector]
        if fd is not None:
            try:
                os.write(fd, _ONE)
                self.stats.irqs_eventfd += 1
            except OSError:
                self.stats.irq_write_failures += 1
        self._irq_event(state, vector, swerr)

    def _log_event(self, state: MdevState, error: SoftwareError) -> None:
        """A software error also goes to the device's event log (DSA 2.0), with an EVENT_EVL
        for the sessions that armed it."""
        wq = state.mdev.wq
        device = wq.device
        log_ = device.event_log
        if log_ is None:
            return
        if not log_.append(pack_entry(error, wq.id)):
            self.stats.evl_lost += 1
            return
        self.stats.evl_entries += 1
        armed = self.evl_armed.pop(device.name, set())
        for session_id in sorted(armed):
            session = self.daemon.sessions.get(session_id)
            if session is not None:
                session.push_event(*event_message(EvlEvent(device=device.name, entries=log_.count)))

    def set_irqs(self, state: MdevState, start: int, fds: list[int]) -> None:
        """Install eventfds for vectors ``[start, start + len(fds))``, closing the ones they
        replace. The caller has checked the range."""
        for offset, fd in enumerate(fds):
            old = state.irq_fds[start + offset]
            state.irq_fds[start + offset] = fd
            if old is not None:
                os.close(old)

    def trigger(self, state: MdevState, vectors: list[int]) -> None:
        """DEVICE_SET_IRQS with ACTION_TRIGGER and no eventfds: fire the vectors (loopback)."""
        for vector in vectors:
            self._signal(state, vector)

    # -- block on fault -----------------------------------------------------------------------

    def _block(self, state: MdevState, blocked: Blocked) -> None:
        if blocked.events:
            self._deliver(state, blocked.events)
        fault = blocked.fault
        domain, _ = resolve(state.device, fault.pasid)
        request = None
        owner = domain.owner if domain is not None and domain.owner else state.session
        listener = self.daemon.sessions.get(owner)
        if domain is None or (
            listener is not None
            and not event_allowed(Command.EVENT_PAGE_REQUEST, listener.features)
        ):
            # No PASID entry (or a blocked domain): the IOMMU has nowhere to route a page
            # request, so it answers Invalid Request itself (the fault record already went to
            # the device's owner). The same when the owner did not negotiate the features a
            # page request needs ("events" and "dsa"): nobody would ever answer it. The
            # descriptor completes with PAGE_FAULT_IR.
            self.stats.page_requests_refused += 1
        else:
            request = self.prq.open(
                state.uuid, fault.pasid, fault.iova, fault.write, owner, state.session, blocked
            )
            if request is None:  # the submitter's queue is full: Invalid Request, at once
                self.stats.page_requests_over_limit += 1
        if request is None:
            self._resume(blocked, PageResponse.INVALID)
            group = blocked.item.wq.group
            if group is not None:
                # Its completion may free a DRAIN the turn that blocked it could not take.
                self.wake_engines(group)
            return
        assert domain is not None
        self.stats.page_requests += 1
        session = self.daemon.sessions.get(request.owner)
        if session is not None:
            event = PageRequestEvent(
                request=request.id,
                device=state.uuid,
                pasid=fault.pasid,
                iova=fault.iova,
                write=fault.write,
                domain=domain.id if domain.id else None,
            )
            session.push_event(*event_message(event))
        self.start_waiter(request)

    @property
    def prq(self) -> PageRequestQueue:
        return self.daemon.iommu.prq

    @property
    def requests(self) -> dict[int, PageRequest]:
        """Page requests pending (the IOMMU's queue)."""
        return self.prq.pending

    def page_response(self, session: Session, request_id: int, code: int) -> None:
        """PAGE_RESPONSE: ``ENOENT`` unless the request is pending and the caller owns the
        domain it was sent for."""
        self.prq.respond(session.id, request_id, code)
        self.stats.page_responses += 1

    def resume(self, request: PageRequest) -> None:
        """Called by the waiting task once the answer came, the mdev went, or time ran out."""
        answer = self.prq.finish(request)
        if request.cancelled:
            return
        if answer is None:
            self.stats.page_timeouts += 1
        blocked: Blocked = request.payload
        response = PageResponse.SUCCESS if answer == PageAnswer.SUCCESS else PageResponse.INVALID
        self._resume(blocked, response)
        group = blocked.item.wq.group
        if group is not None:
            self.wake_engines(group)  # a drain may have been waiting for this descriptor

    # -- cleanup ------------------------------------------------------------------------------

    def forget(self, uuid: str) -> None:
        """The mdev left the bus or its client: abort what is queued, cancel what waits for
        page responses, close its eventfds, drop its counts."""
        state = self.mdevs.pop(uuid, None)
        if state is None:
            return
        for request in self.prq.cancel_device(uuid):
            blocked = request.payload
            if not isinstance(blocked, Blocked):
                continue  # a PRI request raised for it (TRIGGER_IOPF, SPEC §8.19): no work waits
            blocked.item.wq.cancel(blocked.item)
            self.stats.page_requests_cancelled += 1
        self.scheduler.forget(state.uuid)
        # What is still queued goes too (already gone if the mdev left the bus; a started
        # definition's mdev stays and returns to the host, empty).
        state.mdev.wq.abort(owner=state.uuid)
        state.close_irqs()
        sid = state.session
        left = self._session_outstanding.get(sid, 0) - state.outstanding
        if left > 0:
            self._session_outstanding[sid] = left
        else:
            self._session_outstanding.pop(sid, None)
        state.outstanding = 0

    def abort_queued(self, state: MdevState) -> int:
        """Drop the mdev's descriptors no engine has taken (a device's abort command): they
        never complete, and no longer count as outstanding."""
        removed = len(state.mdev.wq.abort(owner=state.uuid))
        if removed:
            state.outstanding -= removed
            sid = state.session
            self._session_outstanding[sid] = self._session_outstanding.get(sid, 0) - removed
        return removed

    def release_session(self, session: Session) -> None:
        """The client left: its mdevs' waiting work is cancelled before the bus removes them
        (which aborts what is still queued) and the IOMMU frees its memory."""
        for uuid in [u for u, s in self.mdevs.items() if s.session == session.id]:
            self.forget(uuid)
        self._session_outstanding.pop(session.id, None)
        self.ir_tables.pop(session.id, None)

    # -- introspection ------------------------------------------------------------------------

    def stats_dict(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for name, device in self.daemon.accel.devices.items():
            devices[name] = {
                "wqs": {
                    wq.dev_name: {
                        "submitted": wq.stats.submitted,
                        "retried": wq.stats.retried,
                        "dropped": wq.stats.dropped,
                        "aborted": wq.stats.aborted,
                        "completed": wq.stats.completed,
                        "occupancy": wq.occupancy,
                        "inflight": wq.inflight,
                    }
                    for wq in device.wqs
                    if wq.enabled or wq.stats.submitted
                },
                "engines": {
                    engine.dev_name: self.scheduler.engine_runs.get(engine, 0)
                    for engine in device.engines
                },
            }
        out: dict[str, Any] = {
            "devices": devices,
            "outstanding": sum(self._session_outstanding.values()),
            "page_requests_pending": len(self.prq.pending),
            "preemptions": self.scheduler.preemptions,
        }
        for name in RuntimeStats.__slots__:
            out[name] = getattr(self.stats, name)
        return out
