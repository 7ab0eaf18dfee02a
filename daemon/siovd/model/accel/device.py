"""The idxd-like device: groups tie work queues to engines, as accel-config shows them.

``dsa0`` has groups ``group0.N``, engines ``engine0.N`` and work queues ``wq0.N``. A group with
at least one engine runs the descriptors of the WQs in it. Configuration follows the kernel's
sysfs rules and errnos (``drivers/dma/idxd/sysfs.c``): device-level and group attributes change
only while the device is disabled (``EPERM`` otherwise).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Final

from siovd.model.accel import caps
from siovd.model.accel.attrs import as_bool, as_int
from siovd.model.accel.evl import EVL_SIZE_DEFAULT, EVL_SIZE_MAX, EVL_SIZE_MIN, EventLog
from siovd.model.accel.registers import GroupRegs, WqRegs, bar0_image
from siovd.model.accel.wq import SubmitResult, WorkItem, WorkQueue
from siovd.model.errors import SiovError

GROUP_ATTRS: Final = (
    "read_buffers_reserved",
    "read_buffers_allowed",
    "use_read_buffer_limit",
    "traffic_class_a",
    "traffic_class_b",
)
#: accel-config's older names for the same attributes (sysfs keeps both)
GROUP_ATTR_ALIASES: Final = {
    "tokens_reserved": "read_buffers_reserved",
    "tokens_allowed": "read_buffers_allowed",
    "use_token_limit": "use_read_buffer_limit",
}
#: DSA 2.0 group attributes siov's groups do not support (accel-config 4.x config-group -d/-p)
GROUP_PROGRESS_LIMITS: Final = ("desc_progress_limit", "batch_progress_limit")
DEVICE_ATTRS: Final = ("read_buffer_limit", "event_log_size")
#: sysfs.c event_log_size_store: IDXD_EVL_SIZE_MIN..IDXD_EVL_SIZE_MAX entries
EVENT_LOG_SIZE_MIN: Final = EVL_SIZE_MIN
EVENT_LOG_SIZE_MAX: Final = EVL_SIZE_MAX
DEVICE_KINDS: Final = ("dsa", "iax")
DEVICE_ATTR_ALIASES: Final = {"token_limit": "read_buffer_limit"}


class Engine:
    """``engineD.N``: runs descriptors of its group's WQs."""

    def __init__(self, device: DsaDevice, engine_id: int) -> None:
        self.device = device
        self.id = engine_id
        self.group: Group | None = None

    @property
    def dev_name(self) -> str:
        return f"engine{self.device.id}.{self.id}"

    @property
    def path(self) -> str:
        return f"{self.device.name}/{self.dev_name}"

    @property
    def group_id(self) -> int:
        return -1 if self.group is None else self.group.id

    def configure(self, attrs: Mapping[str, object]) -> None:
        """``accel-config config-engine --group-id``. siov asks for the device to be disabled,
        as the group configuration is only written to the device when it is enabled."""
        unknown = sorted(set(attrs) - {"group_id"})
        if unknown:
            raise SiovError(errno.EINVAL, f"{self.path}: unknown attribute(s) {', '.join(unknown)}")
        if "group_id" not in attrs:
            return
        gid = as_int(self.path, "group_id", attrs["group_id"])
        if not self.device.configurable:
            raise SiovError(errno.EPERM, f"{self.device.name} is not configurable")
        if self.device.enabled:
            raise SiovError(
                errno.EPERM,
                f"{self.path}: group_id can change only while {self.device.name} is disabled",
            )
        if not -1 <= gid < len(self.device.groups):
            raise SiovError(
                errno.EINVAL,
                f"{self.path}: group_id {gid} out of range -1..{len(self.device.groups) - 1}",
            )
        if self.group is not None:
            self.group.engines.remove(self)
        self.group = None if gid == -1 else self.device.groups[gid]
        if self.group is not None:
            self.group.engines.append(self)
            self.group.engines.sort(key=lambda engine: engine.id)

    def take(self) -> WorkItem | None:
        """The next descriptor this engine should run, or ``None``."""
        group = self.group
        return None if group is None else group.take()


