"""The async (trio) client.

``async with siov.connect(path) as client:`` negotiates the version (and authenticates when
the daemon asks), then any number of tasks may send requests at once: replies are matched to
requests by msg_id, and daemon events arrive on :meth:`Client.events`.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from siov_protocol import (
    NEED_DATA,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    BadMessage,
    Command,
    Connection,
    FieldError,
    Message,
    ProtocolError,
    Side,
)
from siov_protocol.connection import slot_setter
from siov_protocol.fdpass import fds_from_ancillary, recv_nowait, send_nowait
from siov_protocol.header import TYPE_REPLY
from siov_protocol.messages import AuthReply, InfoReply, PingReply, StatsReply, VersionReply
from siov_protocol.replies import (
    EVENTS,
    REPLIES,
    AccelConfigDeviceReply,
    AccelConfigEngineReply,
    AccelConfigGroupReply,
    AccelConfigWqReply,
    AccelDevicesReply,
    AccelEvlReadReply,
    AccelLoadConfigReply,
    AccelSaveConfigReply,
    DefinitionInfo,
    DefinitionRef,
    DeviceDescription,
    DirtyBitmapReply,
    DmaReadReply,
    DmaWriteReply,
    DomainInfo,
    DomainListReply,
    GroupInfo,
    GroupListReply,
    InvalidateReply,
    IotlbEntriesReply,
    IotlbEntry,
    IovaToPhysReply,
    ListDefinedReply,
    MapReply,
    MdevDefineReply,
    MdevListReply,
    MdevType,
    MemListReply,
    MemRegionInfo,
    RegisteredDevice,
    SvaBindReply,
    TranslateReply,
    TypesListReply,
    UndefineReply,
    UnmapReply,
    VfioUserEndpoint,
    WqOpenReply,
    WqSubmitReply,
)
from siov_protocol.schema import decode

from .buffers import Buffer, memfd, page_align
from .domain import Domain
from .errors import ConnectionClosed, PermissionDenied, SiovError, error_for
from .iommu_ext import IommuExtMixin

if TYPE_CHECKING:
    from .mdev import Mdev

RECV_SIZE = 256 * 1024


def default_socket_path() -> str:
    """Where ``siovd`` listens by default: ``$SIOV_SOCKET`` wins, then the daemon's rule."""
    if env := os.environ.get("SIOV_SOCKET"):
        return env
    if os.geteuid() == 0:
        return "/run/siovd/siovd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/siovd-{os.getuid()}"
    return os.path.join(runtime, "siovd.sock")


@dataclass(frozen=True, slots=True)
class Reply:
    body: dict[str, Any]
    fds: tuple[int, ...] = ()
    command: int | None = None

    @property
    def typed(self) -> Any:
        """The body decoded through its command's reply schema (``siov_protocol.replies``);
        a body that does not fit raises :class:`~siov_protocol.FieldError`."""
        if self.command is None or self.command not in REPLIES:
            raise FieldError(0, "", "no reply schema is known for this reply")
        return decode(REPLIES[self.command], self.body)


@dataclass(frozen=True, slots=True)
class Event:
    """A message the daemon sent on its own: a fault, a page request, an interrupt, ..."""

    command: Command | int
    body: dict[str, Any]
    fds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.command.name if isinstance(self.command, Command) else hex(self.command)

    @property
    def typed(self) -> Any:
        """The body decoded through the event's schema (``FaultEvent``, ``IrqEvent``, ...);
        a body that does not fit raises :class:`~siov_protocol.FieldError`."""
        schema = EVENTS.get(int(self.command))
        if schema is None:
            raise FieldError(0, "", f"no schema is known for event {self.name}")
        return decode(schema, self.body)


#: What :meth:`Client.next_event` filters on: None (any event), a command, its number or name
#: (``"EVENT_FAULT"``, ``"fault"``), or a collection of those.
EventFilter = Command | int | str | Collection[Command | int | str] | None


def _event_number(name: Command | int | str) -> int:
    if isinstance(name, str):
        key = name.upper()
        if not key.startswith("EVENT_"):
            key = "EVENT_" + key
        try:
            return int(Command[key])
        except KeyError:
            raise ValueError(f"no event named {name!r}") from None
    return int(name)


def event_matcher(command: EventFilter) -> Callable[[Event], bool]:
    """A predicate for :meth:`Client.next_event`'s ``command`` argument."""
    if command is None:
        return lambda ev: True
    if isinstance(command, Command | int | str):
        numbers = {_event_number(command)}
    else:
        numbers = {_event_number(c) for c in command}
    return lambda ev: int(ev.command) in numbers


class EventStream:
    """The client's event stream: the events a filtered ``next_event`` passed over first,
    then the live channel. ``async for`` it, or ``await stream.receive()``."""

    def __init__(self, channel: trio.MemoryReceiveChannel[Event]) -> None:
        self.channel = channel
        self.held: list[Event] = []

    async def receive(self) -> Event:
        if self.held:
            return self.held.pop(0)
        return await self.channel.receive()

    def receive_nowait(self) -> Event:
        if self.held:
            return self.held.pop(0)
        return self.channel.receive_nowait()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class HasUuid(Protocol):
    """Anything that names a device: an :class:`~siov.Mdev`, a ``BlockingMdev``, ..."""

    @property
    def uuid(self) -> str: ...


class HasDomainId(Protocol):
    @property
    def domain_id(self) -> int | None: ...


#: A device: its UUID, an object with ``uuid`` (Mdev, BlockingMdev) or a reply dict.
DeviceRef = str | HasUuid | Mapping[str, Any]
#: A domain: its id, a reply dict (``alloc_domain``'s), or an Mdev (the domain it is on now).
DomainRef = int | HasDomainId | Mapping[str, Any]


def device_id(device: DeviceRef) -> str:
    """The UUID of ``device`` (a UUID string, an Mdev, or a reply dict with ``uuid``)."""
    if isinstance(device, str):
        return device
    if isinstance(device, Mapping):
        return str(device["uuid"])
    return device.uuid


