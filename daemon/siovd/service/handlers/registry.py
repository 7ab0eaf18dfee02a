"""The table from command number to handler.

A handler is a thin, synchronous function: its request arrives validated against its schema,
it calls the domain model, it returns the reply. Nothing a handler does waits: work that takes
time (descriptors, page requests) is queued to the engine tasks, which answer with events;
a request that needs long work in the model first (MAP, UNMAP, DIRTY_BITMAP), or waits for
another party (PAGE_REQUEST, an unmap's ATS invalidations), returns a :class:`Deferred`,
which the server runs a turn at a time (or sleeps on) before it replies.

Each command's reply schema comes from :data:`siov_protocol.replies.REPLIES` (a command with
none cannot be registered): a handler returns an instance of it and the server encodes it, in
one place; under ``SIOVD_CHECK_REPLIES=1`` it also checks the instance is of that schema and
decodes back (:attr:`Handler.reply`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from siov_protocol import Command
from siov_protocol.replies import REPLIES
from siov_protocol.schema import decode

if TYPE_CHECKING:
    from siovd.model.budget import Budget
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session


@dataclass(slots=True)
class Context:
    """What a handler may use besides its request."""

    daemon: Daemon
    session: Session
    msg_id: int
    command: int
    fds: list[int] = field(default_factory=list)  # the handler owns them: keep or close


#: a schema instance of the command's REPLIES entry, or ``(instance, fds to send)``
Reply = Any


class Job(Protocol):
    """Long work in the model (a map, an unmap, a dirty read): one step under a budget."""

    def step(self, budget: Budget) -> bool: ...


@dataclass(slots=True)
class Deferred:
    """What a handler returns for a request that needs long work first: the server runs
    ``job`` a turn at a time (other connections run between turns; this connection reads its
    next request only after), then replies with ``finish()``. An error a step raises is the
    reply instead."""

    job: Job
    finish: Callable[[], Reply]
    #: For a request that waits for another party (the owner's page response, a device's
    #: ATS invalidation completion) rather than works: awaited between steps instead of a
    #: bare checkpoint; it returns when woken or at its deadline, and only this connection
    #: waits meanwhile.
    pause: Callable[[], Awaitable[None]] | None = None


HandlerFn = Callable[[Context, Any], Reply]


@dataclass(frozen=True, slots=True)
class Handler:
    command: Command
    schema: type  # the request's
    reply: type  # the successful reply's (siov_protocol.replies.REPLIES)
    fn: HandlerFn
    max_fds: int  # fds the command takes; more is EINVAL
    admin: bool  # admin role only


def typed(fn: Callable[[Context, Any], Any]) -> Callable[[Context, Any], Any]:
    """For a handler that builds its reply as a map (the IOMMU extensions): the map becomes
    its command's REPLIES instance, validated on the way (a Deferred's ``finish`` too), so the
    server still encodes an instance in its one place."""

    def as_instance(ctx: Context, body: Any) -> Any:
        if isinstance(body, dict):
            return decode(REPLIES[ctx.command], body)
        return body

    def wrapped(ctx: Context, req: Any) -> Any:
        result = fn(ctx, req)
        if isinstance(result, Deferred):
            finish = result.finish
            result.finish = lambda: as_instance(ctx, finish())
            return result
        return as_instance(ctx, result)

    wrapped.__name__ = getattr(fn, "__name__", "handler")
    wrapped.__doc__ = fn.__doc__
    return wrapped


class Registry:
    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}

    def command(
        self,
        command: Command,
        schema: type,
        *,
        max_fds: int = 0,
        admin: bool = False,
    ) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            if command in self.handlers:
                raise RuntimeError(f"{command.name} registered twice")
            reply = REPLIES.get(command)
            if reply is None:
                raise RuntimeError(f"{command.name} has no reply schema in REPLIES")
            self.handlers[command] = Handler(command, schema, reply, fn, max_fds, admin)
            return fn

        return register


registry = Registry()