class Group:
    """``groupD.N``: WQs and the engines that serve them, with WQ arbitration by priority."""

    def __init__(self, device: DsaDevice, group_id: int) -> None:
        self.device = device
        self.id = group_id
        self.wqs: list[WorkQueue] = []
        self.engines: list[Engine] = []
        self.read_buffers_reserved = 0
        self.read_buffers_allowed = caps.MAX_READ_BUFFERS
        self.use_read_buffer_limit = False
        self.traffic_class_a = 0
        self.traffic_class_b = 1
        self._cursor = 0
        self._credits = 0

    @property
    def dev_name(self) -> str:
        return f"group{self.device.id}.{self.id}"

    @property
    def path(self) -> str:
        return f"{self.device.name}/{self.dev_name}"

    def config(self) -> dict[str, object]:
        return {
            "read_buffers_reserved": self.read_buffers_reserved,
            "use_read_buffer_limit": int(self.use_read_buffer_limit),
            "read_buffers_allowed": self.read_buffers_allowed,
            "traffic_class_a": self.traffic_class_a,
            "traffic_class_b": self.traffic_class_b,
        }

    def configure(self, attrs: Mapping[str, object]) -> None:
        """``accel-config config-group``; the device must be disabled (``EPERM``)."""
        attrs = {GROUP_ATTR_ALIASES.get(k, k): v for k, v in attrs.items()}
        limits = sorted(set(attrs) & set(GROUP_PROGRESS_LIMITS))
        if limits:
            # sysfs.c group_*_progress_limit_store: EOPNOTSUPP without GRPCAP progress limits
            raise SiovError(
                errno.EOPNOTSUPP,
                f"{self.path}: {', '.join(limits)}: siov's groups have no progress limits"
                " (GRPCAP progress_limit_support is 0)",
            )
        unknown = sorted(set(attrs) - set(GROUP_ATTRS))
        if unknown:
            raise SiovError(errno.EINVAL, f"{self.path}: unknown attribute(s) {', '.join(unknown)}")
        if not attrs:
            return
        if not self.device.configurable:
            raise SiovError(errno.EPERM, f"{self.device.name} is not configurable")
        if self.device.enabled:
            raise SiovError(
                errno.EPERM,
                f"{self.path}: groups can change only while {self.device.name} is disabled",
            )
        values: dict[str, object] = {}
        for name in ("read_buffers_reserved", "read_buffers_allowed"):
            if name in attrs:
                number = as_int(self.path, name, attrs[name])
                if not 0 <= number <= caps.MAX_READ_BUFFERS:
                    raise SiovError(
                        errno.EINVAL, f"{self.path}: {name} must be 0..{caps.MAX_READ_BUFFERS}"
                    )
                values[name] = number
        for name in ("traffic_class_a", "traffic_class_b"):
            if name in attrs:
                number = as_int(self.path, name, attrs[name])
                if not 0 <= number <= 7:
                    raise SiovError(errno.EINVAL, f"{self.path}: {name} must be 0..7")
                values[name] = number
        if "use_read_buffer_limit" in attrs:
            flag = as_bool(self.path, "use_read_buffer_limit", attrs["use_read_buffer_limit"])
            if flag and self.device.read_buffer_limit == 0:
                raise SiovError(
                    errno.EPERM,
                    f"{self.path}: use_read_buffer_limit needs a read_buffer_limit on "
                    f"{self.device.name}",
                )
            values["use_read_buffer_limit"] = flag
        for name, value in values.items():
            setattr(self, name, value)

    def take(self) -> WorkItem | None:
        """Weighted round robin over the group's WQs: a WQ of priority p may hand out p
        descriptors in a row before the next WQ's turn (WQ priority, sysfs ABI)."""
        wqs = self.wqs
        count = len(wqs)
        if count and self._credits <= 0:
            self._credits = wqs[self._cursor % count].priority
        for _ in range(count):
            wq = wqs[self._cursor % count]
            item = wq.take()
            if item is not None:
                self._credits -= 1
                if self._credits <= 0:
                    self._advance(wqs)
                return item
            self._advance(wqs)
        return None

    def head(self) -> tuple[WorkQueue, int, int] | None:
        """Where :meth:`take` hands out from next: ``(wq, cursor, credits)``, the WQ (passing
        empty WQs as :meth:`take` would), its place and its credits then (how many of its
        descriptors in a row it may hand out); None when that WQ is not found. Changes
        nothing: :meth:`took` does, once descriptors were taken."""
        wqs = self.wqs
        count = len(wqs)
        cursor = self._cursor % count if count else 0
        credits = self._credits
        if count and credits <= 0:
            credits = wqs[cursor].priority
        for _ in range(count):
            wq = wqs[cursor]
            if wq.occupancy:
                return (wq, cursor, credits) if credits > 0 else None
            cursor = (cursor + 1) % count
            credits = wqs[cursor].priority
        return None

    def took(self, count: int, cursor: int, credits: int) -> None:
        """``count`` :meth:`take` calls handed out descriptors of the WQ :meth:`head` found at
        ``cursor`` with ``credits`` (a native run of queued descriptors; more than ``credits``
        only while the group's other WQs are empty, when take() comes back around to it with
        fresh credits): the arbitration moves as they would have moved it."""
        wqs = self.wqs
        self._cursor = cursor
        if count < credits:
            self._credits = credits - count
            return
        priority = wqs[cursor].priority
        spent = (count - credits) % priority
        if spent:  # came back around and is part-way through fresh credits
            self._credits = priority - spent
        else:  # the last take used up the credits: the next WQ's turn
            self._credits = 0
            self._advance(wqs)

    def _advance(self, wqs: list[WorkQueue]) -> None:
        self._cursor = (self._cursor + 1) % len(wqs)
        self._credits = wqs[self._cursor].priority


