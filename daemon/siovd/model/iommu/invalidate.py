"""IOTLB invalidation as a driver asks for it: global, per domain, per PASID, per page range
(VT-d's address mask). Mixed into :class:`~siovd.model.iommu.Iommu`."""

from __future__ import annotations

import errno

from siovd.model.errors import SiovError
from siovd.model.iommu.base import IommuBase
from siovd.model.iommu.iotlb import Entry, make_tag
from siovd.model.iommu.pasid import PASID_LIMIT
from siovd.model.iommu.sva import SvaDomain
from siovd.model.memory import PAGE_SIZE

#: VT-d's maximum address-mask value for page-selective invalidation.
MAX_AM = 18


class InvalidateVerbs(IommuBase):
    def iotlb_cached(
        self, owner: int | None, domain_id: int, pasid: int | None = None
    ) -> list[tuple[int, int, Entry]]:
        """What the IOTLB holds for a domain the caller owns (``owner`` None: any domain):
        ``(pasid, iova, entry)`` rows, sorted, for inspection only (no hit counted)."""
        domain = self.domain(owner, domain_id)
        return self.iotlb.cached(domain.id, pasid)

    def iotlb_invalidate(
        self,
        owner: int | None,
        scope: str,
        domain_id: int | None = None,
        pasid: int | None = None,
        iova: int = 0,
        am: int = 0,
    ) -> int:
        """Invalidate the IOTLB the way a driver does; returns the entries dropped.

        ``global``: every domain of the caller (an admin, ``owner=None``: everything);
        ``domain``: one domain, all PASIDs; ``pasid``: one (domain, PASID) entry;
        ``range``: ``2**am`` 4 KiB pages from ``iova`` (aligned to that size, ``am`` ≤ 18),
        for one PASID or, with ``pasid=None``, all of them. PASID 0 is the RID.
        """
        if scope == "global":
            for sva in self.sva_domains(owner):
                if sva.mm is not None:
                    sva.mm.stale = True  # the mmu-notifier's flush: re-read the maps
            if owner is None:
                return self.iotlb.invalidate_all()
            return sum(self.iotlb.invalidate_domain(d.id) for d in self.domains(owner))
        if scope not in ("domain", "pasid", "range"):
            raise SiovError(errno.EINVAL, f"unknown invalidation scope {scope!r}")
        if domain_id is None:
            raise SiovError(errno.EINVAL, f"a {scope} invalidation needs a domain")
        domain = self.domain(owner, domain_id)
        if isinstance(domain, SvaDomain) and domain.mm is not None:
            domain.mm.stale = True
        if pasid is not None and not 0 <= pasid < PASID_LIMIT:
            raise SiovError(errno.EINVAL, f"PASID {pasid} is not a 20-bit PASID")
        if scope == "domain":
            return self.iotlb.invalidate_domain(domain.id)
        if scope == "pasid":
            if pasid is None:
                raise SiovError(errno.EINVAL, "a pasid invalidation needs a PASID")
            return self.iotlb.invalidate_tag(make_tag(domain.id, pasid))
        if not 0 <= am <= MAX_AM:
            raise SiovError(errno.EINVAL, f"address mask {am} is outside 0..{MAX_AM}")
        if iova < 0 or iova % (PAGE_SIZE << am):
            raise SiovError(errno.EINVAL, f"iova {iova:#x} is not aligned to 2**{am} pages")
        return self.iotlb.invalidate_range(domain.id, pasid, iova, am)
