"""The trio layer: listen, one task per connection, fds in and out, events, shutdown.

Everything about bytes is :mod:`siov_protocol`'s job and everything about devices is the domain
model's; this module only moves messages between them. No exception from one connection ever
reaches the listener: a connection that misbehaves is answered or closed, and logged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from siov_protocol import (
    NEED_DATA,
    BadMessage,
    Connection,
    FieldError,
    LocalProtocolError,
    Message,
    ProtocolError,
    Side,
    decode,
)
from siov_protocol.auth import Role
from siov_protocol.fdpass import (
    ANC_SPACE,
    MAX_FDS_PER_MESSAGE,
    fds_from_ancillary,
    recv_nowait,
    send_nowait,
)
from siov_protocol.features import command_refusal
from siov_protocol.header import FLAG_NO_REPLY, HEADER_SIZE
from siov_protocol.replies import ShutdownEvent, event_message
from siov_protocol.schema import encode
from siov_protocol.state import HANDSHAKE, Phase
from siovd.host.auth import peer_credentials
from siovd.model.budget import Budget
from siovd.model.errors import SiovError
from siovd.service.daemon import Daemon
from siovd.service.engines import daemon_tasks
from siovd.service.fds import (
    CLOSER,
    DRAIN_INLINE,
    discard,
    drain_and_close,
    shut_and_drain,
)
from siovd.service.handlers import Context, Deferred, Handler, registry
from siovd.service.session import UNKNOWN_UID, Session

log = structlog.get_logger("siovd.server")

RECV_SIZE = 256 * 1024
YIELD_EVERY = 16  # messages one connection handles at most before letting the others run
#: Work one step of a long request may do besides its time (server.turn_ms): bytes of page
#: table entries, about a millisecond's worth.
TURN_WORK = 64 << 10
#: Check every reply body against its command's reply schema before it is sent. The test
#: suite turns this on (``SIOVD_CHECK_REPLIES=1`` reaches daemons it runs as processes too); a
#: reply that does not decode is then answered EIO and logged as a handler bug.
CHECK_REPLIES = os.environ.get("SIOVD_CHECK_REPLIES") == "1"
REFUSE_WAIT_S = 1.0  # how long a refused connection may take to send its first header
MAX_REFUSING = 64  # refusals answered at once; past that a refused connection is just closed
MAX_FDS_RECEIVED = MAX_FDS_PER_MESSAGE  # receive everything the kernel can carry, then judge it
ANC_SIZE = ANC_SPACE
#: A plain int: ``socket.MSG_CTRUNC`` is an IntFlag, and its ``&`` costs a microsecond a message.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


def close_fds(fds: list[int] | tuple[int, ...]) -> None:
    """Discard fds a client handed over, where a close cannot stall the loop (fds.py)."""
    discard(fds)


class ClientGone(Exception):
    """The client stopped reading or went away; its connection ends."""


class ClientConnection:
    """One connected client: the reader loop, writes, and the event pump."""

    def __init__(self, server: Server, sock: trio.socket.SocketType) -> None:
        self.server = server
        self.daemon = server.daemon
        self.sock = sock
        self.raw = socket.socket(fileno=os.dup(sock.fileno()))  # for non-blocking fast writes
        self.raw.setblocking(False)
        cfg = self.daemon.config
        self.conn = Connection(
            Side.SERVER, max_msg_size=cfg.protocol.max_msg_size, max_fds=MAX_FDS_RECEIVED
        )
        self.session = Session(
            peer=_peer_credentials(self.raw),
            event_limit=cfg.limits.event_queue,
            protocol=self.conn.state,
        )
        self.write_lock = trio.Lock()
        self.events_ready = trio.Event()
        self.log = log
        #: Commands that pass every check of :meth:`refusal` when they carry no fds, for the
        #: role and features they were judged with (:meth:`admitted`); None until READY.
        self._admitted: dict[int, Handler] | None = None
        self._admitted_for: tuple[Role, frozenset[str]] | None = None

    # ---- writing ---------------------------------------------------------------------------

    async def send(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Write one whole message; fds ride on its first byte.

        The common case is one non-blocking sendmsg with no scheduling; only a full socket
        buffer takes the slow path, which waits at most ``write_timeout_s`` for the client.
        """
        rest = self.send_now(data, fds)
        if rest is not None:
            await self.send_rest(*rest)

    def send_now(
        self, data: bytes, fds: tuple[int, ...] | list[int] = ()
    ) -> tuple[bytes, tuple[int, ...] | list[int]] | None:
        """One non-blocking sendmsg of what fits (nothing while a slow send holds the write
        lock): None when all went out, else the bytes left and the fds still to send (none
        once a byte is out: they rode on it)."""
        if self.write_lock.locked():
            return data, fds
        try:
            sent = send_nowait(self.raw, data, fds)
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if sent == len(data):
            return None
        return data[sent:], (() if sent else fds)

    async def send_rest(self, data: bytes, fds: tuple[int, ...] | list[int]) -> None:
        """The slow path of :meth:`send`: what did not fit, once the client reads."""
        async with self.write_lock:
            with trio.move_on_after(self.daemon.config.server.write_timeout_s) as scope:
                while data:
                    await trio.lowlevel.wait_writable(self.raw)
                    try:
                        sent = send_nowait(self.raw, data, fds)
                    except OSError as exc:
                        raise ClientGone(str(exc)) from None
                    if sent:
                        fds = ()
                        data = data[sent:]
            if scope.cancelled_caught:
                self.daemon.counters["clients_dropped_stuck"] += 1
                raise ClientGone("client stopped reading; write timed out")

    async def reply_error(self, msg_id: int, command: int, err: int, message: str) -> None:
        self.daemon.counters["error_replies"] += 1
        await self.send(self.conn.send_error(msg_id, command, err, message))

    # ---- the connection's life ------------------------------------------------------------

    async def run(self) -> None:
        daemon = self.daemon
        daemon.open_session(self.session)
        self.session.wake = self.events_ready.set
        # Each connection task has its own copy of the context: everything logged while serving
        # this client, in any layer, carries its id.
        structlog.contextvars.bind_contextvars(client=self.session.id)
        self.log.info("client connected", peer=self.session.peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.pump_events)
                nursery.start_soon(self.handshake_deadline)
                await self.read_loop()
                nursery.cancel_scope.cancel()
        except* ClientGone as group:
            self.log.info("client dropped", reason=str(group.exceptions[0]))
        except* Exception:
            self.log.exception("connection failed")
        finally:
            self.finish()

    async def handshake_deadline(self) -> None:
        """A connection that has not negotiated (and authenticated) in time is closed, so idle
        sockets cannot hold ``server.max_clients`` slots for ever."""
        await trio.sleep(self.daemon.config.server.handshake_timeout_s)
        if not self.session.protocol.ready:
            self.daemon.counters["handshake_timeouts"] += 1
            raise ClientGone("no VERSION/AUTH within server.handshake_timeout_s")

    def finish(self) -> None:
        close_fds(self.conn.pending_fds())
        try:
            self.daemon.release(self.session)
        except Exception:
            self.log.exception("release failed")
        self.raw.close()  # a dup: the file lives on in self.sock, nothing is released here
        retire_socket(self.sock)
        self.log.info("client disconnected", requests=self.session.requests)

    def turn_budget(self) -> Budget:
        """A budget for one step of a long request: ``server.turn_ms`` or :data:`TURN_WORK`,
        whichever runs out first."""
        clock = time.perf_counter
        deadline = clock() + self.daemon.config.server.turn_ms / 1000
        return Budget(TURN_WORK, lambda: clock() > deadline)

    async def read_loop(self) -> None:
        conn = self.conn
        handled = 0
        clock = time.perf_counter
        turn_s = self.daemon.config.server.turn_ms / 1000
        turn_end = clock() + turn_s
        raw, view = self.raw, self.server.recv_view
        while True:
            # recvmsg_into the server's one buffer, and straight into the connection's own
            # buffer with no checkpoint between, so another connection's receive cannot come
            # between them.
            try:
                got = recv_nowait(raw, view)
                waited = got is None
                while got is None:
                    await trio.lowlevel.wait_readable(raw)
                    got = recv_nowait(raw, view)
            except OSError as exc:
                raise ClientGone(str(exc)) from None
            size, anc, flags = got
            fds = fds_from_ancillary(anc) if anc else []
            if flags & _MSG_CTRUNC:  # the kernel closed what did not fit
                self.daemon.counters["fds_truncated"] += 1
            conn.receive_data(view[:size], fds)
            if not size:
                return
            if not waited:
                # As trio's recvmsg: a receive that did not wait still yields, so a client
                # that keeps its socket full takes turns with the others (and a connection
                # that just ended is released before a new one's first request runs).
                # Shielded, as there: the bytes are taken and must be handled.
                await trio.lowlevel.cancel_shielded_checkpoint()
            while True:
                try:
                    event = conn.next_event()
                except ProtocolError as exc:
                    self.daemon.counters["protocol_errors"] += 1
                    self.log.warning("protocol error, closing", error=str(exc))
                    if exc.msg_id is not None:
                        with contextlib.suppress(ClientGone):
                            await self.reply_error(exc.msg_id, 0, exc.errno, exc.message)
                    return
                if event is NEED_DATA:
                    break
                handled += 1
                if handled >= YIELD_EVERY or clock() > turn_end:
                    # Sync handlers and writes that fit never yield: without this, one client's
                    # pipelined burst would hold off every other client and its own event pump.
                    # A turn ends after server.turn_ms of work (or YIELD_EVERY messages).
                    await trio.lowlevel.checkpoint()
                    handled = 0
                    turn_end = clock() + turn_s
                if isinstance(event, BadMessage):
                    close_fds(event.fds)
                    if not event.flags & FLAG_NO_REPLY:  # SPEC §5: not even an error reply
                        await self.reply_error(
                            event.msg_id, event.command, event.errno, event.reason
                        )
                    continue
                assert isinstance(event, Message)
                rest = self.serve(event)  # dispatch(), without a coroutine when it can
                if rest is not None:
                    await rest
            hoarding = self.count_pending_fds()
            if hoarding is not None:
                self.daemon.counters["clients_dropped_pending_fds"] += 1
                self.log.warning("too many fds for unfinished messages, closing", error=hoarding)
                msg_id, command = conn.pending_header() or (0, 0)
                with contextlib.suppress(ClientGone):
                    await self.reply_error(msg_id, command, errno.ENOSPC, hoarding)
                return
            if self.server.closing and not self.server.accepting:
                return

    def count_pending_fds(self) -> str | None:
        """Account the fds that wait for the rest of their message (per connection and per
        uid); past a limit, the message naming it (the connection is then closed: its fds
        cannot be dropped without losing its framing)."""
        session, limits = self.session, self.daemon.config.limits
        held = self.conn.held_fds()
        if session.usage is not None:
            session.usage.pending_fds += held - session.pending_fds
        session.pending_fds = held
        if held > limits.pending_fds:
            return (
                f"limit reached: limits.pending_fds = {limits.pending_fds} "
                f"({held} fds wait for messages whose bytes have not all arrived)"
            )
        usage = session.usage
        if usage is not None and usage.pending_fds > limits.uid_pending_fds:
            return (
                f"limit reached: limits.uid_pending_fds = {limits.uid_pending_fds} "
                f"({usage.pending_fds} fds of uid {usage.uid} wait for unfinished messages)"
            )
        return None

    async def dispatch(self, msg: Message) -> None:
        """Serve one request: refuse it, or run its handler and send the reply."""
        rest = self.serve(msg)
        if rest is not None:
            await rest

    def serve(self, msg: Message) -> Awaitable[None] | None:
        """:meth:`dispatch` without a coroutine for what needs no wait (a sync handler whose
        reply fits the socket); what does wait (an error reply, a long request, a reply that
        must wait for room) is returned for the caller to await at once."""
        session = self.session
        session.requests += 1
        command = msg.command
        handler = registry.handlers.get(command)
        fds = list(msg.fds)
        if fds or handler is None or self.admitted().get(command) is not handler:
            err = self.refusal(handler, msg, fds)
            if err is not None:
                close_fds(fds)
                if not msg.flags & FLAG_NO_REPLY:
                    return self.reply_error(msg.msg_id, command, *err)
                return None
            assert handler is not None
        server = self.server
        server.in_flight += 1
        try:
            reply = self.call(handler, msg, fds)
        except BaseException:
            server.in_flight -= 1
            raise
        if isinstance(reply, Deferred):
            return self.finish_deferred(handler, msg, reply)
        server.in_flight -= 1
        if reply is None or msg.flags & FLAG_NO_REPLY:
            return None
        rest = self.send_now(*reply)  # send(), without a coroutine for what fits
        return None if rest is None else self.send_rest(*rest)

    async def finish_deferred(self, handler: Handler, msg: Message, deferred: Deferred) -> None:
        """A long request (counted in flight until it is done), then its reply."""
        try:
            reply = await self.run_deferred(handler, msg, deferred)
        finally:
            self.server.in_flight -= 1
        if not msg.flags & FLAG_NO_REPLY:
            await self.send(*reply)

    def admitted(self) -> dict[int, Handler]:
        """The handlers :meth:`refusal` lets run without fds on this connection now, so a
        request need not be judged again: none before READY (the phase decides then); once
        READY, every handler but the handshake's that the session's role and agreed features
        allow, rebuilt if either changes. Whatever is not in it is judged by :meth:`refusal`."""
        session = self.session
        key = self._admitted_for
        if (
            key is not None
            and key[0] is session.role
            and key[1] is session.features
            and self._admitted is not None
        ):
            return self._admitted
        if session.protocol.phase is not Phase.READY:
            return {}
        admin = session.is_admin
        features = session.features
        table = {
            command: handler
            for command, handler in registry.handlers.items()
            if command not in HANDSHAKE
            and (admin or not handler.admin)
            and command_refusal(command, features, handler.command.name) is None
        }
        self._admitted = table
        self._admitted_for = (session.role, features)
        return table

    def refusal(
        self, handler: Handler | None, msg: Message, fds: list[int]
    ) -> tuple[int, str] | None:
        """Why a message may not run at all, or None. The phase and the negotiated limits are
        the state machine's to judge; the handler table adds its own fd count and role."""
        session = self.session
        if handler is None:
            return errno.ENOSYS, f"unknown command {msg.command:#x}"
        why = session.protocol.refusal(msg.command, len(fds))
        if why is not None:
            return why
        if len(fds) > handler.max_fds:
            name = handler.command.name
            if handler.max_fds == 0:
                return errno.EINVAL, f"{name} takes no file descriptors, got {len(fds)}"
            return errno.EINVAL, f"{name} takes at most {handler.max_fds} fds, got {len(fds)}"
        if handler.admin and not session.is_admin:
            return errno.EPERM, f"{handler.command.name} needs the admin role"
        return command_refusal(msg.command, session.features, handler.command.name)

    def call(
        self, handler: Handler, msg: Message, fds: list[int]
    ) -> tuple[bytes, tuple[int, ...]] | Deferred | None:
        """Run a handler; return the reply bytes and fds to send (or the long work to run
        before them)."""
        command = msg.command
        ctx = Context(self.daemon, self.session, msg.msg_id, command, fds)
        try:
            req: Any = decode(handler.schema, msg.body)
            if command in HANDSHAKE:  # repeat_refusal judges only the handshake's commands
                again = self.session.protocol.repeat_refusal(command)
                if again is not None:
                    raise SiovError(*again)
            result = handler.fn(ctx, req)
            if isinstance(result, Deferred):
                return result
        except SiovError as exc:
            close_fds(ctx.fds)
            data = self.conn.send_error(msg.msg_id, msg.command, exc.errno, exc.message, exc.detail)
            return data, ()
        except Exception as exc:
            close_fds(ctx.fds)
            self.log.exception("handler failed", command=handler.command.name)
            self.daemon.counters["handler_failures"] += 1
            text = f"internal error in {handler.command.name}: {type(exc).__name__}"
            return self.conn.send_error(msg.msg_id, msg.command, errno.EIO, text), ()
        return self.encode_reply(handler, msg, result)

    async def run_deferred(
        self, handler: Handler, msg: Message, deferred: Deferred
    ) -> tuple[bytes, tuple[int, ...]]:
        """Run a long request a turn at a time; other tasks run between turns. The connection
        reads nothing else meanwhile, so its own next request sees the work done."""
        name = handler.command.name
        try:
            pause = deferred.pause or trio.lowlevel.checkpoint
            while not deferred.job.step(self.turn_budget()):
                self.daemon.counters["request_turns"] += 1
                await pause()
            return self.encode_reply(handler, msg, deferred.finish())
        except SiovError as exc:
            return self.conn.send_error(msg.msg_id, msg.command, exc.errno, exc.message), ()
        except Exception as exc:
            self.log.exception("handler failed", command=name)
            self.daemon.counters["handler_failures"] += 1
            text = f"internal error in {name}: {type(exc).__name__}"
            return self.conn.send_error(msg.msg_id, msg.command, errno.EIO, text), ()

    def encode_reply(
        self, handler: Handler, msg: Message, result: Any
    ) -> tuple[bytes, tuple[int, ...]]:
        reply_fds: tuple[int, ...] = ()
        if isinstance(result, tuple):  # (body, fds to send)
            result, reply_fds = result
        # The one place a reply becomes a map: every handler returns its REPLIES schema's
        # instance (optionally with fds to send), never a map of its own.
        if CHECK_REPLIES:
            try:
                if type(result) is not handler.reply:
                    raise FieldError(
                        errno.EINVAL,
                        "",
                        f"is a {type(result).__name__}, not {handler.reply.__name__}",
                    )
                decode(handler.reply, encode(result))
            except FieldError as exc:
                close_fds(reply_fds)
                self.log.error("reply does not match its schema", command=handler.command.name)
                self.daemon.counters["handler_failures"] += 1
                text = f"internal error in {handler.command.name}: reply {exc.message}"
                return self.conn.send_error(msg.msg_id, msg.command, errno.EIO, text), ()
        try:
            body = encode(result)
        except (TypeError, AttributeError):  # not a schema instance: a handler's bug
            close_fds(reply_fds)
            self.log.error("reply is not a schema instance", command=handler.command.name)
            self.daemon.counters["handler_failures"] += 1
            text = f"internal error in {handler.command.name}: reply is not its schema"
            return self.conn.send_error(msg.msg_id, msg.command, errno.EIO, text), ()
        try:
            data = self.conn.send_reply(msg.msg_id, msg.command, body)
        except LocalProtocolError as exc:  # SPEC §6: larger than the negotiated size
            close_fds(reply_fds)
            self.daemon.counters["replies_too_large"] += 1
            return self.conn.send_error(msg.msg_id, msg.command, exc.errno, exc.message), ()
        return data, reply_fds

    async def pump_events(self) -> None:
        """Send queued events in order; the queue itself is bounded by the session."""
        session = self.session
        while True:
            await self.events_ready.wait()
            self.events_ready = trio.Event()
            session.wake = self.events_ready.set
            while session.events:
                ev = session.pop_event()
                try:
                    _, data = self.conn.send_command(
                        ev.command, ev.body, no_reply=True, n_fds=len(ev.fds)
                    )
                except ProtocolError:  # too large for the client, or the connection broke
                    close_fds(ev.fds)
                    session.events_dropped += 1
                    continue
                try:
                    await self.send(data, ev.fds)
                finally:
                    close_fds(ev.fds)
                session.events_sent += 1


