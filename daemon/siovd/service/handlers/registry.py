"""The table from command number to handler.

A handler is a thin function: its request arrives validated against its schema, it calls the
domain model, it returns the reply body. Handlers that may wait (a page request, a slow drain)
are ``async`` and run in their own task, so one client can have many requests in flight.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from siov_protocol import Command
from siovd.service.session import Phase

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


Reply = dict[str, Any] | Any | None


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


SyncFn = Callable[[Context, Any], Reply]
AsyncFn = Callable[[Context, Any], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Handler:
    command: Command
    schema: type
    fn: SyncFn | AsyncFn
    is_async: bool
    phase: Phase  # the earliest phase the command is allowed in
    max_fds: int  # fds the command takes; more is EINVAL
    admin: bool  # admin role only


class Registry:
    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}

    def command(
        self,
        command: Command,
        schema: type,
        *,
        phase: Phase = Phase.READY,
        max_fds: int = 0,
        admin: bool = False,
    ) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            if command in self.handlers:
                raise RuntimeError(f"{command.name} registered twice")
            self.handlers[command] = Handler(
                command, schema, fn, inspect.iscoroutinefunction(fn), phase, max_fds, admin
            )
            return fn

        return register


registry = Registry()
