"""The mdev bus: parents offer types, clients create mdevs, emulators register devices.

Adding a device to the bus runs the IOMMU's probe path, as a bus notifier does in the kernel:
the device gets its group and default domain without anyone asking (Joerg Roedel's design
for mdevs, 2020). Removing it runs the release path.

Ownership: an mdev belongs to the session that created it. An external emulator registers a
device and receives a claim token; the client it hands the token to becomes the owner (of
the device's whole group, as VFIO owns groups whole) while the emulator keeps doing the
device's DMA.
"""

from __future__ import annotations

import builtins
import errno
import re
import secrets
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

from siov_protocol.ids import PASID_BITS
from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu.core import Iommu
from siovd.model.owner import HOST
from siovd.model.parents import MdevParent, MdevTypeInfo

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@dataclass(frozen=True, slots=True)
class TypeEntry:
    parent: str
    info: MdevTypeInfo


class Bus:
    """One bus the IOMMU serves (by default ``mdev``)."""

    def __init__(self, iommu: Iommu, name: str = "mdev") -> None:
        self.name = name
        self.iommu = iommu
        iommu.register_bus(name)
        self._parents: dict[str, MdevParent] = {}
        self._devices: dict[str, Device] = {}
        self._tokens: dict[str, str] = {}  # external device uuid -> claim token
        self._claimed: set[str] = set()
        #: Called after a device left the bus (the server tells its owner).
        self.on_device_removed: Callable[[Device], None] | None = None

    # -- parents and types -------------------------------------------------------------------

    def add_parent(self, parent: MdevParent) -> None:
        if parent.name in self._parents:
            raise SiovError(errno.EEXIST, f"parent {parent.name!r} is already on the bus")
        self._parents[parent.name] = parent

    def remove_parent(self, name: str) -> None:
        """Take a parent off the bus; its mdevs are removed first."""
        if name not in self._parents:
            raise SiovError(errno.ENOENT, f"no parent {name!r}")
        for device in [d for d in self._devices.values() if d.parent == name]:
            self._remove(device)
        del self._parents[name]

    def types(self, owner: int | None = None) -> list[TypeEntry]:
        """Every parent's ``mdev_supported_types`` (the same for every client)."""
        del owner  # types are public, as in sysfs
        return [
            TypeEntry(name, info)
            for name, parent in sorted(self._parents.items())
            for info in parent.mdev_types()
        ]

    # -- mdevs -------------------------------------------------------------------------------

    def create_mdev(
        self, owner: int, parent: str, type_id: str, uuid: str | None = None, *, host: bool = False
    ) -> Device:
        """Create an mdev: the parent takes an instance, the device gets a default PASID, and
        the probe path gives it a group and default domain.

        A ``host`` mdev (a started persistent definition) belongs to the daemon, not to a
        session: it outlives connections, any client may claim it (no token), and it returns to
        the host when its claimant leaves, as an emulator's device returns to its registrant.

        ``ENOENT`` unknown parent or type; ``EINVAL`` a UUID not in canonical form;
        ``EEXIST`` a UUID in use; ``ENOSPC`` no instance (or PASID) left.
        """
        par = self._parents.get(parent)
        if par is None:
            raise SiovError(errno.ENOENT, f"no parent {parent!r}")
        info = next((t for t in par.mdev_types() if t.type_id == type_id), None)
        if info is None:
            raise SiovError(errno.ENOENT, f"parent {parent!r} has no type {type_id!r}")
        uid = self._check_uuid(uuid)
        if info.available_instances <= 0:
            raise SiovError(errno.ENOSPC, f"no {type_id} instance left on {parent}")
        pasid = self.iommu.pasids.alloc()
        try:
            if pasid >= 1 << info.pasid_bits:
                raise SiovError(errno.ENOSPC, f"no PASID below 2**{info.pasid_bits} is free")
            par.mdev_create(type_id, uid, pasid)
        except BaseException:
            self.iommu.pasids.free(pasid)
            raise
        device = Device(
            uuid=uid,
            bus=self.name,
            owner=HOST if host else owner,
            pasid_bits=info.pasid_bits,
            default_pasid=pasid,
            parent=parent,
            type_id=type_id,
            name=type_id,
            registrant=HOST if host else None,
        )
        try:
            self.iommu.probe_device(device)
        except BaseException:
            par.mdev_remove(uid)
            self.iommu.pasids.free(pasid)
            raise
        self._devices[uid] = device
        return device

    def _check_uuid(self, uuid: str | None) -> str:
        if uuid is None:
            while True:
                uid = str(uuidlib.uuid4())
                if uid not in self._devices:
                    return uid
        uid = uuid.lower() if isinstance(uuid, str) else ""
        if not _UUID_RE.match(uid):
            raise SiovError(errno.EINVAL, f"{uuid!r} is not a UUID (8-4-4-4-12 hex digits)")
        if uid in self._devices:
            raise SiovError(errno.EEXIST, f"a device with UUID {uid} exists")
        return uid

    def remove_mdev(self, owner: int, uuid: str) -> None:
        """``ENOENT`` for an unknown UUID, another owner's device, or a non-mdev device;
        ``EBUSY`` for a claimed host mdev (it is stopped, not removed, and only when free)."""
        device = self.device(owner, uuid)
        if not device.is_mdev:
            raise SiovError(errno.ENOENT, f"no mdev {uuid}")
        if device.registrant == HOST:
            raise SiovError(errno.EBUSY, f"mdev {uuid} is a started definition: stop it instead")
        self._remove(device)

    def stop_host_mdev(self, uuid: str) -> None:
        """Remove a started definition's mdev; ``EBUSY`` while a client has claimed it."""
        device = self._devices.get(uuid.lower())
        if device is None or device.registrant != HOST:
            raise SiovError(errno.ENOENT, f"mdev {uuid} is not running")
        if device.owner != HOST:
            raise SiovError(errno.EBUSY, f"mdev {uuid} is in use by a client")
        self._remove(device)

    def set_mdev_attr(self, uuid: str, name: str, value: str) -> None:
        """Write an attribute of a running mdev through its parent (mdevctl's sysfs write)."""
        device = self._devices.get(uuid.lower())
        if device is None or device.parent is None:
            raise SiovError(errno.ENODEV, f"mdev {uuid} is not running")
        self._parents[device.parent].mdev_set_attr(device.uuid, name, value)

    def host_mdevs(self) -> builtins.list[Device]:
        return [d for d in self._devices.values() if d.registrant == HOST and d.is_mdev]

    def _remove(self, device: Device) -> None:
        self.iommu.release_device(device)
        del self._devices[device.uuid]
        self._tokens.pop(device.uuid, None)
        self._claimed.discard(device.uuid)
        if device.parent is not None:
            self._parents[device.parent].mdev_remove(device.uuid)
            self.iommu.pasids.free(device.default_pasid)
        if self.on_device_removed is not None:
            self.on_device_removed(device)

    # -- lookup ------------------------------------------------------------------------------

    def device(self, owner: int | None, uuid: str) -> Device:
        """The device, if ``owner`` owns it (``None``: admin)."""
        device = self._devices.get(uuid.lower() if isinstance(uuid, str) else "")
        if device is None or (owner is not None and device.owner != owner):
            raise SiovError(errno.ENOENT, f"no device {uuid}")
        return device

    def emulated_device(self, registrant: int, uuid: str) -> Device:
        """An external device, for the emulator that registered it (its DMA and events)."""
        device = self._devices.get(uuid.lower() if isinstance(uuid, str) else "")
        if device is None or device.registrant != registrant:
            raise SiovError(errno.ENOENT, f"no device {uuid}")
        return device

    def list(self, owner: int | None = None) -> list[Device]:
        return [d for d in self._devices.values() if owner is None or d.owner == owner]

    def group_info(self, owner: int | None, group_id: int) -> dict[str, object]:
        return self.iommu.group(owner, group_id).info()

    def describe(self, device: Device) -> dict[str, object]:
        """What a reply says about a device."""
        group = device.group
        return {
            "uuid": device.uuid,
            "bus": device.bus,
            "parent": device.parent,
            "type_id": device.type_id,
            "name": device.name,
            "group_id": group.id if group is not None else None,
            "domain_id": group.domain.id if group is not None else None,
            "default_domain_id": group.default_domain.id if group is not None else None,
            "default_pasid": device.default_pasid,
            "pasid_bits": device.pasid_bits,
            "external": device.parent is None,
        }

    # -- external emulators ------------------------------------------------------------------

    def register_device(
        self, owner: int, name: str, pasid_bits: int, alias_of: str | None = None
    ) -> tuple[Device, str]:
        """Put an emulator's device on the bus; return it and its claim token.

        The device is probed like an mdev (group, default domain). Its untagged DMA uses the
        RID (PASID 0). ``alias_of`` names another of the caller's registered devices whose
        requester ID this one shares: both end up in one group. ``EINVAL`` for a bad name
        or PASID width; ``ENOENT`` for an unknown alias.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise SiovError(errno.EINVAL, "device name: 1-64 of [A-Za-z0-9_.:-]")
        if not 0 <= pasid_bits <= PASID_BITS:
            raise SiovError(errno.EINVAL, f"pasid_bits must be 0..{PASID_BITS}")
        alias: Device | None = None
        if alias_of is not None:
            alias = self.emulated_device(owner, alias_of)
            if alias.owner != owner:
                raise SiovError(errno.EBUSY, f"device {alias_of} has been claimed")
        uid = self._check_uuid(None)
        device = Device(
            uuid=uid,
            bus=self.name,
            owner=owner,
            pasid_bits=pasid_bits,
            name=name,
            registrant=owner,
            alias_of=alias.uuid if alias is not None else None,
        )
        self.iommu.probe_device(device, alias)
        self._devices[uid] = device
        token = secrets.token_hex(16)
        self._tokens[uid] = token
        return device, token

    def unregister_device(self, owner: int, uuid: str) -> None:
        """The registrant takes its device off the bus (``ENOENT`` for anyone else)."""
        self._remove(self.emulated_device(owner, uuid))

    def claim_device(self, new_owner: int, uuid: str, token: str | None) -> Device:
        """Become the owner of an external device (and of its group) with its token, or of a
        free host mdev (no token needed).

        ``ENOENT`` for a wrong UUID or token, or a device already claimed. The group is
        reset first: PASIDs detached, default domain attached and emptied.
        """
        uid = uuid.lower() if isinstance(uuid, str) else ""
        host = self._devices.get(uid)
        if host is not None and host.registrant == HOST and host.is_mdev:
            if host.owner != HOST:
                raise SiovError(errno.ENOENT, f"no claimable device {uuid}")
            assert host.group is not None
            self.iommu.transfer_group(host.group, new_owner)
            for member in host.group.devices:
                self._claimed.add(member.uuid)
            return host
        expected = self._tokens.get(uid)
        if (
            expected is None
            or not isinstance(token, str)
            or not secrets.compare_digest(expected.encode(), token.encode())
            or uid in self._claimed
        ):
            raise SiovError(errno.ENOENT, f"no claimable device {uuid}")
        device = self._devices[uid]
        assert device.group is not None
        self.iommu.transfer_group(device.group, new_owner)
        for member in device.group.devices:
            self._claimed.add(member.uuid)
        return device

    # -- lifecycle ---------------------------------------------------------------------------

    def release_owner(self, owner: int) -> None:
        """Everything of a departing session: its mdevs and registered devices go, devices
        it claimed return (reset) to their registrant, then the IOMMU frees its domains and
        memory. The server calls this on disconnect."""
        for device in list(self._devices.values()):
            if device.registrant == owner or (
                device.is_mdev and device.owner == owner and device.registrant is None
            ):
                self._remove(device)
        for device in list(self._devices.values()):
            if device.owner == owner and device.registrant is not None and device.group:
                registrant = device.registrant
                self.iommu.transfer_group(device.group, registrant)
                for member in device.group.devices:
                    self._claimed.discard(member.uuid)
        self.iommu.release_owner(owner)
