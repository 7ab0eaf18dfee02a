"""The executor's native core and the page caches it translates through.

``siovd.model.accel._fastpath`` (``native/fastpath.c``, compiled by the package's build hook)
runs NOOP, MEMMOVE, MEMFILL, COMPARE, COMPVAL and CRCGEN descriptors of at most one slice, alone
or as BATCH entries, when every address they touch is in the IOTLB with the access they need
and they complete without a software error. Everything else, and every descriptor whose
addresses miss, runs in the Python executor (the reference model), so outcomes, memory,
completion records, faults and IOTLB counters are the same either way (the descriptor fuzzer
checks that).

The scheduler hands it runs of queued descriptors (``run_many``, through
:meth:`~siovd.model.accel.ops.Executor.run_queued`): consecutive descriptors at the head of one
WQ from one submitter and PASID run in one call until one needs Python (a miss that cannot be
filled, a fallback), asks for an interrupt, or the budget is spent; their plain completions come
back as one :class:`~siovd.model.accel.outcome.CompletedRun`, so Python's work is per run, not
per descriptor. The scheduler's fuzzer (tests/fuzz/test_native_runs.py) checks runs against
one-by-one execution in Python.

The IOMMU still translates every address: a :class:`PageCache` holds copies of IOTLB entries
of one PASID-table tag, filled from the IOTLB (:func:`fill`, never from a page walk) with the
region checks ``IommuDmaSpace.runs`` makes, and dropped whole as soon as the IOTLB's
``generation`` (an invalidation or eviction) or ``fills`` (an insert), or the physical memory's
``generation`` (a region left) moves. A native descriptor reports its lookups, which are added
to the IOTLB's hits; an entry's CLOCK reference mark is set when it is copied (it is being used
at that moment, and only an eviction pass, which drops the cache, clears it).

Behind a device TLB (the DMA space the daemon gives an mdev) the cache copies the device TLB's
entries instead: a range inside one is one device-TLB hit, as ``DevTlbDmaSpace.runs`` counts it;
a miss runs in Python (which asks the IOMMU and fills the device TLB), except once the device
TLB is full, when a miss only translates and goes to the IOTLB copy of the requester's tag.

Off the event-loop thread: the native calls release the GIL for the data work. They are safe
to make from another thread (an engine on its own core) under these invariants:

- no region leaves the physical space while a call runs (regions are removed by the thread
  that owns the model, which must not do so concurrently with a call on another thread: hold
  the model's lock around both); the memory's ``generation`` is checked when a call starts, so
  a cache never holds the address of a mapping that was closed before;
- one call at a time per page cache (per requester): a call marks its cache busy, a second
  call on it falls back to Python, and filling a busy cache raises;
- the model's Python objects (IOTLB, device TLB, budgets) are touched only with the GIL held,
  before and after the data work, never during it.

``SIOVD_NATIVE=0`` in the environment turns the native core off; :data:`AVAILABLE` says whether
it was built.
"""

from __future__ import annotations

import importlib
import os
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Final

from siovd.model.iommu.devtlb import DevTlbDmaSpace
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.iotlb import E_REF, Iotlb, make_tag
from siovd.model.iommu.pagetable import PTE_D, PTE_RW
from siovd.model.iommu.translate import IommuDmaSpace, resolve

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu


def _load() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("siovd.model.accel._fastpath"), None
    except ImportError as error:  # no compiler when the package was built: the Python executor
        return None, str(error)


native, IMPORT_ERROR = _load()

#: The native core was built and imports.
AVAILABLE: Final = native is not None
#: Executors use it unless told otherwise (``SIOVD_NATIVE=0`` turns it off).
ENABLED: Final = AVAILABLE and os.environ.get("SIOVD_NATIVE", "1") != "0"
#: The opcodes the native core runs (as a descriptor of their own; BATCH runs its entries).
OPCODES: Final = frozenset((0x00, 0x03, 0x04, 0x05, 0x06, 0x10))
_RW_D: Final = PTE_RW | PTE_D
_LEVELS: Final = {4096: 1, 2 << 20: 2, 1 << 30: 3}


class _Caches:
    """The page caches of one IOTLB, valid for one stamp, per PASID-table tag (a device TLB's
    copy lives on its DevTlbDmaSpace)."""

    __slots__ = ("by_tag", "stamp")

    def __init__(self, stamp: tuple[int, int, int]) -> None:
        self.stamp = stamp
        self.by_tag: dict[int, object] = {}


_caches: weakref.WeakKeyDictionary[Iotlb, _Caches] = weakref.WeakKeyDictionary()


class Translator:
    """What a native call needs for one requester: its page cache and where to fill it from."""

    __slots__ = ("cache", "domain", "iotlb", "tag")

    def __init__(self, cache: object, iotlb: Iotlb, domain: Domain, tag: int) -> None:
        self.cache = cache
        self.iotlb = iotlb
        self.domain = domain
        self.tag = tag

    def count(self, hits: int, backing_hits: int = 0) -> None:
        """The lookups a native descriptor made, as the Python path counts them."""
        self.iotlb.hits += hits

    def fill(self, iova: int, length: int, write: bool, backing: bool = False) -> bool:
        """Copy the IOTLB entry translating ``iova`` into the cache if the Python path would
        use it as it is for this access (a hit, in one live region of the domain's owner,
        writable and dirty for a write). False: the descriptor runs in Python."""
        entry = self.iotlb.peek(self.tag, iova)
        if entry is None:
            return False
        pbase, size, flags = entry[0], entry[1], entry[2]
        region = entry[4]
        if (
            region is None
            or not region.alive
            or not region.base <= pbase
            or pbase + size > region.end
            or region.owner != self.domain.owner
            or size not in _LEVELS
        ):
            return False
        writable = region.writable
        rw = bool(flags & PTE_RW) and writable
        write_ok = flags & _RW_D == _RW_D and writable
        if write and not write_ok:
            return False
        assert native is not None
        host = native.address(region.buf) + (pbase - region.base)
        self.cache.add(iova & ~(size - 1), size, pbase, host, region.id, rw, write_ok)  # type: ignore[attr-defined]
        entry[E_REF] = 1
        return True


