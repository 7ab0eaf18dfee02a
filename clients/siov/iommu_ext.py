"""SDK methods of the IOMMU extensions (SPEC §8.16-§8.21), mixed into :class:`siov.Client`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from siov_protocol import Command


def msi_address(handle: int, shv: bool = False) -> int:
    """The remappable-format MSI address for ``handle`` (SPEC §8.22): 0xFEE in bits 31:20,
    handle[14:0] in 19:5, format bit 4, SHV bit 3, handle[15] in bit 2."""
    low, high = handle & 0x7FFF, (handle >> 15) & 1
    return (0xFEE << 20) | (low << 5) | 0x10 | (0x8 if shv else 0) | (high << 2)


class IommuExtMixin:
    async def call(
        self, command: Command | int, body: dict[str, Any] | None = None, fds: Sequence[int] = ()
    ) -> dict[str, Any]:
        raise NotImplementedError  # Client.call; declared here for the type checker

    # -- reserved regions and IOVA ranges --------------------------------------------------------

    async def resv_regions(self, device: str) -> list[dict[str, Any]]:
        """A device's reserved regions ``[{start, last, type}]``; the MSI window comes first."""
        reply = await self.call(Command.DEVICE_RESV_REGIONS, {"device": device})
        return list(reply["regions"])

    async def add_resv_region(
        self, device: str, start: int, last: int, type: str = "reserved"
    ) -> list[dict[str, Any]]:
        """Add a ``direct`` or ``reserved`` region to a device (its owner or its emulator)."""
        body = {"device": device, "start": start, "last": last, "type": type}
        return list((await self.call(Command.DEVICE_RESV_ADD, body))["regions"])

    async def iova_ranges(
        self, domain: int, *, num_iovas: int | None = None
    ) -> list[tuple[int, int]]:
        """The usable IOVA ranges ``(start, last)`` of a domain (``IOMMU_IOAS_IOVA_RANGES``)."""
        body: dict[str, Any] = {"domain": domain}
        if num_iovas is not None:
            body["num_iovas"] = num_iovas
        reply = await self.call(Command.IOVA_RANGES, body)
        return [(int(r["start"]), int(r["last"])) for r in reply["ranges"]]

    async def allow_iovas(self, domain: int, ranges: Sequence[tuple[int, int]]) -> None:
        """Auto-IOVA only from ``ranges`` (``IOMMU_IOAS_ALLOW_IOVAS``); empty: anywhere."""
        body = {"domain": domain, "ranges": [{"start": s, "last": e} for s, e in ranges]}
        await self.call(Command.ALLOW_IOVAS, body)

    # -- dirty tracking --------------------------------------------------------------------------

    async def set_dirty_tracking(self, domain: int, enable: bool) -> bool:
        """Turn dirty tracking on (D bits cleared first) or off; returns the new state. The
        domain must be allocated with ``dirty_tracking=True``."""
        body = {"domain": domain, "enable": enable}
        return bool((await self.call(Command.SET_DIRTY_TRACKING, body))["enabled"])

    async def get_dirty_bitmap(
        self, domain: int, iova: int, size: int, *, page_size: int = 4096, no_clear: bool = False
    ) -> bytes:
        """One bit per ``page_size`` (bit i = byte i//8, bit i%8); cleared unless ``no_clear``."""
        body = {
            "domain": domain,
            "iova": iova,
            "size": size,
            "page_size": page_size,
            "no_clear": no_clear,
        }
        return bytes((await self.call(Command.GET_DIRTY_BITMAP, body))["bitmap"])

    async def unmap_dirty(
        self, domain: int, iova: int, size: int, *, page_size: int = 4096
    ) -> tuple[int, bytes]:
        """Unmap whole mappings and return ``(unmapped, bitmap)`` of what was dirty in them."""
        body = {"domain": domain, "iova": iova, "size": size, "page_size": page_size}
        reply = await self.call(Command.UNMAP_DIRTY, body)
        return int(reply["unmapped"]), bytes(reply["bitmap"])

    # -- hardware information --------------------------------------------------------------------

    async def hw_info(self, device: str, *, data_len: int = 24) -> dict[str, Any]:
        """``IOMMU_GET_HW_INFO``: VT-d ``cap_reg``/``ecap_reg``, iommufd capability flags,
        ``max_pasid_log2``, ``data`` (``iommu_hw_info_vtd``) and a ``decoded`` view."""
        return await self.call(Command.GET_HW_INFO, {"device": device, "data_len": data_len})

    # -- page requests from any device -----------------------------------------------------------

    @staticmethod
    def _pri_body(
        device: str,
        iova: int,
        pasid: int | None,
        write: bool,
        read: bool,
        exec: bool,
        priv: bool,
        grpid: int,
        last: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "device": device,
            "iova": iova,
            "write": write,
            "read": read,
            "exec": exec,
            "priv": priv,
            "grpid": grpid,
            "last": last,
        }
        if pasid is not None:
            body["pasid"] = pasid
        return body

    async def page_request(
        self,
        device: str,
        iova: int,
        *,
        pasid: int | None = None,
        write: bool = False,
        read: bool = True,
        exec: bool = False,
        priv: bool = False,
        grpid: int = 0,
        last: bool = True,
    ) -> dict[str, Any]:
        """An emulator's PRI page request for its device. For the group's last request the
        reply carries the owner's response ``code`` (0 SUCCESS, 1 INVALID), ``timed_out``,
        ``cancelled`` (the device went), ``owner_gone`` (the owner left: INVALID); earlier
        requests of a group answer ``queued`` at once. ``EDEADLK`` when this very connection
        would have to answer it."""
        body = self._pri_body(device, iova, pasid, write, read, exec, priv, grpid, last)
        return await self.call(Command.PAGE_REQUEST, body)

    async def trigger_iopf(
        self,
        device: str,
        iova: int,
        *,
        pasid: int | None = None,
        write: bool = False,
        grpid: int = 0,
        last: bool = True,
    ) -> dict[str, Any]:
        """Inject a page request (iommufd selftest ``TRIGGER_IOPF``); returns its cookie
        ``request`` at once (None when the IOMMU answered it itself)."""
        body = self._pri_body(device, iova, pasid, write, True, False, False, grpid, last)
        return await self.call(Command.TRIGGER_IOPF, body)

    # -- nesting ---------------------------------------------------------------------------------

    async def alloc_nested(
        self, parent: int, pgtbl_addr: int, *, addr_width: int = 48, flags: int = 0
    ) -> dict[str, Any]:
        """A nested domain: stage 1 (VT-d first-stage format) rooted at ``pgtbl_addr``, a
        guest-physical address the nest-parent domain ``parent`` (stage 2) translates."""
        body = {
            "parent": parent,
            "pgtbl_addr": pgtbl_addr,
            "addr_width": addr_width,
            "flags": flags,
        }
        return await self.call(Command.NESTED_ALLOC, body)

    async def hwpt_invalidate(self, domain: int, entries: Sequence[tuple[int, int, int]]) -> int:
        """Stage-1 invalidation: ``(addr, npages, flags)`` entries (flags LEAF 1); returns how
        many were handled (``addr 0, npages 2**64-1``: everything)."""
        body = {
            "domain": domain,
            "entries": [{"addr": a, "npages": n, "flags": f} for a, n, f in entries],
        }
        return int((await self.call(Command.HWPT_INVALIDATE, body))["entry_num"])

    # -- device-TLB (ATS) invalidations ------------------------------------------------------

    async def ats_invalidate_done(self, device: str, cookie: int) -> None:
        """Tell the IOMMU your device dropped what EVENT_ATS_INVALIDATE ``cookie`` named
        (``4096 << am`` bytes at ``iova`` of ``pasid``, or all of it): the unmap waiting for
        it may then return. ``ENOENT`` for a cookie not pending for this device of yours."""
        await self.call(Command.ATS_INVALIDATE_DONE, {"device": device, "cookie": cookie})

    async def unmap_report(self, domain: int, iova: int, size: int) -> dict[str, Any]:
        """UNMAP with its whole reply: ``unmapped``, and ``ats_timed_out`` (devices that did
        not answer their invalidation in time, now fenced) and ``ats_unacked`` (cookies your
        own devices owe) when there are any."""
        return await self.call(Command.UNMAP, {"domain": domain, "iova": iova, "size": size})

    # -- interrupt remapping (SPEC §8.22) --------------------------------------------------------

    async def ir_table_set(self, entries: int) -> int:
        """Set your interrupt remapping table to ``entries`` (a power of two, 2..65536; 0
        removes it). A new table starts empty, with an empty interrupt entry cache."""
        return int((await self.call(Command.IR_TABLE_SET, {"entries": entries}))["entries"])

    async def ir_set_entry(
        self,
        index: int,
        vector: int,
        *,
        dest_id: int = 0,
        source: str | None = None,
        fpd: bool = False,
        present: bool = True,
        rsvd: int = 0,
    ) -> bool:
        """Write entry ``index``: deliver to the device's ``vector``, only from ``source`` (an
        mdev of yours; None checks nothing). Returns whether the IEC still holds the old copy
        (then it stays in use until :meth:`ir_invalidate_iec`)."""
        body: dict[str, Any] = {
            "index": index,
            "vector": vector,
            "dest_id": dest_id,
            "fpd": fpd,
            "present": present,
            "rsvd": rsvd,
        }
        if source is not None:
            body["source"] = source
        return bool((await self.call(Command.IR_SET_ENTRY, body))["cached"])

    async def ir_clear_entry(self, index: int) -> bool:
        """Clear entry ``index``; whether the IEC still holds it (as :meth:`ir_set_entry`)."""
        return bool((await self.call(Command.IR_CLEAR_ENTRY, {"index": index}))["cached"])

    async def ir_invalidate_iec(self, index: int | None = None, mask: int = 0) -> int:
        """IEC invalidation: global (``index`` None) or the ``2**mask`` entries from an aligned
        ``index``; returns how many cached entries were dropped."""
        body: dict[str, Any] = {"mask": mask}
        if index is not None:
            body["index"] = index
        return int((await self.call(Command.IR_INVALIDATE_IEC, body))["dropped"])

    async def set_msi_remap(
        self, device: str, vector: int, address: int | None, data: int = 0
    ) -> int | None:
        """Program an mdev vector's MSI message; returns the handle it names (None: none, or
        ``address`` None for direct delivery). :func:`msi_address` builds one."""
        body: dict[str, Any] = {"device": device, "vector": vector, "data": data}
        if address is not None:
            body["address"] = address
        reply = await self.call(Command.DEVICE_SET_MSI_REMAP, body)
        index = reply.get("index")
        return None if index is None else int(index)