def domain_id(domain: DomainRef) -> int:
    """The id of ``domain`` (an int, ``alloc_domain``'s reply, or an Mdev's current domain)."""
    if isinstance(domain, bool):
        raise TypeError("a domain is an id, a domain dict or an Mdev, not a bool")
    if isinstance(domain, int):
        return domain
    value = domain["domain_id"] if isinstance(domain, Mapping) else domain.domain_id
    if value is None:
        raise ValueError(f"{domain!r} is not on a domain")
    return int(value)


class _Pending:
    """One request waiting for its reply. ``done`` is a flag, not an event: whoever reads
    delivers it, and a waiter checks it after each read round (_wait_reply)."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = False
        self.reply: Reply | None = None
        self.error: SiovError | None = None


_new_object = object.__new__
_set_reply_body = slot_setter(Reply, "body")
_set_reply_fds = slot_setter(Reply, "fds")
_set_reply_command = slot_setter(Reply, "command")


def _reply(body: dict[str, Any], fds: tuple[int, ...], command: int) -> Reply:
    """``Reply(body, fds, command)`` through its slots (a frozen dataclass's ``__init__``
    costs half a microsecond)."""
    reply = _new_object(Reply)
    _set_reply_body(reply, body)
    _set_reply_fds(reply, fds)
    _set_reply_command(reply, command)
    return reply


class Client(IommuExtMixin):
    """One connection to siovd. Create it with :func:`connect`."""

    def __init__(self, sock: trio.socket.SocketType, *, event_buffer: int = 4096) -> None:
        self._sock = sock
        self._raw = socket.socket(fileno=os.dup(sock.fileno()))
        self._raw.setblocking(False)
        self._recv_view = memoryview(bytearray(RECV_SIZE))
        self._conn = Connection(Side.CLIENT, max_msg_size=64 << 20, max_fds=253)
        self._pending: dict[int, _Pending] = {}
        self._write_lock = trio.Lock()
        self._events_send, self._events_recv = trio.open_memory_channel[Event](event_buffer)
        self.events_dropped = 0
        self._closed: SiovError | None = None
        self._reading = False
        self._waiters = 0
        self._background_scope: trio.CancelScope | None = None
        self._round_over = trio.Event()
        self._round_waiting = 0  # requesters waiting on _round_over
        self._parked_reader: trio.lowlevel.Task | None = None  # the background reader, parked
        #: the daemon's VERSION reply (limits, features, auth mode), once negotiated
        self.version: VersionReply | None = None
        #: the AUTH reply (who the daemon says this connection is), when the daemon asked
        self.identity: AuthReply | None = None
        self._nursery: trio.Nursery | None = None  # set by connect(); Mdev eventfd pumps
        self._mdevs: dict[str, Mdev] = {}  # EVENT_IRQ goes to the Mdev of its device
        self._page_requests: trio.MemorySendChannel[Event] | None = None
        self._page_requests_recv: trio.MemoryReceiveChannel[Event] | None = None
        self._event_buffer = event_buffer
        self._stream = EventStream(self._events_recv)

    # ---- transport ------------------------------------------------------------------------

    async def _send(self, data: bytes, fds: Sequence[int] = ()) -> bool:
        """Write one whole message; return whether any byte went out before a cancellation.

        A message is never left half-written: once its first byte is out, the rest is sent
        shielded from cancellation, or the daemon would read the next message as garbage.
        """
        sent = self._send_now(data, fds)
        if sent != len(data):
            await self._send_rest(data, fds, sent)
        return True

    def _send_now(self, data: bytes, fds: Sequence[int]) -> int:
        """One non-blocking write of what fits (nothing while another send holds the write
        lock): the bytes that went out."""
        if self._write_lock.locked():
            return 0
        try:
            return send_nowait(self._raw, data, fds)
        except OSError as exc:
            raise ConnectionClosed(f"send failed: {exc}") from None

    async def _send_rest(self, data: bytes, fds: Sequence[int], sent: int) -> None:
        """The slow path of :meth:`_send`: the message from byte ``sent`` on, once there is
        room (shielded once any byte is out)."""
        async with self._write_lock:
            with trio.CancelScope(shield=sent > 0) as scope:
                while sent < len(data):
                    await trio.lowlevel.wait_writable(self._raw)
                    try:
                        n = send_nowait(self._raw, data[sent:], () if sent else fds)
                    except OSError as exc:
                        raise ConnectionClosed(f"send failed: {exc}") from None
                    if n:
                        sent += n
                        scope.shield = True

    # ---- reading: one task at a time holds the baton ----------------------------------------
    #
    # Whoever waits for a reply reads the socket itself, so a reply wakes its requester
    # directly instead of waking a reader task that then wakes the requester (one scheduler
    # pass less per round trip). While nobody waits for a reply, a background task holds the
    # baton so events keep flowing; a requester cancels that task's wait and takes over.

    async def _read_round(self, expect_wait: bool = False) -> None:
        """Wait for data, receive one chunk, deliver every message in it.

        ``expect_wait``: a requester's first round right after its command went out, when its
        reply cannot be there yet; it waits for the socket before it receives, rather than
        trying a receive that finds nothing.
        """
        conn = self._conn
        raw, view = self._raw, self._recv_view
        try:
            # Into this client's buffer, and copied out before any checkpoint (recv_nowait).
            if expect_wait:
                await trio.lowlevel.wait_readable(raw)
                waited = True
                got = recv_nowait(raw, view)
            else:
                got = recv_nowait(raw, view)
                waited = got is None
            while got is None:
                await trio.lowlevel.wait_readable(raw)
                got = recv_nowait(raw, view)
            size, anc, _flags = got
            conn.receive_data(view[:size], fds_from_ancillary(anc) if anc else ())
            if not waited:  # as trio's recvmsg: a receive that found data at once yields
                await trio.lowlevel.cancel_shielded_checkpoint()  # (the bytes are taken)
            if not size:
                self._fail(ConnectionClosed("the daemon closed the connection"))
                return
            deliver = self._deliver
            while (event := conn.next_event()) is not NEED_DATA:
                deliver(event)
        except ProtocolError as exc:
            self._fail(ConnectionClosed(f"protocol error from the daemon: {exc}"))
        except OSError as exc:
            self._fail(ConnectionClosed(f"connection lost: {exc}"))

    async def _take_baton_and_read(
        self, scope: trio.CancelScope | None = None, expect_wait: bool = False
    ) -> None:
        """Read one round holding the baton; ``scope`` is the background reader's, which a
        requester cancels to take the baton over (``expect_wait``: see :meth:`_read_round`)."""
        self._reading = True
        self._background_scope = scope
        try:
            await self._read_round(expect_wait)
        finally:
            self._reading = False
            self._background_scope = None
            self._next_round()

    def _next_round(self) -> None:
        """A read round ended, or a requester left: wake whoever waits for that. Requesters
        waiting for another's round wait on ``_round_over`` (a fresh event only when someone
        waits on the old one); the background reader, parked while the baton is taken or
        wanted, is woken only once it is free (no reader, no waiter)."""
        if self._round_waiting:
            round_over, self._round_over = self._round_over, trio.Event()
            round_over.set()
        if self._parked_reader is not None and not self._reading and not self._waiters:
            task, self._parked_reader = self._parked_reader, None
            trio.lowlevel.reschedule(task)

    def _unpark_reader(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._parked_reader = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _reader(self) -> None:
        """Hold the baton whenever no requester waits, so events are read while idle."""
        while self._closed is None:
            if self._reading or self._waiters:
                # parked until _next_round (or _fail) finds the baton free
                self._parked_reader = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._unpark_reader)
                continue
            with trio.CancelScope() as scope:
                await self._take_baton_and_read(scope)

    async def _wait_reply(self, pending: _Pending, just_sent: bool = False) -> None:
        """Read (holding the baton) or wait for whoever reads, until ``pending`` is done.
        ``just_sent``: its command went out a moment ago (see :meth:`_read_round`)."""
        self._waiters += 1
        try:
            while not pending.done and self._closed is None:
                if not self._reading:
                    await self._take_baton_and_read(None, just_sent)
                    just_sent = False
                else:
                    just_sent = False
                    if self._background_scope is not None:
                        self._background_scope.cancel()  # the idle reader yields the baton
                    self._round_waiting += 1
                    try:
                        await self._round_over.wait()
                    finally:
                        self._round_waiting -= 1
        finally:
            self._waiters -= 1
            if not self._waiters and not self._reading:
                self._next_round()  # hand the baton back to the background reader

    def _deliver(self, event: Message | BadMessage | Any) -> None:
        if type(event) is Message and event.flags == TYPE_REPLY:  # the common case first
            self._answer(event)
            return
        if isinstance(event, BadMessage):
            for fd in event.fds:
                os.close(fd)
            pending = self._pending.pop(event.msg_id, None)
            if pending is not None and event.flags & 1:
                pending.error = SiovError(event.errno, f"undecodable reply: {event.reason}")
                pending.done = True
            return
        assert isinstance(event, Message)
        if not event.is_reply:
            try:
                command: Command | int = Command(event.command)
            except ValueError:
                command = event.command
            channel = self._events_send
            if command == Command.EVENT_IRQ:
                mdev = self._mdevs.get(str(event.body.get("device")))
                if mdev is not None:
                    mdev._interrupt(int(event.body.get("vector", -1)), event.body.get("swerr"))
                    return
            elif command == Command.EVENT_PAGE_REQUEST and self._page_requests is not None:
                channel = self._page_requests
            try:
                channel.send_nowait(Event(command, event.body, event.fds))
            except trio.WouldBlock:
                self.events_dropped += 1
                for fd in event.fds:
                    os.close(fd)
            return
        self._answer(event)

    def _answer(self, event: Message) -> None:
        """Hand a reply to its requester (an error reply as its :class:`SiovError`); one
        nobody waits for any more is dropped with its fds."""
        pending = self._pending.pop(event.msg_id, None)
        if pending is None or pending.done:
            for fd in event.fds:  # nobody waits (the caller gave up): drop the reply
                os.close(fd)
            return
        if event.is_error:
            body = event.body or {}
            message = str(body.get("message", ""))
            detail = {k: v for k, v in body.items() if k != "message"} or None
            pending.error = error_for(event.error, message, event.command, detail)
            for fd in event.fds:
                os.close(fd)
        else:
            pending.reply = _reply(event.body, event.fds, event.command)
        pending.done = True

    def _fail(self, exc: SiovError) -> None:
        if self._closed is not None:
            return
        self._closed = exc
        for pending in self._pending.values():
            pending.error = exc
            pending.done = True
        self._pending.clear()
        self._events_send.close()
        if self._page_requests is not None:
            self._page_requests.close()
        self._round_over.set()
        if self._parked_reader is not None:  # it sees the connection closed and ends
            task, self._parked_reader = self._parked_reader, None
            trio.lowlevel.reschedule(task)

    # ---- requests -------------------------------------------------------------------------

    async def request(
        self,
        command: Command | int,
        body: dict[str, Any] | None = None,
        fds: Sequence[int] = (),
    ) -> Reply:
        """Send one command and wait for its reply; raise :class:`SiovError` on an error reply."""
        if self._closed is not None:
            raise self._closed
        msg_id, data = self._conn.send_command(command, body, n_fds=len(fds))
        pending = self._pending[msg_id] = _Pending()
        sent = False
        try:
            n = self._send_now(data, fds)  # _send, without a coroutine for what fits
            if n != len(data):
                await self._send_rest(data, fds, n)
            sent = True
            await self._wait_reply(pending, just_sent=True)
        finally:
            if not pending.done and not sent:
                # Never sent: no reply will come, the msg_id is free again.
                self._pending.pop(msg_id, None)
                self._conn.forget(msg_id)
            # Sent but abandoned (cancelled): the entry stays until its reply arrives and is
            # dropped by _deliver, so the reply is never mistaken for a protocol error.
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:
            raise self._closed or ConnectionClosed("the connection closed")
        return pending.reply

    async def call(
        self, command: Command | int, body: dict[str, Any] | None = None, fds: Sequence[int] = ()
    ) -> dict[str, Any]:
        """:meth:`request` for commands whose reply carries no fds: just the body."""
        return (await self.request(command, body, fds)).body

    async def call_typed(
        self, command: Command | int, body: dict[str, Any] | None = None, fds: Sequence[int] = ()
    ) -> Any:
        """:meth:`request`, the reply decoded through its schema (:attr:`Reply.typed`)."""
        return (await self.request(command, body, fds)).typed

    async def send_no_reply(
        self, command: Command | int, body: dict[str, Any] | None = None
    ) -> None:
        """Send a command with the no-reply flag: nothing comes back, not even an error."""
        _, data = self._conn.send_command(command, body, no_reply=True)
        await self._send(data)

    def events(self) -> EventStream:
        """The stream of daemon events (faults, page requests, interrupts, removals):
        ``async for ev in client.events()`` or ``await client.events().receive()``.

        Events that a filtered :meth:`next_event` passed over come first, in order. Two kinds
        go elsewhere once asked for: EVENT_IRQ of a device opened as an
        :class:`~siov.mdev.Mdev` goes to that Mdev, and EVENT_PAGE_REQUEST goes to
        :meth:`page_requests` after its first call.
        """
        return self._stream

    def page_requests(self) -> trio.MemoryReceiveChannel[Event]:
        """The stream of EVENT_PAGE_REQUEST (body: ``request, device, pasid, iova, write,
        domain``); answer each with :meth:`page_response`. From the first call on, page
        requests no longer appear in :meth:`events`."""
        if self._page_requests_recv is None:
            send, recv = trio.open_memory_channel[Event](self._event_buffer)
            self._page_requests, self._page_requests_recv = send, recv
        return self._page_requests_recv

    async def page_response(self, request: int, code: int = 0) -> None:
        """Answer a page request: 0 SUCCESS (mapped now: the work resumes), 1 INVALID or
        2 FAILURE (the work completes with a page-fault status)."""
        await self.call(Command.PAGE_RESPONSE, {"request": request, "code": code})

    async def next_event(
        self,
        command: EventFilter = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the blocking client has the same)
    ) -> Event:
        """The next event, or the next one of ``command`` (a :class:`~siov.Command`, its
        number, its name such as ``"EVENT_FAULT"`` or ``"fault"``, or a collection of those).

        Events that do not match are kept, not discarded: later calls (and :meth:`events`)
        return them in order. :class:`TimeoutError` after ``timeout`` seconds;
        :class:`~siov.ConnectionClosed` when the connection ends first.
        """
        wanted = event_matcher(command)
        held = self._stream.held
        for i, ev in enumerate(held):
            if wanted(ev):
                del held[i]
                return ev
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            async for ev in self._events_recv:
                if wanted(ev):
                    return ev
                held.append(ev)
            raise self._closed or ConnectionClosed("event stream closed")
        raise TimeoutError(f"no matching event within {timeout} s")

    # ---- core commands --------------------------------------------------------------------

    async def negotiate(self, name: str = "siov-python", *, key_path: str | None = None) -> None:
        """VERSION, then AUTH when the daemon asks for it.

        The connection's state machine (:class:`siov_protocol.ConnectionState`) moves on as
        the replies arrive: it takes the agreed limits from the VERSION reply and says whether
        AUTH must follow; until it is READY, it refuses to send any other command.
        """
        body = {
            "major": PROTOCOL_MAJOR,
            "minor": PROTOCOL_MINOR,
            "capabilities": {"max_fds": 253, "max_msg_size": 64 << 20},
            "client": name,
        }
        self.version = await self.call_typed(Command.VERSION, body)
        state = self._conn.state
        if state.ready:
            return
        mode = state.auth
        if mode == "peercred":
            self.identity = await self.call_typed(Command.AUTH, {})
        elif mode == "key":
            if key_path is None:
                raise PermissionDenied(
                    errno.EACCES, "the daemon asks for key authentication: pass key_path"
                )
            from .keys import load_private_key, sign_challenge

            public_key, signature = sign_challenge(
                load_private_key(key_path), bytes(self.version.nonce or b"")
            )
            self.identity = await self.call_typed(
                Command.AUTH, {"public_key": public_key, "signature": signature}
            )

    async def ping(self, payload: bytes | None = None) -> bytes | None:
        body = {"payload": payload} if payload is not None else None
        reply: PingReply = await self.call_typed(Command.PING, body)
        return reply.payload

    async def info(self) -> InfoReply:
        """The daemon's version, settings and counts, and who this connection is."""
        reply: InfoReply = await self.call_typed(Command.INFO)
        return reply

    async def stats(self) -> StatsReply:
        """Counter maps by area (``daemon``, ``iommu``, ``accel``, ...; ``session``: yours)."""
        reply: StatsReply = await self.call_typed(Command.STATS)
        return reply

    # ---- memory -------------------------------------------------------------------------

    async def register(
        self, fd: int, size: int, *, offset: int = 0, access: str = "rw"
    ) -> MemRegionInfo:
        """Register memory the caller already has (a memfd): its ``region``, ``phys``, ...

        The daemon seals the memfd against shrinking and keeps its own mapping; the fd stays
        the caller's to close.
        """
        body = {"size": size, "offset": offset, "access": access}
        reply: MemRegionInfo = await self.call_typed(Command.MEM_REGISTER, body, fds=[fd])
        return reply

    async def alloc(self, size: int, *, access: str = "rw", name: str = "siov-buffer") -> Buffer:
        """A new memfd buffer of ``size`` bytes (rounded up to 4 KiB), registered."""
        size = page_align(size)
        fd = memfd(size, name)
        buffer = Buffer(fd, size, access=access)
        try:
            info = await self.register(fd, size, access=access)
        except BaseException:
            buffer.close()
            raise
        buffer.region = info.region
        buffer.phys = info.phys
        return buffer

    async def unregister(self, region: int | Buffer) -> None:
        region_id = region.region if isinstance(region, Buffer) else region
        await self.call(Command.MEM_UNREGISTER, {"region": region_id})

    async def memory(self, *, everything: bool = False) -> list[MemRegionInfo]:
        """Your own regions; ``everything=True`` (admin role) lists every client's."""
        reply: MemListReply = await self.call_typed(Command.MEM_LIST, {"all": everything})
        return reply.regions

    # ---- the mdev bus ---------------------------------------------------------------------

    async def types(self) -> list[MdevType]:
        reply: TypesListReply = await self.call_typed(Command.TYPES_LIST)
        return reply.types

    async def create_mdev(self, parent: str, type_id: str, uuid: str | None = None) -> Mdev:
        """Create an mdev: an :class:`~siov.Mdev` whose ``info`` names its group, default
        domain and default PASID, and whose ``domain_id`` follows attach and detach. The
        Mdev takes the device's interrupts (EVENT_IRQ counts in ``irq_counts``)."""
        from .mdev import Mdev

        body: dict[str, Any] = {"parent": parent, "type_id": type_id}
        if uuid is not None:
            body["uuid"] = uuid
        reply: DeviceDescription = await self.call_typed(Command.MDEV_CREATE, body)
        return Mdev(self, reply)

    async def remove_mdev(self, uuid: DeviceRef) -> None:
        """Remove an mdev you own (its UUID or the Mdev itself)."""
        mdev = self._mdevs.get(device_id(uuid))
        if mdev is not None:
            mdev.close()
        await self.call(Command.MDEV_REMOVE, {"uuid": device_id(uuid)})

    async def vfio_user_expose(
        self, uuid: DeviceRef, path: str, mode: int = 0o600
    ) -> VfioUserEndpoint:
        """Serve the ``dsa-1dwq`` mdev ``uuid`` you own as a real vfio-user PCI device on the
        Unix socket ``path`` (for QEMU's ``vfio-user-pci``). Its DMA then belongs to the
        vfio-user client; it ends with :meth:`vfio_user_unexpose` or with the mdev."""
        body = {"uuid": device_id(uuid), "path": path, "mode": mode}
        reply: VfioUserEndpoint = await self.call_typed(Command.VFIO_USER_EXPOSE, body)
        return reply

    async def vfio_user_unexpose(self, uuid: str) -> None:
        await self.call(Command.VFIO_USER_UNEXPOSE, {"uuid": uuid})

    async def devices(self, *, everything: bool = False) -> list[DeviceDescription]:
        """Your own devices; ``everything=True`` (admin role) lists every client's."""
        reply: MdevListReply = await self.call_typed(Command.MDEV_LIST, {"all": everything})
        return reply.devices

    async def register_device(self, name: str, pasid_bits: int = 20) -> RegisteredDevice:
        """An external emulator's device: the reply carries a ``token`` to hand to its owner."""
        body = {"name": name, "pasid_bits": pasid_bits}
        reply: RegisteredDevice = await self.call_typed(Command.BUS_REGISTER_DEVICE, body)
        return reply

    async def unregister_device(self, uuid: DeviceRef) -> None:
        await self.call(Command.BUS_UNREGISTER_DEVICE, {"uuid": device_id(uuid)})

    async def claim_device(self, uuid: DeviceRef, token: str | None = None) -> DeviceDescription:
        """Own an emulator's device (with its token) or a started definition's mdev."""
        body: dict[str, Any] = {"uuid": device_id(uuid)}
        if token is not None:
            body["token"] = token
        reply: DeviceDescription = await self.call_typed(Command.DEVICE_CLAIM, body)
        return reply

    async def group(self, group_id: int) -> GroupInfo:
        reply: GroupInfo = await self.call_typed(Command.GROUP_INFO, {"group": group_id})
        return reply

    async def groups(self, *, everything: bool = False) -> list[GroupInfo]:
        """Your own groups; ``everything=True`` (admin role) lists every client's."""
        reply: GroupListReply = await self.call_typed(Command.GROUP_LIST, {"all": everything})
        return reply.groups

    # ---- domains, attach, map -------------------------------------------------------------

    async def alloc_domain(
        self,
        type: str = "paging",
        *,
        bus: str = "mdev",
        levels: int = 4,
        user_managed: bool = False,
        lazy: bool = False,
        pt_root: int | None = None,
        dirty_tracking: bool = False,
        nest_parent: bool = False,
    ) -> Domain:
        """A new domain: a :class:`~siov.Domain` (its ``id``; ``info`` as allocated), which
        every method taking a domain accepts. ``dirty_tracking`` (SPEC §8.17), ``nest_parent``
        (SPEC §8.20)."""
        body: dict[str, Any] = {
            "bus": bus,
            "type": type,
            "levels": levels,
            "user_managed": user_managed,
            "lazy": lazy,
        }
        if pt_root is not None:
            body["pt_root"] = pt_root
        if dirty_tracking:  # SPEC §8.17
            body["dirty_tracking"] = True
        if nest_parent:  # SPEC §8.20
            body["nest_parent"] = True
        reply: DomainInfo = await self.call_typed(Command.DOMAIN_ALLOC, body)
        return Domain(reply)

    async def free_domain(self, domain: DomainRef) -> None:
        await self.call(Command.DOMAIN_FREE, {"domain": domain_id(domain)})

    async def domains(self, *, everything: bool = False) -> list[DomainInfo]:
        """Your own domains; ``everything=True`` (admin role) lists every client's."""
        reply: DomainListReply = await self.call_typed(Command.DOMAIN_LIST, {"all": everything})
        return reply.domains

    def _track_domain(self, reply: DeviceDescription) -> DeviceDescription:
        """Keep an open Mdev's ``domain_id`` naming the domain its device is on now."""
        mdev = self._mdevs.get(reply.uuid)
        if mdev is not None:
            mdev.domain_id = reply.domain_id
        return reply

    async def attach_device(self, domain: DomainRef, device: DeviceRef) -> DeviceDescription:
        """Plain ``attach_device(domain, mdev)``: no aux-domain API. ``domain`` is an id or
        ``alloc_domain``'s reply, ``device`` a UUID or an Mdev; an open Mdev's ``domain_id``
        follows (it names the domain the device uses now)."""
        body = {"domain": domain_id(domain), "device": device_id(device)}
        return self._track_domain(await self.call_typed(Command.ATTACH_DEVICE, body))

    async def detach_device(
        self, device: DeviceRef, domain: DomainRef | None = None
    ) -> DeviceDescription:
        """Back to the default domain (an open Mdev's ``domain_id`` follows)."""
        body: dict[str, Any] = {"device": device_id(device)}
        if domain is not None:
            body["domain"] = domain_id(domain)
        return self._track_domain(await self.call_typed(Command.DETACH_DEVICE, body))

    async def attach_pasid(self, domain: DomainRef, device: DeviceRef, pasid: int) -> None:
        body = {"domain": domain_id(domain), "device": device_id(device), "pasid": pasid}
        await self.call(Command.ATTACH_PASID, body)

    async def replace_pasid(self, domain: DomainRef, device: DeviceRef, pasid: int) -> None:
        body = {"domain": domain_id(domain), "device": device_id(device), "pasid": pasid}
        await self.call(Command.REPLACE_PASID, body)

    async def detach_pasid(
        self, device: DeviceRef, pasid: int, domain: DomainRef | None = None
    ) -> None:
        body: dict[str, Any] = {"device": device_id(device), "pasid": pasid}
        if domain is not None:
            body["domain"] = domain_id(domain)
        await self.call(Command.DETACH_PASID, body)

    async def map(
        self,
        domain: DomainRef,
        phys: int,
        size: int,
        *,
        iova: int | None = None,
        read: bool = True,
        write: bool = True,
    ) -> int:
        """Map ``size`` bytes at ``phys`` into ``domain``; returns the IOVA (chosen when None).

        ``domain`` may be an Mdev: the domain its device is attached to now. Map in the
        granularity you will unmap: an unmap must cover whole earlier maps (SPEC §8.6)."""
        body: dict[str, Any] = {
            "domain": domain_id(domain),
            "phys": phys,
            "size": size,
            "prot": (1 if read else 0) | (2 if write else 0),
        }
        if iova is not None:
            body["iova"] = iova
        reply: MapReply = await self.call_typed(Command.MAP, body)
        return reply.iova

    async def unmap(self, domain: DomainRef, iova: int, size: int) -> int:
        """Unmap whole earlier mappings in the range; returns the bytes unmapped."""
        body = {"domain": domain_id(domain), "iova": iova, "size": size}
        reply: UnmapReply = await self.call_typed(Command.UNMAP, body)
        return reply.unmapped

    async def iova_to_phys(self, domain: DomainRef, iova: int) -> int:
        body = {"domain": domain_id(domain), "iova": iova}
        reply: IovaToPhysReply = await self.call_typed(Command.IOVA_TO_PHYS, body)
        return reply.phys

    async def iova_leaf(self, domain: DomainRef, iova: int) -> IovaToPhysReply:
        """:meth:`iova_to_phys` with the leaf's size: ``.phys`` and ``.page_size`` (4096,
        2 MiB or 1 GiB; 0 for an identity domain). ``ENOENT`` where nothing is mapped."""
        body = {"domain": domain_id(domain), "iova": iova}
        reply: IovaToPhysReply = await self.call_typed(Command.IOVA_TO_PHYS, body)
        return reply

    async def iotlb_entries(
        self, domain: DomainRef, *, pasid: int | None = None, page: int = 1024
    ) -> list[IotlbEntry]:
        """What the IOTLB caches for ``domain`` (one PASID of it, or every PASID), sorted by
        (PASID, IOVA): each entry's page size, physical base, writable/dirty bits and hits.
        An inspection: it counts no hit. Asks again, ``page`` entries at a time, until the
        listing is whole (an admin may name another client's domain)."""
        out: list[IotlbEntry] = []
        body: dict[str, Any] = {"domain": domain_id(domain), "pasid": pasid, "max_entries": page}
        while True:
            reply: IotlbEntriesReply = await self.call_typed(Command.IOTLB_ENTRIES, body)
            out.extend(reply.entries)
            if reply.next_iova is None or reply.next_pasid is None:
                return out
            body |= {"start_pasid": reply.next_pasid, "start_iova": reply.next_iova}

    async def dirty_bitmap(
        self, domain: int, iova: int, size: int, *, clear: bool = False
    ) -> bytes:
        body = {"domain": domain, "iova": iova, "size": size, "clear": clear}
        reply: DirtyBitmapReply = await self.call_typed(Command.DIRTY_BITMAP, body)
        return reply.bitmap

    async def invalidate(
        self,
        scope: str,
        *,
        domain: int | None = None,
        device: str | None = None,
        pasid: int | None = None,
        iova: int | None = None,
        am: int = 0,
    ) -> int:
        """IOTLB invalidation: ``global``, ``domain``, ``pasid`` or ``range`` (2**am pages)."""
        body: dict[str, Any] = {"scope": scope, "am": am}
        for key, value in (
            ("domain", domain),
            ("device", device),
            ("pasid", pasid),
            ("iova", iova),
        ):
            if value is not None:
                body[key] = value
        reply: InvalidateReply = await self.call_typed(Command.IOTLB_INVALIDATE, body)
        return reply.invalidated

    # ---- external emulators: DMA through the IOMMU -------------------------------------------

    async def dma_read(self, device: DeviceRef, iova: int, length: int, *, pasid: int = 0) -> bytes:
        """Read as the registered device through the IOMMU; a failed translation raises
        :class:`~siov.DmaFault` (``iova``, ``done``, ``reason``)."""
        body = {"device": device_id(device), "iova": iova, "length": length, "pasid": pasid}
        reply: DmaReadReply = await self.call_typed(Command.DMA_READ, body)
        return reply.data

    async def dma_write(self, device: DeviceRef, iova: int, data: bytes, *, pasid: int = 0) -> int:
        """Write as the registered device; a failed translation raises
        :class:`~siov.DmaFault` whose ``done`` bytes were written."""
        body = {"device": device_id(device), "iova": iova, "data": bytes(data), "pasid": pasid}
        reply: DmaWriteReply = await self.call_typed(Command.DMA_WRITE, body)
        return reply.written

    async def translate(
        self, device: DeviceRef, iova: int, length: int, *, write: bool = False, pasid: int = 0
    ) -> TranslateReply:
        """ATS-like: the physical runs behind ``[iova, iova+length)`` and the fault, if any.

        The runs are addresses in the daemon's physical space: an emulator cannot reach that
        memory (it belongs to the owner's memfds) and moves data with :meth:`dma_read` /
        :meth:`dma_write`. Use the runs to see what a range maps to (page boundaries,
        permissions, where it stops), as a device's ATS cache would."""
        body = {
            "device": device_id(device),
            "iova": iova,
            "length": length,
            "write": write,
            "pasid": pasid,
        }
        reply: TranslateReply = await self.call_typed(Command.TRANSLATE, body)
        return reply

    # ---- SVA and the user WQ char device -------------------------------------------------------

    async def _with_own_mm(self, command: Command, body: dict[str, Any]) -> Any:
        """Send ``command`` with this process's own /proc/self/mem (O_RDWR: the consent to
        be reached) and /proc/self/maps; our copies are closed once the message is sent."""
        mem = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            maps = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(mem)
            raise
        try:
            return await self.call_typed(command, body, fds=[mem, maps])
        finally:
            os.close(mem)
            os.close(maps)

    async def sva_bind(self, dev: str) -> SvaBindReply:
        """Bind a PASID of ``dev`` (an mdev UUID) to this process's address space
        (``iommu_sva_bind_device``): its ``pasid`` and ``domain``. Descriptors tagged with
        that PASID (SUBMIT ``pasid=`` on a shared-WQ mdev) carry this process's virtual
        addresses."""
        reply: SvaBindReply = await self._with_own_mm(Command.SVA_BIND, {"dev": dev})
        return reply

    async def sva_unbind(self, dev: str, pasid: int) -> None:
        await self.call(Command.SVA_UNBIND, {"dev": dev, "pasid": pasid})

    async def wq_open(self, device: str, wq: int) -> WqOpenReply:
        """``open("/dev/dsa/wq<D>.<wq>")`` as this process: its ``handle``, ``pasid``,
        ``mode``, ``size``, ``wq`` and ``domain``. Only an enabled user WQ opens; a dedicated
        one has one opener at a time."""
        reply: WqOpenReply = await self._with_own_mm(Command.WQ_OPEN, {"device": device, "wq": wq})
        return reply

    async def wq_submit(self, handle: int, descriptors: bytes, *, posted: bool = False) -> bytes:
        """Write descriptors to the opened WQ's portal: one result byte per descriptor
        (0 accepted, 1 retry, 2 dropped). ``posted`` sends with the no-reply flag, as a
        MOVDIR64B is posted: nothing comes back, not even an error, and ``b""`` is returned."""
        body = {"handle": handle, "descriptors": bytes(descriptors)}
        if posted:
            await self.send_no_reply(Command.WQ_SUBMIT, body)
            return b""
        reply: WqSubmitReply = await self.call_typed(Command.WQ_SUBMIT, body)
        return reply.results

    async def wq_close(self, handle: int) -> None:
        """``close()`` of the char device: the opener's work is drained, its PASID unbound."""
        await self.call(Command.WQ_CLOSE, {"handle": handle})

    # ---- accelerator ------------------------------------------------------------------------

    async def open_mdev(self, uuid: str) -> Mdev:
        """An :class:`~siov.mdev.Mdev` for an accelerator mdev you created."""
        from .errors import NotFound
        from .mdev import Mdev

        for info in await self.devices():
            if info.uuid == uuid.lower():
                return self._mdevs.get(info.uuid) or Mdev(self, info)
        raise NotFound(2, f"no device {uuid}")

    async def create_dsa_mdev(
        self, type_id: str = "dsa-1dwq", parent: str = "dsa0", uuid: str | None = None
    ) -> Mdev:
        """Create an accelerator mdev (``dsa-1dwq``: a dedicated WQ; ``dsa-1swq``: a share of
        a shared WQ) and open it."""
        return await self.create_mdev(parent, type_id, uuid)

    async def accel_list(self) -> list[dict[str, Any]]:
        """``accel-config list``: every device with its groups, engines and WQs (accel-config's
        JSON document, so maps, not records)."""
        reply: AccelDevicesReply = await self.call_typed(Command.ACCEL_LIST)
        return reply.devices

    async def accel_save_config(self) -> list[dict[str, Any]]:
        """``accel-config save-config``: what ``accel_load_config`` takes back."""
        reply: AccelSaveConfigReply = await self.call_typed(Command.ACCEL_SAVE_CONFIG)
        return reply.config

    async def accel_load_config(
        self, config: list[dict[str, Any]], *, enable: bool = False
    ) -> list[dict[str, Any]]:
        """``accel-config load-config [-e]`` (admin): the listing after it. Enabled devices
        are skipped (see :meth:`accel_load_config_report` for what was skipped, and ``-f``)."""
        report = await self.accel_load_config_report(config, enable=enable)
        return report.devices

    async def accel_load_config_report(
        self, config: list[dict[str, Any]], *, enable: bool = False, force: bool = False
    ) -> AccelLoadConfigReply:
        """``accel-config load-config [-e] [-f]`` (admin): ``devices`` (the listing after it),
        ``messages`` (what accel-config prints on stderr: "dsa0 is active. Skipping...") and
        ``enabled`` (its "Enabling ..." lines with ``-e``)."""
        body = {"config": config, "enable": enable, "force": force}
        reply: AccelLoadConfigReply = await self.call_typed(Command.ACCEL_LOAD_CONFIG, body)
        return reply

    async def accel_config_device(self, device: str, /, **attrs: Any) -> AccelConfigDeviceReply:
        body = {"device": device, "attrs": attrs}
        reply: AccelConfigDeviceReply = await self.call_typed(Command.ACCEL_CONFIG_DEVICE, body)
        return reply

    async def accel_evl_read(
        self, device: str = "dsa0", *, max_entries: int = 64, arm: bool = False
    ) -> AccelEvlReadReply:
        """Consume up to ``max_entries`` 64-byte entries of the device's event log (admin);
        ``arm`` asks for one EVENT_EVL when the next entry is written."""
        body = {"device": device, "max": max_entries, "arm": arm}
        reply: AccelEvlReadReply = await self.call_typed(Command.ACCEL_EVL_READ, body)
        return reply

    async def accel_config_group(self, group: str, /, **attrs: Any) -> AccelConfigGroupReply:
        """``accel-config config-group dsa0/group0.0 ...`` (admin)."""
        body = {"group": group, "attrs": attrs}
        reply: AccelConfigGroupReply = await self.call_typed(Command.ACCEL_CONFIG_GROUP, body)
        return reply

    async def accel_config_engine(self, engine: str, /, **attrs: Any) -> AccelConfigEngineReply:
        """``accel-config config-engine dsa0/engine0.1 --group-id N`` (admin)."""
        body = {"engine": engine, "attrs": attrs}
        reply: AccelConfigEngineReply = await self.call_typed(Command.ACCEL_CONFIG_ENGINE, body)
        return reply

    async def accel_config_wq(self, wq: str, /, **attrs: Any) -> AccelConfigWqReply:
        """``accel-config config-wq dsa0/wq0.1 ...`` (admin): ``mode``, ``size``, ..."""
        body = {"wq": wq, "attrs": attrs}
        reply: AccelConfigWqReply = await self.call_typed(Command.ACCEL_CONFIG_WQ, body)
        return reply

    async def accel_enable_device(self, device: str) -> None:
        await self.call(Command.ACCEL_ENABLE_DEVICE, {"device": device})

    async def accel_disable_device(self, device: str) -> None:
        await self.call(Command.ACCEL_DISABLE_DEVICE, {"device": device})

    async def accel_enable_wq(self, wq: str) -> None:
        await self.call(Command.ACCEL_ENABLE_WQ, {"wq": wq})

    async def accel_disable_wq(self, wq: str) -> None:
        await self.call(Command.ACCEL_DISABLE_WQ, {"wq": wq})

    # ---- persistent definitions (mdevctl style) ---------------------------------------------

    async def define(
        self,
        parent: str | None,
        mdev_type: str | None = None,
        *,
        uuid: str | None = None,
        start: str = "manual",
        attrs: list[dict[str, str]] | None = None,
        config: dict[str, Any] | None = None,
        replace: bool = False,
    ) -> DefinitionInfo:
        """Persist an mdev definition (admin); ``config`` is mdevctl's single-definition JSON.
        ``replace=True`` is mdevctl modify: the definition of ``parent`` + ``uuid`` must exist
        and is replaced."""
        body: dict[str, Any] = {"start": start, "replace": replace}
        for key, value in (
            ("parent", parent),
            ("mdev_type", mdev_type),
            ("uuid", uuid),
            ("config", config),
        ):
            if value is not None:
                body[key] = value
        if attrs:
            body["attrs"] = attrs
        reply: MdevDefineReply = await self.call_typed(Command.MDEV_DEFINE, body)
        return reply.single()

    async def define_many(
        self,
        definitions: list[dict[str, Any]],
        *,
        parent: str | None = None,
        uuid: str | None = None,
    ) -> list[DefinitionInfo]:
        """Define every entry of mdevctl's list shape ``[{parent: [{uuid: config}]}]`` at
        once, all or none (admin); ``parent``/``uuid`` pick the entries to define."""
        body: dict[str, Any] = {"definitions": definitions}
        if parent is not None:
            body["parent"] = parent
        if uuid is not None:
            body["uuid"] = uuid
        reply: MdevDefineReply = await self.call_typed(Command.MDEV_DEFINE, body)
        return list(reply.definitions or [])

    async def undefine(self, uuid: str, parent: str | None = None) -> list[DefinitionRef]:
        """Forget the definitions of ``uuid`` (only under ``parent`` when given), as mdevctl
        undefine does; returns the ``{uuid, parent}`` undefined."""
        body: dict[str, Any] = {"uuid": uuid}
        if parent is not None:
            body["parent"] = parent
        reply: UndefineReply = await self.call_typed(Command.MDEV_UNDEFINE, body)
        return reply.undefined

    async def start(
        self,
        uuid: str | None = None,
        *,
        parent: str | None = None,
        mdev_type: str | None = None,
        attrs: list[dict[str, str]] | None = None,
        config: dict[str, Any] | None = None,
    ) -> DeviceDescription:
        """Create a defined mdev (``parent`` when its UUID is defined under several), or a
        transient one from ``parent`` and ``mdev_type`` (+ ``attrs``) or ``config``; it is
        owned by the host until someone claims it. Attributes are written in order and a
        failed write fails the start."""
        body: dict[str, Any] = {}
        for key, value in (
            ("uuid", uuid),
            ("parent", parent),
            ("mdev_type", mdev_type),
            ("config", config),
        ):
            if value is not None:
                body[key] = value
        if attrs:
            body["attrs"] = attrs
        reply: DeviceDescription = await self.call_typed(Command.MDEV_START, body)
        return reply

    async def set_attrs(self, uuid: str, attrs: list[dict[str, str]]) -> None:
        """Write attributes of a running mdev in order (admin; mdevctl modify --live)."""
        await self.call(Command.MDEV_SET_ATTRS, {"uuid": uuid, "attrs": attrs})

    async def stop(self, uuid: str) -> None:
        await self.call(Command.MDEV_STOP, {"uuid": uuid})

    async def defined(
        self, *, parent: str | None = None, uuid: str | None = None
    ) -> ListDefinedReply:
        """The ``definitions`` and mdevctl's ``dumpjson``; with ``uuid``, also its ``config``."""
        body: dict[str, Any] = {}
        if parent is not None:
            body["parent"] = parent
        if uuid is not None:
            body["uuid"] = uuid
        reply: ListDefinedReply = await self.call_typed(Command.MDEV_LIST_DEFINED, body)
        return reply

    async def aclose(self) -> None:
        for mdev in list(self._mdevs.values()):
            mdev.close()  # its eventfds
        trio.lowlevel.notify_closing(self._raw)  # a reader waiting on it wakes, not hangs
        self._raw.close()
        self._sock.close()


@asynccontextmanager
async def connect(
    path: str | None = None,
    *,
    name: str = "siov-python",
    key_path: str | None = None,
    event_buffer: int = 4096,
) -> AsyncIterator[Client]:
    """Connect to siovd, negotiate, authenticate if asked, and yield a :class:`Client`.

    ``path`` defaults to ``$SIOV_SOCKET`` or the daemon's default socket; ``key_path`` (for
    key authentication) to ``$SIOV_KEY``.
    """
    path = path or default_socket_path()
    key_path = key_path or os.environ.get("SIOV_KEY")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConnectionClosed(f"cannot connect to siovd at {path}: {exc.strerror}") from None
    client = Client(sock, event_buffer=event_buffer)
    error: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._reader)
            try:
                await client.negotiate(name, key_path=key_path)
                yield client
            except Exception as exc:
                # Re-raised below, outside the nursery, so callers catch SiovError itself
                # rather than an ExceptionGroup around it.
                error = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    if error is not None:
        raise error


__all__ = [
    "Client",
    "DeviceRef",
    "DomainRef",
    "Event",
    "EventFilter",
    "EventStream",
    "Reply",
    "connect",
    "default_socket_path",
    "device_id",
    "domain_id",
    "event_matcher",
]