class DevTlbTranslator:
    """A device TLB's hits, copied: a range inside one of its entries is one device-TLB hit
    and never reaches the IOMMU (devtlb.DevTlbDmaSpace.runs); anything else runs in Python,
    which asks the IOMMU and fills the device TLB."""

    __slots__ = ("backing", "cache", "space")

    def __init__(self, cache: object, space: DevTlbDmaSpace, backing: Translator | None) -> None:
        self.cache = cache
        self.space = space
        #: While the device TLB is full a miss only translates through the IOMMU (it fills
        #: nothing): then misses go to the IOTLB copy of the requester's tag.
        self.backing = backing

    def count(self, hits: int, backing_hits: int = 0) -> None:
        self.space.iommu.devtlb_hits += hits
        if backing_hits:
            assert self.backing is not None
            self.backing.iotlb.hits += backing_hits

    def fill(self, iova: int, length: int, write: bool, backing: bool = False) -> bool:
        if backing:
            return self.backing is not None and self.backing.fill(iova, length, write)
        got = self.space.hit_entry(iova, length, write)
        if got is None:
            return False
        key, (lo, hi, base, writable, region) = got
        assert native is not None
        host = native.address(region.buf) + (lo - base)
        self.cache.add_devtlb(key, lo, hi, host, writable)  # type: ignore[attr-defined]
        return True


def _devtlb_translator(dma: DevTlbDmaSpace) -> DevTlbTranslator:
    """The device TLB's translator, kept on the space while its stamp holds (this runs once
    per descriptor): it is rebuilt when the device TLB fills up, and its IOTLB copy for misses
    when the PASID entry points elsewhere (an attach moves no IOTLB stamp)."""
    assert native is not None
    iommu = dma.iommu
    iotlb = iommu.iotlb
    stamp = (iotlb.generation, iotlb.fills, iommu.memory.generation)
    held = dma.native
    if held is not None and held[0] == stamp:
        kept = held[3]
        if kept is not None:
            assert isinstance(kept, DevTlbTranslator)
            behind = kept.backing
            if behind is None:
                if not dma.full:
                    return kept
            elif _points_at(dma.walker, behind):
                return kept
    else:
        held = dma.native = [stamp, native.PageCache(devtlb=True), False, None]
    cache = held[1]
    backing = None
    if dma.full:
        # Nothing enters a full device TLB: copy all of it once, and then a miss in the copy
        # is a miss in the device TLB, which only translates through the IOMMU.
        if not held[2]:
            _copy_all(cache, dma)
            held[2] = True
        walker = translator(dma.walker)
        assert walker is None or isinstance(walker, Translator)
        backing = walker
    cache.set_backing(None if backing is None else backing.cache)  # type: ignore[attr-defined]
    made = DevTlbTranslator(cache, dma, backing)
    held[3] = made
    return made


def _points_at(space: IommuDmaSpace, xlat: Translator) -> bool:
    """The requester's PASID entry still points at the domain and tag ``xlat`` was made for."""
    device = space.device
    if device.group is None:
        return False
    domain, tag_pasid = resolve(device, space.pasid)
    return domain is xlat.domain and make_tag(domain.id, tag_pasid) == xlat.tag


def _copy_all(cache: object, space: DevTlbDmaSpace) -> None:
    assert native is not None
    for key, (lo, hi, base, writable, region) in space.cached():
        if region.alive:
            host = native.address(region.buf) + (lo - base)
            cache.add_devtlb(key, lo, hi, host, writable)  # type: ignore[attr-defined]


def _stamp(iommu: Iommu) -> tuple[int, int, int]:
    iotlb = iommu.iotlb
    return (iotlb.generation, iotlb.fills, iommu.memory.generation)


def _current(iommu: Iommu) -> _Caches:
    iotlb = iommu.iotlb
    stamp = _stamp(iommu)
    caches = _caches.get(iotlb)
    if caches is None or caches.stamp != stamp:
        caches = _caches[iotlb] = _Caches(stamp)
    return caches


def translator(dma: object) -> Translator | DevTlbTranslator | None:
    """The translator for ``dma`` if the native core can run its work: an IOMMU DMA space
    whose PASID entry points at a paging domain, or one behind a device TLB."""
    if native is None:
        return None
    kind = type(dma)
    if kind is DevTlbDmaSpace:
        assert isinstance(dma, DevTlbDmaSpace)
        return _devtlb_translator(dma)
    if kind is not IommuDmaSpace:
        return None
    assert isinstance(dma, IommuDmaSpace)
    device = dma.device
    if device.group is None:
        return None
    domain, tag_pasid = resolve(device, dma.pasid)
    if domain is None or domain.type is not DomainType.PAGING:
        return None
    iommu = dma._iommu
    iotlb = iommu.iotlb
    caches = _current(iommu)
    tag = make_tag(domain.id, tag_pasid)
    cache = caches.by_tag.get(tag)
    if cache is None:
        cache = caches.by_tag[tag] = native.PageCache()
    return Translator(cache, iotlb, domain, tag)
