"""The connection state machine: everything that decides what may cross a connection now.

In the spirit of h11's ``_state.py``, every rule that depends on where a connection is in its
life lives in this one module, and both ends run the same code: the daemon's server and the
SDK each hold a :class:`ConnectionState` (inside their :class:`~siov_protocol.Connection`).

Phases, and what moves a connection from one to the next::

    AWAIT_VERSION ── VERSION reply (auth "none") ───────────────────┐
          │                                                         ▼
          └──── VERSION reply (auth "peercred"/"key") ─► AWAIT_AUTH ─► AUTH reply ─► READY
    any phase ── a broken frame, end of stream ─► CLOSED

A transition happens on a *successful reply*, the one message both ends see: the daemon moves
when it sends the reply, the client when it receives it. A failed VERSION or AUTH (an error
reply) leaves the phase as it was, so the client may try again.

Which commands each phase allows (:func:`allowed_from`): VERSION only while awaiting it, AUTH
only while awaiting it, every other command once READY. A command too early is refused with
``EPROTO`` (before VERSION) or ``EACCES`` (before AUTH); VERSION or AUTH a second time with
``EINVAL``. The daemon answers such a command with an error reply and the connection goes on;
the SDK refuses to send it at all (:class:`LocalProtocolError`).

Limits: until VERSION both ends use :data:`DEFAULT_LIMITS`; the VERSION reply's capabilities
are the limits from then on, applied both ways: no message either end sends is larger than
``max_msg_size`` or carries more than ``max_fds`` fds (the daemon answers an oversized reply
with ``EMSGSIZE`` instead; a request with too many fds gets ``EINVAL``). The daemon keeps
reading requests up to its configured ``protocol.max_msg_size`` whatever was negotiated.

Errors: a :class:`RemoteProtocolError` (the peer broke the framing) latches: the state becomes
CLOSED and every later use raises the same error again. A :class:`LocalProtocolError` means
this end was about to break a rule; nothing was sent, so the state is unchanged.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import Any

from .commands import Command, is_event
from .errors import FieldError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .messages import VersionReply
from .schema import decode

DEFAULT_MAX_MSG_SIZE = 1 << 20
DEFAULT_MAX_FDS = 8


class Side(enum.Enum):
    """Which end of a connection this is (not to be confused with a client's auth Role)."""

    CLIENT = "client"
    SERVER = "server"


class Phase(enum.IntEnum):
    """Where a connection is in its life; each command is allowed from one phase on."""

    AWAIT_VERSION = 0
    AWAIT_AUTH = 1
    READY = 2
    CLOSED = 3


#: The handshake commands and the one phase each belongs to.
HANDSHAKE: dict[int, Phase] = {Command.VERSION: Phase.AWAIT_VERSION, Command.AUTH: Phase.AWAIT_AUTH}


def allowed_from(command: int) -> Phase:
    """The phase from which ``command`` may run (READY for everything but the handshake)."""
    return HANDSHAKE.get(command, Phase.READY)


def command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command:#x}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What both ends agreed a message may be: whole size in bytes, and fds it carries."""

    max_msg_size: int = DEFAULT_MAX_MSG_SIZE
    max_fds: int = DEFAULT_MAX_FDS


DEFAULT_LIMITS = Limits()


class ConnectionState:
    """The phase, the negotiated limits and the error latch of one end of a connection."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.phase = Phase.AWAIT_VERSION
        self.limits = DEFAULT_LIMITS
        self.auth = ""  # what AUTH must prove, from the VERSION reply ("" before it)
        self.error: ProtocolError | None = None

    @property
    def ready(self) -> bool:
        """VERSION (and AUTH, when asked for) are done: every command may run."""
        return self.phase is Phase.READY

    # ---- the error latch --------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise the latched error, if the connection broke."""
        if self.error is not None:
            raise self.error

    def remote_error(self, err: int, message: str, msg_id: int | None = None) -> None:
        """The peer broke the protocol: latch it and raise it."""
        exc = RemoteProtocolError(err, message, msg_id)
        self.error = exc
        self.phase = Phase.CLOSED
        raise exc

    def close(self) -> None:
        """The stream ended: nothing more may be sent or received."""
        self.phase = Phase.CLOSED

    # ---- which commands a phase allows ------------------------------------------------------

    def refusal(self, command: int, n_fds: int = 0) -> tuple[int, str] | None:
        """Why ``command`` may not run now, judged before its body is decoded, or None.

        Too early for its phase, or more fds than negotiated. (Running VERSION or AUTH a
        second time is :meth:`repeat_refusal`'s, judged after the body decoded.)
        """
        wanted = HANDSHAKE.get(command, Phase.READY)  # allowed_from, inline: every message
        if self.phase < wanted:
            name = command_name(command)
            if self.phase is Phase.AWAIT_VERSION:
                return errno.EPROTO, f"{name} before VERSION: negotiate the version first"
            return errno.EACCES, f"{name} before AUTH: authenticate first"
        if n_fds > self.limits.max_fds:
            return (
                errno.EINVAL,
                f"{n_fds} fds exceed the negotiated max_fds {self.limits.max_fds}",
            )
        return None

    def repeat_refusal(self, command: int) -> tuple[int, str] | None:
        """VERSION and AUTH run once: why this one comes too late, or None."""
        wanted = HANDSHAKE.get(command)
        if wanted is None or self.phase <= wanted:
            return None
        if command == Command.VERSION:
            return errno.EINVAL, "VERSION was already negotiated on this connection"
        return errno.EINVAL, "this connection is already authenticated"

    # ---- what this end may send -------------------------------------------------------------

    def check_send_command(self, command: int, size: int, n_fds: int) -> None:
        """A command (or, from the daemon, an event) this end is about to send."""
        if (
            self.phase is Phase.READY
            and not n_fds
            and self.side is Side.CLIENT
            and command not in HANDSHAKE
        ):
            # READY has no latched error (a latch makes it CLOSED) and admits every command
            # but the handshake's; without fds only the size rule is left to judge.
            self.check_size(size)
            return
        self.check_open()
        if self.phase is Phase.CLOSED:
            raise LocalProtocolError(errno.ENOTCONN, "the connection is closed")
        if self.side is Side.SERVER:
            if not is_event(command):
                raise LocalProtocolError(
                    errno.EPROTO, f"{command_name(command)}: the daemon sends only events"
                )
        else:  # a number the daemon does not serve is its to answer (ENOSYS)
            why = self.refusal(command, n_fds) or self.repeat_refusal(command)
            if why is not None:
                raise LocalProtocolError(*why)
        self.check_size(size)

    def check_size(self, size: int) -> None:
        """The negotiated ``max_msg_size`` bounds every message this end sends."""
        limit = self.limits.max_msg_size
        if size > limit:
            raise LocalProtocolError(
                errno.EMSGSIZE,
                f"the message ({size} bytes) exceeds the negotiated max_msg_size {limit}",
            )

    def check_send_reply(self, size: int) -> None:
        """A reply this end (the daemon) is about to send: the reply-size rule (SPEC §6)."""
        self.check_open()
        limit = self.limits.max_msg_size
        if size > limit:
            raise LocalProtocolError(
                errno.EMSGSIZE,
                f"the reply ({size} bytes) exceeds the negotiated max_msg_size {limit}",
            )

    # ---- transitions ------------------------------------------------------------------------

    def replied(self, command: int, body: dict[str, Any]) -> None:
        """A successful reply to ``command`` was sent (daemon) or received (client)."""
        if command == Command.VERSION and self.phase is Phase.AWAIT_VERSION:
            try:
                reply = decode(VersionReply, body)
            except FieldError as exc:
                if self.side is Side.SERVER:
                    raise LocalProtocolError(exc.errno, f"VERSION reply: {exc.message}") from None
                self.remote_error(errno.EPROTO, f"VERSION reply: {exc.message}")
            caps = reply.capabilities
            self.limits = Limits(caps.max_msg_size, caps.max_fds)
            self.auth = reply.auth
            self.phase = Phase.READY if reply.auth == "none" else Phase.AWAIT_AUTH
        elif command == Command.AUTH and self.phase is Phase.AWAIT_AUTH:
            self.phase = Phase.READY
