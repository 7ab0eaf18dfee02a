"""``siov_test``: a generic mdev parent with one type and a fixed number of instances.

It does no DMA of its own; it exists so the bus, the IOMMU and clients can be exercised
without the accelerator (as the kernel's mtty and mbochs samples do for mdev).
"""

from __future__ import annotations

import errno

from siovd.model.errors import SiovError
from siovd.model.parents import MdevTypeInfo


class SiovTestParent:
    TYPE_ID = "siov_test-1"

    def __init__(self, name: str = "siov_test", instances: int = 16, pasid_bits: int = 20) -> None:
        self._name = name
        self._instances = instances
        self._pasid_bits = pasid_bits
        self.live: dict[str, int] = {}  # uuid -> default PASID

    @property
    def name(self) -> str:
        return self._name

    def mdev_types(self) -> list[MdevTypeInfo]:
        return [
            MdevTypeInfo(
                type_id=self.TYPE_ID,
                name="siov test device",
                description="generic mediated device with a default PASID, no engine",
                device_api="vfio-pci",
                available_instances=self._instances - len(self.live),
                pasid_bits=self._pasid_bits,
            )
        ]

    def mdev_create(self, type_id: str, uuid: str, default_pasid: int) -> None:
        if type_id != self.TYPE_ID:
            raise SiovError(errno.ENOENT, f"parent {self._name} has no type {type_id!r}")
        if len(self.live) >= self._instances:
            raise SiovError(errno.ENOSPC, f"no {type_id} instance left on {self._name}")
        self.live[uuid] = default_pasid

    def mdev_set_attr(self, uuid: str, name: str, value: str) -> None:
        raise SiovError(errno.ENOENT, f"Invalid attribute {name!r}: {self.TYPE_ID} has none")

    def mdev_remove(self, uuid: str) -> None:
        self.live.pop(uuid, None)
