"""The daemon's background tasks: one per accelerator engine, one per page request that a
blocked descriptor waits on, and the IOMMU's lazy-flush timer.

:func:`daemon_tasks` runs them in the server's nursery. The model stays synchronous: a task
calls into :class:`~siovd.service.accel_runtime.AccelRuntime` and awaits only between
descriptors, so a descriptor's memory is never touched across a checkpoint.
"""

from __future__ import annotations

import trio

from siovd.model.accel import Engine, Group
from siovd.service.accel_runtime import AccelRuntime, PageRequest
from siovd.service.daemon import Daemon


class EngineTasks:
    """Wakes engine tasks when their group has work, and waits out page requests."""

    def __init__(self, runtime: AccelRuntime, daemon: Daemon, nursery: trio.Nursery) -> None:
        self.runtime = runtime
        self.daemon = daemon
        self.nursery = nursery
        self._wakeups: dict[Engine, trio.Event] = {}

    def wake(self, group: Group) -> None:
        for engine in group.engines:
            event = self._wakeups.get(engine)
            if event is not None:
                event.set()

    async def engine(self, engine: Engine) -> None:
        """Run the engine's group a time slice at a time while it has work; sleep otherwise."""
        run_group = self.runtime.run_group
        while True:
            # A fresh event before looking for work: a wake during the run is not lost.
            wakeup = self._wakeups[engine] = trio.Event()
            group = engine.group
            if group is not None and run_group(group, engine):
                await trio.lowlevel.checkpoint()
            else:
                await wakeup.wait()

    def start_waiter(self, request: PageRequest) -> None:
        self.nursery.start_soon(self.wait_page, request)

    async def wait_page(self, request: PageRequest) -> None:
        """Wait for the page response (or the timeout) and resume the descriptor."""
        answered = trio.Event()
        request.wake = answered.set
        if request.response is None and not request.cancelled:
            with trio.move_on_after(self.daemon.config.iommu.page_request_timeout_s):
                await answered.wait()
        self.runtime.resume(request)


async def lazy_flush(daemon: Daemon) -> None:
    """Lazy domains (DMA_FQ) queue their IOTLB flushes; flush them every ``lazy_flush_ms``."""
    while True:
        await trio.sleep(daemon.config.iommu.lazy_flush_ms / 1000)
        if daemon.iommu.flush_lazy():
            daemon.close_dead_mappings()


async def daemon_tasks(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Start the engines, the page-request waiters' home and the lazy-flush timer; runs until
    cancelled with the server."""
    runtime = daemon.accel_runtime
    async with trio.open_nursery() as nursery:
        tasks = EngineTasks(runtime, daemon, nursery)
        for device in daemon.accel.devices.values():
            for engine in device.engines:
                tasks._wakeups[engine] = trio.Event()
                nursery.start_soon(tasks.engine, engine)
        runtime.wake_engines = tasks.wake
        runtime.start_waiter = tasks.start_waiter
        sva = daemon.sva
        sva.start_watch = lambda domain: nursery.start_soon(sva.watch, domain)
        nursery.start_soon(lazy_flush, daemon)
        task_status.started()
