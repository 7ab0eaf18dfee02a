"""Work queues: their accel-config attributes, and the queue descriptors wait in.

A WQ is configured only while it is disabled, with the errno the kernel's sysfs store returns
for each rule (``drivers/dma/idxd/sysfs.c``): ``EPERM`` for most attributes, ``ENXIO`` for
``block_on_fault`` and ``threshold``, and ``size`` needs the whole device disabled.

Submission follows the two portal instructions. A shared WQ is written with ENQCMD, which
carries the submitter's PASID and reports "retry" (ZF=1) when the WQ cannot take the descriptor.
A dedicated WQ is written with MOVDIR64B: posted, no PASID (the WQ's configured one is used), and
a write past the WQ's size is silently dropped, which siov counts.
"""

from __future__ import annotations

import enum
import errno
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Final

from siov_protocol.dsa import DSA_DESC_SIZE, DsaOpcode
from siov_protocol.ids import PASID_MAX
from siovd.model.accel import caps
from siovd.model.accel.attrs import (
    as_bitmap256,
    as_bool,
    as_int,
    as_str,
    bitmap256_text,
    roundup_pow2,
)
from siovd.model.errors import SiovError

if TYPE_CHECKING:
    from siovd.model.accel.device import DsaDevice, Group

_DRAIN: Final = int(DsaOpcode.DRAIN)

WQ_MODES: Final = ("dedicated", "shared")
WQ_TYPES: Final = ("none", "kernel", "user")


class SubmitResult(enum.IntEnum):
    """What a submitter learns from one portal write."""

    ACCEPTED = 0
    #: ENQCMD answered ZF=1: the shared WQ (or its limited portal) is full; try again.
    RETRY = 1
    #: MOVDIR64B to a dedicated WQ that was full (or disabled): the descriptor is lost.
    DROPPED = 2


class WorkItem:
    """One descriptor in a WQ, with the PASID its DMA is tagged with.

    ``owner`` is an opaque tag given at submission (the mdev UUID for mdev submissions) so the
    server can route completions, interrupts and page requests; ``irq_count`` is the number of
    interrupt vectors the submitter has, for the ``int_handle`` check (``None``: unchecked).
    """

    __slots__ = ("desc", "drain", "irq_count", "owner", "pasid", "seq", "wq")

    def __init__(
        self,
        wq: WorkQueue,
        desc: bytes,
        pasid: int,
        seq: int,
        owner: object,
        irq_count: int | None,
    ) -> None:
        self.wq = wq
        self.desc = desc
        self.pasid = pasid
        self.seq = seq
        self.owner = owner
        self.irq_count = irq_count
        self.drain = desc[7] == _DRAIN

    def __repr__(self) -> str:
        return f"<WorkItem {self.wq.path} #{self.seq} pasid={self.pasid} opcode={self.desc[7]:#x}>"


class _Run:
    """Descriptors of one submission waiting in a WQ, kept as the bytes they came in: a SUBMIT
    of 64 is one entry, not 64 :class:`WorkItem` objects (issue 16). ``start``/``end`` index
    the descriptors still queued; descriptor ``i`` has sequence number ``seq0 + i``. An
    engine's :meth:`WorkQueue.take` makes the WorkItem of the one it takes; a native run
    (:meth:`WorkQueue.head_run`) needs none but its first."""

    __slots__ = ("blob", "end", "irq_count", "owner", "pasid", "seq0", "start")

    def __init__(
        self,
        blob: bytes,
        start: int,
        end: int,
        pasid: int,
        seq0: int,
        owner: object,
        irq_count: int | None,
    ) -> None:
        self.blob = blob
        self.start = start
        self.end = end
        self.pasid = pasid
        self.seq0 = seq0
        self.owner = owner
        self.irq_count = irq_count

    def item(self, wq: WorkQueue, index: int) -> WorkItem:
        at = index * DSA_DESC_SIZE
        desc = self.blob[at : at + DSA_DESC_SIZE]
        return WorkItem(wq, desc, self.pasid, self.seq0 + index, self.owner, self.irq_count)

    def opcode(self, index: int) -> int:
        return self.blob[index * DSA_DESC_SIZE + 7]

    def drains(self) -> int:
        """How many of the queued descriptors are DRAINs."""
        blob = self.blob
        return blob[
            self.start * DSA_DESC_SIZE + 7 : self.end * DSA_DESC_SIZE : DSA_DESC_SIZE
        ].count(_DRAIN)

    def same_requester(self, other: _Run) -> bool:
        """Same submitter, PASID and interrupt count: one DMA space, one native run."""
        return (
            self.owner == other.owner
            and self.pasid == other.pasid
            and self.irq_count == other.irq_count
        )