def retire_socket(sock: socket.socket | trio.socket.SocketType) -> None:
    """Close a client's connection socket once nothing is queued on it: fds still queued would
    be released, and a lingering one would block, in the task that closes it (fds.py). A few
    queued messages are drained here; a socket stuffed with more goes to a closer thread."""
    try:
        fd = sock.fileno()
    except OSError:
        return
    if fd < 0:
        return
    try:
        empty = shut_and_drain(fd, DRAIN_INLINE)
    except (OSError, ValueError):
        empty = True
    if empty:
        sock.close()
        return
    with contextlib.suppress(OSError, ValueError):
        trio.lowlevel.notify_closing(sock)
    CLOSER.defer(functools.partial(drain_and_close, sock.detach()))


def _peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int] | None:
    try:
        creds = peer_credentials(sock)
    except OSError:
        return None
    return creds.pid, creds.uid, creds.gid


def bind_unix_socket(path: str, mode: int) -> socket.socket:
    """Bind ``path``, replacing a stale socket file only when no daemon answers on it."""
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise SiovError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
        else:
            raise SiovError(errno.EADDRINUSE, f"another daemon is listening on {path}")
        finally:
            probe.close()
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


class Server:
    """Accepts connections and runs each in its own task; knows how to stop gracefully."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.refusing = 0  # connections over the limit being told so
        self.accepting = True
        self.closing = False
        self.stopped = trio.Event()
        self.ready_hooks: list[Callable[[], None]] = []
        #: Every connection receives into this one buffer and copies out at once (read_loop).
        self.recv_view = memoryview(bytearray(RECV_SIZE))

    async def serve(
        self,
        listener: socket.socket,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        tsock = trio.socket.from_stdlib_socket(listener)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(daemon_tasks, self.daemon)
            task_status.started()
            with tsock:
                while self.accepting:
                    try:
                        conn_sock, _ = await tsock.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.warning("accept failed, backing off", error=str(exc))
                            await trio.sleep(0.1)
                            continue
                        raise
                    refusal = self._over_limit(conn_sock)
                    if refusal is not None:
                        self.daemon.counters["clients_refused"] += 1
                        if self.refusing < MAX_REFUSING:
                            self.refusing += 1
                            nursery.start_soon(self._refuse, conn_sock, refusal)
                        else:
                            retire_socket(conn_sock)
                        continue
                    # Counted at once, so a burst of connects cannot slip past the limit.
                    try:
                        client = ClientConnection(self, conn_sock)
                    except OSError as exc:  # out of fds for its dup: as an accept that failed
                        log.warning("accept failed", error=str(exc))
                        retire_socket(conn_sock)
                        continue
                    self.connections.add(client)
                    nursery.start_soon(self._run_connection, client)

    async def _run_connection(self, client: ClientConnection) -> None:
        try:
            await client.run()
        finally:
            self.connections.discard(client)

    def _over_limit(self, sock: trio.socket.SocketType) -> str | None:
        """Why a new connection is refused (``server.max_clients``, ``limits.uid_connections``),
        or None. Counted against ``self.connections`` at once, so a burst cannot slip past."""
        cfg = self.daemon.config
        if len(self.connections) >= cfg.server.max_clients:
            limit = cfg.server.max_clients
            return f"server.max_clients = {limit} clients are connected; try again later"
        peer = _peer_credentials(sock)
        uid = peer[1] if peer is not None else UNKNOWN_UID
        mine = sum(1 for c in self.connections if c.session.uid == uid)
        if mine >= cfg.limits.uid_connections:
            limit = cfg.limits.uid_connections
            return (
                f"limit reached: limits.uid_connections = {limit} connections of uid {uid} "
                "are open; try again later"
            )
        return None

    async def _refuse(self, sock: trio.socket.SocketType, message: str) -> None:
        """SPEC §4: a connection over ``server.max_clients`` (or ``limits.uid_connections``)
        gets EAGAIN for its first message (so the client learns why), then the close; a
        silent one is closed after a second."""
        log.warning("client refused", reason=message)
        try:
            with trio.move_on_after(REFUSE_WAIT_S):
                head = b""
                while len(head) < HEADER_SIZE:
                    # recvmsg, not recv: fds a recv had no room for would be released here, on
                    # the loop, and a lingering socket's release blocks (fds.py).
                    data, anc, _, _ = await sock.recvmsg(HEADER_SIZE - len(head), ANC_SIZE)
                    discard(fds_from_ancillary(anc))
                    if not data:
                        return
                    head += data
                msg_id, command = struct.unpack_from("<HH", head)
                reply = Connection(Side.SERVER).send_error(msg_id, command, errno.EAGAIN, message)
                await sock.send(reply)
                sock.shutdown(socket.SHUT_WR)
                while True:  # the client closes first: a clean EOF, no reset
                    data, anc, _, _ = await sock.recvmsg(65536, ANC_SIZE)
                    discard(fds_from_ancillary(anc))
                    if not data:
                        break
        except OSError:
            pass
        finally:
            self.refusing -= 1
            retire_socket(sock)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within ``grace``, then close all."""
        self.accepting = False
        self.closing = True
        log.info("shutting down", clients=len(self.connections), in_flight=self.in_flight)
        for client in list(self.connections):
            client.session.push_event(*event_message(ShutdownEvent(grace_s=grace)))
        with trio.move_on_after(grace):
            # Polling is bounded by the grace period and runs once per process life.
            while self.in_flight or any(c.session.events for c in self.connections):  # noqa: ASYNC110
                await trio.sleep(0.01)
        self.nursery.cancel_scope.cancel()
