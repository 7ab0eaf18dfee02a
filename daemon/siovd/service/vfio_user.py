"""An mdev served as a real vfio-user PCI device on a socket of its own.

A client that owns a ``dsa-1dwq`` mdev asks for it (VFIO_USER_EXPOSE); siovd then listens on
the path it names and serves one vfio-user client at a time there (QEMU's ``vfio-user-pci``),
speaking the specification (``qemu docs/interop/vfio-user.rst``; codec in
:mod:`siov_protocol.vfio_user`). The device is :class:`~siovd.model.accel.vdsa.VirtualDsa`.

DMA: exposing gives the mdev a paging domain of its own (strict: every unmap invalidates the
IOTLB before the reply), owned by the mdev's owner. The vfio-user client's DMA_MAPs become
mappings in it at the client's addresses (guest physical addresses, or the guest vIOMMU's
IOVAs), backed by the fds QEMU passes, which siovd maps and places in its physical memory; its
DMA_UNMAPs remove them. The mdev's WQ tags its work with the mdev's PASID, which reaches that
domain, so every descriptor address the guest writes is translated by siov's IOMMU (IOTLB,
faults). Ranges mapped without an fd are recorded but not reachable by the device.

Interrupts: the eventfds of SET_IRQS (MSI-X) become the mdev's interrupt eventfds in the
accelerator runtime, so a completion interrupt goes from the engine straight to QEMU.

Bad input: every malformed message gets the spec's error reply (the header alone, with Error
and an errno) and the connection goes on; a header that lies about its size, or a client that
stops reading, ends that connection only. On disconnect all its DMA is unmapped and its fds
are closed; the device keeps its state (spec: "Client disconnection").
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

from siov_protocol import vfio_user as vu
from siov_protocol.fdpass import fds_from_ancillary
from siov_protocol.replies import VfioUserEndpoint
from siovd.model.accel import TYPE_1DWQ, SubmitResult
from siovd.model.accel.parent import MDEV_IRQ_COUNT
from siovd.model.accel.vdsa import BAR0_SIZE, BAR2_SIZE, VirtualDsa
from siovd.model.errors import SiovError
from siovd.model.iommu.pagetable import PROT_READ, PROT_WRITE
from siovd.model.memfd import HUGETLBFS_MAGIC, TMPFS_MAGIC, fs_type, map_without_fd
from siovd.model.memory import PAGE_SIZE, Region

if TYPE_CHECKING:
    from siovd.service.accel_runtime import MdevState
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session

log = structlog.get_logger("siovd.vfio_user")

_SIZE_2M: Final = 1 << 21
_SOCKET_PATH_MAX: Final = 107
_MULTI_ENTRY: Final = struct.Struct("<QII8s")  # offset, region, count, data[8]
_MULTI_MAX: Final = 200  # QEMU's VFIO_USER_MULTI_MAX
#: The regions with accesses, and their sizes.
_REGIONS: Final = {
    vu.PCI_BAR0_REGION: BAR0_SIZE,
    vu.PCI_BAR2_REGION: BAR2_SIZE,
    vu.PCI_CONFIG_REGION: 0x1000,
}


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


@dataclass(slots=True)
class DmaRegion:
    """One DMA_MAP: ``region`` is the siov memory behind it (None without an fd)."""

    addr: int
    size: int
    flags: int
    region: Region | None = None


@dataclass(slots=True)
class EndpointStats:
    connections: int = 0
    refused: int = 0
    messages: int = 0
    errors: int = 0
    dma_maps: int = 0
    dma_unmaps: int = 0


@dataclass(eq=False)
class Endpoint:
    """One exposed mdev: its socket, its device model, its domain and its client's DMA."""

    daemon: Daemon
    state: MdevState
    path: str
    domain_id: int
    vdsa: VirtualDsa = field(init=False)
    maps: dict[tuple[int, int], DmaRegion] = field(default_factory=dict)
    stats: EndpointStats = field(default_factory=EndpointStats)
    sock: socket.socket | None = None
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    peer_xfer: int = vu.DEFAULT_PEER_XFER
    negotiated: bool = False
    connected: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        state = self.state
        runtime = self.daemon.accel_runtime
        group = state.mdev.wq.group
        self.vdsa = VirtualDsa(
            state.mdev,
            len(group.engines) if group is not None else 1,
            submit=self._submit,
            interrupt=lambda vector: runtime.trigger(state, [vector]),
            drain=self._drain,
            abort=self._abort,
        )
        runtime.software_error_hooks[state.uuid] = lambda error: self.vdsa.software_error(
            error.status, error.opcode, error.fault_addr
        )

    @property
    def uuid(self) -> str:
        return self.state.uuid

    @property
    def owner(self) -> int:
        return self.state.session

    # -- the device model's hooks into the runtime --------------------------------------------

    def _submit(self, offset: int, descriptor: bytes) -> SubmitResult:
        try:
            return self.daemon.accel_runtime.portal_write(self.state, offset, descriptor)
        except SiovError:
            return SubmitResult.DROPPED  # the owner's outstanding limit: the device drops it

    def _drain(self) -> None:
        group = self.state.mdev.wq.group
        runtime = self.daemon.accel_runtime
        # Each run takes what is queued; a descriptor blocked on a page request is not
        # waited for (its answer comes on another task).
        for _ in range(64):
            if not self.state.mdev.wq.occupancy or group is None:
                return
            runtime.run_group(group)

    def _abort(self) -> None:
        self.daemon.accel_runtime.abort_queued(self.state)

    # -- DMA ----------------------------------------------------------------------------------

    def dma_map(self, req: vu.DmaMap, fds: list[int]) -> None:
        if len(fds) > 1:
            raise vu.VfioUserError(errno.EINVAL, "DMA_MAP takes at most one fd")
        if not req.flags & vu.DMA_READ_FLAG:
            raise vu.VfioUserError(errno.EINVAL, "DMA_MAP: a mapping must at least be readable")
        if req.size == 0 or (req.addr | req.size) % PAGE_SIZE:
            raise vu.VfioUserError(errno.EINVAL, "DMA_MAP: addr and size must be 4 KiB-aligned")
        if len(self.maps) >= vu.MAX_DMA_MAPS:
            raise vu.VfioUserError(errno.ENOSPC, f"DMA_MAP: {vu.MAX_DMA_MAPS} mappings at most")
        end = req.addr + req.size
        for other in self.maps.values():
            if other.addr < end and req.addr < other.addr + other.size:
                raise vu.VfioUserError(
                    errno.EEXIST, f"DMA_MAP: {req.addr:#x}+{req.size:#x} overlaps a mapping"
                )
        entry = DmaRegion(req.addr, req.size, req.flags)
        if fds:
            fd = fds.pop()
            try:
                entry.region = self._map_fd(fd, req)
            finally:
                os.close(fd)
        self.maps[(req.addr, req.size)] = entry
        self.stats.dma_maps += 1

    def _map_fd(self, fd: int, req: vu.DmaMap) -> Region:
        if req.offset % PAGE_SIZE:
            raise vu.VfioUserError(errno.EINVAL, "DMA_MAP: the file offset must be 4 KiB-aligned")
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise vu.VfioUserError(errno.EBADF, f"DMA_MAP: fstat: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode) or req.offset + req.size > st.st_size:
            raise vu.VfioUserError(errno.EINVAL, "DMA_MAP: the range is not inside the file")
        # A file that shrank under the mapping would fault the daemon (SIGBUS): it must be
        # sealed against shrinking (QEMU's memfd backends are, seal=on).
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if not seals & fcntl.F_SEAL_SHRINK:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        except OSError:
            raise vu.VfioUserError(
                errno.EINVAL, "DMA_MAP: the fd must be a memfd sealed (or sealable) against shrink"
            ) from None
        # A hugetlb page punched out of the file SIGBUSes the daemon once the pool is empty;
        # only shmem refaults as zeroes (SPEC §8.3), so the same rule as MEM_REGISTER.
        kind = fs_type(fd)
        if kind != TMPFS_MAGIC:
            what = "hugetlb memfds are refused" if kind == HUGETLBFS_MAGIC else "not shmem"
            raise vu.VfioUserError(errno.EINVAL, f"DMA_MAP: {what} (file system {kind:#x})")
        # Large mappings start at the file offset rounded down to 2 MiB, so IOVA and physical
        # address agree modulo 2 MiB when they did in the guest, and large pages can be used.
        lead = req.offset % _SIZE_2M if req.size >= _SIZE_2M else 0
        writable = bool(req.flags & vu.DMA_WRITE_FLAG)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            start = req.offset - lead
            mapping = map_without_fd(fd, lead + req.size, start, prot)  # holds no fd
        except (OSError, SiovError) as exc:
            raise vu.VfioUserError(exc.errno or errno.EINVAL, f"DMA_MAP: mmap: {exc}") from None
        daemon = self.daemon
        # The region owns the mapping (closed by Daemon.close_dead_mappings once it goes).
        region = daemon.memory.add_mapping(mapping, self.owner, "rw" if writable else "ro")
        iommu_prot = PROT_READ | (PROT_WRITE if writable else 0)
        try:
            daemon.iommu.map(
                self.owner, self.domain_id, req.addr, region.base + lead, req.size, iommu_prot
            )
        except SiovError:
            daemon.memory.remove_region(region.id, self.owner)
            daemon.close_dead_mappings()
            raise
        return region

    def dma_unmap(self, req: vu.DmaUnmap) -> None:
        """The exact mapping, or (as VFIO type1 does, and QEMU's vIOMMU needs when it
        invalidates a whole address space) every mapping inside the range. A range that would
        split a mapping is EINVAL and unmaps nothing."""
        if req.flags & vu.UNMAP_GET_DIRTY_BITMAP:
            raise vu.VfioUserError(errno.EOPNOTSUPP, "DMA_UNMAP: no dirty page tracking")
        if req.flags & vu.UNMAP_ALL:
            victims = list(self.maps.values())
        else:
            exact = self.maps.get((req.addr, req.size))
            if exact is not None:
                victims = [exact]
            else:
                if req.size == 0:
                    raise vu.VfioUserError(errno.EINVAL, "DMA_UNMAP: size 0")
                end = req.addr + req.size
                victims = []
                for entry in self.maps.values():
                    if entry.addr < end and req.addr < entry.addr + entry.size:
                        if entry.addr < req.addr or entry.addr + entry.size > end:
                            raise vu.VfioUserError(
                                errno.EINVAL,
                                f"DMA_UNMAP: {req.addr:#x}+{req.size:#x} would split the "
                                f"mapping {entry.addr:#x}+{entry.size:#x}",
                            )
                        victims.append(entry)
        for entry in victims:
            self._drop(entry)
        self.stats.dma_unmaps += len(victims)

    def _drop(self, entry: DmaRegion) -> None:
        del self.maps[(entry.addr, entry.size)]
        if entry.region is None:
            return
        daemon = self.daemon
        try:
            daemon.iommu.unmap(self.owner, self.domain_id, entry.addr, entry.size)
        except SiovError as exc:  # the domain went with its owner already
            log.debug("unmap after the domain went", error=str(exc))
        if entry.region.alive:
            try:
                daemon.memory.remove_region(entry.region.id, self.owner)
            except SiovError as exc:
                log.warning("vfio-user region still in use", error=str(exc))
        daemon.close_dead_mappings()

    def drop_client_state(self) -> None:
        """Client gone: unmap all its DMA, close its eventfds; the device keeps its state."""
        for entry in list(self.maps.values()):
            self._drop(entry)
        self.state.close_irqs()
        self.negotiated = False
        self.peer_xfer = vu.DEFAULT_PEER_XFER

    # -- messages -----------------------------------------------------------------------------

    def handle(self, msg: vu.Message) -> bytes | None:
        """One command from the client: the reply bytes (None for a no-reply write). Raises
        :class:`~siov_protocol.vfio_user.VfioUserError` for the error reply."""
        cmd = msg.command
        if not self.negotiated and cmd != vu.Cmd.VERSION:
            raise vu.VfioUserError(errno.EINVAL, "negotiate the version first")
        fds = msg.fds
        takes_fds = cmd in (vu.Cmd.DMA_MAP, vu.Cmd.DEVICE_SET_IRQS)
        if fds and not takes_fds:
            raise vu.VfioUserError(errno.EINVAL, f"command {cmd} takes no fds")
        if cmd == vu.Cmd.VERSION:
            return vu.pack_reply(msg, self._version(msg))
        if cmd == vu.Cmd.DMA_MAP:
            self.dma_map(vu.parse_dma_map(msg.payload), fds)
            return vu.pack_reply(msg)
        if cmd == vu.Cmd.DMA_UNMAP:
            req = vu.parse_dma_unmap(msg.payload)
            self.dma_unmap(req)
            return vu.pack_reply(msg, vu.pack_dma_unmap(req))
        if cmd == vu.Cmd.DEVICE_GET_INFO:
            vu.parse_argsz(msg.payload, vu.DEVICE_INFO_SIZE, "DEVICE_GET_INFO")
            body = vu.pack_device_info(
                vu.DEVICE_FLAGS_RESET | vu.DEVICE_FLAGS_PCI, vu.PCI_NUM_REGIONS, vu.PCI_NUM_IRQS
            )
            return vu.pack_reply(msg, body)
        if cmd == vu.Cmd.DEVICE_GET_REGION_INFO:
            return vu.pack_reply(msg, self._region_info(vu.parse_region_info(msg.payload)))
        if cmd == vu.Cmd.DEVICE_GET_IRQ_INFO:
            req_irq = vu.parse_irq_info(msg.payload)
            return vu.pack_reply(msg, self._irq_info(req_irq.index))
        if cmd == vu.Cmd.DEVICE_SET_IRQS:
            self._set_irqs(vu.parse_set_irqs(msg.payload), fds)
            return vu.pack_reply(msg)
        if cmd == vu.Cmd.REGION_READ:
            access = vu.parse_region_access(msg.payload, write=False)
            data = self._region_read(access)
            return vu.pack_reply(
                msg, vu.pack_region_access(access.offset, access.region, access.count, data)
            )
        if cmd == vu.Cmd.REGION_WRITE:
            access = vu.parse_region_access(msg.payload, write=True)
            self._region_write(access)
            if msg.no_reply:
                return None
            return vu.pack_reply(
                msg, vu.pack_region_access(access.offset, access.region, access.count)
            )
        if cmd == vu.Cmd.REGION_WRITE_MULTI:
            self._write_multi(msg.payload)
            return None if msg.no_reply else vu.pack_reply(msg)
        if cmd == vu.Cmd.DEVICE_RESET:
            self.vdsa.reset()
            return vu.pack_reply(msg)
        if cmd == vu.Cmd.DEVICE_FEATURE:
            # VFIO's answer for a feature the device does not have (no migration, no dirty
            # logging): QEMU reads it as "not supported".
            raise vu.VfioUserError(errno.ENOTTY, "no device features")
        if cmd in (
            vu.Cmd.DEVICE_GET_REGION_IO_FDS,
            vu.Cmd.MIG_DATA_READ,
            vu.Cmd.MIG_DATA_WRITE,
        ):
            raise vu.VfioUserError(errno.EOPNOTSUPP, f"command {cmd} is not supported")
        if cmd in (vu.Cmd.DMA_READ, vu.Cmd.DMA_WRITE):
            raise vu.VfioUserError(errno.EINVAL, f"command {cmd} goes from server to client")
        raise vu.VfioUserError(errno.EINVAL, f"unknown command {cmd}")

    def _version(self, msg: vu.Message) -> bytes:
        if self.negotiated:
            raise vu.VfioUserError(errno.EINVAL, "VERSION was negotiated already")
        req = vu.parse_version(msg.payload)
        if req.major != vu.VERSION_MAJOR:
            raise vu.VfioUserError(errno.ENOTSUP, f"major version {req.major}, siov speaks 0")
        self.peer_xfer = int(req.capabilities.get("max_data_xfer_size", vu.DEFAULT_PEER_XFER))
        caps: dict[str, Any] = {
            "max_msg_fds": vu.MAX_MSG_FDS,
            "max_data_xfer_size": vu.MAX_DATA_XFER,
            "max_dma_maps": vu.MAX_DMA_MAPS,
            "pgsizes": PAGE_SIZE,
        }
        self.negotiated = True
        return vu.pack_version(vu.VERSION_MAJOR, min(req.minor, vu.VERSION_MINOR), caps)

    def _region_info(self, req: vu.RegionInfoRequest) -> bytes:
        if req.index >= vu.PCI_NUM_REGIONS:
            raise vu.VfioUserError(errno.EINVAL, f"no region {req.index}")
        size = _REGIONS.get(req.index, 0)
        flags = vu.REGION_INFO_FLAG_READ | vu.REGION_INFO_FLAG_WRITE if size else 0
        # Nothing is mmappable: every BAR0 register has side effects and the portals must
        # be trapped to see descriptors, so there is no sparse-mmap area to offer.
        return vu.pack_region_info(req.argsz, req.index, flags, size)

    def _irq_info(self, index: int) -> bytes:
        if index >= vu.PCI_NUM_IRQS:
            raise vu.VfioUserError(errno.EINVAL, f"no IRQ index {index}")
        if index == vu.PCI_MSIX_IRQ:
            return vu.pack_irq_info(index, vu.IRQ_INFO_EVENTFD | vu.IRQ_INFO_NORESIZE, 2)
        return vu.pack_irq_info(index, vu.IRQ_INFO_EVENTFD, 0)

    def _set_irqs(self, req: vu.IrqSet, fds: list[int]) -> None:
        """MSI-X only (libvfio-user's rules): eventfds for [start, start+count), none to
        de-assign them; DATA_NONE with count 0 disables the index; NONE/BOOL trigger."""
        count = MDEV_IRQ_COUNT if req.index == vu.PCI_MSIX_IRQ else 0
        if req.action != vu.IRQ_SET_ACTION_TRIGGER:
            raise vu.VfioUserError(errno.EINVAL, "SET_IRQS: MSI-X cannot be masked here")
        if fds and req.data_type != vu.IRQ_SET_DATA_EVENTFD:
            raise vu.VfioUserError(errno.EINVAL, "SET_IRQS: fds only with DATA_EVENTFD")
        if req.count == 0:
            if req.data_type != vu.IRQ_SET_DATA_NONE or req.start:
                raise vu.VfioUserError(errno.EINVAL, "SET_IRQS: count 0 only with DATA_NONE")
            if req.index == vu.PCI_MSIX_IRQ:
                self.state.close_irqs()
            return
        if req.start + req.count > count:
            raise vu.VfioUserError(
                errno.EINVAL, f"SET_IRQS: {req.start}+{req.count} past index {req.index}'s {count}"
            )
        runtime = self.daemon.accel_runtime
        if req.data_type == vu.IRQ_SET_DATA_EVENTFD:
            if not fds:
                self.state.close_irqs(req.start, req.count)
                return
            if len(fds) != req.count:
                raise vu.VfioUserError(errno.EINVAL, "SET_IRQS: one eventfd per vector")
            if not all(_is_eventfd(fd) for fd in fds):
                raise vu.VfioUserError(errno.EINVAL, "SET_IRQS: every fd must be an eventfd")
            runtime.set_irqs(self.state, req.start, list(fds))
            fds.clear()
            return
        if req.data_type == vu.IRQ_SET_DATA_BOOL:
            vectors = [req.start + i for i, on in enumerate(req.data) if on]
        else:
            vectors = list(range(req.start, req.start + req.count))
        runtime.trigger(self.state, vectors)

    def _check_access(self, access: vu.RegionAccess) -> int:
        size = _REGIONS.get(access.region)
        if size is None:
            raise vu.VfioUserError(errno.EINVAL, f"region {access.region} has no accesses")
        if access.count > min(vu.MAX_DATA_XFER, self.peer_xfer) or access.count == 0:
            raise vu.VfioUserError(errno.EINVAL, f"count {access.count} out of range")
        if access.offset + access.count > size:
            raise vu.VfioUserError(
                errno.EINVAL, f"{access.offset:#x}+{access.count} past region {access.region}"
            )
        return size

    def _region_read(self, access: vu.RegionAccess) -> bytes:
        self._check_access(access)
        if access.region == vu.PCI_CONFIG_REGION:
            return self.vdsa.config.read(access.offset, access.count)
        if access.region == vu.PCI_BAR0_REGION:
            return self.vdsa.read_bar0(access.offset, access.count)
        return bytes(access.count)  # portals read as zeros

    def _region_write(self, access: vu.RegionAccess) -> None:
        self._check_access(access)
        if access.region == vu.PCI_CONFIG_REGION:
            self.vdsa.config.write(access.offset, access.data)
        elif access.region == vu.PCI_BAR0_REGION:
            self.vdsa.write_bar0(access.offset, access.data)
        else:
            self.vdsa.write_portal(access.offset, access.data)

    def _write_multi(self, payload: bytes) -> None:
        if len(payload) < 8:
            raise vu.VfioUserError(errno.EINVAL, "REGION_WRITE_MULTI: no count")
        (count,) = struct.unpack_from("<Q", payload, 0)
        if not 0 < count <= _MULTI_MAX or len(payload) != 8 + count * _MULTI_ENTRY.size:
            raise vu.VfioUserError(errno.EINVAL, "REGION_WRITE_MULTI: bad count")
        accesses = []
        for i in range(count):
            offset, region, size, data = _MULTI_ENTRY.unpack_from(payload, 8 + i * 24)
            if size > 8:
                raise vu.VfioUserError(errno.EINVAL, "REGION_WRITE_MULTI: writes of 8 bytes max")
            access = vu.RegionAccess(offset, region, size, data[:size])
            self._check_access(access)
            accesses.append(access)
        for access in accesses:
            self._region_write(access)

    # -- the socket ---------------------------------------------------------------------------

    async def serve(self) -> None:
        """Accept one client at a time until unexposed. Never raises: an endpoint unexposed
        before this task first runs (its socket already closed) just ends."""
        if self.closed or self.sock is None:
            return
        with self.cancel:
            try:
                listener = trio.socket.from_stdlib_socket(self.sock)
                async with trio.open_nursery() as nursery:
                    busy = trio.Semaphore(1)
                    while True:
                        conn, _ = await listener.accept()
                        if busy.value == 0:
                            self.stats.refused += 1  # one client per socket (spec)
                            conn.close()
                            continue
                        await busy.acquire()
                        nursery.start_soon(self._run_client, conn, busy)
            except Exception as exc:  # an endpoint never takes the daemon down
                log.error("vfio-user endpoint failed", mdev=self.uuid, error=repr(exc))
        self.close()

    async def _run_client(self, conn: trio.socket.SocketType, busy: trio.Semaphore) -> None:
        self.stats.connections += 1
        self.connected = True
        log.info("vfio-user client connected", mdev=self.uuid, path=self.path)
        framer = vu.Framer()
        try:
            await self._client_loop(conn, framer)
        except (OSError, vu.FramingError, trio.BrokenResourceError) as exc:
            log.info("vfio-user client dropped", mdev=self.uuid, reason=str(exc))
        finally:
            # The endpoint is free again before the client can see the hang-up.
            _close_all(framer.take_fds())
            self.drop_client_state()
            self.connected = False
            busy.release()
            conn.close()
            log.info("vfio-user client gone", mdev=self.uuid)

    async def _client_loop(self, conn: trio.socket.SocketType, framer: vu.Framer) -> None:
        fd_space = socket.CMSG_SPACE(vu.MAX_MSG_FDS * 4)
        while True:
            data, ancdata, msg_flags, _ = await conn.recvmsg(1 << 16, fd_space)
            fds = fds_from_ancillary(ancdata)
            if msg_flags & socket.MSG_CTRUNC:
                _close_all(fds)
                raise vu.FramingError("more fds than max_msg_fds")
            if not data:
                _close_all(fds)
                return
            framer.feed(data, fds)
            for msg in framer.messages():
                reply = self._dispatch(msg)
                if reply is not None:
                    view = memoryview(reply)
                    while view:
                        view = view[await conn.send(view) :]

    def _dispatch(self, msg: vu.Message) -> bytes | None:
        self.stats.messages += 1
        try:
            if msg.is_reply:
                return None  # siov sends no commands, so no reply is expected
            if msg.flags & vu.FLAG_TYPE_MASK != vu.TYPE_COMMAND:
                raise vu.VfioUserError(errno.EINVAL, "unknown message type")
            return self.handle(msg)
        except vu.VfioUserError as exc:
            self.stats.errors += 1
            log.debug("vfio-user error reply", mdev=self.uuid, cmd=msg.command, error=exc.message)
            return None if msg.no_reply else vu.pack_error(msg.msg_id, msg.command, exc.errno)
        except SiovError as exc:
            self.stats.errors += 1
            log.debug("vfio-user error reply", mdev=self.uuid, cmd=msg.command, error=str(exc))
            return None if msg.no_reply else vu.pack_error(msg.msg_id, msg.command, exc.errno)
        except Exception:  # a bug: the client still gets its reply, the log says what
            self.stats.errors += 1
            log.exception("handler failed", mdev=self.uuid, cmd=msg.command)
            return None if msg.no_reply else vu.pack_error(msg.msg_id, msg.command, errno.EIO)
        finally:
            _close_all(msg.fds)

    def close(self) -> None:
        """Stop serving: socket gone, DMA unmapped, the mdev back on its default domain."""
        if self.closed:
            return
        self.closed = True
        self.cancel.cancel()
        self.daemon.accel_runtime.software_error_hooks.pop(self.uuid, None)
        self.drop_client_state()
        if self.sock is not None:
            self.sock.close()
            try:
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
        iommu = self.daemon.iommu
        device = self.state.device
        try:
            if device.alive and device.group is not None:
                iommu.detach_device(self.owner, self.domain_id, device)
            iommu.domain_free(self.owner, self.domain_id)
        except SiovError as exc:  # the owner's teardown got there first
            log.debug("vfio-user domain already gone", error=str(exc))
        log.info("vfio-user endpoint closed", mdev=self.uuid, path=self.path)


class Endpoints:
    """Every exposed mdev of one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.by_uuid: dict[str, Endpoint] = {}
        # It hooks into nothing: the Daemon calls release_session, stats and
        # unexpose_quietly (device removal) in its written order.

    def expose(self, session: Session, uuid: str, path: str, mode: int) -> Endpoint:
        daemon = self.daemon
        state = daemon.accel_runtime.state(session, uuid)
        if state.mdev.type_id != TYPE_1DWQ:
            raise SiovError(
                errno.EOPNOTSUPP,
                f"only {TYPE_1DWQ} mdevs can be exposed (a guest has no ENQCMD for shared WQs)",
            )
        if uuid in self.by_uuid:
            raise SiovError(errno.EBUSY, f"{uuid} is exposed already at {self.by_uuid[uuid].path}")
        if not path.startswith("/") or len(path.encode()) > _SOCKET_PATH_MAX or "\0" in path:
            raise SiovError(
                errno.EINVAL, f"socket path must be absolute, at most {_SOCKET_PATH_MAX} bytes"
            )
        if os.path.lexists(path):
            raise SiovError(errno.EEXIST, f"{path} exists")
        if not os.path.isdir(os.path.dirname(path) or "/"):
            raise SiovError(errno.ENOENT, f"no directory for {path}")
        device = state.device
        domain = daemon.iommu.domain_alloc(session.id, device.bus)
        try:
            daemon.iommu.attach_device(session.id, domain.id, device)
        except SiovError:
            daemon.iommu.domain_free(session.id, domain.id)
            raise
        endpoint = Endpoint(daemon, state, path, domain.id)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o777 & ~mode)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, mode)
            if session.peer is not None and os.geteuid() == 0:
                os.chown(path, session.peer[1], session.peer[2])
            sock.listen(1)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            endpoint.closed = True
            daemon.iommu.detach_device(session.id, domain.id, device)
            daemon.iommu.domain_free(session.id, domain.id)
            raise SiovError(exc.errno or errno.EIO, f"cannot listen on {path}: {exc}") from None
        endpoint.sock = sock
        self.by_uuid[uuid] = endpoint
        trio.lowlevel.spawn_system_task(self._serve, endpoint)
        log.info("vfio-user endpoint open", mdev=uuid, path=path, domain=domain.id)
        return endpoint

    async def _serve(self, endpoint: Endpoint) -> None:
        # A system task: anything escaping it would end the whole daemon (TrioInternalError).
        try:
            await endpoint.serve()
        except Exception as exc:
            log.error("vfio-user endpoint task failed", mdev=endpoint.uuid, error=repr(exc))
            endpoint.close()
        finally:
            if self.by_uuid.get(endpoint.uuid) is endpoint:
                del self.by_uuid[endpoint.uuid]

    def unexpose(self, session: Session, uuid: str) -> None:
        endpoint = self.by_uuid.get(uuid)
        if endpoint is None or endpoint.owner != session.id:
            raise SiovError(errno.ENOENT, f"{uuid} is not exposed by you")
        self.unexpose_quietly(uuid)

    def unexpose_quietly(self, uuid: str) -> None:
        endpoint = self.by_uuid.pop(uuid, None)
        if endpoint is not None:
            endpoint.close()

    def release_session(self, session: Session) -> None:
        for uuid in [u for u, e in self.by_uuid.items() if e.owner == session.id]:
            self.unexpose_quietly(uuid)

    def info(self, endpoint: Endpoint) -> VfioUserEndpoint:
        return VfioUserEndpoint(
            uuid=endpoint.uuid,
            path=endpoint.path,
            domain_id=endpoint.domain_id,
            dma_maps=len(endpoint.maps),
        )

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for uuid, e in self.by_uuid.items():
            out[uuid] = {
                "path": e.path,
                "connected": int(e.connected),
                "maps": len(e.maps),
                **{k: getattr(e.stats, k) for k in EndpointStats.__dataclass_fields__},
                **{f"device_{k}": getattr(e.vdsa.stats, k) for k in ("commands", "descriptors")},
                "portal_dropped": e.vdsa.stats.portal_dropped,
                "wq_dropped": e.vdsa.stats.wq_dropped,
            }
        return out


def endpoints(daemon: Daemon) -> Endpoints:
    """The daemon's endpoint table (made with the daemon, :attr:`Daemon.vfio_user`)."""
    return daemon.vfio_user
