"""A blocking client with the async client's method names, for code that is not on trio.

It runs the async :class:`~siov.client.Client` on a trio loop in a private thread and calls
into it with ``trio.from_thread``; every method blocks until its reply arrives.
"""

from __future__ import annotations

import collections
import functools
import inspect
import queue
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from siov_protocol.messages import VersionReply
from siov_protocol.replies import DeviceDescription

from .client import Client, Event, EventFilter, Reply, connect, event_matcher
from .errors import ConnectionClosed, SiovError
from .mdev import Mdev, _warn_key

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def _blocking(
    method: Callable[Concatenate[Client, P], Awaitable[R]],
) -> Callable[Concatenate[BlockingClient, P], R]:
    def wrapper(self: BlockingClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(method, *args, **kwargs)

    return _with_signature(wrapper, method)


def _with_signature(wrapper: F, method: Callable[..., Any]) -> F:
    """Give ``wrapper`` the name, doc and signature of ``method`` (what ``help()`` shows),
    its return annotation unwrapped from the coroutine."""
    functools.update_wrapper(wrapper, method)
    try:
        hints = typing.get_type_hints(method)
    except Exception:  # an annotation that does not resolve: keep the strings
        hints = {}
    sig = inspect.signature(method)
    params = [
        p.replace(annotation=hints.get(name, p.annotation)) for name, p in sig.parameters.items()
    ]
    returns = hints.get("return", sig.return_annotation)
    wrapper.__signature__ = sig.replace(parameters=params, return_annotation=returns)  # type: ignore[attr-defined]
    del wrapper.__wrapped__  # type: ignore[attr-defined]  # help() would show the coroutine
    return wrapper


class BlockingClient:
    """``with siov.BlockingClient(path) as client: client.ping()``"""

    def __init__(
        self, path: str | None = None, *, name: str = "siov-python", key_path: str | None = None
    ) -> None:
        self._client: Client | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._page_requests: queue.Queue[Event | None] | None = None
        self._held: collections.deque[Event] = collections.deque()
        self._held_lock = threading.Lock()
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
                    self._nursery = nursery
                    nursery.start_soon(self._pump_events, client)
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
            self._ready.set()

    async def _pump_events(self, client: Client) -> None:
        try:
            async for ev in client.events():
                self._events.put(ev)
        finally:
            self._events.put(None)  # the stream ended: wake whoever waits

    async def _pump_page_requests(self, client: Client, out: queue.Queue[Event | None]) -> None:
        try:
            async for ev in client.page_requests():
                out.put(ev)
        finally:
            out.put(None)

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

    def next_event(self, command: EventFilter = None, *, timeout: float | None = None) -> Event:
        """The next event, or the next one of ``command`` (as :meth:`Client.next_event`:
        a Command, number, name or collection). Events that do not match are kept for later
        calls and :meth:`events`. :class:`TimeoutError` after ``timeout`` seconds;
        :class:`~siov.ConnectionClosed` when the connection ends first."""
        wanted = event_matcher(command)
        with self._held_lock:
            for i, ev in enumerate(self._held):
                if wanted(ev):
                    del self._held[i]
                    return ev
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                got = self._events.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"no matching event within {timeout} s") from None
            if got is None:
                self._events.put(None)  # stays ended for every later caller
                raise ConnectionClosed("the event stream ended (the connection closed)")
            if wanted(got):
                return got
            with self._held_lock:
                self._held.append(got)

    def events(self) -> Iterator[Event]:
        """Every daemon event as it comes, blocking (``for ev in client.events():``), the
        ones a filtered :meth:`next_event` kept first; ends when the connection closes."""
        while True:
            try:
                yield self.next_event()
            except ConnectionClosed:
                return

    def page_requests(self, *, timeout: float | None = None) -> Iterator[Event]:
        """EVENT_PAGE_REQUEST as they come (as :meth:`Client.page_requests`: from the first
        call on they no longer appear in :meth:`events`); answer each with
        :meth:`page_response`. Stops after ``timeout`` seconds without one."""
        if self._page_requests is None:
            out: queue.Queue[Event | None] = queue.Queue()
            self._page_requests = out
            client = self._client
            if client is None or self._token is None or self._nursery is None:
                raise ConnectionClosed("the client is closed")
            nursery = self._nursery
            trio.from_thread.run_sync(
                nursery.start_soon, self._pump_page_requests, client, out, trio_token=self._token
            )
        requests = self._page_requests
        while True:
            try:
                ev = requests.get(timeout=timeout)
            except queue.Empty:
                return
            if ev is None:
                requests.put(None)
                return
            yield ev

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
    def version(self) -> VersionReply | None:
        return self._client.version if self._client else None

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
    remove_mdev = _blocking(Client.remove_mdev)
    devices = _blocking(Client.devices)
    vfio_user_expose = _blocking(Client.vfio_user_expose)
    vfio_user_unexpose = _blocking(Client.vfio_user_unexpose)
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
    iova_leaf = _blocking(Client.iova_leaf)
    iotlb_entries = _blocking(Client.iotlb_entries)
    dirty_bitmap = _blocking(Client.dirty_bitmap)
    # IOMMU extensions (SPEC §8.16-§8.20)
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
    ats_invalidate_done = _blocking(Client.ats_invalidate_done)  # SPEC §8.21
    unmap_report = _blocking(Client.unmap_report)
    # interrupt remapping (SPEC §8.22)
    ir_table_set = _blocking(Client.ir_table_set)
    ir_set_entry = _blocking(Client.ir_set_entry)
    ir_clear_entry = _blocking(Client.ir_clear_entry)
    ir_invalidate_iec = _blocking(Client.ir_invalidate_iec)
    set_msi_remap = _blocking(Client.set_msi_remap)
    invalidate = _blocking(Client.invalidate)
    dma_read = _blocking(Client.dma_read)
    dma_write = _blocking(Client.dma_write)
    translate = _blocking(Client.translate)
    page_response = _blocking(Client.page_response)
    accel_list = _blocking(Client.accel_list)
    accel_save_config = _blocking(Client.accel_save_config)
    accel_load_config = _blocking(Client.accel_load_config)
    accel_load_config_report = _blocking(Client.accel_load_config_report)
    accel_config_device = _blocking(Client.accel_config_device)
    accel_evl_read = _blocking(Client.accel_evl_read)
    accel_config_group = _blocking(Client.accel_config_group)
    accel_config_engine = _blocking(Client.accel_config_engine)
    accel_config_wq = _blocking(Client.accel_config_wq)
    accel_enable_device = _blocking(Client.accel_enable_device)
    accel_disable_device = _blocking(Client.accel_disable_device)
    accel_enable_wq = _blocking(Client.accel_enable_wq)
    accel_disable_wq = _blocking(Client.accel_disable_wq)
    define = _blocking(Client.define)
    define_many = _blocking(Client.define_many)
    set_attrs = _blocking(Client.set_attrs)
    undefine = _blocking(Client.undefine)
    start = _blocking(Client.start)
    stop = _blocking(Client.stop)
    defined = _blocking(Client.defined)
    sva_bind = _blocking(Client.sva_bind)
    sva_unbind = _blocking(Client.sva_unbind)
    wq_open = _blocking(Client.wq_open)
    wq_submit = _blocking(Client.wq_submit)
    wq_close = _blocking(Client.wq_close)

    def open_mdev(self, uuid: str) -> BlockingMdev:
        """A :class:`BlockingMdev` for an accelerator mdev you created."""
        return BlockingMdev(self, self._call(Client.open_mdev, uuid))

    def create_mdev(self, parent: str, type_id: str, uuid: str | None = None) -> BlockingMdev:
        """Create an mdev (see :meth:`Client.create_mdev`)."""
        return BlockingMdev(self, self._call(Client.create_mdev, parent, type_id, uuid))

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

    return _with_signature(wrapper, method)


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
    def info(self) -> DeviceDescription:
        return self.mdev.info

    def __getitem__(self, key: str) -> Any:
        """As :meth:`Mdev.__getitem__`: the map reply's keys, for one release (0.x)."""
        _warn_key("BlockingMdev", key)
        return self.mdev._key(key)

    @property
    def domain_id(self) -> int | None:
        """The domain the device is attached to now (see :attr:`Mdev.domain_id`)."""
        return self.mdev.domain_id

    @property
    def default_domain_id(self) -> int | None:
        return self.mdev.default_domain_id

    @property
    def group_id(self) -> int | None:
        return self.mdev.group_id

    @property
    def software_errors(self) -> collections.deque[dict[str, Any]]:
        return self.mdev.software_errors

    @property
    def software_error_count(self) -> int:
        return self.mdev.software_error_count

    @property
    def client(self) -> BlockingClient:
        return self._owner

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
