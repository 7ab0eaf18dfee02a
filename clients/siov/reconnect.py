"""Surviving a daemon restart: wait for the socket, reconnect, re-create state, carry on.

The daemon keeps nothing of a client across a restart except persistent definitions (whose
mdevs come back with their UUIDs). So a client that must survive restarts splits its code in
two: ``setup(client)`` builds its state (memory, claims, domains, mappings) and returns it;
``work(client, state)`` does the job. :func:`run_with_reconnect` runs both and, when the
connection drops, waits for the daemon to come back and runs them again.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from .client import Client, connect
from .errors import ConnectionClosed

S = TypeVar("S")
R = TypeVar("R")


async def wait_for_daemon(
    path: str | None = None,
    *,
    patience: float = 30.0,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> None:
    """Return once a daemon answers on ``path``; ``ConnectionClosed`` after ``patience`` s."""
    delay = first_delay
    with trio.move_on_after(patience):
        while True:
            try:
                async with connect(path, name="siov-wait") as client:
                    await client.ping()
                    return
            except ConnectionClosed:
                await trio.sleep(delay)
                delay = min(delay * 2, max_delay)
    raise ConnectionClosed(f"no daemon answered on {path} within {patience} s")


async def run_with_reconnect(
    path: str | None,
    setup: Callable[[Client], Awaitable[S]],
    work: Callable[[Client, S], Awaitable[R]],
    *,
    attempts: float = math.inf,
    patience: float = 30.0,
    key_path: str | None = None,
    on_reconnect: Callable[[int, ConnectionClosed], None] | None = None,
) -> R:
    """Run ``work`` on a fresh ``setup`` until it completes, reconnecting after a lost daemon.

    ``attempts`` bounds the number of connections; ``patience`` bounds each wait for the daemon
    to come back. ``on_reconnect(n, error)`` is told about every reconnection.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            async with connect(path, key_path=key_path) as client:
                state = await setup(client)
                return await work(client, state)
        except ConnectionClosed as exc:
            if attempt >= attempts:
                raise
            if on_reconnect is not None:
                on_reconnect(attempt, exc)
            await wait_for_daemon(path, patience=patience)
