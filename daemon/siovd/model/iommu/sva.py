"""Shared virtual addressing: a PASID bound to a client process's own address space.

Linux's ``iommu_sva_bind_device(dev, mm)`` points a PASID-table entry at the CPU page table of
``mm``; the device then uses the process's virtual addresses with the process's protections.
siov cannot walk another process's page table, so a binding holds what the process handed over
itself: an fd of its ``/proc/self/mem`` (opened ``O_RDWR``: its consent, and a handle on *that*
address space for as long as the fd lives, immune to pid reuse) and an fd of its
``/proc/self/maps``. Data moves with ``pread``/``pwrite`` on the mem fd; protections come from
the maps, because a write through ``/proc/pid/mem`` uses FOLL_FORCE and would succeed on a
read-only page where a device write must fault.

IOTLB semantics. The parsed maps are the binding's translation cache (its "IOTLB"): a lookup
that finds no mapping, or one without the permission the access needs, re-reads the maps
before a fault is reported, so anything the process mapped or allowed is seen at once. A
permission the process took away is seen at the next re-read: on a miss, when the IOMMU is
told to invalidate the binding's domain (IOTLB_INVALIDATE: what an mmu-notifier does on
hardware), or at a new bind. An address the process unmapped is never reached even through a
stale snapshot: the mem fd only reaches the live address space and fails (EIO) there, which is
a fault at the first page that failed.

Writes. :meth:`SvaDmaSpace.runs` for a write returns a view of a bounce buffer holding the
range's current bytes; the operation modifies it; :meth:`SvaDmaSpace.flush` writes every such
buffer back, in the order they were handed out, when the descriptor finishes (the executor
calls it, see :mod:`siovd.model.accel.cdev`). A small buffer (a completion record) is written
with its first byte last, so a poller never sees the status before the rest. Reads of a range
a pending write covers see the pending bytes, so a batch whose descriptors feed each other
works as on the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from siovd.model.device import Device
from siovd.model.dma import DmaFault
from siovd.model.errors import SiovError
from siovd.model.iommu.domain import Domain
from siovd.model.iommu.faults import FR_FS_NOT_PRESENT, FR_NON_CANONICAL, FR_SM_WRITE
from siovd.model.iommu.faults import FR_US_PRIVILEGE as FR_PRIVILEGE
from siovd.model.iommu.translate import Failure, IommuDmaSpace, resolve

if TYPE_CHECKING:
    from siovd.model.iommu.core import Iommu

PAGE: Final = 4096
#: The user half of a 4-level (48-bit) address space; above it lies the kernel's.
USER_TOP: Final = 1 << 47
#: Largest maps text read (a process with ~100k mappings); more is refused.
MAPS_MAX: Final = 16 << 20
PROC_SUPER_MAGIC: Final = 0x9FA0
_MEM_PATH: Final = re.compile(r"/(\d+)/mem$")
_MAPS_PATH: Final = re.compile(r"/(\d+)/maps$")
#: Writes this small go out in two parts, their first byte last (a completion record).
_SMALL_WRITE: Final = 64
#: The most one translated range may hold, and the most the write ranges of one descriptor
#: (with a batch's) may hold until they are written back: the bytes pass through the daemon.
MAX_RANGE: Final = 64 << 20
MAX_PENDING: Final = 256 << 20
#: Mappings remembered for the fast path (a descriptor's source, destination and record).
_RECENT: Final = 4

PERM_R: Final = 1
PERM_W: Final = 2


@dataclass(frozen=True, slots=True)
class Vma:
    start: int
    end: int
    perms: int  # PERM_R | PERM_W


def parse_maps(text: bytes) -> list[Vma]:
    """The mappings of a ``/proc/<pid>/maps`` text, sorted, adjacent ones with equal
    permissions merged. ``ValueError`` for anything that is not that format."""
    vmas: list[Vma] = []
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(maxsplit=2)
        if len(parts) < 2:
            raise ValueError(f"not a maps line: {line[:80]!r}")
        span, perms = parts[0], parts[1]
        lo, sep, hi = span.partition(b"-")
        if not sep or len(perms) != 4:
            raise ValueError(f"not a maps line: {line[:80]!r}")
        start, end = int(lo, 16), int(hi, 16)
        if not start < end or start % PAGE or end % PAGE:
            raise ValueError(f"bad range in maps line: {line[:80]!r}")
        bits = (PERM_R if perms[0:1] == b"r" else 0) | (PERM_W if perms[1:2] == b"w" else 0)
        if vmas and vmas[-1].end == start and vmas[-1].perms == bits:
            vmas[-1] = Vma(vmas[-1].start, end, bits)
        else:
            if vmas and start < vmas[-1].end:
                raise ValueError(f"maps lines out of order at {line[:80]!r}")
            vmas.append(Vma(start, end, bits))
    return vmas


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _fs_type(fd: int) -> int | None:
    """``fstatfs(fd).f_type``, or None when it cannot be asked."""
    libc = _libc()
    if libc is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first word
    if libc.fstatfs(fd, buf) != 0:
        return None
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little", signed=True)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _check_proc_fd(fd: int, pattern: re.Pattern[str], what: str) -> int:
    """The pid a ``/proc/<pid>/{mem,maps}`` fd names; ``EINVAL`` for any other fd."""
    path = _fd_path(fd)
    match = pattern.search(path)
    # (The path is as the client's mount namespace names it; procfs itself is checked next.)
    if match is None:
        shown = path or "an fd that cannot be inspected"
        raise SiovError(errno.EINVAL, f"{what}: expected /proc/<pid>/{what}, got {shown}")
    if _fs_type(fd) != PROC_SUPER_MAGIC:
        raise SiovError(errno.EINVAL, f"{what}: {path} is not on procfs")
    return int(match.group(1))


class AddressSpace:
    """One bound process's memory, reached only through the fds it passed."""

    __slots__ = (
        "_starts",
        "alive",
        "maps_fd",
        "maps_reads",
        "mem_fd",
        "pid",
        "pidfd",
        "recent",
        "snapshot_hits",
        "stale",
        "vmas",
        "write_failures",
    )

    def __init__(self, mem_fd: int, maps_fd: int, pid: int) -> None:
        self.mem_fd = mem_fd
        self.maps_fd = maps_fd
        self.pid = pid  # as the mem fd's procfs names it: never used to reach the process
        #: A pidfd of the process, readable once it exits; -1 when the pid cannot be trusted
        #: to mean the same process here (see :func:`_pidfd_for`).
        self.pidfd = -1
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        #: The mappings the last successful lookups ended in, newest first: (start, end, perms).
        self.recent: list[tuple[int, int, int]] = []
        self.alive = True
        self.stale = True
        self.maps_reads = 0
        self.snapshot_hits = 0
        self.write_failures = 0

    @classmethod
    def from_fds(cls, mem_fd: int, maps_fd: int) -> AddressSpace:
        """Check the two fds a client passed (see SPEC §8.13 for each errno) and take a first
        snapshot. The fds stay the caller's if this raises, the new object's otherwise."""
        pid = _check_proc_fd(mem_fd, _MEM_PATH, "mem")
        maps_pid = _check_proc_fd(maps_fd, _MAPS_PATH, "maps")
        if pid != maps_pid:
            raise SiovError(errno.EINVAL, f"mem is of process {pid} but maps of process {maps_pid}")
        flags = _fl(mem_fd) & os.O_ACCMODE
        if flags != os.O_RDWR:
            raise SiovError(
                errno.EACCES,
                f"mem of process {pid} is not open O_RDWR: the process must open its "
                "/proc/self/mem for reading and writing to let the device reach it",
            )
        if _fl(maps_fd) & os.O_ACCMODE not in (os.O_RDONLY, os.O_RDWR):
            raise SiovError(errno.EACCES, f"maps of process {pid} is not open for reading")
        space = cls(mem_fd, maps_fd, pid)
        # A pidfd to learn of the exit, opened before the probe below: if the address space
        # still reads after it was opened, the pid named that process then (no reuse race).
        space.pidfd = _pidfd_for(mem_fd, pid)
        try:
            space._first_refresh()
        except BaseException:
            space._close_pidfd()
            raise
        if not space.vmas or not space.probe():
            space._close_pidfd()
            raise SiovError(errno.ESRCH, f"process {pid} has exited")
        return space

    def _first_refresh(self) -> None:
        pid = self.pid
        try:
            self.refresh()
        except ValueError as exc:
            raise SiovError(errno.EINVAL, f"maps of process {pid}: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise SiovError(errno.ESRCH, f"process {pid} has exited") from None
            raise SiovError(exc.errno or errno.EIO, f"maps of process {pid}: {exc}") from None

    def _close_pidfd(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    # -- the snapshot -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the maps (the whole text, from offset 0)."""
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(self.maps_fd, 1 << 16, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            if offset > MAPS_MAX:
                raise ValueError(f"more than {MAPS_MAX} bytes of maps")
        self.maps_reads += 1
        self.vmas = parse_maps(b"".join(chunks))
        self._starts = [v.start for v in self.vmas]
        self.recent = []
        self.stale = False
        if not self.vmas:
            self.alive = False  # an exited process's maps read empty

    def probe(self) -> bool:
        """Whether the address space is still there (its first readable page reads)."""
        for vma in self.vmas:
            if vma.perms & PERM_R and vma.end <= USER_TOP:
                try:
                    return len(os.pread(self.mem_fd, 1, vma.start)) == 1
                except OSError:
                    continue
        return False

    def allowed(self, addr: int, length: int, need: int) -> tuple[int, int | None]:
        """How many bytes from ``addr`` the snapshot allows with ``need`` permissions, and the
        fault reason at the end of that prefix (None: all of it)."""
        if addr >= USER_TOP:
            top = (1 << 64) - USER_TOP
            return 0, FR_PRIVILEGE if addr >= top else FR_NON_CANONICAL
        starts = self._starts
        vmas = self.vmas
        pos, end = addr, addr + length
        index = bisect_right(starts, pos) - 1
        while pos < end:
            if index < 0 or index >= len(vmas) or not vmas[index].start <= pos < vmas[index].end:
                return pos - addr, FR_FS_NOT_PRESENT
            vma = vmas[index]
            if vma.perms & need != need:
                if need & PERM_W and vma.perms & PERM_R:
                    return pos - addr, FR_SM_WRITE
                return pos - addr, FR_FS_NOT_PRESENT
            pos = vma.end
            index += 1
        entry = (vma.start, vma.end, vma.perms)
        recent = self.recent
        if entry not in recent:
            recent.insert(0, entry)
            del recent[_RECENT:]
        return length, None

    def translate(self, addr: int, length: int, write: bool) -> tuple[int, int | None]:
        """:meth:`allowed`, re-reading the maps once before a miss becomes a fault."""
        need = PERM_R | (PERM_W if write else 0)
        if self.stale:
            self._safe_refresh()
        ok, reason = self.allowed(addr, length, need)
        if reason is None:
            self.snapshot_hits += 1
            return ok, None
        if addr < USER_TOP and self.alive:
            self._safe_refresh()
            ok, reason = self.allowed(addr, length, need)
        return ok, reason

    def _safe_refresh(self) -> None:
        try:
            self.refresh()
        except (OSError, ValueError):
            self.vmas, self._starts, self.alive = [], [], False
            self.recent = []

    # -- data ---------------------------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``addr``: short where the live address space ends (an
        unmapped page, or the process gone)."""
        out: list[bytes] = []
        got = 0
        while got < length:
            try:
                chunk = os.pread(self.mem_fd, length - got, addr + got)
            except OSError:
                break
            if not chunk:
                break
            out.append(chunk)
            got += len(chunk)
        return out[0] if len(out) == 1 else b"".join(out)

    def write(self, addr: int, data: memoryview) -> bool:
        done = 0
        while done < len(data):
            try:
                n = os.pwrite(self.mem_fd, data[done:], addr + done)
            except OSError:
                n = 0
            if n <= 0:
                self.write_failures += 1
                return False
            done += n
        return True

    def close(self) -> None:
        self.alive = False
        self._close_pidfd()
        for fd in (self.mem_fd, self.maps_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.mem_fd = self.maps_fd = -1


def _pidfd_for(mem_fd: int, pid: int) -> int:
    """A pidfd for ``pid``, or -1. Only when the mem fd comes from the same procfs instance as
    the daemon's own ``/proc`` does its pid number mean the same process here (another
    instance may be of another pid namespace)."""
    try:
        if os.fstat(mem_fd).st_dev != os.stat("/proc/self/mem").st_dev:
            return -1
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -1


def _fl(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise SiovError(errno.EINVAL, f"fd {fd}: {exc.strerror}") from None


@dataclass(eq=False)
class SvaDomain(Domain):
    """An SVA domain: its translation is a process's address space, not a page table."""

    mm: AddressSpace | None = None
    pasid: int = 0
    device: Device | None = field(default=None, repr=False)

    def info(self) -> dict[str, object]:
        out = super().info()
        out["pasid"] = self.pasid
        out["pid"] = self.mm.pid if self.mm is not None else None
        return out


class SvaDmaSpace:
    """A :class:`~siovd.model.dma.DmaSpace` for a requester whose PASID may be SVA-bound.

    The PASID-table entry is looked up on every call (as :class:`IommuDmaSpace` does): while
    it points at an :class:`SvaDomain` the process's memory is used; otherwise the ordinary
    IOMMU path answers.
    """

    __slots__ = ("_iommu", "_pending", "_pending_bytes", "_plain", "device", "pasid")

    def __init__(self, iommu: Iommu, device: Device, pasid: int) -> None:
        self._iommu = iommu
        self._plain = IommuDmaSpace(iommu, device, pasid)
        self.device = device
        self.pasid = pasid
        #: Write ranges handed out and not yet written back: (address space, addr, buffer).
        self._pending: list[tuple[AddressSpace, int, bytearray]] = []
        self._pending_bytes = 0

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        domain, _ = resolve(self.device, self.pasid)
        if not isinstance(domain, SvaDomain) or domain.mm is None:
            return self._plain.runs(iova, length, write)
        if length <= 0:
            return [], None
        mm = domain.mm
        # The bytes pass through the daemon's memory: bound what one range, and the writes of
        # one descriptor (a batch), may hold. Past that the range ends early, as at a fault.
        cap = MAX_RANGE if not write else min(MAX_RANGE, MAX_PENDING - self._pending_bytes)
        if length > cap:
            head, fault = self.runs(iova, cap, write) if cap > 0 else ([], None)
            if fault is None:
                fault = DmaFault(iova + max(cap, 0), write, FR_FS_NOT_PRESENT, self.pasid)
            return head, fault
        # Fast path: the range lies in the mapping the last lookup found, which allows the
        # access, and the live address space has all of it.
        end = iova + length
        perms = -1
        for lo, hi, allowed in mm.recent:
            if lo <= iova and end <= hi:
                perms = allowed
                break
        if perms >= 0 and not mm.stale and (perms & PERM_W or not write):
            mm.snapshot_hits += 1
            if write:
                buf = bytearray(length)
                try:
                    n = os.preadv(mm.mem_fd, [buf], iova)
                except OSError:
                    n = -1
                if n == length:
                    if self._pending:
                        self._overlay(mm, iova, buf)
                    self._pending.append((mm, iova, buf))
                    self._pending_bytes += length
                    return [memoryview(buf)], None
            elif not self._pending:
                try:
                    data = os.pread(mm.mem_fd, length, iova)
                except OSError:
                    data = b""
                if len(data) == length:
                    return [memoryview(data)], None
        ok, reason = mm.translate(iova, length, write)
        data = mm.read(iova, ok) if ok else b""
        if len(data) < ok:
            # The live address space ends before the snapshot said: re-read the maps (for the
            # fault's reason) and fault at the first byte that did not read.
            mm._safe_refresh()
            _, reason = mm.allowed(iova + len(data), 1, PERM_R | (PERM_W if write else 0))
            if reason is None:
                reason = FR_FS_NOT_PRESENT
        got = len(data)
        buf = bytearray(data)
        if self._pending and got:
            self._overlay(mm, iova, buf)
        views: list[memoryview] = []
        if got:
            if write:
                self._pending.append((mm, iova, buf))
                self._pending_bytes += got
                views.append(memoryview(buf))
            else:
                views.append(memoryview(buf).toreadonly())
        if got == length:
            return views, None
        assert reason is not None
        failure = Failure(iova + got, reason, domain)
        return views, self._iommu.report_fault(self.device, self.pasid, write, failure)

    def _overlay(self, mm: AddressSpace, iova: int, buf: bytearray) -> None:
        end = iova + len(buf)
        for owner, addr, pending in self._pending:
            if owner is mm and addr < end and iova < addr + len(pending):
                lo = max(addr, iova)
                hi = min(addr + len(pending), end)
                buf[lo - iova : hi - iova] = pending[lo - addr : hi - addr]

    def flush(self) -> None:
        """Write back every write range handed out, in order (see the module doc)."""
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        for mm, addr, buf in pending:
            view = memoryview(buf)
            size = len(view)
            fd = mm.mem_fd
            try:
                if size <= _SMALL_WRITE:
                    if os.pwrite(fd, view[1:], addr + 1) == size - 1:
                        os.pwrite(fd, view[:1], addr)
                        continue
                elif os.pwrite(fd, view, addr) == size:
                    continue
            except OSError:
                pass
            # Short or failed: the careful way, which counts a failure.
            if size <= _SMALL_WRITE:
                if mm.write(addr + 1, view[1:]):
                    mm.write(addr, view[:1])
            else:
                mm.write(addr, view)

    def discard(self) -> None:
        """Forget unwritten ranges (the descriptor was abandoned)."""
        self._pending = []
        self._pending_bytes = 0


def sva_domain(device: Device, pasid: int) -> SvaDomain | None:
    """The SVA domain ``(device, pasid)`` translates through, if it is one."""
    domain, _ = resolve(device, pasid)
    return domain if isinstance(domain, SvaDomain) else None
