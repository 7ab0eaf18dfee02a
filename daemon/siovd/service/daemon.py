"""The daemon's state: config, sessions and the domain model, with no trio in sight.

The server owns one :class:`Daemon`; handlers reach the model through it. Disconnects end in
:meth:`Daemon.release`, which frees every object the session owned.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from siov_protocol import jsonc
from siov_protocol.auth import Role
from siov_protocol.messages import InfoConfig
from siov_protocol.messages_iommu import DeviceOwnerEvent, DeviceRemovedEvent, FaultEvent
from siov_protocol.replies import event_message
from siovd.host.auth import AuthPolicy, PeerCredentials, new_nonce
from siovd.host.config import Config, ConfigError
from siovd.host.config import from_dict as config_from_dict
from siovd.host.definitions import DefinitionStore
from siovd.host.systemd import state_directory
from siovd.model.accel import Accelerators, DsaParent
from siovd.model.accel.config import make_device
from siovd.model.bus import Bus
from siovd.model.errors import SiovError
from siovd.model.iommu import FaultRecord, Iommu
from siovd.model.iommu.io_pagetable import owner_usage
from siovd.model.iommu.pri import forget_device
from siovd.model.memory import PhysicalMemory
from siovd.model.owner import HOST
from siovd.model.testparent import SiovTestParent
from siovd.service.accel_runtime import AccelRuntime
from siovd.service.fds import CLOSER
from siovd.service.session import Session, UidUsage
from siovd.service.sva import SvaRuntime
from siovd.service.vfio_user import Endpoints

#: Regions up to this size are unmapped on the loop (microseconds); larger ones in a closer thread.
UNMAP_INLINE_BYTES = 64 << 20

Authenticator = Callable[[Session, bytes | None, bytes | None], tuple[str, Role]]


class Daemon:
    def __init__(
        self, config: Config, socket_path: str = "", *, state_dir: str | None = None
    ) -> None:
        self.config = config
        self.socket_path = socket_path
        self.started = time.monotonic()
        self.sessions: dict[int, Session] = {}
        self.uids: dict[int, UidUsage] = {}  # per-uid ledger of the live connections
        self.fd_budget: dict[str, Any] = {}  # RLIMIT_NOFILE against the limits (host.fdlimit)
        self.counters: Counter[str] = Counter()
        #: Extra release hooks (tools, tests): called after every area has released.
        self._releasers: list[Callable[[Session], None]] = []
        self.authenticator: Authenticator | None = None

        # The domain model: one physical space, one IOMMU serving the mdev bus, the parents.
        self.memory = PhysicalMemory()
        self.iommu = Iommu(
            self.memory,
            iotlb_entries=config.iommu.iotlb_entries,
            default_domain=config.iommu.default_domain,
            lazy_flush_threshold=config.iommu.lazy_flush_threshold,
            blocked_limit=config.limits.blocked_descriptors,
        )
        self.iommu.on_fault = self._deliver_fault
        self.bus = Bus(self.iommu, name="mdev")
        self.bus.on_device_removed = self._device_removed
        self.bus.add_parent(SiovTestParent())
        self.accel = load_accelerators(config.accel.config_file, config.accel.devices)
        self.dsa_parents: dict[str, DsaParent] = {}
        for name, device in self.accel.devices.items():
            if device.kind != "dsa":
                continue  # configured and listed only: siov runs no IAA operations
            parent = DsaParent(device)
            self.dsa_parents[name] = parent
            self.bus.add_parent(parent)
        self.auth_policy = build_auth_policy(config)
        if self.auth_policy is not None:
            self.authenticator = self._authenticate
        # Persistent definitions: opened last, so a failure above leaves no lock behind.
        self.state_dir = state_dir if state_dir is not None else resolve_state_dir(config)
        self.definitions = DefinitionStore(self.state_dir) if self.state_dir else None
        self.autostart_errors = self._autostart()
        # The areas at run time: the accelerator, SVA bindings and char-device opens, and the
        # vfio-user endpoints. They hook into nothing: release, stats and device removal call
        # them from here, in the order written below.
        self.accel_runtime = AccelRuntime(self)
        executor = self.accel_runtime.executor
        self.iommu.fault_origin = lambda: executor.origin  # a fault names its descriptor
        self.sva = SvaRuntime(self)
        self.vfio_user = Endpoints(self)

    def _authenticate(
        self, session: Session, public_key: bytes | None, signature: bytes | None
    ) -> tuple[str, Role]:
        assert self.auth_policy is not None
        peer = PeerCredentials(*session.peer) if session.peer is not None else None
        identity = self.auth_policy.authenticate(
            peer, nonce=session.nonce, public_key=public_key, signature=signature
        )
        return identity.name, identity.role

    def _autostart(self) -> dict[str, str]:
        """Start every ``auto`` definition with its UUID; return the ones that failed."""
        failed: dict[str, str] = {}
        if self.definitions is None:
            return failed
        for definition in self.definitions.autostart():
            try:
                self.start_definition(definition.uuid, definition.parent)
            except SiovError as exc:
                failed[definition.uuid] = exc.message
        return failed

    def start_definition(self, uuid: str, parent: str | None = None) -> Any:
        """Create a defined mdev, owned by the host until a client claims it; its attributes
        are written in order and the start fails (the mdev removed) if one cannot be."""
        if self.definitions is None:
            raise SiovError(errno.EOPNOTSUPP, "this daemon has no state directory")
        definition = self.definitions.get(uuid, parent)
        return self.start_mdev(
            definition.parent, definition.mdev_type, definition.uuid, definition.attrs
        )

    def start_mdev(
        self, parent: str, mdev_type: str, uuid: str | None, attrs: Sequence[tuple[str, str]]
    ) -> Any:
        """mdevctl start: create a host mdev, then write each attribute (mdev.rs start: on a
        failed write the device is stopped and the start fails)."""
        device = self.bus.create_mdev(0, parent, mdev_type, uuid, host=True)
        for name, value in attrs:
            try:
                self.bus.set_mdev_attr(device.uuid, name, value)
            except SiovError as exc:
                self.bus.stop_host_mdev(device.uuid)
                raise SiovError(
                    exc.errno, f"mdev {device.uuid}: attribute {name}={value!r}: {exc.message}"
                ) from None
        return device

    def close(self) -> None:
        if self.definitions is not None:
            self.definitions.close()

    # ---- the domain model's callbacks ----------------------------------------------------------

    def _deliver_fault(self, owner: int, record: FaultRecord) -> None:
        session = self.sessions.get(owner)
        if session is None:
            return
        event = FaultEvent(
            device=record.device,
            pasid=record.pasid,
            iova=record.iova,
            reason=record.reason,
            write=record.write,
            reason_name=record.reason_name,
            domain=record.domain,
        )
        origin = record.origin
        if origin is not None:
            event = dataclasses.replace(
                event,
                wq=origin.wq,
                opcode=origin.opcode,
                completion_addr=origin.completion_addr,
                batch_index=origin.batch_index,
            )
        session.push_event(*event_message(event))

    def _device_removed(self, device: Any) -> None:
        """The bus removed ``device``. In this order: its vfio-user endpoint (if exposed)
        closes; the accelerator drops its work (queued, running, waiting for page responses)
        and its eventfds; then its owner is told."""
        self.vfio_user.unexpose_quietly(device.uuid)
        self.accel_runtime.forget(device.uuid)
        # An external device's own page requests (SPEC §8.19) end with it.
        self.iommu.prq.cancel_device(device.uuid)
        self.iommu.atc.forget_device(device.uuid)  # it holds nothing now (SPEC §8.21)
        forget_device(self.iommu.pri, device.uuid)
        session = self.sessions.get(device.owner)
        if session is not None:
            session.push_event(
                *event_message(DeviceRemovedEvent(uuid=device.uuid, reason="removed"))
            )

    def tell_registrant(self, device: Any, change: str, client: str = "") -> None:
        """EVENT_DEVICE_OWNER to an external device's registrant (not to the host)."""
        registrant = device.registrant
        if registrant is None or registrant == HOST:
            return
        target = self.sessions.get(registrant)
        if target is not None:
            event = DeviceOwnerEvent(uuid=device.uuid, change=change, client=client[:64])
            target.push_event(*event_message(event))

    def close_dead_mappings(self) -> None:
        """Unmap the memory of regions that left the physical space.

        A large one in a closer thread: when the daemon's mapping is the memfd's last user, the
        unmap frees every page of it, which for gigabytes takes long enough to stall the loop.
        """
        for region in self.memory.take_dead_mappings():
            if region.size > UNMAP_INLINE_BYTES:
                CLOSER.defer(region.close_mapping)
            else:
                region.close_mapping()

    def _model_counts(self) -> dict[str, int]:
        return {
            "devices": len(self.bus.list(None)),
            "groups": len(self.iommu.groups(None)),
            "domains": len(self.iommu.domains(None)),
            "memory_regions": sum(1 for r in self.memory.regions(None) if r.owner != HOST),
        }

    # ---- authentication ---------------------------------------------------------------------

    def new_nonce(self, session: Session) -> bytes:
        """A fresh challenge for this connection only."""
        session.nonce = new_nonce()
        return session.nonce

    def authenticate(
        self, session: Session, public_key: bytes | None, signature: bytes | None
    ) -> tuple[str, Role]:
        if self.authenticator is None:
            raise SiovError(errno.EACCES, f"auth mode {self.config.auth.mode!r} is not available")
        return self.authenticator(session, public_key, signature)

    # ---- extension points the areas plug into ----------------------------------------------

    def on_release(self, fn: Callable[[Session], None]) -> None:
        """Also run ``fn`` when a session ends, after every area has released (for tools and
        tests; the areas themselves are called by :meth:`release` directly)."""
        self._releasers.append(fn)

    # ---- sessions ---------------------------------------------------------------------------

    def uid_usage(self, uid: int) -> UidUsage:
        """The ledger of ``uid``'s live connections (made on first use)."""
        usage = self.uids.get(uid)
        if usage is None:
            limit = self.config.limits.uid_event_queue_bytes
            usage = self.uids[uid] = UidUsage(uid, event_bytes_limit=limit)
        return usage

    def uid_sessions(self, uid: int) -> list[Session]:
        return [s for s in self.sessions.values() if s.uid == uid]

    def open_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        session.usage = self.uid_usage(session.uid)
        session.usage.connections += 1
        session.event_bytes_limit = self.config.limits.event_queue_bytes
        self.counters["clients_connected"] += 1

    def release(self, session: Session) -> None:
        """Free everything ``session`` owned. The order is fixed, and matters:

        1. its vfio-user endpoints close (their DMA mappings and domains go);
        2. its user-WQ char-device opens are drained (as ``idxd_cdev_release``) and closed, and
           its SVA bindings unbound;
        3. the accelerator: the session's waiting work is cancelled and its queued and running
           descriptors dropped, so nothing runs against memory about to go; page requests
           routed to it are answered INVALID (SPEC §8.19);
        4. the model: the bus removes its devices (each through :meth:`_device_removed`; an
           external device it had claimed returns to its registrant, who is told), the IOMMU
           frees its domains (lazy flushes first: they pin regions), then its memory;
        5. the daemon's own mappings of regions that left;
        6. extra hooks (:meth:`on_release`), then its queued events and its per-uid counts.
        """
        self.sessions.pop(session.id, None)
        self.counters["events_dropped"] += session.events_dropped  # stats outlive the session
        try:
            self.vfio_user.release_session(session)
            self.sva.release_session(session)
            self.accel_runtime.release_session(session)
            self.iommu.prq.owner_gone(session.id)  # what it was asked: answered INVALID
            self.iommu.flush_lazy()
            returned = [
                d for d in self.bus.list(session.id) if d.registrant not in (None, HOST, session.id)
            ]
            self.bus.release_owner(session.id)
            for device in returned:  # reset and back with their registrant: say so
                self.tell_registrant(device, "released", session.client_name)
            self.close_dead_mappings()
            for fn in self._releasers:
                fn(session)
        finally:
            for ev in session.clear_events():
                for fd in ev.fds:
                    os.close(fd)
            usage, session.usage = session.usage, None
            if usage is not None:
                usage.connections -= 1
                usage.pending_fds -= session.pending_fds
                session.pending_fds = 0
                if usage.idle():
                    self.uids.pop(usage.uid, None)

    # ---- run-time reload ---------------------------------------------------------------------

    def reload(self, new: Config) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
        """Apply what can change while running; return (changed, needs a restart).

        Reloadable: log level, per-client limits, server timeouts and client cap, the page
        request timeout. Everything else is reported and left as it was.
        """
        old_flat, new_flat = _flatten(self.config.to_dict()), _flatten(new.to_dict())
        changed = {k: (old_flat.get(k), v) for k, v in new_flat.items() if old_flat.get(k) != v}
        restart = sorted(k for k in changed if not k.startswith(RELOADABLE))
        applied = {k: v for k, v in changed.items() if k.startswith(RELOADABLE)}
        if applied:
            merged = _unflatten({**old_flat, **{k: v[1] for k, v in applied.items()}})
            self.config = config_from_dict(merged)
            for session in self.sessions.values():
                session.event_limit = self.config.limits.event_queue
                session.event_bytes_limit = self.config.limits.event_queue_bytes
            for usage in self.uids.values():
                usage.event_bytes_limit = self.config.limits.uid_event_queue_bytes
        return applied, restart

    # ---- introspection ----------------------------------------------------------------------

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def counts(self) -> dict[str, int]:
        return {"clients": len(self.sessions), **self._model_counts()}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"daemon": dict(self.counters)}
        live = sum(s.events_dropped for s in self.sessions.values())
        out["daemon"]["events_dropped"] = self.counters["events_dropped"] + live
        out["iommu"] = self.iommu.stats()
        out["accel"] = self.accel_runtime.stats_dict()
        out["sva"] = self.sva.stats_dict()
        out["vfio_user"] = self.vfio_user.stats()
        out["daemon"].update(CLOSER.stats())
        out["daemon"]["fds_open"] = _open_fds()
        if self.fd_budget:
            out["daemon"]["fd_limit"] = self.fd_budget["soft"]
            out["daemon"]["fd_need"] = self.fd_budget["need"]
        return out

    def session_cost(self, session: Session) -> dict[str, int]:
        """What one session holds of what the limits bound (STATS ``session``)."""
        regions = self.memory.regions(session.id)
        mappings, mapped, tables = owner_usage(self.iommu, session.id)
        return {
            "memory_regions": len(regions),
            "memory_bytes": sum(r.size for r in regions),
            "mdevs": len(self.bus.list(session.id)),
            "domains": len(self.iommu.domains(session.id)),
            "pending_fds": session.pending_fds,
            "event_queue_bytes": session.event_bytes,
            "mappings": mappings,
            "mapped_bytes": mapped,
            "page_table_pages": tables,
            "blocked_descriptors": self.iommu.prq.blocked(session.id),
            "outstanding_descriptors": self.accel_runtime.outstanding(session.id),
        }

    def uid_cost(self, uid: int) -> dict[str, int]:
        """The same over every live connection of ``uid`` (STATS ``uid``)."""
        total: Counter[str] = Counter()
        for session in self.uid_sessions(uid):
            total.update(self.session_cost(session))
        total["connections"] = len(self.uid_sessions(uid))
        total["uid"] = uid
        return dict(total)

    def info_config(self) -> InfoConfig:
        """The settings INFO shows."""
        cfg = self.config
        return InfoConfig(
            auth=cfg.auth.mode,
            default_domain=cfg.iommu.default_domain,
            iotlb_entries=cfg.iommu.iotlb_entries,
            lazy_flush_ms=cfg.iommu.lazy_flush_ms,
            lazy_flush_threshold=cfg.iommu.lazy_flush_threshold,
            page_request_timeout_s=cfg.iommu.page_request_timeout_s,
            max_msg_size=cfg.protocol.max_msg_size,
            max_fds=cfg.protocol.max_fds,
        )


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def resolve_state_dir(config: Config) -> str:
    """``state.dir``, else systemd's ``$STATE_DIRECTORY``, else a per-user default."""
    if config.state.dir:
        return config.state.dir
    if (systemd_dir := state_directory()) is not None:
        return str(systemd_dir)
    if os.geteuid() == 0:
        return "/var/lib/siovd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "siovd")


