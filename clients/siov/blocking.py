"""A blocking client with the async client's method names, for code that is not on trio.

It runs the async :class:`~siov.client.Client` on a trio loop in a private thread and calls
into it with ``trio.from_thread``; every method blocks until its reply arrives.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from .client import Client, Event, Reply, connect
from .errors import ConnectionClosed, SiovError

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(
    method: Callable[Concatenate[Client, P], Awaitable[R]],
) -> Callable[Concatenate[BlockingClient, P], R]:
    def wrapper(self: BlockingClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(method, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class BlockingClient:
    """``with siov.BlockingClient(path) as client: client.ping()``"""

    def __init__(
        self, path: str | None = None, *, name: str = "siov-python", key_path: str | None = None
    ) -> None:
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, path, name, key_path), daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _main(self, path: str | None, name: str, key_path: str | None) -> None:
        try:
            async with connect(path, name=name, key_path=key_path) as client:
                self._client = client
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_events, client)
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._ready.set()

    async def _pump_events(self, client: Client) -> None:
        async for ev in client.events():
            self._events.put(ev)

    def _call(self, method: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        if self._client is None or self._token is None:
            raise ConnectionClosed("the client is closed")
        client = self._client

        async def run() -> R:
            return await method(client, *args, **kwargs)

        try:
            return trio.from_thread.run(run, trio_token=self._token)
        except trio.RunFinishedError:
            raise ConnectionClosed("the client is closed") from None

    def next_event(self, timeout: float | None = None) -> Event:
        """The next daemon event; ``queue.Empty`` after ``timeout`` seconds."""
        return self._events.get(timeout=timeout)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            stop = self._stop
            try:
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join()
        self._client = None

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> dict[str, Any]:
        return self._client.version if self._client else {}

    request: Callable[..., Reply] = _blocking(Client.request)
    call: Callable[..., dict[str, Any]] = _blocking(Client.call)
    ping = _blocking(Client.ping)
    info = _blocking(Client.info)
    stats = _blocking(Client.stats)
    register = _blocking(Client.register)
    alloc = _blocking(Client.alloc)
    unregister = _blocking(Client.unregister)
    memory = _blocking(Client.memory)
    types = _blocking(Client.types)
    create_mdev = _blocking(Client.create_mdev)
    remove_mdev = _blocking(Client.remove_mdev)
    devices = _blocking(Client.devices)
    register_device = _blocking(Client.register_device)
    unregister_device = _blocking(Client.unregister_device)
    claim_device = _blocking(Client.claim_device)
    group = _blocking(Client.group)
    groups = _blocking(Client.groups)
    alloc_domain = _blocking(Client.alloc_domain)
    free_domain = _blocking(Client.free_domain)
    domains = _blocking(Client.domains)
    attach_device = _blocking(Client.attach_device)
    detach_device = _blocking(Client.detach_device)
    attach_pasid = _blocking(Client.attach_pasid)
    replace_pasid = _blocking(Client.replace_pasid)
    detach_pasid = _blocking(Client.detach_pasid)
    map = _blocking(Client.map)
    unmap = _blocking(Client.unmap)
    iova_to_phys = _blocking(Client.iova_to_phys)
    dirty_bitmap = _blocking(Client.dirty_bitmap)
    invalidate = _blocking(Client.invalidate)
    dma_read = _blocking(Client.dma_read)
    dma_write = _blocking(Client.dma_write)
    translate = _blocking(Client.translate)
    define = _blocking(Client.define)
    undefine = _blocking(Client.undefine)
    start = _blocking(Client.start)
    stop = _blocking(Client.stop)
    defined = _blocking(Client.defined)


__all__ = ["BlockingClient", "SiovError"]
