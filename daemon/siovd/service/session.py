"""A session: who one connected client is, what it negotiated, what the daemon owes it.

Plain Python, no trio: the server gives it a ``wake`` callback to run when an event is queued.
The session id is the ``owner`` the domain model records on every object the client creates.
Where the connection is in its handshake and which limits it negotiated belong to the
protocol's state machine (:class:`siov_protocol.ConnectionState`), which the session holds as
:attr:`Session.protocol`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from siov_protocol import ConnectionState, Side
from siov_protocol.auth import Role
from siov_protocol.connection import encode_body
from siov_protocol.features import FEATURES, event_allowed
from siov_protocol.header import HEADER_SIZE
from siov_protocol.messages import PAGE_SIZES
from siovd.model.errors import SiovError

_ids = itertools.count(1)


@dataclass(slots=True)
class QueuedEvent:
    command: int
    body: dict[str, Any]
    fds: tuple[int, ...] = ()
    size: int = 0  # bytes on the wire


#: The uid of a connection whose peer credentials could not be read.
UNKNOWN_UID = -1


@dataclass(eq=False, slots=True)
class UidUsage:
    """What all live connections of one uid hold at once (the per-uid limits' ledger)."""

    uid: int
    connections: int = 0
    pending_fds: int = 0  # fds of messages whose bytes are still arriving
    event_bytes: int = 0  # undelivered events, as encoded
    event_bytes_limit: int = 64 << 20

    def idle(self) -> bool:
        return not (self.connections or self.pending_fds or self.event_bytes)


@dataclass(eq=False)
class Session:
    peer: tuple[int, int, int] | None = None  # SO_PEERCRED pid, uid, gid
    event_limit: int = 4096
    id: int = field(default_factory=lambda: next(_ids))
    protocol: ConnectionState = field(default_factory=lambda: ConnectionState(Side.SERVER))
    role: Role = Role.USER
    identity: str = ""
    client_name: str = ""
    nonce: bytes | None = None
    features: frozenset[str] = frozenset(FEATURES)  # what VERSION agreed (SPEC §6.1)
    page_sizes: tuple[int, ...] = PAGE_SIZES  # the leaf sizes MAP may use (SPEC §6.1)
    events_suppressed: int = 0  # events of a feature not agreed: never queued
    events: deque[QueuedEvent] = field(default_factory=deque)
    events_sent: int = 0
    events_dropped: int = 0
    requests: int = 0
    event_bytes: int = 0  # bytes of the undelivered events in ``events``
    event_bytes_limit: int = 16 << 20
    events_dropped_bytes: int = 0  # drops because of a byte limit (counted in events_dropped)
    pending_fds: int = 0  # fds of messages whose bytes are still arriving
    usage: UidUsage | None = field(default=None, repr=False)
    wake: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def uid(self) -> int:
        return self.peer[1] if self.peer is not None else UNKNOWN_UID

    @property
    def max_msg_size(self) -> int:
        """The negotiated size no message to this client may exceed."""
        return self.protocol.limits.max_msg_size

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def owner_filter(self) -> int | None:
        """What lookups of the model take: None (everything) for an admin."""
        return None if self.is_admin else self.id

    def list_filter(self, everything: bool) -> int | None:
        """What list methods take: the caller's own objects unless an admin asks for all."""
        if everything and not self.is_admin:
            raise SiovError(errno.EPERM, "listing every client's objects needs the admin role")
        return None if everything else self.id

    def push_event(self, command: int, body: dict[str, Any], fds: tuple[int, ...] = ()) -> bool:
        """Queue an event for the client; a full queue drops it and counts the drop.

        The session owns ``fds`` from here on: a dropped event's fds are closed at once. An
        event of a feature the client did not negotiate is not queued either (and not counted
        as dropped: the client asked not to get it).
        """
        if not event_allowed(command, self.features):
            self.events_suppressed += 1
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return False
        size = HEADER_SIZE + len(encode_body(body))
        usage = self.usage
        over_bytes = self.event_bytes + size > self.event_bytes_limit or (
            usage is not None and usage.event_bytes + size > usage.event_bytes_limit
        )
        if len(self.events) >= self.event_limit or over_bytes:
            self.events_dropped += 1
            self.events_dropped_bytes += over_bytes
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return False
        self.events.append(QueuedEvent(command, body, fds, size))
        self.event_bytes += size
        if usage is not None:
            usage.event_bytes += size
        self.wake()
        return True

    def pop_event(self) -> QueuedEvent:
        """The oldest undelivered event, taken off the queue (and off the byte counts)."""
        ev = self.events.popleft()
        self.event_bytes -= ev.size
        if self.usage is not None:
            self.usage.event_bytes -= ev.size
        return ev

    def clear_events(self) -> list[QueuedEvent]:
        """Every undelivered event, taken off the queue; the caller closes their fds."""
        out = list(self.events)
        self.events.clear()
        if self.usage is not None:
            self.usage.event_bytes -= self.event_bytes
        self.event_bytes = 0
        return out