@dataclass(slots=True)
class WqStats:
    submitted: int = 0
    retried: int = 0  # ENQCMD answered retry
    dropped: int = 0  # MOVDIR64B past the size of a dedicated WQ, or to a disabled WQ
    aborted: int = 0
    completed: int = 0


# Attributes in the order configure() applies them: later ones may depend on earlier ones
# (threshold on mode and size, block_on_fault on prs_disable).
WQ_ATTRS: Final = (
    "group_id",
    "mode",
    "size",
    "type",
    "name",
    "driver_name",
    "priority",
    "prs_disable",
    "block_on_fault",
    "threshold",
    "max_transfer_size",
    "max_batch_size",
    "ats_disable",
    "op_config",
)


class WorkQueue:
    """``wqD.N``: configuration, state, and the descriptors waiting for an engine."""

    def __init__(self, device: DsaDevice, wq_id: int) -> None:
        self.device = device
        self.id = wq_id
        # accel-config attributes, with the values a reset device shows
        self.group: Group | None = None
        self.mode = "dedicated"
        self.size = 0
        self.priority = 1
        self.threshold = 0
        self.block_on_fault = False
        self.type = "none"
        self.name = ""
        self.driver_name = ""
        self.max_transfer_size = caps.MAX_TRANSFER_SIZE
        self.max_batch_size = caps.MAX_BATCH_SIZE
        self.ats_disable = False
        self.prs_disable = False
        self.op_config = caps.OPCAP
        # state
        self.enabled = False
        #: WQCFG pasid / pasid_en: a dedicated WQ's DMA is tagged with this PASID when enabled
        self.pasid = 0
        self.pasid_en = False
        #: mdevs holding this WQ (sysfs "clients")
        self.clients = 0
        self.stats = WqStats()
        self._queue: deque[_Run] = deque()
        #: Descriptors in ``_queue`` (its entries are runs of them).
        self._queued = 0
        self._inflight: dict[int, WorkItem] = {}
        self._queued_drains = 0
        self._seq = 0

    # -- names --------------------------------------------------------------------------------

    @property
    def dev_name(self) -> str:
        """The accel-config name, ``wq0.1``."""
        return f"wq{self.device.id}.{self.id}"

    @property
    def path(self) -> str:
        """The full name used in messages, ``dsa0/wq0.1``."""
        return f"{self.device.name}/{self.dev_name}"

    @property
    def dedicated(self) -> bool:
        return self.mode == "dedicated"

    @property
    def group_id(self) -> int:
        return -1 if self.group is None else self.group.id

    @property
    def portal_offset(self) -> int:
        """Offset of this WQ's first portal page in BAR2."""
        return self.id * caps.PORTAL_STRIDE

    @property
    def occupancy(self) -> int:
        """Descriptors written to the WQ that no engine has taken yet."""
        return self._queued

    @property
    def inflight(self) -> int:
        """Descriptors taken by an engine and not yet retired."""
        return len(self._inflight)

    # -- configuration -------------------------------------------------------------------------

    def config(self) -> dict[str, object]:
        """The writable attributes, as ``configure()`` takes them."""
        return {
            "group_id": self.group_id,
            "mode": self.mode,
            "size": self.size,
            "type": self.type,
            "name": self.name,
            "driver_name": self.driver_name,
            "priority": self.priority,
            "prs_disable": int(self.prs_disable),
            "block_on_fault": int(self.block_on_fault),
            "threshold": self.threshold,
            "max_transfer_size": self.max_transfer_size,
            "max_batch_size": self.max_batch_size,
            "ats_disable": int(self.ats_disable),
            "op_config": bitmap256_text(self.op_config),
        }

    def configure(self, attrs: Mapping[str, object]) -> None:
        """Set attributes as ``accel-config config-wq`` does; all or nothing.

        Unknown names are ``EINVAL``. Each attribute follows its sysfs rule; if one fails the
        WQ keeps its earlier configuration.
        """
        unknown = sorted(set(attrs) - set(WQ_ATTRS))
        if unknown:
            raise SiovError(errno.EINVAL, f"{self.path}: unknown attribute(s) {', '.join(unknown)}")
        saved = self._save()
        try:
            for name in WQ_ATTRS:
                if name in attrs:
                    self._SETTERS[name](self, attrs[name])
        except SiovError:
            self._restore(saved)
            raise

    _FIELDS: Final = WQ_ATTRS[1:]

    def _save(self) -> tuple[Group | None, dict[str, object]]:
        return self.group, {name: getattr(self, name) for name in self._FIELDS}

    def _restore(self, saved: tuple[Group | None, dict[str, object]]) -> None:
        group, values = saved
        self._move_to_group(group)
        for name, value in values.items():
            setattr(self, name, value)

    def _need_disabled(self, attr: str, err: int = errno.EPERM) -> None:
        if not self.device.configurable:
            raise SiovError(errno.EPERM, f"{self.device.name} is not configurable")
        if self.enabled:
            raise SiovError(err, f"{self.path} is enabled: disable it before setting {attr}")

    def _move_to_group(self, group: Group | None) -> None:
        if self.group is group:
            return
        if self.group is not None:
            self.group.wqs.remove(self)
        self.group = group
        if group is not None:
            group.wqs.append(self)
            group.wqs.sort(key=lambda wq: wq.id)

    def _set_group_id(self, value: object) -> None:
        gid = as_int(self.path, "group_id", value)
        self._need_disabled("group_id")
        if not -1 <= gid < len(self.device.groups):
            raise SiovError(
                errno.EINVAL,
                f"{self.path}: group_id {gid} out of range -1..{len(self.device.groups) - 1}",
            )
        self._move_to_group(None if gid == -1 else self.device.groups[gid])

    def _set_mode(self, value: object) -> None:
        mode = as_str(self.path, "mode", value)
        self._need_disabled("mode")
        if mode not in WQ_MODES:
            raise SiovError(errno.EINVAL, f"{self.path}: mode must be dedicated or shared")
        if mode == "dedicated":
            self.threshold = 0  # the kernel clears it when a WQ becomes dedicated
        self.mode = mode

    def _set_size(self, value: object) -> None:
        size = as_int(self.path, "size", value)
        if not self.device.configurable:
            raise SiovError(errno.EPERM, f"{self.device.name} is not configurable")
        if self.device.enabled:
            # sysfs wq_size_store checks the device, not the WQ
            raise SiovError(
                errno.EPERM,
                f"{self.path}: size can change only while {self.device.name} is disabled",
            )
        others = sum(wq.size for wq in self.device.wqs if wq is not self)
        if size < 0 or size + others > self.device.total_wq_size:
            raise SiovError(
                errno.EINVAL,
                f"{self.path}: size {size} would make the WQs of {self.device.name} total "
                f"{size + others}, more than {self.device.total_wq_size}",
            )
        self.size = size

    def _set_type(self, value: object) -> None:
        wq_type = as_str(self.path, "type", value)
        self._need_disabled("type")
        if wq_type not in WQ_TYPES:
            raise SiovError(errno.EINVAL, f"{self.path}: type must be one of {', '.join(WQ_TYPES)}")
        if wq_type != self.type:
            self.name = ""  # the kernel clears the name when the type changes
        self.type = wq_type

    def _set_name(self, value: object) -> None:
        name = as_str(self.path, "name", value)
        self._need_disabled("name")
        if not 0 < len(name) <= caps.WQ_NAME_SIZE:
            raise SiovError(
                errno.EINVAL, f"{self.path}: name must be 1..{caps.WQ_NAME_SIZE} characters"
            )
        self.name = name

    def _set_driver_name(self, value: object) -> None:
        name = as_str(self.path, "driver_name", value)
        self._need_disabled("driver_name")
        if len(name) > caps.WQ_NAME_SIZE:
            raise SiovError(errno.EINVAL, f"{self.path}: driver_name is too long")
        self.driver_name = name

    def _set_priority(self, value: object) -> None:
        priority = as_int(self.path, "priority", value)
        self._need_disabled("priority")
        if not 1 <= priority <= caps.MAX_PRIORITY:
            raise SiovError(
                errno.EINVAL,
                f"{self.path}: priority must be 1..{caps.MAX_PRIORITY}, got {priority}",
            )
        self.priority = priority

    def _set_prs_disable(self, value: object) -> None:
        flag = as_bool(self.path, "prs_disable", value)
        self._need_disabled("prs_disable")
        if flag:
            self.block_on_fault = False  # no page requests, so nothing to block on
        self.prs_disable = flag

    def _set_block_on_fault(self, value: object) -> None:
        flag = as_bool(self.path, "block_on_fault", value)
        self._need_disabled("block_on_fault", errno.ENXIO)
        if flag and self.prs_disable:
            raise SiovError(
                errno.EOPNOTSUPP, f"{self.path}: block_on_fault needs page requests (prs_disable=0)"
            )
        self.block_on_fault = flag

    def _set_threshold(self, value: object) -> None:
        threshold = as_int(self.path, "threshold", value)
        # sysfs.c wq_threshold_store: "val > wq->size || val <= 0" is EINVAL, so the threshold
        # may equal the size (accel-config's test config 2g2q_user_2.conf has 40 of 40)
        if not 0 < threshold <= self.size:
            raise SiovError(
                errno.EINVAL,
                f"{self.path}: threshold must be 1..size ({self.size}), got {threshold}",
            )
        self._need_disabled("threshold", errno.ENXIO)
        if self.dedicated:
            raise SiovError(errno.EINVAL, f"{self.path}: a dedicated WQ has no threshold")
        self.threshold = threshold

    def _pow2_limit(self, attr: str, value: object, device_max: int) -> int:
        """accel-config: a size rounded up to a power of two, at most the device's maximum."""
        size = as_int(self.path, attr, value)
        self._need_disabled(attr)
        if size <= 0:
            raise SiovError(errno.EINVAL, f"{self.path}: {attr} must be positive")
        size = roundup_pow2(size)
        if size > device_max:
            raise SiovError(
                errno.EINVAL, f"{self.path}: {attr} {size} exceeds the device's {device_max}"
            )
        return size

    def _set_max_transfer_size(self, value: object) -> None:
        self.max_transfer_size = self._pow2_limit(
            "max_transfer_size", value, caps.MAX_TRANSFER_SIZE
        )

    def _set_max_batch_size(self, value: object) -> None:
        self.max_batch_size = self._pow2_limit("max_batch_size", value, caps.MAX_BATCH_SIZE)

    def _set_ats_disable(self, value: object) -> None:
        flag = as_bool(self.path, "ats_disable", value)
        self._need_disabled("ats_disable")
        self.ats_disable = flag

    def _set_op_config(self, value: object) -> None:
        mask = as_bitmap256(self.path, "op_config", value)
        self._need_disabled("op_config")
        extra = mask & ~caps.OPCAP
        if extra:
            raise SiovError(
                errno.EINVAL,
                f"{self.path}: op_config allows operations the device does not support "
                f"(opcodes {', '.join(hex(i) for i in range(256) if extra >> i & 1)})",
            )
        self.op_config = mask

    _SETTERS: Final[dict[str, Callable[[WorkQueue, object], None]]] = {
        "group_id": _set_group_id,
        "mode": _set_mode,
        "size": _set_size,
        "type": _set_type,
        "name": _set_name,
        "driver_name": _set_driver_name,
        "priority": _set_priority,
        "prs_disable": _set_prs_disable,
        "block_on_fault": _set_block_on_fault,
        "threshold": _set_threshold,
        "max_transfer_size": _set_max_transfer_size,
        "max_batch_size": _set_max_batch_size,
        "ats_disable": _set_ats_disable,
        "op_config": _set_op_config,
    }

    # -- enable / disable ---------------------------------------------------------------------

    def enable(self) -> None:
        """``accel-config enable-wq``; refusals as ``__drv_enable_wq`` and the WQ enable
        command report them (``drivers/dma/idxd/device.c``)."""
        device = self.device
        if not device.enabled:
            raise SiovError(errno.ENXIO, f"{self.path}: {device.name} is not enabled")
        if self.enabled:
            raise SiovError(errno.EBUSY, f"{self.path} is already enabled")
        if self.group is None:
            raise SiovError(errno.ENXIO, f"{self.path} is not in a group")
        if not self.group.engines:
            raise SiovError(
                errno.ENXIO, f"{self.path}: {self.group.path} has no engine to run descriptors"
            )
        if self.size == 0:
            raise SiovError(errno.ENXIO, f"{self.path} has size 0")
        if not self.name:
            raise SiovError(errno.ENXIO, f"{self.path} has no name")
        if self.type == "none":
            raise SiovError(errno.ENODEV, f"{self.path} has type none: no driver takes it")
        if not self.dedicated and not 0 < self.threshold <= self.size:
            raise SiovError(errno.ENXIO, f"{self.path}: a shared WQ needs a threshold in 1..size")
        self.enabled = True

    def disable(self) -> None:
        """``accel-config disable-wq``. Descriptors already queued still run (the kernel
        drains a WQ before disabling it); new ones are refused."""
        if not self.enabled:
            raise SiovError(errno.ENODEV, f"{self.path} is not enabled")
        if self.clients:
            raise SiovError(
                errno.EBUSY, f"{self.path} is in use by {self.clients} mdev(s): remove them first"
            )
        self.enabled = False
        self.pasid = 0
        self.pasid_en = False

    def set_pasid(self, pasid: int | None) -> None:
        """Program WQCFG's PASID (``idxd_wq_set_pasid``); ``None`` clears pasid_en."""
        if pasid is None:
            self.pasid, self.pasid_en = 0, False
            return
        if not 0 < pasid <= PASID_MAX:
            raise SiovError(errno.EINVAL, f"{self.path}: PASID {pasid} out of range 1..{PASID_MAX}")
        self.pasid, self.pasid_en = pasid, True

    # -- submission ---------------------------------------------------------------------------

    def submit(
        self,
        descriptor: bytes,
        pasid: int | None = None,
        *,
        limited: bool = False,
        owner: object = None,
        irq_count: int | None = None,
    ) -> SubmitResult:
        """Write one descriptor to this WQ's portal.

        A shared WQ needs ``pasid`` (ENQCMD always carries one) and answers
        :attr:`SubmitResult.RETRY` when its occupancy reached ``size`` (or ``threshold`` on the
        limited portal). A dedicated WQ ignores ``pasid``, tags the work with its WQCFG PASID (0,
        i.e. requests without PASID, when none is programmed) and answers
        :attr:`SubmitResult.DROPPED` past its size. A disabled WQ refuses with ``ENXIO``.
        """
        if not self.enabled:
            raise SiovError(errno.ENXIO, f"{self.path} is not enabled")
        return self._write(descriptor, pasid, limited, owner, irq_count)

    def portal_write(
        self,
        descriptor: bytes,
        pasid: int | None = None,
        *,
        limited: bool = False,
        owner: object = None,
        irq_count: int | None = None,
    ) -> SubmitResult:
        """The hardware path: like :meth:`submit`, but a disabled WQ behaves as the device
        does, dropping a MOVDIR64B and answering retry to an ENQCMD."""
        if not self.enabled:
            if self.dedicated:
                self.stats.dropped += 1
                return SubmitResult.DROPPED
            self.stats.retried += 1
            return SubmitResult.RETRY
        return self._write(descriptor, pasid, limited, owner, irq_count)

    def _write(
        self,
        descriptor: bytes,
        pasid: int | None,
        limited: bool,
        owner: object,
        irq_count: int | None,
    ) -> SubmitResult:
        if len(descriptor) != DSA_DESC_SIZE:
            raise SiovError(
                errno.EINVAL, f"{self.path}: a descriptor is 64 bytes, got {len(descriptor)}"
            )
        room, tag, refused = self._admission(pasid, limited)
        if room <= 0:
            self._count_refused(refused, 1)
            return refused
        self._seq += 1
        blob = bytes(descriptor)
        self._queue.append(_Run(blob, 0, 1, tag, self._seq, owner, irq_count))
        self._queued += 1
        if blob[7] == _DRAIN:
            self._queued_drains += 1
        self.stats.submitted += 1
        return SubmitResult.ACCEPTED

    def submit_many(
        self,
        descriptors: bytes | bytearray | memoryview,
        pasid: int | None = None,
        *,
        limited: bool = False,
        owner: object = None,
        irq_count: int | None = None,
    ) -> bytearray:
        """:meth:`submit` for each 64-byte descriptor of ``descriptors`` in order (the SUBMIT
        fast path); returns one :class:`SubmitResult` value per descriptor. The rules are
        :meth:`submit`'s: once the WQ is full every later descriptor is refused too."""
        if not self.enabled:
            raise SiovError(errno.ENXIO, f"{self.path} is not enabled")
        size = len(descriptors)
        if size == 0 or size % DSA_DESC_SIZE:
            raise SiovError(
                errno.EINVAL, f"{self.path}: descriptors are 64 bytes each, got {size} bytes"
            )
        count = size // DSA_DESC_SIZE
        results = bytearray(count)
        room, tag, refused = self._admission(pasid, limited)
        taken = min(max(room, 0), count)
        if taken:
            blob = descriptors if type(descriptors) is bytes else bytes(descriptors)
            run = _Run(blob, 0, taken, tag, self._seq + 1, owner, irq_count)
            self._queue.append(run)
            self._seq += taken
            self._queued += taken
            self._queued_drains += run.drains()
            self.stats.submitted += taken
        if taken < count:
            results[taken:] = bytes([refused]) * (count - taken)
            self._count_refused(refused, count - taken)
        return results

    def _admission(self, pasid: int | None, limited: bool) -> tuple[int, int, SubmitResult]:
        """The one place a submission's rules live: ``(room, tag, answer when full)``.

        A dedicated WQ ignores the PASID given and tags work with its WQCFG PASID (0 unless
        pasid_en), and drops what does not fit (MOVDIR64B is posted). A shared WQ needs the
        PASID (ENQCMD always carries one), answers "retry" when full, and a limited portal
        counts only up to the WQ threshold (the DSA spec's limited portal)."""
        queued = self._queued
        if self.mode == "dedicated":
            return self.size - queued, self.pasid if self.pasid_en else 0, SubmitResult.DROPPED
        if pasid is None:
            raise SiovError(
                errno.EINVAL, f"{self.path} is shared: a submission needs the PASID (ENQCMD)"
            )
        if not 0 < pasid <= PASID_MAX:
            raise SiovError(errno.EINVAL, f"{self.path}: PASID {pasid} out of range")
        room = (self.threshold if limited else self.size) - queued
        return room, pasid, SubmitResult.RETRY

    def _count_refused(self, refused: SubmitResult, n: int) -> None:
        if refused == SubmitResult.DROPPED:
            self.stats.dropped += n
        else:
            self.stats.retried += n

    # -- engines' side ------------------------------------------------------------------------

    def take(self) -> WorkItem | None:
        """The next descriptor an engine may start, or ``None``.

        Descriptors leave in order, except that a DRAIN waits until every earlier descriptor
        of its submitter and PASID has been retired; later descriptors may pass a waiting
        drain, as on the device, where a drain holds an engine but not the WQ. The item stays
        "in flight" until :meth:`retire`. A disabled WQ still hands out what was queued
        before it was disabled.
        """
        queue = self._queue
        if not queue:
            return None
        if not self._queued_drains:
            run = queue[0]
            index = run.start
            item = run.item(self, index)
            run.start = index + 1
            if run.start == run.end:
                queue.popleft()
            self._queued -= 1
        else:
            found = self._take_scan()
            if found is None:
                return None
            item = found
        self._inflight[item.seq] = item
        return item

    def _one_per_entry(self) -> None:
        """Split the queue's runs into one entry per descriptor, so a drain's scan can take
        one from the middle (drains are rare; the common queue stays a run per SUBMIT)."""
        queue = self._queue
        if all(run.end - run.start == 1 for run in queue):
            return
        split: deque[_Run] = deque()
        for run in queue:
            for index in range(run.start, run.end):
                split.append(
                    _Run(run.blob, index, index + 1, run.pasid, run.seq0, run.owner, run.irq_count)
                )
        self._queue = split

    def _take_scan(self) -> WorkItem | None:
        self._one_per_entry()
        queue = self._queue
        for index, run in enumerate(queue):
            if run.opcode(run.start) == _DRAIN:
                if self._earlier_of_pasid(run, index):
                    continue
                self._queued_drains -= 1
            del queue[index]
            self._queued -= 1
            return run.item(self, run.start)
        return None

    def _earlier_of_pasid(self, drain: _Run, index: int) -> bool:
        """Whether work the drain waits for is still queued or in flight: earlier descriptors
        of the same submitter (mdev) *and* PASID. PASIDs are numbered per device, so the same
        number from another mdev on a shared WQ is another address space; its work never
        holds this drain back (issue 9: no ordering across owners). The queue holds one
        descriptor per entry here (:meth:`_one_per_entry`)."""
        pasid = drain.pasid
        owner = drain.owner
        seq = drain.seq0 + drain.start
        for other in self._inflight.values():
            if other.pasid == pasid and other.owner == owner and other.seq < seq:
                return True
        for position, queued in enumerate(self._queue):
            if position >= index:
                break
            if queued.pasid == pasid and queued.owner == owner:
                return True
        return False

    def head_run(
        self, limit: int, opcodes: frozenset[int]
    ) -> tuple[WorkItem, bytes | memoryview] | None:
        """The first queued descriptor and the descriptors of up to ``limit`` queued ones
        from it that share its submitter, PASID (so one DMA space) and interrupt count,
        concatenated (a view into the SUBMIT's own bytes when they are one submission's);
        None when nothing is queued, a DRAIN is (drains need :meth:`take`'s ordering rule) or
        the first one's opcode is not in ``opcodes``."""
        queue = self._queue
        if not queue or self._queued_drains:
            return None
        run = queue[0]
        start = run.start
        if run.opcode(start) not in opcodes:
            return None
        first = run.item(self, start)
        count = min(limit, run.end - start)
        view = memoryview(run.blob)[start * DSA_DESC_SIZE : (start + count) * DSA_DESC_SIZE]
        if count == limit or len(queue) == 1:
            return first, view
        parts: list[bytes | memoryview] = [view]
        for later in islice(queue, 1, None):
            if count >= limit or not later.same_requester(run):
                break
            more = min(limit - count, later.end - later.start)
            at = later.start * DSA_DESC_SIZE
            parts.append(memoryview(later.blob)[at : at + more * DSA_DESC_SIZE])
            count += more
        return first, view if len(parts) == 1 else b"".join(parts)

    def retire_run(self, count: int) -> WorkItem:
        """The first ``count`` queued descriptors were taken and completed at once (the native
        run of :meth:`head_run`'s descriptors); they leave the WQ as :meth:`take` and
        :meth:`retire` would let them. Returns the last."""
        queue = self._queue
        self._queued -= count
        self.stats.completed += count
        while True:
            run = queue[0]
            here = run.end - run.start
            if count < here:
                run.start += count
                return run.item(self, run.start - 1)
            queue.popleft()
            if count == here:
                return run.item(self, run.end - 1)
            count -= here

    def retire(self, item: WorkItem) -> None:
        """The engine is done with ``item`` (completed, or given up)."""
        if self._inflight.pop(item.seq, None) is not None:
            self.stats.completed += 1

    def cancel(self, item: WorkItem) -> None:
        """Give up an item an engine took but never finished (its submitter went away while
        it waited for a page response): it leaves the WQ counted as aborted, not completed."""
        if self._inflight.pop(item.seq, None) is not None:
            self.stats.aborted += 1

    def abort(self, owner: object = None) -> list[WorkItem]:
        """Remove queued descriptors (all, or those submitted with ``owner``) before an engine
        takes them; they will never complete. Returns them."""
        kept: deque[_Run] = deque()
        removed: list[WorkItem] = []
        for run in self._queue:
            if owner is None or run.owner == owner:
                removed.extend(run.item(self, index) for index in range(run.start, run.end))
            else:
                kept.append(run)
        self._queue = kept
        self._queued = sum(run.end - run.start for run in kept)
        self._queued_drains = sum(run.drains() for run in kept)
        self.stats.aborted += len(removed)
        return removed
