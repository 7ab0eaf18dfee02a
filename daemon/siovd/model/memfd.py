"""Client memory passed as a memfd: sealed, checked and mapped by the daemon.

The daemon maps the fd itself and closes it at once: the mapping is what it keeps, and it holds
no fd (Python's ``mmap.mmap(fd)`` would keep a dup of it; see :func:`map_without_fd`); the
:class:`~siovd.model.memory.Region` owns the mapping and closes it when it goes. Memory
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

from siovd.model.errors import SiovError
from siovd.model.memory import PAGE_SIZE

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


def seal_and_map(fd: int, size: int, offset: int, access: str) -> mmap.mmap:
    """Check, seal and map the memfd ``fd`` (see the module's rules); the fd may be closed
    as soon as this returns."""
    if offset % PAGE_SIZE or size % PAGE_SIZE:
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
    if offset + size > length:
        raise SiovError(
            errno.EINVAL,
            f"offset {offset:#x} + size {size:#x} runs past the file's {length:#x} bytes",
        )
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if access == "rw" else 0)
    try:
        return map_without_fd(fd, size, offset, prot)
    except OSError as exc:  # the placeholder itself (ENOMEM: address space, vm.max_map_count)
        raise SiovError(exc.errno or errno.EINVAL, f"cannot map the fd: {exc.strerror}") from None
