"""Device TLBs (PCIe ATS): what each device may hold from TRANSLATE, and the invalidations
it owes.

An external emulator that calls TRANSLATE may cache the answer, as a device with ATS caches
translation completions. So the IOMMU remembers, per (device, PASID) and per domain, the
address ranges it handed out; whenever a translation in one of them changes (an unmap, the
PASID's domain replaced or detached, a stage-1 invalidation, a flush) it owes that device a
device-TLB invalidation (VT-d's Device-TLB Invalidate Descriptor: address and size mask, as
Linux's ``qi_flush_dev_iotlb_pasid(addr, mask)``), numbered by a cookie the device returns
when it has dropped the entries. The service sends them and makes the change's reply wait.

Bounded: at most :data:`MAX_RANGES` ranges per (device, PASID, domain); past that they merge
into their hull, which can only make invalidations larger, never miss one.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from siovd.model.errors import SiovError

PAGE_SHIFT: Final = 12
MAX_AM: Final = 52  # the whole 64-bit space: 2^52 pages
MAX_RANGES: Final = 1024

Key = tuple[str, int]  # (device uuid, PASID as the device gave it: 0 = none)


def _nothing() -> None:
    return None


def cover(start: int, end: int) -> tuple[int, int]:
    """The smallest naturally aligned power-of-two block of pages holding ``[start, end)``:
    ``(base, am)`` with ``4096 << am`` bytes, the address mask of a dev-IOTLB invalidation."""
    am = 0
    last = end - 1
    while am < MAX_AM and (start >> (PAGE_SHIFT + am)) != (last >> (PAGE_SHIFT + am)):
        am += 1
    return (start >> (PAGE_SHIFT + am)) << (PAGE_SHIFT + am), am


@dataclass(slots=True)
class Invalidation:
    """One device-TLB invalidation the device owes an answer to."""

    cookie: int
    device: str
    pasid: int
    iova: int
    am: int
    everything: bool  # every address of the PASID (its domain changed)
    registrant: int  # the session emulating the device: the one told, the one that answers
    done: bool = False
    timed_out: bool = False
    #: set by whoever waits for it (the service): called when the device answers
    wake: Callable[[], None] = field(default=_nothing)


class DeviceTlbs:
    """Every device's cached translations of one IOMMU, and the invalidations pending."""

    def __init__(self) -> None:
        self.cached: dict[Key, dict[int, list[tuple[int, int]]]] = {}
        self.pending: dict[int, Invalidation] = {}
        self.fenced: dict[str, set[int]] = {}  # device -> cookies that timed out
        self._next = 1
        self.sent = 0
        self.completed = 0
        self.timeouts = 0

    # -- what a device holds ---------------------------------------------------------------

    def record(self, device: str, pasid: int, domain: int, runs: list[tuple[int, int]]) -> None:
        """TRANSLATE handed ``runs`` (iova, length) of ``domain`` to ``device``."""
        if not runs:
            return
        ranges = self.cached.setdefault((device, pasid), {}).setdefault(domain, [])
        ranges.extend((iova, iova + length) for iova, length in runs)
        if len(ranges) > MAX_RANGES:
            hull = (min(s for s, _ in ranges), max(e for _, e in ranges))
            ranges[:] = [hull]

    def holds(self, device: str) -> bool:
        return any(key[0] == device and doms for key, doms in self.cached.items())

    # -- what changes ------------------------------------------------------------------------

    def range_changed(
        self, domains: set[int], iova: int, size: int, registrant: Callable[[str], int | None]
    ) -> list[Invalidation]:
        """Translations of ``[iova, iova + size)`` in any of ``domains`` changed: one
        invalidation per (device, PASID) that holds part of it, covering what it holds there."""
        out = []
        end = iova + size
        for key, doms in list(self.cached.items()):
            lo, hi, hit = end, iova, False
            for dom in domains & doms.keys():
                kept = []
                for s, e in doms[dom]:
                    if e <= iova or s >= end:
                        kept.append((s, e))
                        continue
                    hit = True
                    lo, hi = min(lo, max(s, iova)), max(hi, min(e, end))
                    if s < iova:
                        kept.append((s, iova))
                    if e > end:
                        kept.append((end, e))
                doms[dom] = kept
                if not kept:
                    del doms[dom]
            if hit:
                base, am = cover(lo, hi)
                inv = self._issue(key, base, am, False, registrant)
                if inv is not None:
                    out.append(inv)
            if not doms:
                del self.cached[key]
        return out

    def everything_changed(
        self, domains: set[int], registrant: Callable[[str], int | None]
    ) -> list[Invalidation]:
        """Every translation of ``domains`` changed (a stage 2 under nested domains, a
        domain-wide flush): each holder is invalidated whole."""
        out = []
        for key, doms in list(self.cached.items()):
            if not domains & doms.keys():
                continue
            for dom in domains & doms.keys():
                del doms[dom]
            inv = self._issue(key, 0, MAX_AM, True, registrant)
            if inv is not None:
                out.append(inv)
            if not doms:
                del self.cached[key]
        return out

    def entry_changed(
        self, device: str, pasids: set[int], registrant: Callable[[str], int | None]
    ) -> list[Invalidation]:
        """The domain behind ``device``'s ``pasids`` was replaced or detached: whatever the
        device holds for them is stale, whole."""
        out = []
        for pasid in sorted(pasids):
            if self.cached.pop((device, pasid), None):
                inv = self._issue((device, pasid), 0, MAX_AM, True, registrant)
                if inv is not None:
                    out.append(inv)
        return out

    def _issue(
        self,
        key: Key,
        iova: int,
        am: int,
        everything: bool,
        registrant: Callable[[str], int | None],
    ) -> Invalidation | None:
        session = registrant(key[0])
        if session is None:  # no emulator left to hold anything
            return None
        inv = Invalidation(self._next, key[0], key[1], iova, am, everything, session)
        self._next += 1
        self.pending[inv.cookie] = inv
        self.sent += 1
        return inv

    # -- answers -------------------------------------------------------------------------------

    def complete(self, session: int, device: str, cookie: int) -> Invalidation:
        """The device dropped what ``cookie`` named (ATS_INVALIDATE_DONE). ``ENOENT`` for a
        cookie not pending for this device of this session; a late answer to one that timed
        out is accepted and lifts the device's fence once none is left."""
        inv = self.pending.get(cookie)
        if inv is None or inv.device != device or inv.registrant != session:
            raise SiovError(errno.ENOENT, f"no ATS invalidation {cookie} pending for {device}")
        del self.pending[cookie]
        inv.done = True
        self.completed += 1
        late = self.fenced.get(device)
        if late is not None:
            late.discard(cookie)
            if not late:
                del self.fenced[device]
        inv.wake()
        return inv

    def time_out(self, inv: Invalidation) -> None:
        """No answer in time (VT-d: an Invalidation Time-out Error): the device is fenced,
        its translation requests refused, until it answers every cookie that timed out."""
        if inv.done or inv.timed_out:
            return
        inv.timed_out = True
        self.timeouts += 1
        self.fenced.setdefault(inv.device, set()).add(inv.cookie)

    def fence_more(self, inv: Invalidation) -> None:
        """An invalidation to a device fenced already: not waited for, owed all the same (the
        fence stays until this one is answered too)."""
        inv.timed_out = True
        self.fenced.setdefault(inv.device, set()).add(inv.cookie)

    def check_not_fenced(self, device: str) -> None:
        late = self.fenced.get(device)
        if late:
            raise SiovError(
                errno.ETIMEDOUT,
                f"device {device} has not completed ATS invalidation(s) "
                f"{', '.join(str(c) for c in sorted(late))} (invalidation time-out): answer "
                "them with ATS_INVALIDATE_DONE before it translates again",
            )

    def forget_device(self, device: str) -> None:
        """The device left the bus: it holds nothing, owes nothing; its waiters are woken."""
        for key in [k for k in self.cached if k[0] == device]:
            del self.cached[key]
        self.fenced.pop(device, None)
        gone = [inv for inv in self.pending.values() if inv.device == device]
        for inv in gone:
            del self.pending[inv.cookie]
            inv.done = True
        for inv in gone:
            inv.wake()
