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
from .mdev import Mdev

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
    # IOMMU extensions (SPEC §8.14)
    resv_regions = _blocking(Client.resv_regions)
    add_resv_region = _blocking(Client.add_resv_region)
    iova_ranges = _blocking(Client.iova_ranges)
    allow_iovas = _blocking(Client.allow_iovas)
    set_dirty_tracking = _blocking(Client.set_dirty_tracking)
    get_dirty_bitmap = _blocking(Client.get_dirty_bitmap)
    unmap_dirty = _blocking(Client.unmap_dirty)
    hw_info = _blocking(Client.hw_info)
    page_request = _blocking(Client.page_request)
    trigger_iopf = _blocking(Client.trigger_iopf)
    alloc_nested = _blocking(Client.alloc_nested)
    hwpt_invalidate = _blocking(Client.hwpt_invalidate)
    invalidate = _blocking(Client.invalidate)
    dma_read = _blocking(Client.dma_read)
    dma_write = _blocking(Client.dma_write)
    translate = _blocking(Client.translate)
    page_response = _blocking(Client.page_response)
    accel_list = _blocking(Client.accel_list)
    accel_save_config = _blocking(Client.accel_save_config)
    accel_load_config = _blocking(Client.accel_load_config)
    accel_config_device = _blocking(Client.accel_config_device)
    accel_config_group = _blocking(Client.accel_config_group)
    accel_config_engine = _blocking(Client.accel_config_engine)
    accel_config_wq = _blocking(Client.accel_config_wq)
    accel_enable_device = _blocking(Client.accel_enable_device)
    accel_disable_device = _blocking(Client.accel_disable_device)
    accel_enable_wq = _blocking(Client.accel_enable_wq)
    accel_disable_wq = _blocking(Client.accel_disable_wq)
    define = _blocking(Client.define)
    undefine = _blocking(Client.undefine)
    start = _blocking(Client.start)
    stop = _blocking(Client.stop)
    defined = _blocking(Client.defined)

    def open_mdev(self, uuid: str) -> BlockingMdev:
        """A :class:`BlockingMdev` for an accelerator mdev you created."""
        return BlockingMdev(self, self._call(Client.open_mdev, uuid))

    def create_dsa_mdev(
        self, type_id: str = "dsa-1dwq", parent: str = "dsa0", uuid: str | None = None
    ) -> BlockingMdev:
        """Create an accelerator mdev and open it (see :meth:`Client.create_dsa_mdev`)."""
        return BlockingMdev(self, self._call(Client.create_dsa_mdev, type_id, parent, uuid))

    def _run(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run ``fn(*args, **kwargs)`` on the client's trio thread."""
        if self._token is None:
            raise ConnectionClosed("the client is closed")

        async def run() -> R:
            return await fn(*args, **kwargs)

        try:
            return trio.from_thread.run(run, trio_token=self._token)
        except trio.RunFinishedError:
            raise ConnectionClosed("the client is closed") from None


def _mdev_blocking(
    method: Callable[Concatenate[Mdev, P], Awaitable[R]],
) -> Callable[Concatenate[BlockingMdev, P], R]:
    def wrapper(self: BlockingMdev, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._owner._run(method, self.mdev, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class BlockingMdev:
    """:class:`~siov.mdev.Mdev` with blocking methods (interrupts are still watched on the
    client's trio thread, so :meth:`wait` wakes as soon as one arrives)."""

    def __init__(self, owner: BlockingClient, mdev: Mdev) -> None:
        self._owner = owner
        self.mdev = mdev

    @property
    def uuid(self) -> str:
        return self.mdev.uuid

    @property
    def info(self) -> dict[str, Any]:
        return self.mdev.info

    @property
    def domain_id(self) -> int | None:
        return self.mdev.domain_id

    @property
    def default_pasid(self) -> int:
        return self.mdev.default_pasid

    @property
    def irq_counts(self) -> list[int]:
        return self.mdev.irq_counts

    submit = _mdev_blocking(Mdev.submit)
    portal_write = _mdev_blocking(Mdev.portal_write)
    read_registers = _mdev_blocking(Mdev.read_registers)
    device_info = _mdev_blocking(Mdev.device_info)
    region_info = _mdev_blocking(Mdev.region_info)
    set_irqs = _mdev_blocking(Mdev.set_irqs)
    disable_irqs = _mdev_blocking(Mdev.disable_irqs)
    wait = _mdev_blocking(Mdev.wait)
    run = _mdev_blocking(Mdev.run)
    remove = _mdev_blocking(Mdev.remove)


__all__ = ["BlockingClient", "BlockingMdev", "SiovError"]
