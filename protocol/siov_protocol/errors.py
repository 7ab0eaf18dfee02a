"""Errors: one base for every layer, and the protocol's two kinds.

:class:`SiovError` is the one exception siov raises for a refusal with an errno: the protocol
raises it (as the two kinds below), the daemon's model raises it when a rule says no, and the
SDK raises it (as a typed subclass) for an error reply. Its ``message`` is written for the
peer: it names the object and the rule.

As in h11, the protocol's own errors come in two kinds: a :class:`ProtocolError` means the
stream can no longer be used (a bad header, a message the state machine forbids) and the
connection must close; a :class:`FieldError` is about one message's body and costs only an
error reply. A ProtocolError is a :class:`LocalProtocolError` when this side was about to break
a rule and a :class:`RemoteProtocolError` when the peer did.
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class SiovError(Exception):
    """An errno and a human message; ``command`` is the command it answers, when known.

    ``detail`` holds the structured fields an error reply may carry beside its message
    (SPEC §5: ``fault`` for an EFAULT of DMA_READ, DMA_WRITE or TRANSLATE).
    """

    def __init__(
        self,
        errno: int,
        message: str,
        command: int | None = None,
        *,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message
        self.command = command
        self.detail = detail

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"[{name}] {self.message}"


class ProtocolError(SiovError):
    """The stream can no longer be used; the connection must close.

    ``msg_id`` is the id of the offending header when it could be read, so the peer can be
    told why before the close.
    """

    def __init__(self, errno: int, message: str, msg_id: int | None = None) -> None:
        super().__init__(errno, message)
        self.msg_id = msg_id


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: what it sent cannot be framed or is not allowed now."""


class LocalProtocolError(ProtocolError):
    """This side was about to break the protocol (a bug in the caller, not in the peer)."""


class FieldError(SiovError):
    """One field of one message body is missing, of the wrong type or out of range."""

    def __init__(self, errno: int, field: str, message: str) -> None:
        super().__init__(errno, f"{field}: {message}" if field else message)
        self.field = field
