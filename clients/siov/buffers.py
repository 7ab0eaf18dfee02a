"""Client memory the daemon can DMA into: memfd-backed buffers.

A :class:`Buffer` is an anonymous memfd, mapped here and passed to the daemon by SCM_RIGHTS;
both sides then see the same pages. The daemon places it in its physical address space and
tells us where (``phys``); domains map IOVAs onto that.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

PAGE_SIZE = 4096


def page_align(size: int, align: int = PAGE_SIZE) -> int:
    return (size + align - 1) // align * align


def memfd(size: int, name: str = "siov-buffer") -> int:
    """A new memfd of ``size`` bytes, close-on-exec, that the daemon may seal against shrinking."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(eq=False)
class Buffer:
    """A region of client memory registered with the daemon.

    ``view`` is a writable memoryview of the whole buffer; ``phys`` is its base in the daemon's
    physical address space; ``region`` the daemon's id for it.
    """

    fd: int
    size: int
    region: int = -1
    phys: int = 0
    access: str = "rw"
    _map: mmap.mmap | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._map is None:
            self._map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED)

    @property
    def view(self) -> memoryview:
        assert self._map is not None, "buffer is closed"
        return memoryview(self._map)

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        """Unmap and close locally (the daemon keeps its own mapping until unregistered)."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                return  # a view is still exported; the map goes when the last view does
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
