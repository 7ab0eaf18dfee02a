"""The three things siovd needs from systemd, in plain Python (no libsystemd).

- socket activation: :func:`listen_fds` takes over the sockets systemd opened for us
  (sd_listen_fds(3));
- readiness and status: :class:`Notifier` sends ``READY=1``, ``STATUS=…``, ``STOPPING=1`` and
  watchdog pings to ``$NOTIFY_SOCKET`` (sd_notify(3));
- the watchdog: :func:`watchdog_interval` says how often to ping (sd_watchdog_enabled(3)).

All of it is synchronous and cheap; the trio server calls these helpers from its tasks. Outside
systemd every helper is a no-op, so the same daemon runs from a shell unchanged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import NamedTuple

import structlog

log = structlog.get_logger("siovd.systemd")

#: First passed fd (SD_LISTEN_FDS_START); the others follow in the .socket file's order.
LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The environment systemd gave us does not make sense; the daemon cannot start."""


class ListenFd(NamedTuple):
    fd: int
    name: str  # FileDescriptorName= of the socket unit, or "unknown" when systemd gave none


def _parse_int(environ: Mapping[str, str], var: str) -> int:
    value = environ[var]
    try:
        number = int(value, 10)
    except ValueError:
        raise ActivationError(f"${var}={value!r} is not a decimal number") from None
    if number < 0:
        raise ActivationError(f"${var}={value!r} is negative")
    return number


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[ListenFd]:
    """The sockets systemd passed to this process, as ``(fd, name)`` pairs from fd 3 on.

    Empty when the process was not socket-activated, or when the variables were meant for
    another process (``$LISTEN_PID`` is not ours: a parent that did not clean up). Each fd is
    made close-on-exec, and the three ``LISTEN_*`` variables are removed (whatever the outcome)
    so that a child we spawn does not mistake them for its own, as libsystemd does.

    Raises :class:`ActivationError` when the variables are malformed or name fds that are not
    open.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    try:
        return _listen_fds(env)
    finally:
        if unset_environment:
            for var in _LISTEN_VARS:
                env.pop(var, None)


def _listen_fds(env: Mapping[str, str]) -> list[ListenFd]:
    if "LISTEN_PID" not in env:
        return []
    if _parse_int(env, "LISTEN_PID") != os.getpid():
        return []
    count = _parse_int(env, "LISTEN_FDS") if "LISTEN_FDS" in env else 0
    if count == 0:
        return []
    names_var = env.get("LISTEN_FDNAMES")
    names = names_var.split(":") if names_var is not None else ["unknown"] * count
    if len(names) != count:
        raise ActivationError(
            f"$LISTEN_FDNAMES has {len(names)} names for $LISTEN_FDS={count} descriptors"
        )
    result = []
    for fd, name in zip(range(LISTEN_FDS_START, LISTEN_FDS_START + count), names, strict=True):
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise ActivationError(f"passed fd {fd} ({name}) is not open: {exc.strerror}") from None
        result.append(ListenFd(fd, name))
    return result


def stream_listener(fd: int) -> socket.socket:
    """Adopt a passed fd as a listening ``AF_UNIX`` stream socket, or refuse it.

    Checks the socket's kind rather than its path (the path can be a symlink, or the unit can
    change it), as sd_is_socket_unix(3) recommends. The socket object owns ``fd`` afterwards.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"passed fd {fd} is not a socket: {exc.strerror}") from None
    if (
        sock.family != socket.AF_UNIX
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        kind = f"{sock.family.name}/{sock.type.name}"
        sock.detach()  # not ours to close: the caller may report it and exit
        raise ActivationError(
            f"passed fd {fd} is a {kind} socket; siovd needs a listening AF_UNIX stream socket"
            " (ListenStream= with a path in the .socket unit)"
        )
    return sock


def state_directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """The first path of ``$STATE_DIRECTORY`` (set by ``StateDirectory=``), if any."""
    env = os.environ if environ is None else environ
    value = env.get("STATE_DIRECTORY", "")
    first = value.split(":", 1)[0]
    return Path(first) if first else None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings, or None when no watchdog watches us.

    That is half of ``$WATCHDOG_USEC``, the margin sd_watchdog_enabled(3) recommends. Like
    ``$LISTEN_PID``, a ``$WATCHDOG_PID`` naming another process means the watchdog is not ours.
    """
    env = os.environ if environ is None else environ
    if "WATCHDOG_USEC" not in env:
        return None
    if "WATCHDOG_PID" in env and _parse_int(env, "WATCHDOG_PID") != os.getpid():
        return None
    usec = _parse_int(env, "WATCHDOG_USEC")
    if usec == 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends state changes to the service manager over ``$NOTIFY_SOCKET``.

    A datagram per call, ``KEY=VALUE`` lines. Failures are logged and otherwise ignored: the
    service manager's view of us must never take the daemon down. With no notify socket (not
    started by systemd, or not ``Type=notify``) every method does nothing and returns False.
    """

    def __init__(self, address: str | None, *, timeout: float = 1.0) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._timeout = timeout
        if not address:
            return
        if address.startswith("/"):
            self._address = address
        elif address.startswith("@"):
            self._address = "\0" + address[1:]  # Linux abstract namespace
        else:
            # e.g. vsock:CID:PORT, for a service manager outside a VM
            log.warning("notify socket not supported", notify_socket=address)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when it was sent."""
        if self._address is None or not assignments:
            return False
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a single KEY=VALUE assignment: {item!r}")
        data = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(self._timeout)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            log.warning(
                "sd_notify failed",
                notify_socket=self._address.replace("\0", "@"),
                message=data.decode(),
                error=exc.strerror or str(exc),
            )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete: the socket is listening and requests will be served."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        """A one-line, human-readable status for ``systemctl status``."""
        return self.notify(_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (the listener is closed, connections are draining)."""
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", _status_line(status))

    def watchdog(self) -> bool:
        """Tell the watchdog the event loop is alive; call every :func:`watchdog_interval`."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _status_line(text: str) -> str:
    # STATUS= is a single line; a newline would start a new (bogus) assignment.
    return "STATUS=" + " ".join(text.splitlines())
