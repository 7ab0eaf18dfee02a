"""What the mdev bus needs from a parent device that offers mdev types.

A parent (the generic test parent, the DSA-like accelerator) hands out instances of its types;
the bus owns the devices, groups and probe path. Kept apart so the accelerator and the bus do not
import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class MdevTypeInfo:
    """One entry of ``mdev_supported_types``, as sysfs shows it."""

    type_id: str  # e.g. "dsa-1dwq"
    name: str
    description: str
    device_api: str  # e.g. "vfio-pci"
    available_instances: int
    pasid_bits: int  # PASID width of devices of this type (20 at most)


class MdevParent(Protocol):
    @property
    def name(self) -> str:
        """The parent's name on the bus, e.g. ``dsa0``."""
        ...

    def mdev_types(self) -> list[MdevTypeInfo]: ...

    def mdev_create(self, type_id: str, uuid: str, default_pasid: int) -> None:
        """Take the resources for one instance; ``SiovError(ENOSPC)`` when none is left."""
        ...

    def mdev_remove(self, uuid: str) -> None:
        """Give the instance's resources back."""
        ...

    def mdev_set_attr(self, uuid: str, name: str, value: str) -> None:
        """Write one attribute of an instance, as mdevctl writes ``<mdev>/<name>`` in sysfs:
        ``ENOENT`` for an attribute the type does not have, or the attribute's own errno."""
        ...