def build_auth_policy(config: Config) -> AuthPolicy | None:
    if config.auth.mode == "none":
        return None
    try:
        return AuthPolicy.from_config(
            config.auth.mode,
            allowed_users=config.auth.allowed_users,
            allowed_groups=config.auth.allowed_groups,
            admin_users=config.auth.admin_users,
            admin_groups=config.auth.admin_groups,
            authorized_keys=config.auth.authorized_keys or None,
        )
    except (ValueError, OSError) as exc:
        raise ConfigError(f"auth: {exc}") from None


def load_accelerators(path: str, names: Sequence[str] = ("dsa0",)) -> Accelerators:
    """The configured devices, then the accel-config JSON file applied to them (json-c's
    relaxed syntax; enabled devices it lists are disabled first, as ``load-config -f``)."""
    try:
        accel = Accelerators([make_device(name) for name in names])
    except ValueError as exc:
        raise ConfigError(f"accel.devices: {exc}") from None
    if not path:
        return accel
    try:
        with open(path, "rb") as fh:
            data = jsonc.loads(fh.read())
        accel.load_config(data, enable=True, force=True)
    except (OSError, ValueError, RecursionError, SiovError) as exc:
        raise ConfigError(f"accel.config_file: {path}: {exc}") from None
    return accel


RELOADABLE = (
    "log.level",
    "limits.",
    "server.write_timeout_s",
    "server.handshake_timeout_s",
    "server.grace_period_s",
    "server.max_clients",
    "iommu.page_request_timeout_s",
    "iommu.ats_invalidation_timeout_s",
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "accel":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out
