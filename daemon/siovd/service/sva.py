"""SVA bindings and user-WQ char-device opens at run time: who bound what, and cleanup.

Two kinds of binding, both an :class:`~siovd.model.iommu.sva.SvaDomain` on a fresh PASID:

* SVA_BIND on an mdev the client owns (the PASID is then usable with SUBMIT ``pasid``);
* WQ_OPEN of a user WQ (``/dev/dsa/wqD.Q``): the requester is the DSA device itself (its PCI
  function, a device of the ``pci`` bus that only the IOMMU sees), as for idxd's char device.
  Each open becomes a :class:`CdevState` in the accelerator runtime, so descriptors run, fault,
  block, complete and interrupt through the same code as an mdev's.

Everything a session bound or opened is closed when it leaves; opens are drained first, as
``idxd_cdev_release`` does when the process's file is released.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import structlog
import trio

from siov_protocol.ids import PASID_BITS
from siov_protocol.messages_sva import SVA_FDS, WQ_MODE_DEDICATED, WQ_MODE_SHARED
from siov_protocol.replies import WqOpenReply
from siovd.model.accel.cdev import as_enqcmd, closed, open_wq, opened
from siovd.model.accel.parent import TYPE_1DWQ, TYPE_1SWQ, DsaMdev
from siovd.model.device import Device
from siovd.model.errors import SiovError
from siovd.model.iommu.sva import AddressSpace, SvaDomain
from siovd.model.owner import HOST
from siovd.service.accel_runtime import MdevState

if TYPE_CHECKING:
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session

log = structlog.get_logger("siovd.sva")

#: Bindings (SVA_BIND) and opens (WQ_OPEN) one connection may hold, each, and all
#: connections together: each holds three fds of the daemon (mem, maps, pidfd) and a watch.
MAX_PER_SESSION: Final = 64
MAX_TOTAL: Final = 4096
#: The bus of the DSA devices' own PCI functions (requesters for their char devices).
PCI_BUS: Final = "pci"
#: Rounds of engine work WQ_CLOSE gives the opener's descriptors before aborting the rest.
DRAIN_ROUNDS: Final = 100_000


class CdevState(MdevState):
    """One open of a user WQ's char device, as the accelerator runtime sees it."""

    __slots__ = ("domain", "handle")
    cdev: ClassVar[bool] = True

    def __init__(
        self,
        pf: Device,
        parent: Any,
        mdev: DsaMdev,
        session: int,
        handle: int,
        domain: SvaDomain,
    ) -> None:
        super().__init__(pf, parent, mdev)
        self.uuid = mdev.uuid  # "wq0.1#3": what events name, never a bus device
        self.session = session
        self.handle = handle
        self.domain = domain


@dataclass(slots=True)
class Binding:
    session: int
    device: Device
    domain: SvaDomain


def take_mm(fds: list[int]) -> AddressSpace:
    """The address space of the two fds riding with SVA_BIND or WQ_OPEN. On success the fds
    belong to it (``fds`` is emptied); on failure they stay in ``fds`` (the server closes
    them)."""
    if len(fds) != SVA_FDS:
        raise SiovError(
            errno.EINVAL,
            f"needs 2 fds (the process's /proc/self/mem opened O_RDWR, then its "
            f"/proc/self/maps), got {len(fds)}",
        )
    mm = AddressSpace.from_fds(fds[0], fds[1])
    fds[:] = []
    return mm


