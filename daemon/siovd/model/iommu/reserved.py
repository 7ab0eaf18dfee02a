"""Reserved regions and IOVA ranges (iommufd's ``IOMMU_IOAS_IOVA_RANGES`` and
``IOMMU_IOAS_ALLOW_IOVAS``, Linux ``iommu_get_resv_regions``).

Every device has the x86 MSI window ``0xfee00000..0xfeefffff`` reserved (``IOMMU_RESV_MSI``,
as ``intel_iommu_get_resv_regions`` reports it); an external emulator (or the owner) may add
``direct`` (RMRR-like, ``IOMMU_RESV_DIRECT``) and ``reserved`` (``IOMMU_RESV_RESERVED``) ranges.
A domain's reserved IOVAs are the union of the regions of every device that reaches it (through
its group or a PASID), as iommufd's ``iopt_table_enforce_dev_resv_regions`` unions them per
device. The errnos follow ``drivers/iommu/iommufd/io_pagetable.c``:

* MAP at a fixed IOVA that intersects a reserved range: ``EINVAL`` (``iopt_check_iova``, checked
  before the ``EEXIST`` of an overlapping mapping); auto-IOVA never picks one;
* attaching a device whose regions intersect a mapping or an allowed range of the domain, or
  adding a region that does so to an attached device: ``EADDRINUSE`` (``iopt_reserve_iova``);
* ALLOW_IOVAS with a range that intersects a reserved one: ``EADDRINUSE``
  (``iopt_set_allow_iova``); a range not aligned to 4 KiB or with ``start > last``: ``EINVAL``;
* IOVA_RANGES into a buffer of ``num_iovas`` entries that is too small: ``EMSGSIZE``.

siov reserves ``direct`` ranges in every domain (iommufd's rule for user domains) and does not
create their 1:1 mapping in the default domain (their physical side is nobody's memory here).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from siovd.model.errors import SiovError
from siovd.model.memory import PAGE_SIZE

if TYPE_CHECKING:
    from siovd.model.device import Device
    from siovd.model.iommu.domain import Domain

MSI_START: Final = 0xFEE0_0000
MSI_LAST: Final = 0xFEEF_FFFF
#: Types a client may add (the MSI window is always there).
ADDABLE: Final = ("direct", "reserved")
#: Regions a device may carry beyond the MSI window.
MAX_DEVICE_REGIONS: Final = 16
#: Ranges one ALLOW_IOVAS may set.
MAX_ALLOWED: Final = 256
Range = tuple[int, int]


def device_regions(device: Device) -> list[tuple[int, int, str]]:
    """What ``iommu_get_resv_regions`` reports for ``device``: the MSI window first."""
    return [(MSI_START, MSI_LAST, "msi"), *device.resv_regions]


def domain_devices(domain: Domain) -> list[Device]:
    seen: dict[int, Device] = {}
    if domain.default_of is not None:  # a default domain reserves for its group always
        for device in domain.default_of.devices:
            seen[id(device)] = device
    for group in domain.groups:
        for device in group.devices:
            seen[id(device)] = device
    for group, _pasid in domain.pasid_users:
        for device in group.devices:
            seen[id(device)] = device
    return list(seen.values())


def domain_reserved(domain: Domain, extra: Iterable[Device] = ()) -> list[Range]:
    """The reserved IOVA ranges of ``domain`` (and of ``extra`` devices about to reach it),
    merged and sorted."""
    spans = sorted(
        (start, last)
        for device in [*domain_devices(domain), *extra]
        for start, last, _type in device_regions(device)
    )
    return merge(spans)


def merge(spans: list[Range]) -> list[Range]:
    out: list[Range] = []
    for start, last in spans:
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((start, last))
    return out


def intersects(spans: Iterable[Range], start: int, last: int) -> Range | None:
    for a, b in spans:
        if a <= last and start <= b:
            return (a, b)
    return None


def check_range(start: int, last: int, what: str) -> None:
    if start < 0 or last < start or last >= 1 << 64:
        raise SiovError(errno.EINVAL, f"{what} {start:#x}..{last:#x}: start must be <= last")
    if start % PAGE_SIZE or (last + 1) % PAGE_SIZE:
        raise SiovError(
            errno.EINVAL, f"{what} {start:#x}..{last:#x}: start and last + 1 must be 4 KiB-aligned"
        )


# -- hooks the map and attach paths call -------------------------------------------------------


def check_map_reserved(domain: Domain, iova: int, size: int) -> None:
    """``iopt_check_iova``: a fixed IOVA in a reserved range is ``EINVAL``."""
    hit = intersects(domain_reserved(domain), iova, iova + size - 1)
    if hit is not None:
        raise SiovError(
            errno.EINVAL,
            f"iova {iova:#x}+{size:#x} intersects the reserved range {hit[0]:#x}..{hit[1]:#x}",
        )


def busy_for_alloc(domain: Domain) -> list[Range]:
    """What auto-IOVA must avoid besides the mappings: the reserved ranges, and everything
    outside the allowed ranges when ALLOW_IOVAS set some."""
    busy = domain_reserved(domain)
    if domain.allowed:
        cursor = 0
        for start, last in domain.allowed:
            if start > cursor:
                busy.append((cursor, start - 1))
            cursor = max(cursor, last + 1)
        if cursor < 1 << 64:
            busy.append((cursor, (1 << 64) - 1))
    return busy


def check_attach_reserved(domain: Domain, devices: Iterable[Device]) -> None:
    """``iopt_reserve_iova`` for each region of ``devices`` about to reach ``domain``:
    ``EADDRINUSE`` if it intersects a mapping or an allowed range."""
    if not domain.kernel_managed:
        return
    for device in devices:
        for start, last, kind in device_regions(device):
            _check_free(domain, start, last, f"{kind} region of device {device.uuid}")


def _check_free(domain: Domain, start: int, last: int, what: str) -> None:
    if domain.areas.overlaps(start, last) or any(
        a.iova <= last and start <= a.last for a in domain.lazy_pending
    ):
        raise SiovError(
            errno.EADDRINUSE,
            f"the {what} {start:#x}..{last:#x} is mapped in domain {domain.id}",
        )
    hit = intersects(domain.allowed, start, last)
    if hit is not None:
        raise SiovError(
            errno.EADDRINUSE,
            f"the {what} {start:#x}..{last:#x} is in allowed range {hit[0]:#x}..{hit[1]:#x} "
            f"of domain {domain.id}",
        )


# -- the verbs ---------------------------------------------------------------------------------


def reached_domains(device: Device) -> list[Domain]:
    """The domains ``device`` reaches now: its group's, its default, its PASIDs'."""
    group = device.group
    if group is None:
        return []
    found = [group.domain, group.default_domain, *group.pasids.values()]
    return list({id(d): d for d in found}.values())


def add_device_region(device: Device, start: int, last: int, kind: str) -> None:
    """Add a ``direct`` or ``reserved`` region to ``device``; each domain it reaches now must
    have the range free (``EADDRINUSE``). ``EINVAL`` for a bad type or range,
    ``ENOSPC`` past :data:`MAX_DEVICE_REGIONS`."""
    if kind not in ADDABLE:
        raise SiovError(errno.EINVAL, f"region type {kind!r}: use 'direct' or 'reserved'")
    check_range(start, last, "region")
    if len(device.resv_regions) >= MAX_DEVICE_REGIONS:
        raise SiovError(
            errno.ENOSPC, f"device {device.uuid} has {MAX_DEVICE_REGIONS} regions already"
        )
    for domain in reached_domains(device):
        if domain.kernel_managed:
            _check_free(domain, start, last, f"{kind} region")
    device.resv_regions.append((start, last, kind))


def allow_iovas(domain: Domain, ranges: list[Range]) -> None:
    """``IOMMU_IOAS_ALLOW_IOVAS``: replace the allowed ranges (an empty list allows the whole
    aperture again). Nothing changes on a refusal."""
    if len(ranges) > MAX_ALLOWED:
        raise SiovError(errno.EINVAL, f"at most {MAX_ALLOWED} allowed ranges")
    for start, last in ranges:
        check_range(start, last, "allowed range")
    reserved = domain_reserved(domain)
    for start, last in ranges:
        hit = intersects(reserved, start, last)
        if hit is not None:
            raise SiovError(
                errno.EADDRINUSE,
                f"allowed range {start:#x}..{last:#x} intersects the reserved range "
                f"{hit[0]:#x}..{hit[1]:#x}",
            )
    domain.allowed = merge(sorted(ranges))


def iova_ranges(domain: Domain, num_iovas: int | None = None) -> list[Range]:
    """``IOMMU_IOAS_IOVA_RANGES``: the usable IOVA ranges of ``domain`` (inside its aperture,
    outside every reserved range, inside the allowed ranges when some are set). With
    ``num_iovas`` (the caller's array length) smaller than the answer: ``EMSGSIZE``."""
    blocked = merge(sorted(busy_for_alloc(domain)))
    out: list[Range] = []
    cursor = 0
    end = domain.aperture_end - 1
    for start, last in blocked:
        if start > end:
            break
        if start > cursor:
            out.append((cursor, start - 1))
        cursor = max(cursor, last + 1)
    if cursor <= end:
        out.append((cursor, end))
    if num_iovas is not None and num_iovas < len(out):
        raise SiovError(
            errno.EMSGSIZE, f"domain {domain.id} has {len(out)} IOVA ranges, num_iovas {num_iovas}"
        )
    return out
