"""Bodies of the core commands: VERSION, AUTH, PING, INFO, STATS.

Other areas keep their schemas in their own modules; every schema follows :mod:`.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .features import FEATURES
from .schema import U16, Record, items, text, u

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

PAGE_SIZES = (4096, 2 << 20, 1 << 30)


@dataclass(frozen=True, slots=True)
class Capabilities(Record):
    """What one side can take. The reply's values are the ones both sides then use."""

    max_msg_size: int = u(4096, 64 << 20, default=1 << 20)
    max_fds: int = u(0, 253, default=8)  # Linux passes at most 253 fds per message
    page_sizes: list[int] = items(8, default_factory=lambda: list(PAGE_SIZES))
    # absent: every feature; [] none (SPEC §6.1)
    features: list[str] = items(64, default_factory=lambda: list(FEATURES))


@dataclass(frozen=True, slots=True)
class VersionRequest:
    major: int = u(*U16)
    minor: int = u(*U16)
    capabilities: Capabilities = field(default_factory=Capabilities)
    client: str = text(256, default="")


@dataclass(frozen=True, slots=True)
class VersionReply(Record):
    major: int
    minor: int
    capabilities: Capabilities
    server: str
    auth: str  # "none", "peercred" or "key": what AUTH must prove next
    nonce: bytes | None = None  # key mode: the challenge to sign (fresh per connection)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Key mode: the signer's raw Ed25519 public key and its signature of the challenge."""

    public_key: bytes | None = text(32, default=None)
    signature: bytes | None = text(64, default=None)


@dataclass(frozen=True, slots=True)
class AuthReply(Record):
    identity: str
    role: str


@dataclass(frozen=True, slots=True)
class Empty(Record):
    """Commands that take no fields, and replies that carry none."""


#: the one empty body, what a handler with nothing to say returns
EMPTY = Empty()


@dataclass(frozen=True, slots=True)
class ListRequest:
    """List commands show the caller's own objects; ``all`` (admin role only) shows everyone's."""

    all: bool = False


@dataclass(frozen=True, slots=True)
class PingRequest:
    payload: bytes | None = text(65536, default=None)


@dataclass(frozen=True, slots=True)
class InfoConfig(Record):
    """The daemon's settings a client may want to know (INFO ``config``)."""

    auth: str
    default_domain: str
    iotlb_entries: int
    lazy_flush_ms: float
    lazy_flush_threshold: int
    page_request_timeout_s: float
    max_msg_size: int
    max_fds: int


@dataclass(frozen=True, slots=True)
class SessionIdentity(Record):
    """Who the asking connection is (INFO ``session``)."""

    id: int
    identity: str
    role: str


@dataclass(frozen=True, slots=True)
class InfoReply(Record):
    version: str
    uptime_s: float
    pid: int
    socket: str
    config: InfoConfig
    counts: dict[str, int]
    protocol: str
    session: SessionIdentity


@dataclass(frozen=True, slots=True)
class PingReply(Record):
    payload: bytes | None = text(65536, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsReply(Record):
    """Counter maps by area (their keys are counters, not fields: areas grow counters without
    a protocol change); areas a daemon does not run (no accelerator) are absent."""

    daemon: dict[str, float]  # counts, and a few worst times in ms
    iommu: dict[str, Any] | None = None
    accel: dict[str, Any] | None = None
    sva: dict[str, Any] | None = None
    vfio_user: dict[str, Any] | None = None
    session: dict[str, int]
    uid: dict[str, int] | None = None  # what all connections of the caller's uid hold (§9)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    message: str = text(4096, default="")
