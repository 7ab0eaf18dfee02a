"""Device-TLB invalidations on the wire (SPEC §8.21): send each to the emulator of its device
and hold the reply of whatever caused it until the device answers or the time-out passes.

The wait is a :class:`~siovd.service.handlers.registry.Deferred`: the requesting connection
sleeps on a trio event, the daemon and every other client go on. An invalidation owed by the
requesting connection's own device is not waited for (it could not answer while it waits):
the reply names its cookie instead, so the device learns of it no later than the reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from siov_protocol.messages_ats import AtsInvalidateEvent
from siov_protocol.replies import event_message
from siovd.model.budget import Budget
from siovd.model.iommu.ats import Invalidation
from siovd.service.handlers.registry import Context, Deferred, Job, Reply

if TYPE_CHECKING:
    from siovd.service.daemon import Daemon

log = structlog.get_logger("siovd")
R = TypeVar("R")


def registrant_of(daemon: Daemon) -> Callable[[str], int | None]:
    """The session emulating a device, for :class:`~siovd.model.iommu.ats.DeviceTlbs`."""

    def look(uuid: str) -> int | None:
        try:
            device = daemon.bus.device(None, uuid)
        except Exception:  # gone from the bus: nobody holds its translations
            return None
        registrant = device.registrant
        return registrant if isinstance(registrant, int) and registrant in daemon.sessions else None

    return look


def send(daemon: Daemon, invalidations: list[Invalidation]) -> None:
    for inv in invalidations:
        session = daemon.sessions.get(inv.registrant)
        if session is None:
            continue
        event = AtsInvalidateEvent(
            cookie=inv.cookie,
            device=inv.device,
            pasid=inv.pasid,
            iova=inv.iova,
            am=inv.am,
            all=inv.everything,
        )
        session.push_event(*event_message(event))
        log.debug("ats invalidation sent", mdev=inv.device, cookie=inv.cookie, am=inv.am)


class AtsWait:
    """Waits for the answers to ``waited`` until ``deadline``; those left then time out."""

    def __init__(self, daemon: Daemon, waited: list[Invalidation], deadline: float) -> None:
        self.daemon = daemon
        self.waited = waited
        self.deadline = deadline
        self.changed = trio.Event()
        for inv in waited:
            inv.wake = self.changed.set

    def step(self, budget: Budget) -> bool:
        if all(inv.done for inv in self.waited):
            return True
        if trio.current_time() < self.deadline:
            return False
        for inv in self.waited:
            if not inv.done:
                self.daemon.iommu.atc.time_out(inv)
                log.warning("ats invalidation timed out", mdev=inv.device, cookie=inv.cookie)
        return True

    async def pause(self) -> None:
        with trio.move_on_at(self.deadline):
            await self.changed.wait()
        self.changed = trio.Event()
        for inv in self.waited:
            inv.wake = self.changed.set

    def timed_out(self) -> list[str]:
        return sorted({inv.device for inv in self.waited if inv.timed_out})


class Then:
    """``first`` (a model job), then the ATS wait ``after()`` returns for what it changed."""

    def __init__(self, first: Job | None, after: Callable[[], AtsWait]) -> None:
        self.first = first
        self.after = after
        self.wait: AtsWait | None = None

    def step(self, budget: Budget) -> bool:
        if self.wait is None:
            if self.first is not None and not self.first.step(budget):
                return False
            self.wait = self.after()
        return self.wait.step(budget)

    async def pause(self) -> None:
        if self.wait is None:
            await trio.lowlevel.checkpoint()
        else:
            await self.wait.pause()


class Outcome:
    """What the caller is told about the invalidations its request caused."""

    def __init__(self) -> None:
        self.timed_out: list[str] = []
        self.unacked: list[int] = []

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.timed_out:
            out["ats_timed_out"] = self.timed_out
        if self.unacked:
            out["ats_unacked"] = self.unacked
        return out


def issue(ctx: Context, invalidations: list[Invalidation], outcome: Outcome) -> AtsWait:
    """Send ``invalidations``; the wait for those owed by another connection's devices. A
    device already fenced (an earlier time-out) is told but not waited for again."""
    daemon = ctx.daemon
    send(daemon, invalidations)
    devtlb = daemon.iommu.atc
    waited = []
    for inv in invalidations:
        if inv.registrant == ctx.session.id:
            # nothing can wait on it, so nothing keeps it: its answer is not needed (bounded
            # state for an emulator that unmaps under its own device and never answers)
            devtlb.pending.pop(inv.cookie, None)
            outcome.unacked.append(inv.cookie)
        elif inv.device in devtlb.fenced:
            devtlb.fence_more(inv)
            outcome.timed_out.append(inv.device)
        else:
            waited.append(inv)
    deadline = trio.current_time() + daemon.config.iommu.ats_invalidation_timeout_s
    return AtsWait(daemon, waited, deadline)


def deferred(
    ctx: Context,
    first: Job | None,
    changes: Callable[[], list[Invalidation]],
    finish: Callable[[Outcome], Reply],
) -> Deferred:
    """Run ``first``, then send the invalidations ``changes()`` computes and wait for their
    answers; then reply with ``finish(outcome)``."""
    outcome = Outcome()

    def after() -> AtsWait:
        return issue(ctx, changes(), outcome)

    def done() -> Reply:
        if job.wait is not None:
            outcome.timed_out = sorted({*outcome.timed_out, *job.wait.timed_out()})
        return finish(outcome)

    job = Then(first, after)
    return Deferred(job, done, job.pause)


# -- what changed, for each kind of change ------------------------------------------------------


def unmapped(ctx: Context, domain_id: int, iova: int, size: int) -> list[Invalidation]:
    """``[iova, iova + size)`` of ``domain_id`` changed; a nest parent's nested domains change
    whole (their stage-1 addresses are not the parent's)."""
    daemon = ctx.daemon
    devtlb, look = daemon.iommu.atc, registrant_of(daemon)
    try:
        domain = daemon.iommu.domain(None, domain_id)
    except Exception:  # freed meanwhile: nothing of it can be cached any more
        return []
    if domain.owner != ctx.session.id:  # an admin's look or flush: never another's devices
        return []
    size = size or (1 << 64) - iova
    out = devtlb.range_changed({domain.id}, iova, size, look)
    children = {child.id for child in getattr(domain, "nested_children", ())}
    if children:
        out += devtlb.everything_changed(children, look)
    return out


def device_changed(ctx: Context, uuid: str, pasids: set[int]) -> list[Invalidation]:
    return ctx.daemon.iommu.atc.entry_changed(uuid, pasids, registrant_of(ctx.daemon))


def domains_changed(ctx: Context, domain_ids: set[int] | None) -> list[Invalidation]:
    """A flush of whole domains (``None``: every domain of the caller: another client's
    devices are never invalidated, so never fenced, by someone else's flush)."""
    devtlb = ctx.daemon.iommu.atc
    own = {d.id for d in ctx.daemon.iommu.domains(ctx.session.id)}
    domain_ids = own if domain_ids is None else domain_ids & own
    return devtlb.everything_changed(domain_ids, registrant_of(ctx.daemon))


def then_reply(ctx: Context, changes: Callable[[], list[Invalidation]], reply: R) -> R | Deferred:
    """A synchronous change (attach, replace, detach, a flush): its reply after the wait."""
    if not ctx.daemon.iommu.atc.cached:  # nobody translated: nothing to wait for
        return reply
    return deferred(ctx, None, changes, lambda _outcome: reply)
