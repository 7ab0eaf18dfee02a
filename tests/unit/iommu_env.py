"""A small world for the IOMMU, memory and bus tests: real anonymous memory, one mdev bus."""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from siovd.model.bus import Bus
from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu import Iommu
from siovd.model.iommu.faults import FaultRecord
from siovd.model.iommu.pagetable import ADDR_MASK, PTE_P, PTE_PS, PTE_RW, PTE_US
from siovd.model.memory import PhysicalMemory, Region
from siovd.model.testparent import SiovTestParent

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
RW = 3
RO = 1


class Env:
    def __init__(self, **iommu_kwargs: Any) -> None:
        self.memory = PhysicalMemory()
        self.iommu = Iommu(self.memory, **iommu_kwargs)
        self.bus = Bus(self.iommu)
        self.parent = SiovTestParent()
        self.bus.add_parent(self.parent)
        self.faults: list[tuple[int, FaultRecord]] = []
        self.iommu.on_fault = lambda owner, record: self.faults.append((owner, record))
        self.maps: list[mmap.mmap] = []

    def region(self, owner: int, size: int = 4 * MiB, access: str = "rw") -> Region:
        m = mmap.mmap(-1, size)
        self.maps.append(m)
        view = memoryview(m)
        if access == "ro":
            view = view.toreadonly()
        return self.memory.add_region(view, owner, access)

    def mdev(self, owner: int, uuid: str | None = None) -> Device:
        return self.bus.create_mdev(owner, "siov_test", "siov_test-1", uuid)

    def default_domain(self, device: Device) -> int:
        assert device.group is not None
        return device.group.default_domain.id

    def close(self) -> None:
        for m in self.maps:
            try:
                m.close()
            except BufferError:
                pass


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


def errno_of(fn: Callable[[], object]) -> int | None:
    """The errno ``fn`` fails with, or None if it succeeds."""
    try:
        fn()
    except SiovError as e:
        return e.errno
    return None


class UserPageTable:
    """A client's own first-stage table, written into its memory as a driver writes one."""

    def __init__(self, memory: PhysicalMemory, region: Region, levels: int = 4) -> None:
        self.memory = memory
        self.region = region
        self.levels = levels
        self._next = region.base
        self.root = self.page()

    def page(self) -> int:
        phys = self._next
        assert phys + PAGE <= self.region.end, "user table region is full"
        self._next += PAGE
        self.memory.view(phys, PAGE)[:] = bytes(PAGE)
        return phys

    def slot(self, iova: int, level: int = 1) -> int:
        """Physical address of the entry for ``iova`` at ``level``, making tables above."""
        table = self.root
        for lvl in range(self.levels, level, -1):
            at = table + 8 * ((iova >> (12 + 9 * (lvl - 1))) & 511)
            entry = self.memory.read_u64(at)
            if not entry & PTE_P:
                entry = self.page() | PTE_P | PTE_RW | PTE_US
                self.memory.write_u64(at, entry)
            table = entry & ADDR_MASK
        return table + 8 * ((iova >> (12 + 9 * (level - 1))) & 511)

    def map(self, iova: int, phys: int, write: bool = True, level: int = 1) -> None:
        flags = PTE_P | PTE_US | (PTE_RW if write else 0) | (PTE_PS if level > 1 else 0)
        self.memory.write_u64(self.slot(iova, level), phys | flags)

    def unmap(self, iova: int, level: int = 1) -> None:
        self.memory.write_u64(self.slot(iova, level), 0)

    def entry(self, iova: int, level: int = 1) -> int:
        return self.memory.read_u64(self.slot(iova, level))
