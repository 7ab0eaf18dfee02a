"""Typed exceptions for error replies: each carries the errno and the daemon's message.

They all derive from :class:`siov_protocol.errors.SiovError` (re-exported here as
``siov.SiovError``), the same base the protocol's own errors use, so one ``except SiovError``
catches an error reply, a malformed reply and a refused local encode alike.
"""

from __future__ import annotations

import errno as _errno

from siov_protocol.errors import SiovError


class InvalidArgument(SiovError):
    """EINVAL / ERANGE: a field was missing, mistyped or out of range."""


class NotFound(SiovError):
    """ENOENT: no such object, or not one of yours (the daemon does not say which)."""


class AlreadyExists(SiovError):
    """EEXIST."""


class Busy(SiovError):
    """EBUSY: the object is in use (attached, mapped, ...)."""


class NoSpace(SiovError):
    """ENOSPC: a limit or pool is exhausted."""


class TryAgain(SiovError):
    """EAGAIN: retry later (a shared WQ that is full answers this way)."""


class PermissionDenied(SiovError):
    """EACCES / EPERM: not authenticated, or not allowed for this role."""


class NotSupported(SiovError):
    """ENOSYS / ENOTSUP / EOPNOTSUPP."""


class ProtocolViolation(SiovError):
    """EPROTO / EMSGSIZE: the exchange broke a protocol rule."""


class ConnectionClosed(SiovError):
    """The daemon closed the connection, or is not there."""

    def __init__(self, message: str) -> None:
        super().__init__(_errno.ENOTCONN, message)


_BY_ERRNO: dict[int, type[SiovError]] = {
    _errno.EINVAL: InvalidArgument,
    _errno.ERANGE: InvalidArgument,
    _errno.ENOENT: NotFound,
    _errno.EEXIST: AlreadyExists,
    _errno.EBUSY: Busy,
    _errno.ENOSPC: NoSpace,
    _errno.EAGAIN: TryAgain,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
    _errno.ENOSYS: NotSupported,
    _errno.ENOTSUP: NotSupported,
    _errno.EPROTO: ProtocolViolation,
    _errno.EMSGSIZE: ProtocolViolation,
}


def error_for(errno: int, message: str, command: int | None = None) -> SiovError:
    """The most specific exception class for ``errno``."""
    return _BY_ERRNO.get(errno, SiovError)(errno, message, command)


__all__ = [
    "AlreadyExists",
    "Busy",
    "ConnectionClosed",
    "InvalidArgument",
    "NoSpace",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "ProtocolViolation",
    "SiovError",
    "TryAgain",
    "error_for",
]