class DsaDevice:
    """``dsaD``: the device, its groups, engines and WQs, and its BAR0/BAR2 views."""

    def __init__(
        self,
        dev_id: int = 0,
        *,
        max_groups: int = caps.MAX_GROUPS,
        max_engines: int = caps.MAX_ENGINES,
        max_wqs: int = caps.MAX_WQS,
        total_wq_size: int = caps.TOTAL_WQ_SIZE,
        kind: str = "dsa",
    ) -> None:
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
        self.id = dev_id
        #: accel-config's device type: ``dsa`` or ``iax`` (an IAA device is configured the same
        #: way; siov runs no IAA operations, so an ``iax`` device is not an mdev parent)
        self.kind = kind
        self.name = f"{kind}{dev_id}"
        self.total_wq_size = total_wq_size
        self.configurable = True
        self.enabled = False
        self.read_buffer_limit = 0
        #: entries of the event log set up when the device is enabled (accel-config
        #: ``event_log_size``); the log itself exists while the device is enabled
        self.event_log_size = EVL_SIZE_DEFAULT
        self.event_log: EventLog | None = None
        self.groups = [Group(self, i) for i in range(max_groups)]
        self.engines = [Engine(self, i) for i in range(max_engines)]
        self.wqs = [WorkQueue(self, i) for i in range(max_wqs)]

    # -- lookup -------------------------------------------------------------------------------

    def _lookup(
        self, kind: str, name: str, objects: list[WorkQueue] | list[Group] | list[Engine]
    ) -> int:
        """Index of ``wqD.N`` / ``N`` in ``objects``; ``ENODEV`` when it does not exist."""
        text = name.rsplit("/", 1)[-1]
        prefix = f"{kind}{self.id}."
        index_text = text[len(prefix) :] if text.startswith(prefix) else text
        if index_text.isdigit() and int(index_text) < len(objects):
            return int(index_text)
        raise SiovError(errno.ENODEV, f"{self.name} has no {kind} {name!r}")

    def wq(self, name: str | int) -> WorkQueue:
        return self.wqs[name if isinstance(name, int) else self._lookup("wq", name, self.wqs)]

    def group(self, name: str | int) -> Group:
        return self.groups[
            name if isinstance(name, int) else self._lookup("group", name, self.groups)
        ]

    def engine(self, name: str | int) -> Engine:
        return self.engines[
            name if isinstance(name, int) else self._lookup("engine", name, self.engines)
        ]

    # -- configuration ------------------------------------------------------------------------

    def configure(self, attrs: Mapping[str, object]) -> None:
        """``accel-config config-device``; the device must be disabled (``EPERM``)."""
        attrs = {DEVICE_ATTR_ALIASES.get(k, k): v for k, v in attrs.items()}
        unknown = sorted(set(attrs) - set(DEVICE_ATTRS))
        if unknown:
            raise SiovError(errno.EINVAL, f"{self.name}: unknown attribute(s) {', '.join(unknown)}")
        size = None
        if "event_log_size" in attrs:  # checked first: all or nothing
            size = as_int(self.name, "event_log_size", attrs["event_log_size"])
            if self.enabled:
                raise SiovError(
                    errno.EPERM, f"{self.name} is enabled: disable it before setting event_log_size"
                )
            if not self.configurable:
                raise SiovError(errno.EPERM, f"{self.name} is not configurable")
            if not EVENT_LOG_SIZE_MIN <= size <= EVENT_LOG_SIZE_MAX:
                raise SiovError(
                    errno.EINVAL,
                    f"{self.name}: event_log_size must be "
                    f"{EVENT_LOG_SIZE_MIN}..{EVENT_LOG_SIZE_MAX}",
                )
        if "read_buffer_limit" in attrs:
            self._set_read_buffer_limit(attrs["read_buffer_limit"])
        if size is not None:
            self.event_log_size = size

    def _set_read_buffer_limit(self, value: object) -> None:
        limit = as_int(self.name, "read_buffer_limit", value)
        if self.enabled:
            raise SiovError(
                errno.EPERM, f"{self.name} is enabled: disable it before setting read_buffer_limit"
            )
        if not self.configurable:
            raise SiovError(errno.EPERM, f"{self.name} is not configurable")
        if not 0 <= limit <= caps.MAX_READ_BUFFERS:
            raise SiovError(
                errno.EINVAL, f"{self.name}: read_buffer_limit must be 0..{caps.MAX_READ_BUFFERS}"
            )
        self.read_buffer_limit = limit

    def enable(self) -> None:
        """``accel-config enable-device``: the group configuration must make sense."""
        if self.enabled:
            raise SiovError(errno.EBUSY, f"{self.name} is already enabled")
        if not any(engine.group is not None for engine in self.engines):
            raise SiovError(errno.ENXIO, f"{self.name}: no engine is in a group")
        if not any(wq.group is not None for wq in self.wqs):
            raise SiovError(errno.ENXIO, f"{self.name}: no WQ is in a group")
        for group in self.groups:
            if group.wqs and not group.engines:
                raise SiovError(errno.ENXIO, f"{self.name}: {group.dev_name} has WQs but no engine")
        self.event_log = EventLog(self.event_log_size)
        self.enabled = True

    def disable(self) -> None:
        """``accel-config disable-device``: disables its WQs too."""
        if not self.enabled:
            raise SiovError(errno.ENODEV, f"{self.name} is not enabled")
        busy = [wq.dev_name for wq in self.wqs if wq.clients]
        if busy:
            raise SiovError(
                errno.EBUSY, f"{self.name}: {', '.join(busy)} in use by mdevs: remove them first"
            )
        for wq in self.wqs:
            if wq.enabled:
                wq.disable()
        self.event_log = None
        self.enabled = False

    # -- portals ------------------------------------------------------------------------------

    @property
    def portal_size(self) -> int:
        """Size of BAR2: four portal pages per WQ."""
        return len(self.wqs) * caps.PORTAL_STRIDE

    def portal_write(
        self,
        offset: int,
        data: bytes,
        pasid: int | None = None,
        *,
        owner: object = None,
        irq_count: int | None = None,
    ) -> SubmitResult:
        """A 64-byte write at ``offset`` of BAR2: the WQ is ``offset >> 14``, the page within
        its four selects the limited portal (pages 1 and 3)."""
        wq = self.wqs[portal_wq_index(self.name, offset, len(data), len(self.wqs))]
        limited = bool((offset >> caps.PAGE_SHIFT) & 1)
        return wq.portal_write(data, pasid, limited=limited, owner=owner, irq_count=irq_count)

    # -- BAR0 ---------------------------------------------------------------------------------

    def bar0(self) -> bytes:
        """The read-only register image a driver reads from BAR0."""
        return bar0_image(
            enabled=self.enabled,
            total_wq_size=self.total_wq_size,
            num_engines=len(self.engines),
            read_buffer_limit=self.read_buffer_limit,
            groups=[group_regs(group, self.wqs) for group in self.groups],
            wqs=[wq_regs(wq) for wq in self.wqs],
        )


