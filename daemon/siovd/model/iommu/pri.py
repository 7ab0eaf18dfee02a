"""Page requests from any device (PCIe PRI as iommufd's fault queue sees it:
``struct iommu_hwpt_pgfault`` / ``iommu_hwpt_page_response``).

An external emulator raises a request for its device (PASID or none, address, access, PRG
index, last-page flag); the IOMMU routes it, as it routes DSA's block-on-fault requests, through
the same :class:`~siovd.model.iommu.prq.PageRequestQueue`: to the owner of the domain the
(device, PASID) entry reaches, who answers with PAGE_RESPONSE by the request's cookie. As in
PCIe, only the last request of a group gets a response; the earlier ones are recorded in the
group and shown to the owner with the last one. A request the IOMMU cannot route (no PASID
entry, a blocked or identity domain) is answered Invalid Request by the IOMMU itself
(``iommu_report_device_fault`` with no handler), and so is one past the per-submitter cap.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Final

from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu.domain import Domain, DomainType
from siovd.model.iommu.prq import PageRequest, PageRequestQueue
from siovd.model.iommu.translate import resolve

# iommufd IOMMU_PGFAULT_PERM_*
PERM_READ: Final = 1 << 0
PERM_WRITE: Final = 1 << 1
PERM_EXEC: Final = 1 << 2
PERM_PRIV: Final = 1 << 3
#: Pages one group may collect before its last request, and groups a device may have open.
MAX_GROUP: Final = 512
MAX_OPEN_GROUPS: Final = 64


@dataclass(slots=True)
class Partial:
    """The requests of a group seen so far (before its last)."""

    pages: list[tuple[int, int]] = field(default_factory=list)  # (iova, perm)


@dataclass(slots=True)
class PriState:
    #: (device uuid, pasid or -1, grpid) -> the group collected so far
    groups: dict[tuple[str, int, int], Partial] = field(default_factory=dict)


def perm_of(read: bool, write: bool, exec: bool, priv: bool) -> int:
    return (
        (PERM_READ if read else 0)
        | (PERM_WRITE if write else 0)
        | (PERM_EXEC if exec else 0)
        | (PERM_PRIV if priv else 0)
    )


def check_request(device: Device, pasid: int | None, iova: int, perm: int) -> None:
    if iova % 4096:
        raise SiovError(errno.EINVAL, f"a page request names a page: {iova:#x} is not aligned")
    if not perm & (PERM_READ | PERM_WRITE):
        raise SiovError(errno.EINVAL, "a page request asks for read and/or write access")
    if pasid is not None and (pasid == 0 or pasid >= device.max_pasids):
        raise SiovError(
            errno.EINVAL,
            f"PASID {pasid} is outside 1..{max(device.max_pasids, 1) - 1} for {device.uuid}",
        )
    if pasid is None and perm & (PERM_EXEC | PERM_PRIV):
        raise SiovError(errno.EINVAL, "exec and priv need a PASID (PCIe PASID prefix)")


def route(device: Device, pasid: int | None) -> Domain | None:
    """The domain a request reaches; None when the IOMMU answers it itself."""
    domain, _ = resolve(device, 0 if pasid is None else pasid)
    if domain is None or domain.type is not DomainType.PAGING:
        return None
    return domain


def raise_request(
    state: PriState,
    prq: PageRequestQueue,
    device: Device,
    pasid: int | None,
    iova: int,
    perm: int,
    grpid: int,
    last: bool,
    submitter: int,
) -> tuple[PageRequest | None, Domain | None, list[tuple[int, int]]]:
    """Record one request. Returns ``(request, domain, pages)``: ``request`` None and
    ``domain`` None when the IOMMU answers Invalid itself (unroutable, over the cap); both None
    and ``pages`` empty for a request that is not its group's last (no response is due)."""
    check_request(device, pasid, iova, perm)
    key = (device.uuid, -1 if pasid is None else pasid, grpid)
    if not last:
        if key not in state.groups and (
            sum(1 for k in state.groups if k[0] == device.uuid) >= MAX_OPEN_GROUPS
        ):
            raise SiovError(
                errno.ENOSPC, f"device {device.uuid} has {MAX_OPEN_GROUPS} groups open already"
            )
        group = state.groups.setdefault(key, Partial())
        if len(group.pages) >= MAX_GROUP:
            raise SiovError(errno.ENOSPC, f"group {grpid} holds {MAX_GROUP} requests already")
        group.pages.append((iova, perm))
        return None, None, []
    partial = state.groups.pop(key, Partial())
    pages = [*partial.pages, (iova, perm)]
    domain = route(device, pasid)
    if domain is None:
        return None, None, pages
    owner = domain.owner if domain.owner else device.owner
    write = bool(perm & PERM_WRITE)
    payload = {"grpid": grpid, "perm": perm, "pages": pages}
    request = prq.open(
        device.uuid, 0 if pasid is None else pasid, iova, write, owner, submitter, payload
    )
    return request, (domain if request is not None else None), pages


def forget_device(state: PriState, uuid: str) -> None:
    for key in [k for k in state.groups if k[0] == uuid]:
        del state.groups[key]
