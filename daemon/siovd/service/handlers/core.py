"""VERSION, AUTH, PING, INFO, STATS."""

from __future__ import annotations

import errno
import os

import structlog

from siov_protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, Command
from siov_protocol.auth import Role
from siov_protocol.features import negotiate
from siov_protocol.messages import (
    PAGE_SIZES,
    AuthReply,
    AuthRequest,
    Capabilities,
    Empty,
    InfoReply,
    PingReply,
    PingRequest,
    SessionIdentity,
    StatsReply,
    VersionReply,
    VersionRequest,
)
from siovd import __version__
from siovd.model.errors import SiovError
from siovd.service.handlers.registry import Context, registry

log = structlog.get_logger("siovd")


@registry.command(Command.VERSION, VersionRequest)
def version(ctx: Context, req: VersionRequest) -> VersionReply:
    """Agree on limits and features. Sending this reply moves the connection's state machine
    on (to AWAIT_AUTH, or READY when auth is "none") with the agreed limits."""
    session = ctx.session
    if req.major != PROTOCOL_MAJOR:
        raise SiovError(
            errno.ENOTSUP,
            f"protocol major {req.major} is not supported (this daemon speaks {PROTOCOL_MAJOR})",
        )
    cfg = ctx.daemon.config
    caps = req.capabilities
    agreed = Capabilities(
        max_msg_size=min(caps.max_msg_size, cfg.protocol.max_msg_size),
        max_fds=min(caps.max_fds, cfg.protocol.max_fds),
        page_sizes=[p for p in PAGE_SIZES if p == PAGE_SIZES[0] or p in caps.page_sizes],
        features=negotiate(caps.features),
    )
    session.features = frozenset(agreed.features)
    session.page_sizes = tuple(agreed.page_sizes)
    session.client_name = req.client
    mode = cfg.auth.mode
    nonce = None
    if mode == "none":
        session.role = Role.ADMIN
        session.identity = "anonymous"
    elif mode == "key":
        nonce = ctx.daemon.new_nonce(session)
    return VersionReply(
        major=PROTOCOL_MAJOR,
        minor=min(req.minor, PROTOCOL_MINOR),
        capabilities=agreed,
        server=f"siovd {__version__}",
        auth=mode,
        nonce=nonce,
    )


@registry.command(Command.AUTH, AuthRequest)
def auth(ctx: Context, req: AuthRequest) -> AuthReply:
    """Prove who the client is; sending this reply makes the connection READY."""
    session = ctx.session
    try:
        identity, role = ctx.daemon.authenticate(session, req.public_key, req.signature)
    except SiovError as exc:
        log.warning("authentication refused", reason=exc.message, peer=session.peer)
        raise
    session.identity = identity
    session.role = role
    log.info("authenticated", identity=identity, role=role.value)
    return AuthReply(identity=identity, role=role.value)


#: The reply to a PING without payload, one shared instance (a frozen schema).
_PONG = PingReply()


@registry.command(Command.PING, PingRequest)
def ping(ctx: Context, req: PingRequest) -> PingReply:
    payload = req.payload
    return _PONG if payload is None else PingReply(payload=payload)


@registry.command(Command.INFO, Empty)
def info(ctx: Context, req: Empty) -> InfoReply:
    daemon, session = ctx.daemon, ctx.session
    return InfoReply(
        version=__version__,
        uptime_s=round(daemon.uptime(), 3),
        pid=os.getpid(),
        socket=daemon.socket_path,
        config=daemon.info_config(),
        counts=daemon.counts(),
        protocol=f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
        session=SessionIdentity(id=session.id, identity=session.identity, role=session.role.value),
    )


@registry.command(Command.STATS, Empty)
def stats(ctx: Context, req: Empty) -> StatsReply:
    daemon, session = ctx.daemon, ctx.session
    own = {
        "requests": session.requests,
        "events_sent": session.events_sent,
        "events_dropped": session.events_dropped,
        "events_dropped_bytes": session.events_dropped_bytes,
        "events_suppressed": session.events_suppressed,
        "events_queued": len(session.events),
        **daemon.session_cost(session),
    }
    return StatsReply(**daemon.stats(), session=own, uid=daemon.uid_cost(session.uid))
