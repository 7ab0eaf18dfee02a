"""MEM_REGISTER, MEM_UNREGISTER, MEM_LIST: client memory passed by fd.

The daemon maps the fd itself and closes it at once: the mapping is what it keeps, and it holds
no fd (Python's ``mmap.mmap(fd)`` would keep a dup of it; see :func:`map_without_fd`). Memory
the daemon maps must never SIGBUS it, so it takes only memory whose pages cannot vanish:

* it seals the memfd against shrinking (F_SEAL_SHRINK): a truncated file under a mapping
  SIGBUSes the next access past the new end;
* it takes only shmem memfds (fstatfs ``f_type`` TMPFS_MAGIC). A punched hole
  (``fallocate(PUNCH_HOLE)``, which no seal but F_SEAL_WRITE forbids) in shmem refaults as a
  fresh zero page; in a hugetlbfs memfd (MFD_HUGETLB) it needs a free huge page, and with the
  pool exhausted the fault is SIGBUS (the kernel's hugetlb_fault: VM_FAULT_SIGBUS on a failed
  allocation), so hugetlb is refused. F_ADD_SEALS succeeds only on memfds made with
  MFD_ALLOW_SEALING (other shmem files are born F_SEAL_SEAL), so nothing else gets this far;
  every memfd lives on the kernel's internal shmem mount, which has no size limit to run into.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from typing import Any

import structlog

from siov_protocol import Command
from siov_protocol.messages import ListRequest
from siov_protocol.messages_iommu import MemRegion, MemRegister
from siovd.model.errors import SiovError
from siovd.model.memory import PAGE_SIZE, Region
from siovd.service.fds import discard
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


def region_info(region: Region) -> dict[str, Any]:
    return {
        "region": region.id,
        "phys": region.base,
        "size": region.size,
        "access": region.access,
        "mapped": region.map_count,
        "owner": region.owner,
    }


TMPFS_MAGIC = 0x01021994  # linux/magic.h
HUGETLBFS_MAGIC = 0x958458F6
MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000  # x86-64; Python 3.11's mmap module does not export it
_STATFS_SIZE = 120  # struct statfs on x86-64; f_type is its first field (a long)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_char_p]


def fs_type(fd: int) -> int:
    """fstatfs(2)'s ``f_type`` of the file behind ``fd``."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise SiovError(errno.EINVAL, f"cannot fstatfs the fd: {os.strerror(err)}")
    return int.from_bytes(buf.raw[:8], "little")


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def buffer_address(obj: object) -> int:
    """The address of a (possibly read-only) buffer's first byte (the buffer protocol's
    ``buf``), with the export released again at once."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE
        raise SiovError(errno.EINVAL, "not a buffer")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def map_without_fd(fd: int, size: int, offset: int, prot: int) -> mmap.mmap:
    """``mmap(fd)`` as an :class:`mmap.mmap` that holds no fd.

    An anonymous placeholder (no fd) is created by the mmap module, then the file is mapped
    over it with MAP_FIXED. The mmap object keeps its job (buffer
    exports counted, ``close()`` unmaps the range) and the fd can be closed at once.
    """
    # Writable, so the mmap object exports a writable buffer; MAP_NORESERVE: no commit charge
    # for the instant before the file replaces it.
    placeholder = mmap.PROT_READ | mmap.PROT_WRITE
    holder = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE, prot=placeholder)
    addr = buffer_address(holder)
    got = _libc.mmap(addr, size, prot, mmap.MAP_SHARED | MAP_FIXED, fd, offset)
    if got != addr:
        err = ctypes.get_errno()
        holder.close()
        raise SiovError(err or errno.EINVAL, f"cannot map the fd: {os.strerror(err)}")
    return holder


def _seal_and_map(fd: int, req: MemRegister) -> mmap.mmap:
    if req.offset % PAGE_SIZE or req.size % PAGE_SIZE:
        raise SiovError(errno.EINVAL, "offset and size must be multiples of 4 KiB")
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError as exc:
        raise SiovError(
            errno.EINVAL,
            f"memory must be a memfd that accepts F_SEAL_SHRINK ({exc.strerror})",
        ) from None
    kind = fs_type(fd)
    if kind == HUGETLBFS_MAGIC:
        raise SiovError(
            errno.EINVAL,
            "hugetlb memfds are refused: a page punched out of one refaults only while the "
            "huge page pool has a free page, else the access is SIGBUS",
        )
    if kind != TMPFS_MAGIC:
        raise SiovError(errno.EINVAL, f"memory must be a shmem memfd (file system {kind:#x})")
    length = os.fstat(fd).st_size
    if req.offset + req.size > length:
        raise SiovError(
            errno.EINVAL,
            f"offset {req.offset:#x} + size {req.size:#x} runs past the file's {length:#x} bytes",
        )
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if req.access == "rw" else 0)
    try:
        return map_without_fd(fd, req.size, req.offset, prot)
    except OSError as exc:  # the placeholder itself (ENOMEM: address space, vm.max_map_count)
        raise SiovError(exc.errno or errno.EINVAL, f"cannot map the fd: {exc.strerror}") from None


@registry.command(Command.MEM_REGISTER, MemRegister, max_fds=1)
def mem_register(ctx: Context, req: MemRegister) -> dict[str, Any]:
    if len(ctx.fds) != 1:
        raise SiovError(errno.EINVAL, "MEM_REGISTER needs exactly one fd (the memory)")
    if req.access not in ("rw", "ro"):
        raise SiovError(errno.EINVAL, f"access: {req.access!r} is not 'rw' or 'ro'")
    daemon, session = ctx.daemon, ctx.session
    limit = daemon.config.limits.memory_regions
    mine = daemon.memory.regions(session.id)
    if len(mine) >= limit:
        raise SiovError(errno.ENOSPC, f"limit reached: limits.memory_regions = {limit}")
    have, limit = sum(r.size for r in mine), daemon.config.limits.memory_bytes
    if have + req.size > limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.memory_bytes = {limit} ({have} registered, {req.size} asked)",
        )
    # The same over every connection of the caller's uid.
    ids = {s.id for s in daemon.uid_sessions(session.uid)}
    theirs = [r for r in daemon.memory.regions(None) if r.owner in ids]
    limit = daemon.config.limits.uid_memory_regions
    if len(theirs) >= limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.uid_memory_regions = {limit} (uid {session.uid})",
        )
    have, limit = sum(r.size for r in theirs), daemon.config.limits.uid_memory_bytes
    if have + req.size > limit:
        raise SiovError(
            errno.ENOSPC,
            f"limit reached: limits.uid_memory_bytes = {limit} "
            f"(uid {session.uid}: {have} registered, {req.size} asked)",
        )
    fd = ctx.fds.pop()
    try:
        mapping = _seal_and_map(fd, req)
    finally:
        discard([fd])  # the mapping keeps the memory; the fd is not needed (nor held) any more
    view = memoryview(mapping) if req.access == "rw" else memoryview(mapping).toreadonly()
    try:
        region = daemon.memory.add_region(view, session.id, req.access)
    except BaseException:
        mapping.close()
        raise
    daemon.mappings[region.id] = (region, mapping)
    log.info("memory registered", region=region.id, phys=hex(region.base), size=region.size)
    return region_info(region)


@registry.command(Command.MEM_UNREGISTER, MemRegion)
def mem_unregister(ctx: Context, req: MemRegion) -> dict[str, Any]:
    ctx.daemon.memory.remove_region(req.region, ctx.session.id)
    ctx.daemon.close_dead_mappings()
    log.info("memory unregistered", region=req.region)
    return {}


@registry.command(Command.MEM_LIST, ListRequest)
def mem_list(ctx: Context, req: ListRequest) -> dict[str, Any]:
    regions = ctx.daemon.memory.regions(ctx.session.list_filter(req.all))
    return {"regions": [region_info(r) for r in regions if r.owner != 0]}