def portal_wq_index(where: str, offset: int, length: int, num_wqs: int) -> int:
    """Which WQ a portal write at ``offset`` goes to; ``EINVAL`` for anything but one
    aligned 64-byte write inside the portal BAR."""
    if length != 64 or offset % 64:
        raise SiovError(
            errno.EINVAL,
            f"{where}: a portal takes one 64-byte aligned write (MOVDIR64B/ENQCMD), "
            f"got {length} bytes at {offset:#x}",
        )
    index = offset // caps.PORTAL_STRIDE
    if not 0 <= index < num_wqs:
        raise SiovError(errno.EINVAL, f"{where}: portal offset {offset:#x} is past the last WQ")
    return index


def wq_regs(wq: WorkQueue, *, pasid: int | None = None) -> WqRegs:
    """WQCFG contents of ``wq``; ``pasid`` overrides what is programmed (mdev views)."""
    if pasid is None:
        pasid_value, pasid_en = wq.pasid, wq.pasid_en
    else:
        pasid_value, pasid_en = pasid, True
    return WqRegs(
        size=wq.size,
        threshold=wq.threshold,
        dedicated=wq.dedicated,
        bof=wq.block_on_fault,
        ats_disable=wq.ats_disable,
        prs_disable=wq.prs_disable,
        priority=wq.priority,
        pasid=pasid_value,
        pasid_en=pasid_en,
        max_xfer_shift=wq.max_transfer_size.bit_length() - 1,
        max_batch_shift=wq.max_batch_size.bit_length() - 1,
        occupancy=wq.occupancy,
        enabled=wq.enabled,
        op_config=wq.op_config,
    )


