"""The daemon's state: config, sessions and the domain model, with no trio in sight.

The server owns one :class:`Daemon`; handlers reach the model through it. Disconnects end in
:meth:`Daemon.release`, which frees every object the session owned.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from siov_protocol import jsonc
from siov_protocol.auth import Role
from siov_protocol.messages_iommu import DeviceRemovedEvent, FaultEvent
from siov_protocol.replies import event_message
from siovd import __version__
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
from siovd.model.memory import PhysicalMemory, Region
from siovd.model.owner import HOST
from siovd.model.testparent import SiovTestParent
from siovd.service.accel_runtime import AccelRuntime
from siovd.service.session import Session
from siovd.service.sva import SvaRuntime

Authenticator = Callable[[Session, bytes | None, bytes | None], tuple[str, Role]]


class Daemon:
    def __init__(
        self, config: Config, socket_path: str = "", *, state_dir: str | None = None
    ) -> None:
        self.config = config
        self.socket_path = socket_path
        self.started = time.monotonic()
        self.sessions: dict[int, Session] = {}
        self.counters: Counter[str] = Counter()
        self._releasers: list[Callable[[Session], None]] = []
        self._stats: list[Callable[[], dict[str, Any]]] = []
        self._counts: list[Callable[[], dict[str, int]]] = []
        self.authenticator: Authenticator | None = None

        # The domain model: one physical space, one IOMMU serving the mdev bus, the parents.
        self.memory = PhysicalMemory()
        self.iommu = Iommu(
            self.memory,
            iotlb_entries=config.iommu.iotlb_entries,
            default_domain=config.iommu.default_domain,
            lazy_flush_threshold=config.iommu.lazy_flush_threshold,
        )
        self.iommu.on_fault = self._deliver_fault
        self.bus = Bus(self.iommu, name="mdev")
        self.bus.on_device_removed = self._device_removed
        self.bus.add_parent(SiovTestParent())
        self.accel = load_accelerators(config.accel.config_file, config.accel.devices)
        self.mappings: dict[int, tuple[Region, mmap.mmap]] = {}  # region id -> our mmap
        self.dsa_parents: dict[str, DsaParent] = {}
        for name, device in self.accel.devices.items():
            if device.kind != "dsa":
                continue  # configured and listed only: siov runs no IAA operations
            parent = DsaParent(device)
            self.dsa_parents[name] = parent
            self.bus.add_parent(parent)
        self.on_release(self._release_model)
        self.auth_policy = build_auth_policy(config)
        if self.auth_policy is not None:
            self.authenticator = self._authenticate
        # Persistent definitions: opened last, so a failure above leaves no lock behind.
        self.state_dir = state_dir if state_dir is not None else resolve_state_dir(config)
        self.definitions = DefinitionStore(self.state_dir) if self.state_dir else None
        self.autostart_errors = self._autostart()
        self.on_stats(lambda: {"iommu": self.iommu.stats()})
        self.on_counts(self._model_counts)
        # Registered after the model: on release it cancels the session's waiting work first.
        self.accel_runtime = AccelRuntime(self)
        # SVA bindings and char-device opens: after the runtime, so they are released first.
        self.sva = SvaRuntime(self)

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
        session.push_event(*event_message(event))

    def _device_removed(self, device: Any) -> None:
        session = self.sessions.get(device.owner)
        if session is not None:
            session.push_event(
                *event_message(DeviceRemovedEvent(uuid=device.uuid, reason="removed"))
            )

    def _release_model(self, session: Session) -> None:
        self.iommu.flush_lazy()  # lazily unmapped pages still pin their regions
        self.bus.release_owner(session.id)
        self.close_dead_mappings()

    def close_dead_mappings(self) -> None:
        """Unmap the memory of regions that left the physical space."""
        for region_id, (region, mapping) in list(self.mappings.items()):
            if not region.alive:
                del self.mappings[region_id]
                mapping.close()

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
        """Run ``fn`` when a session ends (areas free what the session owned)."""
        self._releasers.append(fn)

    def on_stats(self, fn: Callable[[], dict[str, Any]]) -> None:
        self._stats.append(fn)

    def on_counts(self, fn: Callable[[], dict[str, int]]) -> None:
        self._counts.append(fn)

    # ---- sessions ---------------------------------------------------------------------------

    def open_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.counters["clients_connected"] += 1

    def release(self, session: Session) -> None:
        """Free everything ``session`` owned, newest area first."""
        self.sessions.pop(session.id, None)
        self.counters["events_dropped"] += session.events_dropped  # stats outlive the session
        for fn in reversed(self._releasers):
            fn(session)
        for ev in session.events:
            for fd in ev.fds:
                os.close(fd)
        session.events.clear()

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
        return applied, restart

    # ---- introspection ----------------------------------------------------------------------

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def counts(self) -> dict[str, int]:
        out = {"clients": len(self.sessions)}
        for fn in self._counts:
            out.update(fn())
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"daemon": dict(self.counters)}
        live = sum(s.events_dropped for s in self.sessions.values())
        out["daemon"]["events_dropped"] = self.counters["events_dropped"] + live
        for fn in self._stats:
            out.update(fn())
        return out

    def info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "version": __version__,
            "uptime_s": round(self.uptime(), 3),
            "pid": os.getpid(),
            "socket": self.socket_path,
            "config": {
                "auth": cfg.auth.mode,
                "default_domain": cfg.iommu.default_domain,
                "iotlb_entries": cfg.iommu.iotlb_entries,
                "lazy_flush_ms": cfg.iommu.lazy_flush_ms,
                "lazy_flush_threshold": cfg.iommu.lazy_flush_threshold,
                "page_request_timeout_s": cfg.iommu.page_request_timeout_s,
                "max_msg_size": cfg.protocol.max_msg_size,
                "max_fds": cfg.protocol.max_fds,
            },
            "counts": self.counts(),
        }


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
