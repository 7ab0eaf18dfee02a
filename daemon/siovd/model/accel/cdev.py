"""The char device of a user work queue (``/dev/dsa/wqD.Q``), as ``drivers/dma/idxd/cdev.c``
has it, and the executor that writes SVA results back.

Open (``idxd_cdev_open``): only an enabled WQ of type ``user`` has a char device; a dedicated
WQ has one opener at a time (``EBUSY`` for the next; an mdev holding the WQ counts as one);
the opener's PASID is bound to its address space and, on a dedicated WQ, programmed into
WQCFG (``idxd_wq_set_pasid``). The WQ's ``clients`` counts openers, as ``idxd_wq_refcount``.

Submission: a dedicated WQ takes the descriptor as written (MOVDIR64B; the WQ tags it with its
PASID); a shared WQ takes it as ENQCMD delivers it: PASID from IA32_PASID (the opener's), priv
0 (``idxd_submit_user_descriptor`` does the same for write()).

Close (``idxd_cdev_release``): drain the opener's PASID, unbind, clear WQCFG's PASID.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Final

from siov_protocol.dsa import DSA_DESC_SIZE
from siovd.model.accel.device import DsaDevice
from siovd.model.accel.ops import Executor, ResumeState
from siovd.model.accel.outcome import Blocked, Completed, PageResponse
from siovd.model.accel.wq import WorkItem, WorkQueue
from siovd.model.dma import DmaSpace
from siovd.model.errors import SiovError
from siovd.model.iommu.sva import SvaDmaSpace

_PASID_MASK: Final = (1 << 20) - 1
_PRIV: Final = 1 << 31
_U32: Final = struct.Struct("<I")


def open_wq(device: DsaDevice, index: int) -> WorkQueue:
    """The WQ ``index`` of ``device`` if its char device can be opened now, with the errno
    ``open()`` of ``/dev/dsa/wqD.Q`` gives otherwise."""
    if not 0 <= index < len(device.wqs):
        raise SiovError(errno.ENODEV, f"{device.name} has no wq{device.id}.{index}")
    wq = device.wqs[index]
    if not wq.enabled or wq.type != "user":
        # The char device exists only while a user WQ is enabled (the "user" driver bound);
        # opening a node whose cdev is gone is ENXIO (chrdev_open).
        state = "enabled" if wq.enabled else "disabled"
        raise SiovError(
            errno.ENXIO, f"{wq.dev_name} has no char device ({state}, type {wq.type!r})"
        )
    if wq.dedicated and wq.clients > 0:
        raise SiovError(errno.EBUSY, f"{wq.dev_name} is dedicated and already open")
    return wq


def opened(wq: WorkQueue, pasid: int) -> None:
    """The open succeeded: count the client; a dedicated WQ now tags work with ``pasid``."""
    wq.clients += 1
    if wq.dedicated:
        wq.set_pasid(pasid)


def closed(wq: WorkQueue) -> None:
    wq.clients = max(wq.clients - 1, 0)
    if wq.dedicated:
        wq.set_pasid(None)


def as_enqcmd(descriptors: bytes, pasid: int) -> bytes:
    """Each descriptor as ENQCMD delivers it: PASID bits 19:0 replaced, priv (bit 31) 0."""
    if len(descriptors) % DSA_DESC_SIZE:
        raise SiovError(
            errno.EINVAL,
            f"descriptors: {len(descriptors)} bytes is not a whole number of 64-byte ones",
        )
    out = bytearray(descriptors)
    unpack, pack = _U32.unpack_from, _U32.pack_into
    for offset in range(0, len(out), DSA_DESC_SIZE):
        (word,) = unpack(out, offset)
        pack(out, offset, (word & ~(_PASID_MASK | _PRIV)) | pasid)
    return bytes(out)


class SvaExecutor(Executor):
    """:class:`Executor` that writes an SVA space's bounce buffers back to the process when a
    descriptor finishes or blocks (:meth:`SvaDmaSpace.flush`); other spaces are untouched."""

    def run(self, item: WorkItem, dma: DmaSpace) -> Completed | Blocked:
        if type(dma) is not SvaDmaSpace:
            return super().run(item, dma)
        try:
            return super().run(item, dma)
        finally:
            dma.flush()

    def execute(
        self, item: WorkItem, dma_for_pasid: Callable[[int], DmaSpace]
    ) -> Completed | Blocked:
        return self.run(item, dma_for_pasid(item.pasid))

    def resume(self, state: ResumeState, response: PageResponse) -> Completed | Blocked:
        dma = state.dma
        try:
            return super().resume(state, response)
        finally:
            if type(dma) is SvaDmaSpace:
                dma.flush()