def group_regs(group: Group, wq_order: list[WorkQueue]) -> GroupRegs:
    """GRPCFG of ``group``, WQ bits numbered by position in ``wq_order``."""
    wq_bits = sum(1 << index for index, wq in enumerate(wq_order) if wq.group is group)
    engine_bits = sum(1 << engine.id for engine in group.engines)
    return GroupRegs(
        wq_bitmap=wq_bits,
        engine_bitmap=engine_bits,
        traffic_class_a=group.traffic_class_a,
        traffic_class_b=group.traffic_class_b,
        use_read_buffer_limit=group.use_read_buffer_limit,
        read_buffers_reserved=group.read_buffers_reserved,
        read_buffers_allowed=group.read_buffers_allowed,
    )


def embedded_default(dev_id: int = 0) -> DsaDevice:
    """The device siovd starts with: one group of 4 engines, a dedicated ``wq0.0`` and a
    shared ``wq0.1``, both enabled and of type user."""
    device = DsaDevice(dev_id)
    for engine in device.engines:
        engine.configure({"group_id": 0})
    device.wqs[0].configure(
        {
            "group_id": 0,
            "mode": "dedicated",
            "size": 64,
            "priority": 10,
            "type": "user",
            "name": "siov-dwq",
            "driver_name": "user",
            "block_on_fault": 1,
        }
    )
    device.wqs[1].configure(
        {
            "group_id": 0,
            "mode": "shared",
            "size": 64,
            "threshold": 48,
            "priority": 10,
            "type": "user",
            "name": "siov-swq",
            "driver_name": "user",
            "block_on_fault": 1,
        }
    )
    device.enable()
    device.wqs[0].enable()
    device.wqs[1].enable()
    return device
