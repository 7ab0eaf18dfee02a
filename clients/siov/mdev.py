"""Accelerator mdevs from the client's side: submit descriptors, wait for completions.

An :class:`Mdev` wraps one accelerator mdev of a :class:`~siov.client.Client`::

    mdev = await client.create_dsa_mdev()              # dsa0, a dedicated WQ
    await client.map(mdev, buf.phys, buf.size, iova=0)  # into the domain mdev is on now
    record = buf.view[CR : CR + 32]
    done = await mdev.run(dsa.memmove(DST, SRC, 4096, completion=CR), record)
    assert done.code == dsa.DSA_COMP_SUCCESS

Completion is the record in your memory: :meth:`Mdev.wait` polls its status byte and, between
polls, sleeps until an interrupt of the mdev arrives (an eventfd after :meth:`Mdev.set_irqs`,
or an EVENT_IRQ message otherwise), so a descriptor with ``IDXD_OP_FLAG_RCI`` wakes its waiter
at once and one without is found by polling with a short backoff.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from siov_protocol import Command
from siov_protocol.dsa import DSA_COMP_RECORD_SIZE, CompletionRecord
from siov_protocol.messages_accel import (
    IRQ_MSIX,
    IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE,
    REGION_BAR0,
    REGION_BAR2,
    SUBMIT_ACCEPTED,
    DeviceInfo,
    RegionInfo,
)
from siov_protocol.replies import DeviceDescription
from siov_protocol.schema import RecordKeyWarning

from .errors import DescriptorsDropped, RecordNotWritten, TryAgain

if TYPE_CHECKING:
    from .client import Client

#: MSI-X vectors of an accelerator mdev: 0 errors, 1 completions.
IRQ_VECTORS: Final = 2
COMPLETION_VECTOR: Final = 1
ERROR_VECTOR: Final = 0
#: The longest pause between two polls of a completion record when no interrupt comes.
MAX_POLL_INTERVAL: Final = 0.005
#: How long :meth:`Mdev.wait` and :meth:`Mdev.run` wait for a record unless told otherwise.
DEFAULT_TIMEOUT: Final = 30.0
#: Byte offset of ``completion_addr`` in a 64-byte descriptor.
_COMPLETION_ADDR_OFFSET: Final = 8


def _warn_key(kind: str, key: str) -> None:
    warnings.warn(
        f"{kind}[{key!r}]: use .{key} or .info.{key} (replies are typed objects now)",
        RecordKeyWarning,
        stacklevel=3,
    )


@dataclass(frozen=True, slots=True)
class SubmitResults:
    """What SUBMIT answered: counts, and one ``SUBMIT_*`` byte per descriptor."""

    accepted: int
    retry: int
    dropped: int
    results: bytes

    @property
    def all_accepted(self) -> bool:
        return self.accepted == len(self.results)

    def retried(self) -> list[int]:
        """Indexes of the descriptors a shared WQ answered "retry" (submit them again)."""
        return [i for i, r in enumerate(self.results) if r == 1]


class Mdev:
    """One accelerator mdev: ``info`` is its device description (``create_mdev``'s reply)."""

    def __init__(self, client: Client, info: DeviceDescription) -> None:
        self.client = client
        self.info = info
        self.uuid: str = info.uuid
        self.default_pasid: int = info.default_pasid
        self.group_id: int | None = info.group_id
        #: The domain the device is attached to now: the client's ``attach_device`` and
        #: ``detach_device`` keep it current (``info`` stays the reply it was created with).
        self.domain_id: int | None = info.domain_id
        #: The group's default domain (what ``detach_device`` returns the device to).
        self.default_domain_id: int | None = info.default_domain_id
        #: Interrupts seen per vector (eventfd or EVENT_IRQ).
        self.irq_counts = [0] * IRQ_VECTORS
        #: The latest software errors (EVENT_IRQ on vector 0 carries them), newest last.
        self.software_errors: deque[dict[str, Any]] = deque(maxlen=256)
        self._software_error_count = 0
        self._wakeup = trio.Event()
        self._eventfds: list[int | None] = [None] * IRQ_VECTORS
        self._pumps: list[trio.CancelScope | None] = [None] * IRQ_VECTORS
        client._mdevs[self.uuid] = self

    def __repr__(self) -> str:
        return f"<Mdev {self.uuid} {self.info.type_id}>"

    def __getitem__(self, key: str) -> Any:
        """``mdev["uuid"]`` as ``create_mdev``'s map reply had it, for one release (0.x):
        the Mdev's own attribute (``domain_id`` is current) or else ``info``'s."""
        _warn_key("Mdev", key)
        return self._key(key)

    def _key(self, key: str) -> Any:
        if key in ("uuid", "default_pasid", "group_id", "domain_id", "default_domain_id"):
            return getattr(self, key)
        try:
            return getattr(self.info, key)
        except AttributeError:
            raise KeyError(key) from None

    # -- interrupts ---------------------------------------------------------------------------

    def _interrupt(self, vector: int, swerr: dict[str, Any] | None = None) -> None:
        """An interrupt arrived (from the client's reader or an eventfd pump). A software
        error's details come as an event even when vector 0 has an eventfd, which counts it."""
        if swerr is not None:
            self.software_errors.append(swerr)
            self._software_error_count += 1
        if 0 <= vector < IRQ_VECTORS and (swerr is None or self._eventfds[vector] is None):
            self.irq_counts[vector] += 1
        wakeup, self._wakeup = self._wakeup, trio.Event()
        wakeup.set()

    async def set_irqs(self, eventfds: Sequence[int] | None = None, *, start: int = 0) -> None:
        """Give the daemon eventfds for vectors ``start...``: DEVICE_SET_IRQS with DATA_EVENTFD.

        Without ``eventfds`` the Mdev makes its own for every vector and watches them itself,
        so :meth:`wait` wakes on them. Eventfds you pass stay yours to read and close.
        """
        own = eventfds is None
        fds = (
            [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(IRQ_VECTORS - start)]
            if eventfds is None
            else list(eventfds)
        )
        body = {
            "device": self.uuid,
            "flags": IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            "index": IRQ_MSIX,
            "start": start,
            "count": len(fds),
        }
        try:
            await self.client.call(Command.DEVICE_SET_IRQS, body, fds=fds)
        except BaseException:
            if own:
                for fd in fds:
                    os.close(fd)
            raise
        for offset, fd in enumerate(fds):
            self._stop_pump(start + offset)
            if own:
                self._start_pump(start + offset, fd)

    async def disable_irqs(self) -> None:
        """DEVICE_SET_IRQS with count 0: interrupts come as EVENT_IRQ messages again."""
        body = {
            "device": self.uuid,
            "flags": IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            "index": IRQ_MSIX,
            "start": 0,
            "count": 0,
        }
        await self.client.call(Command.DEVICE_SET_IRQS, body)
        for vector in range(IRQ_VECTORS):
            self._stop_pump(vector)

    def _start_pump(self, vector: int, fd: int) -> None:
        nursery = self.client._nursery
        if nursery is None:
            os.close(fd)
            raise RuntimeError("the client is not running (use siov.connect)")
        scope = trio.CancelScope()
        self._pumps[vector] = scope
        self._eventfds[vector] = fd
        nursery.start_soon(self._pump, vector, fd, scope)

    def _stop_pump(self, vector: int) -> None:
        scope, fd = self._pumps[vector], self._eventfds[vector]
        self._pumps[vector] = self._eventfds[vector] = None
        if scope is not None:
            scope.cancel()
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    async def _pump(self, vector: int, fd: int, scope: trio.CancelScope) -> None:
        with scope, contextlib.suppress(trio.ClosedResourceError, OSError):
            await trio.lowlevel.checkpoint()  # stopped before it started: never touch the fd
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                self._interrupt(vector)

    # -- submission ---------------------------------------------------------------------------

    async def submit(
        self,
        descriptors: bytes | Sequence[bytes],
        *,
        pasid: int | None = None,
        limited: bool = False,
    ) -> SubmitResults:
        """SUBMIT one or many 64-byte descriptors. A shared WQ takes ``pasid`` (default the
        mdev's) and may answer "retry" per descriptor; a dedicated WQ drops what does not fit
        (and this warns :class:`~siov.errors.DescriptorsDropped`)."""
        blob = descriptors if isinstance(descriptors, bytes | bytearray) else b"".join(descriptors)
        body: dict[str, Any] = {"device": self.uuid, "descriptors": bytes(blob)}
        if pasid is not None:
            body["pasid"] = pasid
        if limited:
            body["limited"] = True
        reply = await self.client.call(Command.SUBMIT, body)
        if reply["dropped"]:
            warnings.warn(
                f"mdev {self.uuid}: {reply['dropped']} descriptor(s) dropped, the dedicated WQ "
                "is full (see SubmitResults.dropped; the WQ's stats count them)",
                DescriptorsDropped,
                stacklevel=2,
            )
        return SubmitResults(
            reply["accepted"], reply["retry"], reply["dropped"], bytes(reply["results"])
        )

    async def portal_write(
        self, descriptor: bytes, *, offset: int = 0, pasid: int | None = None
    ) -> int:
        """Write one descriptor into BAR2 at ``offset`` (REGION_WRITE): page 0 of the WQ's four
        is the unlimited portal, page 1 the limited one. Returns the ``SUBMIT_*`` result."""
        body: dict[str, Any] = {
            "device": self.uuid,
            "region": REGION_BAR2,
            "offset": offset,
            "data": bytes(descriptor),
        }
        if pasid is not None:
            body["pasid"] = pasid
        return int((await self.client.call(Command.REGION_WRITE, body))["result"])

    async def read_registers(self, offset: int = 0, count: int = 0x1000) -> bytes:
        """REGION_READ of BAR0: the read-only register image (GENCAP at 0x10, WQCFG, ...)."""
        body = {"device": self.uuid, "region": REGION_BAR0, "offset": offset, "count": count}
        return bytes((await self.client.call(Command.REGION_READ, body))["data"])

    async def device_info(self) -> DeviceInfo:
        reply: DeviceInfo = await self.client.call_typed(
            Command.DEVICE_GET_INFO, {"device": self.uuid}
        )
        return reply

    async def region_info(self, index: int) -> RegionInfo:
        body = {"device": self.uuid, "index": index}
        reply: RegionInfo = await self.client.call_typed(Command.DEVICE_GET_REGION_INFO, body)
        return reply

    # -- completion ---------------------------------------------------------------------------

    # The blocking client has no cancel scopes to put around a call, hence ``timeout``.
    async def wait(
        self,
        record: memoryview | bytearray,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109
        completion_addr: int | None = None,
        since: int | None = None,
    ) -> CompletionRecord:
        """Wait until the completion record (a 32-byte view of your memory) is written; return
        it decoded. ``TimeoutError`` after ``timeout`` seconds (None: no limit).

        With ``completion_addr`` (the descriptor's), a software error the device reports for
        that record address (misaligned, or not translatable with the submitting PASID) raises
        :class:`~siov.errors.RecordNotWritten` at once instead of waiting out the timeout;
        ``since`` is :attr:`software_error_count` before the submission (default: now).
        :meth:`run` passes both.
        """
        if len(record) < DSA_COMP_RECORD_SIZE:
            raise ValueError(f"a completion record is {DSA_COMP_RECORD_SIZE} bytes")
        deadline = trio.current_time() + timeout if timeout is not None else float("inf")
        seen = self._software_error_count if since is None else since
        interval = 0.0
        while record[0] == 0:
            wakeup = self._wakeup
            if record[0] != 0:
                break
            if completion_addr is not None:
                seen = self._check_record_error(completion_addr, seen)
            now = trio.current_time()
            if now >= deadline:
                where = f" at {completion_addr:#x}" if completion_addr is not None else ""
                raise TimeoutError(
                    f"completion record{where} not written within {timeout} s (is the view "
                    "the memory the descriptor's completion_addr maps to?)"
                )
            with trio.move_on_at(min(now + interval, deadline)):
                await wakeup.wait()
            interval = min(max(interval * 2, 1e-5), MAX_POLL_INTERVAL)
        return CompletionRecord.unpack(bytes(record[:DSA_COMP_RECORD_SIZE]))

    @property
    def software_error_count(self) -> int:
        """How many software errors this Mdev has seen (``software_errors`` keeps the last
        256); pass it as ``wait(since=...)`` when you submit and wait separately."""
        return self._software_error_count

    def _check_record_error(self, completion_addr: int, seen: int) -> int:
        new = self._software_error_count - seen
        if new <= 0:
            return seen
        for swerr in list(self.software_errors)[-new:]:
            if swerr.get("completion_addr") == completion_addr and swerr.get("batch_index") is None:
                status = int(swerr.get("status", 0))
                raise RecordNotWritten(
                    f"the completion record at {completion_addr:#x} cannot be written: "
                    f"software error status {status:#x} (fault_addr "
                    f"{int(swerr.get('fault_addr', 0)):#x}, PASID {swerr.get('pasid')}); "
                    "is it aligned to 32 bytes and mapped for the submitting PASID?",
                    swerr,
                )
        return self._software_error_count

    async def run(
        self,
        descriptor: bytes,
        record: memoryview | bytearray,
        *,
        pasid: int | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (see wait)
    ) -> CompletionRecord:
        """One-shot: clear ``record``, submit ``descriptor`` (whose completion address is
        ``record``'s IOVA) and wait for its completion. A descriptor the WQ did not take
        raises :class:`~siov.errors.TryAgain`; a record the device cannot write raises
        :class:`~siov.errors.RecordNotWritten`; ``TimeoutError`` after ``timeout`` s."""
        record[:DSA_COMP_RECORD_SIZE] = bytes(DSA_COMP_RECORD_SIZE)
        since = self._software_error_count
        result = await self.submit(descriptor, pasid=pasid)
        if result.results[0] != SUBMIT_ACCEPTED:
            what = "retry (shared WQ full)" if result.retry else "dropped (dedicated WQ full)"
            raise TryAgain(11, f"descriptor not accepted: {what}")
        addr = int.from_bytes(
            descriptor[_COMPLETION_ADDR_OFFSET : _COMPLETION_ADDR_OFFSET + 8], "little"
        )
        return await self.wait(record, timeout=timeout, completion_addr=addr, since=since)

    async def remove(self) -> None:
        """Remove the mdev (and close the eventfds this Mdev made)."""
        await self.client.remove_mdev(self)

    def close(self) -> None:
        """Stop watching interrupts; the mdev itself stays."""
        for vector in range(IRQ_VECTORS):
            self._stop_pump(vector)
        self.client._mdevs.pop(self.uuid, None)


__all__ = [
    "COMPLETION_VECTOR",
    "DEFAULT_TIMEOUT",
    "ERROR_VECTOR",
    "IRQ_VECTORS",
    "Mdev",
    "SubmitResults",
]
