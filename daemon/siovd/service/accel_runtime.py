"""The accelerator at run time: submissions from clients, engines running descriptors through
the IOMMU, completions, interrupts and page requests. Plain Python;
:mod:`siovd.service.engines` gives it the trio tasks it needs.

Who is who: every accelerator mdev the clients use gets an :class:`MdevState` (its bus device,
its DSA parent, its interrupt eventfds and its DMA spaces, one per PASID). Work items carry the
mdev UUID as their ``owner``, so a completion finds its way back to the mdev and to the session
that owns it.

Execution: a SUBMIT (or a portal write) queues descriptors in the mdev's WQ and then runs its
group's engines at once, in the handler, until the group has nothing left to take or a time
slice is used up; the engine tasks take over from there (:meth:`AccelRuntime.run_group`). Each
descriptor runs to completion in one go, so the connection that submitted it reads its next
message only after its descriptors completed or blocked: a pipelining client never overruns a
dedicated WQ by accident, and other clients wait at most a time slice (plus one descriptor).

Block-on-fault: a descriptor that stops on a fault (BOF in the descriptor and block_on_fault on
its WQ) leaves its engine and waits as a :class:`PageRequest`; the owner of the domain the
faulting PASID reaches gets EVENT_PAGE_REQUEST and answers with PAGE_RESPONSE. SUCCESS resumes
the descriptor where it stopped; INVALID, FAILURE or the timeout (``iommu.page_request_timeout_s``)
complete it with ``DSA_COMP_PAGE_FAULT_IR``. Other work keeps running meanwhile; a DRAIN waits
for it, like for any earlier descriptor of its PASID.

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
    PAGE_RESP_SUCCESS,
    SUBMIT_ACCEPTED,
    SUBMIT_RETRY,
    IrqEvent,
)
from siov_protocol.messages_iommu import PageRequestEvent
from siov_protocol.replies import event_message
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
    SoftwareError,
    SubmitResult,
)
from siovd.model.accel.cdev import SvaExecutor
from siovd.model.device import Device
from siovd.model.dma import DmaSpace
from siovd.model.errors import SiovError
from siovd.model.iommu.translate import resolve

if TYPE_CHECKING:
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session

log = structlog.get_logger("siovd.accel")

#: How long one run of a group's engines may go on before other tasks get the loop back.
TIME_SLICE_S: Final = 0.002
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
        "outstanding",
        "parent",
        "requests",
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
        #: Descriptors accepted and not yet completed (queued, running or blocked).
        self.outstanding = 0
        self.requests: set[int] = set()

    def close_irqs(self, start: int = 0, count: int = MDEV_IRQ_COUNT) -> None:
        for vector in range(start, start + count):
            fd = self.irq_fds[vector]
            if fd is not None:
                self.irq_fds[vector] = None
                try:
                    os.close(fd)
                except OSError:
                    pass


class PageRequest:
    """A blocked descriptor waiting for its page response."""

    __slots__ = ("blocked", "cancelled", "id", "owner", "response", "state", "wake")

    def __init__(self, request_id: int, state: MdevState, blocked: Blocked, owner: int) -> None:
        self.id = request_id
        self.state = state
        self.blocked = blocked
        self.owner = owner  # the session that may answer (the domain's owner)
        self.response: PageResponse | None = None
        self.cancelled = False
        #: Set by the task that waits: wakes it when the answer comes (or the mdev goes).
        self.wake: Callable[[], None] = _nothing


def _nothing() -> None:
    return None


@dataclass(slots=True)
class RuntimeStats:
    submitted: int = 0
    completed: int = 0
    page_requests: int = 0
    page_responses: int = 0
    page_timeouts: int = 0
    page_requests_cancelled: int = 0
    page_requests_refused: int = 0  # no PASID entry to route them: answered INVALID at once
    irqs_eventfd: int = 0
    irqs_event: int = 0
    irq_write_failures: int = 0
    software_errors: int = 0


class AccelRuntime:
    """Submission, execution and completion for every accelerator mdev of the daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.executor = SvaExecutor()  # an Executor that writes SVA results back
        self.mdevs: dict[str, MdevState] = {}
        self.requests: dict[int, PageRequest] = {}
        self.stats = RuntimeStats()
        self._next_request = 1
        self._session_outstanding: dict[int, int] = {}
        self._engine_runs: dict[Engine, int] = {}
        #: How long one run of a group's engines may hold the event loop.
        self.time_slice = TIME_SLICE_S
        #: Hooks the trio layer sets (siovd.service.engines): run a group's engines later; start a
        #: task that waits for a page request's answer.
        self.wake_engines: Callable[[Group], None] = lambda group: None
        self.start_waiter: Callable[[PageRequest], None] = lambda request: None
        #: mdev UUID -> who logs its software errors instead (a vfio-user device's SWERR)
        self.software_error_hooks: dict[str, Callable[[SoftwareError], None]] = {}
        daemon.on_release(self.release_session)
        daemon.on_stats(lambda: {"accel": self.stats_dict()})
        previous = daemon.bus.on_device_removed

        def removed(device: Device) -> None:
            self.forget(device.uuid)
            if previous is not None:
                previous(device)

        daemon.bus.on_device_removed = removed

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
        """Let the group's engines (or just ``engine``) take and run descriptors until none is
        left to take or :attr:`time_slice` is used up; then the engine tasks continue. Returns
        whether work was left."""
        engines = [engine] if engine is not None else group.engines
        if not engines:
            return False
        take = group.take
        execute = self.executor.run
        mdevs = self.mdevs
        clock = time.perf_counter
        deadline = clock() + self.time_slice
        taken = 0  # the engines take turns, from the first
        owner: object = None
        state: MdevState | None = None
        pasid = -1
        space: DmaSpace | None = None
        done = 0  # completions of ``state`` not yet counted in it
        try:
            while True:
                item = take()
                if item is None:
                    return False
                taken += 1
                if item.owner is not owner:
                    if done:
                        self._count_done(state, done)
                        done = 0
                    owner = item.owner
                    state = mdevs.get(owner)  # type: ignore[call-overload]
                    pasid = -1
                if state is None:  # its mdev is gone; nothing may run on its behalf
                    item.wq.cancel(item)
                    continue
                if item.pasid != pasid:
                    pasid = item.pasid
                    space = state.spaces.get(pasid) or self._space(state, pasid)
                assert space is not None
                outcome = execute(item, space)
                if type(outcome) is Completed:
                    done += 1
                    item.wq.retire(item)
                    if outcome.events:
                        self._deliver(state, outcome.events)
                    if outcome.interrupt:
                        self._signal(state, outcome.int_handle)
                else:
                    assert isinstance(outcome, Blocked)
                    self._block(state, outcome)
                if clock() > deadline:
                    if any(wq.occupancy for wq in group.wqs):
                        self.wake_engines(group)
                        return True
                    return False
        finally:
            if done:
                self._count_done(state, done)
            runs = self._engine_runs
            count = len(engines)
            for index, current in enumerate(engines):
                number = (taken - index + count - 1) // count
                if number > 0:
                    runs[current] = runs.get(current, 0) + number

    def _count_done(self, state: MdevState | None, done: int) -> None:
        assert state is not None
        state.outstanding -= done
        self._session_outstanding[state.session] -= done
        self.stats.completed += done

    def _complete(self, state: MdevState, outcome: Completed) -> None:
        item = outcome.item
        item.wq.retire(item)
        self._count_done(state, 1)
        if outcome.events:
            self._deliver(state, outcome.events)
        if outcome.interrupt:
            self._signal(state, outcome.int_handle)

    def _deliver(self, state: MdevState, events: tuple[Interrupt | SoftwareError, ...]) -> None:
        for event in events:
            if isinstance(event, Interrupt):
                self._signal(state, event.int_handle)
            else:
                self._software_error(state, event)

    # -- interrupts ---------------------------------------------------------------------------

    def _signal(self, state: MdevState, vector: int) -> None:
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
        fd = state.irq_fds[0]
        if fd is not None:
            try:
                os.write(fd, _ONE)
                self.stats.irqs_eventfd += 1
            except OSError:
                self.stats.irq_write_failures += 1
        self._irq_event(state, 0, swerr)

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
            outcome = self.executor.resume(blocked.state, PageResponse.INVALID)
            if type(outcome) is Completed:
                self._complete(state, outcome)
            else:
                assert isinstance(outcome, Blocked)
                self._block(state, outcome)
            return
        request = PageRequest(self._next_request, state, blocked, owner)
        self._next_request += 1
        self.requests[request.id] = request
        state.requests.add(request.id)
        self.stats.page_requests += 1
        session = self.daemon.sessions.get(owner)
        if session is not None:
            event = PageRequestEvent(
                request=request.id,
                device=state.uuid,
                pasid=fault.pasid,
                iova=fault.iova,
                write=fault.write,
                domain=domain.id if domain is not None and domain.id else None,
            )
            session.push_event(*event_message(event))
        self.start_waiter(request)

    def page_response(self, session: Session, request_id: int, code: int) -> None:
        """PAGE_RESPONSE: ``ENOENT`` unless the request is pending and the caller owns the
        domain it was sent for."""
        request = self.requests.get(request_id)
        if request is None or request.owner != session.id:
            raise SiovError(errno.ENOENT, f"no pending page request {request_id}")
        del self.requests[request_id]
        # iommufd: SUCCESS retries the access; INVALID and FAILURE both end it.
        success = code == PAGE_RESP_SUCCESS
        request.response = PageResponse.SUCCESS if success else PageResponse.INVALID
        self.stats.page_responses += 1
        request.wake()

    def resume(self, request: PageRequest) -> None:
        """Called by the waiting task once the answer came, the mdev went, or time ran out."""
        self.requests.pop(request.id, None)
        state = request.state
        state.requests.discard(request.id)
        if request.cancelled:
            return
        response = request.response
        if response is None:
            self.stats.page_timeouts += 1
            response = PageResponse.INVALID
        item = request.blocked.item
        outcome = self.executor.resume(request.blocked.state, response)
        if type(outcome) is Completed:
            self._complete(state, outcome)
        else:
            assert isinstance(outcome, Blocked)
            self._block(state, outcome)
        group = item.wq.group
        if group is not None:
            self.wake_engines(group)  # a drain may have been waiting for this descriptor

    # -- cleanup ------------------------------------------------------------------------------

    def forget(self, uuid: str) -> None:
        """The mdev left the bus or its client: abort what is queued, cancel what waits for
        page responses, close its eventfds, drop its counts."""
        state = self.mdevs.pop(uuid, None)
        if state is None:
            return
        for request_id in list(state.requests):
            request = self.requests.pop(request_id, None)
            if request is None:
                continue
            request.cancelled = True
            item = request.blocked.item
            item.wq.cancel(item)
            self.stats.page_requests_cancelled += 1
            request.wake()
        state.requests.clear()
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
                    engine.dev_name: self._engine_runs.get(engine, 0) for engine in device.engines
                },
            }
        out: dict[str, Any] = {
            "devices": devices,
            "outstanding": sum(self._session_outstanding.values()),
            "page_requests_pending": len(self.requests),
        }
        for name in RuntimeStats.__slots__:
            out[name] = getattr(self.stats, name)
        return out
