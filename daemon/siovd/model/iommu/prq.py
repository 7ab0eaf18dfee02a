"""Page requests: the IOMMU's page request queue (PCIe PRI, VT-d PRQ) as bookkeeping.

A device that stops on a fault with block-on-fault asks the owner of the domain its PASID
reaches for the page. This module numbers the requests, routes each to that owner, accepts only
that owner's answer, and forgets requests that time out or whose device goes; the clock that
decides "timed out" belongs to the service, which calls :meth:`PageRequestQueue.finish` with no
answer. A submitter may have at most ``limit`` requests pending (``limits.blocked_descriptors``):
past it :meth:`PageRequestQueue.open` returns None and the IOMMU answers Invalid Request itself,
as hardware does when its queue is full, so a client that never answers cannot make the daemon
hold unbounded work.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from typing import Any

from siovd.model.errors import SiovError


class PageAnswer(enum.IntEnum):
    """The owner's answer (PCIe PRG response codes)."""

    SUCCESS = 0
    INVALID = 1
    FAILURE = 2


def _nothing() -> None:
    return None


class PageRequest:
    """One pending request: where it comes from, who may answer, what the device waits with."""

    __slots__ = (
        "answer",
        "cancelled",
        "device",
        "id",
        "iova",
        "owner",
        "owner_gone",
        "pasid",
        "payload",
        "submitter",
        "wake",
        "write",
    )

    def __init__(
        self,
        request_id: int,
        device: str,
        pasid: int,
        iova: int,
        write: bool,
        owner: int,
        submitter: int,
        payload: Any,
    ) -> None:
        self.id = request_id
        self.device = device  # the requester (an mdev UUID)
        self.pasid = pasid
        self.iova = iova
        self.write = write
        self.owner = owner  # the session that may answer: the domain's owner
        self.submitter = submitter  # the session whose work waits (it is charged for it)
        self.payload = payload  # what the device needs to resume (opaque here)
        self.answer: PageAnswer | None = None
        self.cancelled = False
        self.owner_gone = False  # answered INVALID because its owner left
        #: Set by whoever waits for the answer (the service's task): called when it comes.
        self.wake: Callable[[], None] = _nothing


class PageRequestQueue:
    """Every pending page request of one IOMMU."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self.pending: dict[int, PageRequest] = {}
        self._next = 1
        self._by_submitter: dict[int, int] = {}
        self._by_device: dict[str, set[int]] = {}
        self.opened = 0
        self.answered = 0
        self.over_limit = 0

    def blocked(self, submitter: int) -> int:
        """Requests pending for ``submitter``'s work."""
        return self._by_submitter.get(submitter, 0)

    def waiting(self, device: str) -> int:
        """Requests of ``device``'s work not yet over (answered or not)."""
        return len(self._by_device.get(device, ()))

    def open(
        self,
        device: str,
        pasid: int,
        iova: int,
        write: bool,
        owner: int,
        submitter: int,
        payload: Any,
    ) -> PageRequest | None:
        """Queue a request; None when ``submitter`` is at :attr:`limit` (the caller answers
        Invalid Request at once)."""
        if self._by_submitter.get(submitter, 0) >= self.limit:
            self.over_limit += 1
            return None
        request = PageRequest(self._next, device, pasid, iova, write, owner, submitter, payload)
        self._next += 1
        self.pending[request.id] = request
        self._by_submitter[submitter] = self._by_submitter.get(submitter, 0) + 1
        self._by_device.setdefault(device, set()).add(request.id)
        self.opened += 1
        return request

    def respond(self, owner: int, request_id: int, code: int) -> PageRequest:
        """The owner's answer: ``ENOENT`` unless ``request_id`` is pending and routed to
        ``owner`` (another session's request looks exactly like none). SUCCESS retries the
        access; INVALID and FAILURE both end it (iommufd)."""
        request = self.pending.get(request_id)
        if request is None or request.owner != owner:
            raise SiovError(errno.ENOENT, f"no pending page request {request_id}")
        del self.pending[request_id]
        request.answer = PageAnswer.SUCCESS if code == PageAnswer.SUCCESS else PageAnswer.INVALID
        self.answered += 1
        request.wake()
        return request

    def finish(self, request: PageRequest) -> PageAnswer | None:
        """The request is over (answered, timed out, or cancelled): it stops counting. Returns
        the answer, None when there was none (a timeout), or None with ``cancelled`` set."""
        self.pending.pop(request.id, None)
        self._uncount(request)
        return request.answer

    def cancel_device(self, device: str) -> list[PageRequest]:
        """The device went: its requests are cancelled (answers to them are ``ENOENT``) and
        their waiters woken. Returns them."""
        out = []
        for request_id in sorted(self._by_device.get(device, ())):
            request = self.pending.pop(request_id, None)
            if request is None:
                continue
            request.cancelled = True
            out.append(request)
        for request in out:
            self._uncount(request)
            request.wake()
        return out

    def owner_gone(self, owner: int) -> list[PageRequest]:
        """``owner`` left: each request routed to it is answered INVALID, as iommufd answers
        the faults still pending when its fault fd is released (IOMMU_PAGE_RESP_INVALID), so
        no device waits for an answer that cannot come. Returns them."""
        out = [r for r in self.pending.values() if r.owner == owner]
        for request in out:
            del self.pending[request.id]
            request.answer = PageAnswer.INVALID
            request.owner_gone = True
        for request in out:
            request.wake()
        return out

    def _uncount(self, request: PageRequest) -> None:
        ids = self._by_device.get(request.device)
        if ids is None or request.id not in ids:
            return  # counted out already
        ids.discard(request.id)
        if not ids:
            del self._by_device[request.device]
        left = self._by_submitter.get(request.submitter, 0) - 1
        if left > 0:
            self._by_submitter[request.submitter] = left
        else:
            self._by_submitter.pop(request.submitter, None)
