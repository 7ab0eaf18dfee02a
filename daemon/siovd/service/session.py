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
from siov_protocol.features import FEATURES, event_allowed
from siov_protocol.messages import PAGE_SIZES
from siovd.model.errors import SiovError

_ids = itertools.count(1)


@dataclass(slots=True)
class QueuedEvent:
    command: int
    body: dict[str, Any]
    fds: tuple[int, ...] = ()


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
    wake: Callable[[], None] = field(default=lambda: None, repr=False)

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
        allowed = event_allowed(command, self.features)
        if not allowed or len(self.events) >= self.event_limit:
            if allowed:
                self.events_dropped += 1
            else:
                self.events_suppressed += 1
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return False
        self.events.append(QueuedEvent(command, body, fds))
        self.wake()
        return True
