"""Typed exceptions for error replies: each carries the errno and the daemon's message.

They all derive from :class:`siov_protocol.errors.SiovError` (re-exported here as
``siov.SiovError``), the same base the protocol's own errors use, so one ``except SiovError``
catches an error reply, a malformed reply and a refused local encode alike.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

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


class DescriptorsDropped(UserWarning):
    """A dedicated WQ dropped descriptors past its size (MOVDIR64B gives no answer on
    hardware, so nothing else tells): warned by :meth:`Mdev.submit`; counted per WQ in
    ``stats()`` and ``accel_list()`` (``dropped``)."""


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


class DmaFault(SiovError):
    """EFAULT from DMA_READ / DMA_WRITE: the translation failed at ``iova``.

    ``done`` is how many bytes were read or written before the fault (a DMA_WRITE's first
    ``done`` bytes are in memory), ``reason`` the VT-d fault reason and ``reason_name`` its
    name, ``write`` whether the access was a write, ``pasid`` the PASID used.
    """

    def __init__(
        self,
        errno: int,
        message: str,
        command: int | None = None,
        *,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(errno, message, command, detail=detail)
        fault = (detail or {}).get("fault") or {}
        self.iova: int | None = fault.get("iova")
        self.done: int = int(fault.get("done", 0))
        self.reason: int | None = fault.get("reason")
        self.reason_name: str = str(fault.get("reason_name", ""))
        self.write: bool = bool(fault.get("write", False))
        self.pasid: int | None = fault.get("pasid")


class RecordNotWritten(SiovError):
    """The device could not write a descriptor's completion record (a software error: the
    record's address is misaligned or does not translate with the submitting PASID), so waiting
    for it would wait forever. ``swerr`` is the software error as EVENT_IRQ reported it."""

    def __init__(self, message: str, swerr: dict[str, Any]) -> None:
        super().__init__(_errno.EFAULT, message)
        self.swerr = swerr
        self.status: int = int(swerr.get("status", 0))


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


def error_for(
    errno: int,
    message: str,
    command: int | None = None,
    detail: dict[str, Any] | None = None,
) -> SiovError:
    """The most specific exception class for ``errno`` (and the error body's ``detail``)."""
    if errno == _errno.EFAULT and detail and "fault" in detail:
        return DmaFault(errno, message, command, detail=detail)
    return _BY_ERRNO.get(errno, SiovError)(errno, message, command, detail=detail)


__all__ = [
    "AlreadyExists",
    "Busy",
    "ConnectionClosed",
    "DescriptorsDropped",
    "DmaFault",
    "InvalidArgument",
    "NoSpace",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "ProtocolViolation",
    "RecordNotWritten",
    "SiovError",
    "TryAgain",
    "error_for",
]
