"""Errors of the protocol layer.

Two kinds, as in h11: a :class:`ProtocolError` breaks the framing and ends the connection; a
:class:`FieldError` is about one message's body and costs only an error reply.
"""

from __future__ import annotations

import errno as _errno


class SiovProtocolError(Exception):
    """Base class: every error this package raises carries an errno and a message."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"[{name}] {self.message}"


class ProtocolError(SiovProtocolError):
    """The stream can no longer be framed (bad header); the connection must close.

    ``msg_id`` is the id of the offending header when it could be read, so the peer can be
    told why before the close.
    """

    def __init__(self, errno: int, message: str, msg_id: int | None = None) -> None:
        super().__init__(errno, message)
        self.msg_id = msg_id


class FieldError(SiovProtocolError):
    """One field of one message body is missing, of the wrong type or out of range."""

    def __init__(self, errno: int, field: str, message: str) -> None:
        super().__init__(errno, f"{field}: {message}" if field else message)
        self.field = field
