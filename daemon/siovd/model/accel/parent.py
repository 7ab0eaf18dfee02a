"""The DSA device as an mdev parent: each mdev is one work queue (an "assignable device
interface" of Scalable IOV).

Two types, as the idxd mdev/vdev drivers had them (``1dwq-v1``; the later iommufd vdev trees
add a shared-WQ type):

- ``dsa-1dwq``: one *dedicated* WQ, exclusively. Creating the mdev takes a free, enabled,
  user-type dedicated WQ and programs its WQCFG PASID with the mdev's default PASID
  (``idxd_wq_set_pasid``), so all its DMA is tagged with that PASID. ``available_instances``
  counts the free dedicated WQs.
- ``dsa-1swq``: a share of a *shared* WQ. Several mdevs use one shared WQ, each submission
  carrying its PASID as ENQCMD does (the mdev's default PASID when the caller names none).
  siov lets a shared WQ serve as many mdevs as it has entries (``size``): each mdev can then
  always get at least one descriptor in. The mdev goes to the shared WQ with the fewest users.

Removing an mdev gives the WQ back and drops the mdev's descriptors that no engine has taken.

An mdev's attributes (what mdevctl writes after creating it, in order) are its WQ's:
``priority``, ``block_on_fault`` and, for a shared WQ, ``threshold``, with the WQ's own rules
and errnos. The parent rewrites the WQ it owns: only while no descriptor is queued, and for a
shared WQ only while this mdev is its only user (``EBUSY`` otherwise). ``size`` is refused
(``EPERM``), as sysfs refuses a WQ size while the device is enabled; any other name is
``ENOENT``, as a missing sysfs file is to mdevctl.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from typing import Final

from siov_protocol.ids import PASID_BITS, PASID_LIMIT
from siovd.model.accel import caps
from siovd.model.accel.device import DsaDevice, group_regs, portal_wq_index, wq_regs
from siovd.model.accel.registers import bar0_image
from siovd.model.accel.wq import SubmitResult, WorkQueue
from siovd.model.errors import SiovError
from siovd.model.parents import MdevTypeInfo

TYPE_1DWQ: Final = "dsa-1dwq"
TYPE_1SWQ: Final = "dsa-1swq"
#: What mdevctl may write to a DSA mdev (its WQ's attributes)
MDEV_ATTRS: Final = {
    TYPE_1DWQ: ("priority", "block_on_fault"),
    TYPE_1SWQ: ("priority", "block_on_fault", "threshold"),
}
#: MSI-X vectors of a DSA mdev: 0 for errors and miscellaneous causes, 1 for completions
#: (mdev-idxd.rst); a descriptor's int_handle must name one of them.
MDEV_IRQ_COUNT: Final = 2


@dataclass(slots=True)
class DsaMdev:
    """One mdev instance and the WQ it uses."""

    uuid: str
    type_id: str
    wq: WorkQueue
    default_pasid: int

    @property
    def dedicated(self) -> bool:
        return self.type_id == TYPE_1DWQ


class DsaParent:
    """Implements :class:`siovd.model.parents.MdevParent` for one :class:`DsaDevice`."""

    def __init__(self, device: DsaDevice) -> None:
        self.device = device
        self.mdevs: dict[str, DsaMdev] = {}

    @property
    def name(self) -> str:
        return self.device.name

    # -- MdevParent ---------------------------------------------------------------------------

    def _usable(self, dedicated: bool) -> list[WorkQueue]:
        return [
            wq
            for wq in self.device.wqs
            if wq.enabled and wq.type == "user" and wq.dedicated == dedicated
        ]

    def _free_dwqs(self) -> list[WorkQueue]:
        return [wq for wq in self._usable(True) if wq.clients == 0]

    def _swq_room(self) -> int:
        return sum(max(wq.size - wq.clients, 0) for wq in self._usable(False))

    def mdev_types(self) -> list[MdevTypeInfo]:
        return [
            MdevTypeInfo(
                type_id=TYPE_1DWQ,
                name="1dwq-v1",
                description="one dedicated work queue of " + self.device.name,
                device_api="vfio-pci",
                available_instances=len(self._free_dwqs()),
                pasid_bits=PASID_BITS,
            ),
            MdevTypeInfo(
                type_id=TYPE_1SWQ,
                name="1swq-v1",
                description="a share of a shared work queue of " + self.device.name,
                device_api="vfio-pci",
                available_instances=self._swq_room(),
                pasid_bits=PASID_BITS,
            ),
        ]

    def mdev_create(self, type_id: str, uuid: str, default_pasid: int) -> None:
        if uuid in self.mdevs:
            raise SiovError(errno.EEXIST, f"{self.name}: mdev {uuid} already exists")
        if not 0 < default_pasid < PASID_LIMIT:
            raise SiovError(errno.EINVAL, f"{self.name}: PASID {default_pasid} out of range")
        if type_id == TYPE_1DWQ:
            free = self._free_dwqs()
            if not free:
                raise SiovError(
                    errno.ENOSPC, f"{self.name}: no free enabled dedicated user WQ for {uuid}"
                )
            wq = free[0]
            wq.set_pasid(default_pasid)
        elif type_id == TYPE_1SWQ:
            candidates = [wq for wq in self._usable(False) if wq.clients < wq.size]
            if not candidates:
                raise SiovError(
                    errno.ENOSPC, f"{self.name}: no enabled shared user WQ has room for {uuid}"
                )
            wq = min(candidates, key=lambda w: (w.clients, w.id))
        else:
            raise SiovError(errno.EINVAL, f"{self.name} has no mdev type {type_id!r}")
        wq.clients += 1
        self.mdevs[uuid] = DsaMdev(uuid, type_id, wq, default_pasid)

    def mdev_remove(self, uuid: str) -> None:
        mdev = self._mdev(uuid)
        wq = mdev.wq
        wq.abort(owner=uuid)
        wq.clients -= 1
        if mdev.dedicated:
            wq.set_pasid(None)
        del self.mdevs[uuid]

    def mdev_set_attr(self, uuid: str, name: str, value: str) -> None:
        mdev = self._mdev(uuid)
        wq = mdev.wq
        if name == "size":
            raise SiovError(
                errno.EPERM,
                f"{self.name}: mdev {uuid}: size of {wq.dev_name} can change only while"
                f" {self.name} is disabled",
            )
        if name not in MDEV_ATTRS[mdev.type_id]:
            have = ", ".join(MDEV_ATTRS[mdev.type_id])
            raise SiovError(
                errno.ENOENT, f"Invalid attribute {name!r}: a {mdev.type_id} mdev has {have}"
            )
        if wq.clients > 1:
            raise SiovError(
                errno.EBUSY,
                f"{self.name}: {wq.dev_name} serves {wq.clients} mdevs: {name} is theirs too",
            )
        if wq.occupancy:
            raise SiovError(
                errno.EBUSY, f"{self.name}: {wq.dev_name} has descriptors queued: {name} waits"
            )
        # the WQ is this mdev's alone and idle: rewrite it as its driver would, disabled
        # for the moment of the write
        wq.enabled = False
        try:
            wq.configure({name: value})
        finally:
            wq.enabled = True

    # -- beyond the protocol: what the server wires SUBMIT and the regions to ----------------

    def _mdev(self, uuid: str) -> DsaMdev:
        try:
            return self.mdevs[uuid]
        except KeyError:
            raise SiovError(errno.ENODEV, f"{self.name} has no mdev {uuid}") from None

    def mdev(self, uuid: str) -> DsaMdev:
        return self._mdev(uuid)

    def mdev_submit(
        self, uuid: str, descriptor: bytes, pasid: int | None = None, *, limited: bool = False
    ) -> SubmitResult:
        """SUBMIT for an mdev: the descriptor goes to the mdev's WQ, tagged with the mdev.

        On a shared WQ ``pasid`` defaults to the mdev's default PASID; a dedicated WQ always
        uses the PASID programmed at creation.
        """
        mdev = self._mdev(uuid)
        if not mdev.dedicated and pasid is None:
            pasid = mdev.default_pasid
        return mdev.wq.submit(
            descriptor, pasid, limited=limited, owner=uuid, irq_count=MDEV_IRQ_COUNT
        )

    def mdev_portal_size(self, uuid: str) -> int:
        """The mdev's BAR2: the four portal pages of its one WQ."""
        self._mdev(uuid)
        return caps.PORTAL_STRIDE

    def mdev_portal_write(
        self, uuid: str, offset: int, data: bytes, pasid: int | None = None
    ) -> SubmitResult:
        """A 64-byte write into the mdev's BAR2 (its WQ is WQ 0 there)."""
        mdev = self._mdev(uuid)
        portal_wq_index(f"{self.name} mdev {uuid}", offset, len(data), 1)
        if not mdev.dedicated and pasid is None:
            pasid = mdev.default_pasid
        limited = bool((offset >> caps.PAGE_SHIFT) & 1)
        return mdev.wq.portal_write(
            data, pasid, limited=limited, owner=uuid, irq_count=MDEV_IRQ_COUNT
        )

    def mdev_bar0(self, uuid: str) -> bytes:
        """The mdev's own BAR0: a device with one group, the group's engines and one WQ."""
        mdev = self._mdev(uuid)
        wq = mdev.wq
        group = wq.group
        assert group is not None  # an enabled WQ is in a group
        regs = group_regs(group, [wq])
        # the mdev numbers its engines from 0
        regs = replace(regs, engine_bitmap=(1 << len(group.engines)) - 1)
        return bar0_image(
            enabled=self.device.enabled,
            total_wq_size=wq.size,
            num_engines=len(group.engines),
            read_buffer_limit=self.device.read_buffer_limit,
            groups=[regs],
            wqs=[wq_regs(wq, pasid=mdev.default_pasid if mdev.dedicated else None)],
        )
