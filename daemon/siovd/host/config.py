"""Configuration: TOML, every key defaulted, validated at start.

The file is decoded with the protocol's own schema checker, so a wrong key or type is reported
with its dotted path (``server.socket_mode: expected an integer, got str``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siov_protocol.errors import FieldError
from siov_protocol.schema import decode, encode, items, text, u


class ConfigError(Exception):
    """A config file that cannot be used; the daemon exits with status 2."""


def default_socket_path() -> str:
    """``/run/siovd/siovd.sock`` for root, ``$XDG_RUNTIME_DIR/siovd.sock`` for a user."""
    if os.geteuid() == 0:
        return "/run/siovd/siovd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/siovd-{os.getuid()}"
    return str(Path(runtime) / "siovd.sock")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    socket: str = text(4096, default="")  # empty: default_socket_path()
    socket_mode: int = u(0, 0o777, default=0o660)
    grace_period_s: float = 5.0
    write_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0  # VERSION (and AUTH) must be done by then
    max_clients: int = u(1, 65536, default=1024)
    #: How long one connection may run before the others get the loop: its requests, and
    #: each step of a long one (MAP, UNMAP, DIRTY_BITMAP), are cut into turns this long.
    turn_ms: float = 2.0


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    max_msg_size: int = u(4096, 64 << 20, default=1 << 20)
    max_fds: int = u(0, 253, default=8)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = text(16, default="info")
    format: str = text(16, default="auto")  # auto | json | console


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-client ceilings; hitting one is ENOSPC with a message naming the limit."""

    event_queue: int = u(1, 1 << 20, default=4096)
    memory_regions: int = u(1, 1 << 20, default=256)
    #: Bytes of memory one client may register: each region is a mapping in the daemon's
    #: address space, and a sparse memfd can claim terabytes of it for nothing.
    memory_bytes: int = u(4096, 1 << 46, default=64 << 30)
    mdevs: int = u(1, 1 << 20, default=64)
    domains: int = u(1, 1 << 20, default=256)
    mapped_bytes: int = u(0, 1 << 48, default=64 << 30)
    mappings: int = u(1, 1 << 24, default=65536)  # MAP calls alive at once, over all domains
    outstanding_descriptors: int = u(1, 1 << 24, default=65536)
    #: Descriptors of one client waiting for page responses at once (each holds its progress
    #: and a waiting task, a few KiB): past it SUBMIT is ENOSPC and a descriptor that would
    #: block completes as if answered Invalid Request.
    blocked_descriptors: int = u(1, 1 << 20, default=1024)
    #: 4 KiB page-table pages the daemon allocates for one client's domains (256 MiB).
    page_table_pages: int = u(1, 1 << 24, default=65536)
    #: Accepted so that older config files still load, and has no effect: no handler waits
    #: (work that takes time is queued to the engines and answered with events), so nothing
    #: is ever in flight past the reply.
    requests_in_flight: int = u(1, 1 << 20, default=4096)
    #: Fds of one connection's messages whose bytes have not all arrived; at least
    #: protocol.max_fds, so one whole message always fits.
    pending_fds: int = u(1, 4096, default=32)
    #: Bytes of one connection's undelivered events, as they go on the wire.
    event_queue_bytes: int = u(4096, 1 << 32, default=16 << 20)
    #: The same ceilings over all connections of one uid (SO_PEERCRED), so one user cannot
    #: take what the others need by opening more connections.
    uid_connections: int = u(1, 65536, default=64)
    uid_pending_fds: int = u(1, 1 << 20, default=256)
    uid_event_queue_bytes: int = u(4096, 1 << 36, default=64 << 20)
    uid_mdevs: int = u(1, 1 << 20, default=128)
    uid_memory_regions: int = u(1, 1 << 24, default=1024)
    uid_memory_bytes: int = u(4096, 1 << 48, default=256 << 30)


@dataclass(frozen=True, slots=True)
class IommuConfig:
    default_domain: str = text(16, default="paging")  # paging | identity | blocked
    iotlb_entries: int = u(16, 1 << 24, default=8192)
    lazy_flush_threshold: int = u(1, 1 << 20, default=250)
    lazy_flush_ms: float = 10.0
    page_request_timeout_s: float = 5.0
    ats_invalidation_timeout_s: float = 1.0  # a device's answer to a device-TLB invalidation


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: str = text(16, default="none")  # none | peercred | key
    allowed_users: list[str] = items(1024, default_factory=list)
    allowed_groups: list[str] = items(1024, default_factory=list)
    admin_users: list[str] = items(1024, default_factory=list)
    admin_groups: list[str] = items(1024, default_factory=list)
    authorized_keys: str = text(4096, default="")


@dataclass(frozen=True, slots=True)
class StateConfig:
    dir: str = text(4096, default="")  # empty: $STATE_DIRECTORY or a per-user default


@dataclass(frozen=True, slots=True)
class AccelConfig:
    #: An accel-config JSON file (``save-config`` output) to load at start; empty: the embedded
    #: default, one device dsa0 with one dedicated and one shared WQ, both enabled.
    config_file: str = text(4096, default="")
    #: The devices, by accel-config name: ``dsaN`` starts as the embedded default (enabled,
    #: one dedicated and one shared WQ); ``iaxN`` starts disabled and unconfigured (siov runs no
    #: IAA operations: an iax device is configured and listed, but is no mdev parent).
    devices: list[str] = items(16, default_factory=lambda: ["dsa0"])


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    iommu: IommuConfig = field(default_factory=IommuConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    state: StateConfig = field(default_factory=StateConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def to_dict(self) -> dict[str, Any]:
        return encode(self)


_CHOICES = {
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("log", "format"): ("auto", "json", "console"),
    ("iommu", "default_domain"): ("paging", "identity", "blocked"),
    ("auth", "mode"): ("none", "peercred", "key"),
}


def _validate(cfg: Config) -> None:
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    for name in ("grace_period_s", "write_timeout_s", "handshake_timeout_s", "turn_ms"):
        if getattr(cfg.server, name) <= 0:
            raise ConfigError(f"server.{name}: must be positive")
    if cfg.limits.pending_fds < cfg.protocol.max_fds:
        raise ConfigError(
            f"limits.pending_fds: {cfg.limits.pending_fds} is below protocol.max_fds "
            f"{cfg.protocol.max_fds} (one whole message must fit)"
        )
    if cfg.limits.uid_pending_fds < cfg.limits.pending_fds:
        raise ConfigError("limits.uid_pending_fds: must be at least limits.pending_fds")
    if cfg.auth.mode == "key" and not cfg.auth.authorized_keys:
        raise ConfigError("auth.authorized_keys: required when auth.mode is 'key'")


def from_dict(data: dict[str, Any]) -> Config:
    try:
        cfg = decode(Config, data)
    except FieldError as exc:
        raise ConfigError(str(exc.message)) from None
    _validate(cfg)
    return cfg


def load(path: str | None) -> Config:
    """The config in ``path``, or the embedded defaults when ``path`` is None."""
    if path is None:
        return from_dict({})
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(data)


def with_overrides(cfg: Config, **changes: Any) -> Config:
    """A copy with ``section__key=value`` overrides (command-line options)."""
    for name, value in changes.items():
        if value is None:
            continue
        section, key = name.split("__")
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: value})}
        )
    _validate(cfg)
    return cfg