class SvaRuntime:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.bindings: dict[tuple[int, str, int], Binding] = {}
        self.opens: dict[int, CdevState] = {}
        self._next_handle = 1
        self._pf: dict[str, Device] = {}
        self.binds_total = 0
        self.opens_total = 0
        self.drained = 0
        self.exits = 0
        #: Set by the service's task nursery (siovd.service.engines): watch a bound process.
        self.start_watch: Callable[[SvaDomain], None] = lambda domain: None
        #: Bindings whose process is watched (by SVA domain id), with the watching task's
        #: cancel scope once it runs.
        self._watches: dict[int, trio.CancelScope | None] = {}
        daemon.iommu.register_internal_bus(PCI_BUS)
        # It hooks into nothing: Daemon.release calls release_session before the accelerator
        # runtime's, so a leaving session's opens are drained before the runtime cancels what
        # is left; Daemon.stats calls stats_dict.

    # -- SVA_BIND / SVA_UNBIND -----------------------------------------------------------------

    def bind(self, session: Session, uuid: str, fds: list[int]) -> SvaDomain:
        device = self.daemon.bus.device(session.id, uuid)
        self._room(session, sum(1 for k in self.bindings if k[0] == session.id), "bindings")
        mm = take_mm(fds)
        try:
            domain = self.daemon.iommu.sva_bind(session.id, device, mm)
        except BaseException:
            mm.close()
            raise
        self._forget_space(device.uuid, domain.pasid)
        self.bindings[(session.id, device.uuid, domain.pasid)] = Binding(session.id, device, domain)
        self.binds_total += 1
        self._watch(domain)
        log.info("sva bound", device=device.uuid, pasid=domain.pasid, pid=mm.pid)
        return domain

    def unbind(self, session: Session, uuid: str, pasid: int) -> None:
        binding = self.bindings.pop((session.id, uuid.lower(), pasid), None)
        if binding is None or binding.domain.pasid != pasid:
            raise SiovError(errno.ENOENT, f"no SVA binding at PASID {pasid} of device {uuid}")
        self._unwatch(binding.domain)
        self.daemon.iommu.sva_unbind(binding.domain)
        self._forget_space(binding.device.uuid, pasid)
        log.info("sva unbound", device=binding.device.uuid, pasid=pasid)

    def _forget_space(self, uuid: str, pasid: int) -> None:
        """The runtime's cached DMA space for that PASID is of the old translation."""
        state = self.daemon.accel_runtime.mdevs.get(uuid)
        if state is not None:
            state.spaces.pop(pasid, None)

    def _room(self, session: Session, have: int, what: str) -> None:
        if have >= MAX_PER_SESSION:
            raise SiovError(
                errno.ENOSPC, f"limit reached: {MAX_PER_SESSION} SVA {what} per connection"
            )
        if len(self.bindings) + len(self.opens) >= MAX_TOTAL:
            raise SiovError(
                errno.ENOSPC, f"limit reached: {MAX_TOTAL} SVA bindings and opens in the daemon"
            )

    # -- WQ_OPEN / WQ_SUBMIT / WQ_CLOSE ----------------------------------------------------------

    def _pf_device(self, name: str) -> Device:
        pf = self._pf.get(name)
        if pf is None:
            pf = Device(name, PCI_BUS, HOST, PASID_BITS, name=name)
            self.daemon.iommu.probe_device(pf)
            self._pf[name] = pf
        return pf

    def open(self, session: Session, device_name: str, index: int, fds: list[int]) -> CdevState:
        accel = self.daemon.accel.device(device_name)
        parent = self.daemon.dsa_parents[accel.name]
        wq = open_wq(accel, index)
        self._room(session, sum(1 for s in self.opens.values() if s.session == session.id), "opens")
        mm = take_mm(fds)
        pf = self._pf_device(accel.name)
        try:
            domain = self.daemon.iommu.sva_bind(session.id, pf, mm)
        except BaseException:
            mm.close()
            raise
        handle = self._next_handle
        self._next_handle += 1
        type_id = TYPE_1DWQ if wq.dedicated else TYPE_1SWQ
        mdev = DsaMdev(f"{wq.dev_name}#{handle}", type_id, wq, domain.pasid)
        state = CdevState(pf, parent, mdev, session.id, handle, domain)
        opened(wq, domain.pasid)
        self.opens[handle] = state
        self.daemon.accel_runtime.mdevs[state.uuid] = state
        self.opens_total += 1
        self._watch(domain)
        log.info("wq opened", wq=wq.path, handle=handle, pasid=domain.pasid, pid=mm.pid)
        return state

    def reply(self, state: CdevState) -> WqOpenReply:
        wq = state.mdev.wq
        return WqOpenReply(
            handle=state.handle,
            pasid=state.domain.pasid,
            mode=WQ_MODE_DEDICATED if wq.dedicated else WQ_MODE_SHARED,
            size=wq.size,
            wq=wq.dev_name,
            domain=state.domain.id,
        )

    def _open_of(self, session: Session, handle: int) -> CdevState:
        state = self.opens.get(handle)
        if state is None or state.session != session.id:
            raise SiovError(errno.ENOENT, f"no open WQ handle {handle}")
        return state

    def submit(self, session: Session, handle: int, descriptors: bytes) -> bytes:
        state = self._open_of(session, handle)
        runtime = self.daemon.accel_runtime
        if state.mdev.dedicated:
            _, _, _, results = runtime.submit(state, descriptors)
        else:
            pasid = state.domain.pasid
            _, _, _, results = runtime.submit(state, as_enqcmd(descriptors, pasid), pasid)
        return results

    def close(self, session: Session, handle: int) -> None:
        self._close(self._open_of(session, handle))

    def _close(self, state: CdevState) -> None:
        """``idxd_cdev_release``: drain the opener's work, then unbind and free the PASID."""
        runtime = self.daemon.accel_runtime
        self.opens.pop(state.handle, None)
        group = state.mdev.wq.group
        rounds = 0
        while group is not None and state.outstanding > runtime.prq.waiting(state.uuid):
            rounds += 1
            if not runtime.run_group(group) or rounds >= DRAIN_ROUNDS:
                break  # nothing left to take: what remains waits on a page request
        self.drained += 1
        runtime.forget(state.uuid)  # aborts what still waits, closes eventfds
        self._unwatch(state.domain)
        self.daemon.iommu.sva_unbind(state.domain)
        closed(state.mdev.wq)
        self._release_pf_if_unused(state.device)
        log.info("wq closed", wq=state.mdev.wq.path, handle=state.handle)

    def _release_pf_if_unused(self, pf: Device) -> None:
        """The device's own requester exists while it has openers, so a daemon with no open
        char device holds no group, domain or PASID for it (what INFO counts comes back)."""
        if any(s.device is pf for s in self.opens.values()):
            return
        self.daemon.iommu.release_device(pf)
        self._pf = {name: dev for name, dev in self._pf.items() if dev is not pf}

    # -- cleanup and introspection -----------------------------------------------------------------

    def release_session(self, session: Session) -> None:
        for state in [s for s in self.opens.values() if s.session == session.id]:
            self._close(state)
        for key in [k for k in self.bindings if k[0] == session.id]:
            binding = self.bindings.pop(key)
            self._unwatch(binding.domain)
            self.daemon.iommu.sva_unbind(binding.domain)

    # -- the bound process's exit ------------------------------------------------------------------

    async def watch(self, domain: SvaDomain) -> None:
        """Wait for the bound process to exit (its pidfd turns readable), then unbind what it
        had, as the kernel does when the process's mm goes, even if the connection that
        bound it (a broker, say) stays."""
        mm = domain.mm
        if mm is None or mm.pidfd < 0 or domain.id not in self._watches:
            return  # unbound before this task ran
        try:
            fd = os.dup(mm.pidfd)  # ours: the binding closes its own at unbind
        except OSError as exc:  # out of fds: the binding lives until its connection leaves
            log.warning("cannot watch a bound process", pid=mm.pid, error=str(exc))
            self._watches.pop(domain.id, None)
            return
        try:
            with trio.CancelScope() as scope:
                self._watches[domain.id] = scope
                await trio.lowlevel.wait_readable(fd)
        finally:
            if self._watches.get(domain.id) is scope:
                del self._watches[domain.id]
            os.close(fd)
        if not scope.cancelled_caught:
            self.exited(domain)

    def _watch(self, domain: SvaDomain) -> None:
        """Watch the bound process when its pid can be trusted (see AddressSpace.pidfd)."""
        if domain.mm is not None and domain.mm.pidfd >= 0:
            self._watches[domain.id] = None
            self.start_watch(domain)

    def _unwatch(self, domain: SvaDomain) -> None:
        scope = self._watches.pop(domain.id, None)
        if scope is not None:
            scope.cancel()

    def exited(self, domain: SvaDomain) -> None:
        for state in list(self.opens.values()):
            if state.domain is domain:
                self.exits += 1
                log.info("bound process exited", wq=state.mdev.wq.path, handle=state.handle)
                self._close(state)
                return
        for key, binding in list(self.bindings.items()):
            if binding.domain is domain:
                self.exits += 1
                log.info("bound process exited", device=key[1], pasid=key[2])
                del self.bindings[key]
                self.daemon.iommu.sva_unbind(domain)
                self._forget_space(key[1], key[2])
                return

    def stats_dict(self) -> dict[str, Any]:
        domains = self.daemon.iommu.sva_domains()
        spaces = [d.mm for d in domains if d.mm is not None]
        return {
            "bindings": len(self.bindings),
            "opens": len(self.opens),
            "domains": len(domains),
            "binds_total": self.binds_total,
            "opens_total": self.opens_total,
            "closes_drained": self.drained,
            "process_exits": self.exits,
            "watched": len(self._watches),
            "maps_reads": sum(mm.maps_reads for mm in spaces),
            "snapshot_hits": sum(mm.snapshot_hits for mm in spaces),
            "write_failures": sum(mm.write_failures for mm in spaces),
        }
