"""Clients that stop reading: bounded memory, a write timeout that drops them, no delay to others.

A stuck client is flooded two ways: with events (it owns the domain an emulator faults in, so
every fault is an EVENT_FAULT for it) and with replies to requests it pipelines and never reads.
Its event queue stays within ``limits.event_queue`` and counts what it drops; the daemon stops
reading it while a reply cannot be written (backpressure, not buffering); after
``server.write_timeout_s`` it is dropped and everything it owned is freed. Beside it a healthy
client's PINGs keep completing, each well within the write timeout, so none waited behind it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import trio

import siov
from siov_protocol import Command
from tests.conftest import make_config, start_daemon
from tests.daemonproc import LoggedDaemon, logged_siovd
from tests.helpers import settle
from tests.rawclient import AsyncRawClient, RawClient, body, frame

MiB = 1 << 20
WRITE_TIMEOUT_S = 3.0
EVENT_QUEUE = 64
#: A healthy client's PING must come back within this; a PING stuck behind a blocked write
#: would wait for the whole write timeout.
PING_BOUND_S = WRITE_TIMEOUT_S / 2
CONFIG = f"[server]\nwrite_timeout_s = {WRITE_TIMEOUT_S}\n[limits]\nevent_queue = {EVENT_QUEUE}\n"


@pytest.fixture
def daemon() -> Iterator[LoggedDaemon]:
    with logged_siovd(CONFIG) as d:
        yield d


class Healthy(threading.Thread):
    """PINGs with payloads, one after another, timing each."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.times: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with siov.BlockingClient(self.path) as c:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    payload = i.to_bytes(4, "little") * 256
                    start = time.monotonic()
                    assert c.ping(payload) == payload
                    self.times.append(time.monotonic() - start)
                    time.sleep(0.002)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> tuple[int, float]:
        self.stop.set()
        self.join(30)
        assert not self.is_alive(), "the healthy client's PING never came back"
        assert self.error is None, repr(self.error)
        return len(self.times), max(self.times)


class Flooder(threading.Thread):
    """An emulator doing DMA_READs to an unmapped IOVA, pipelined: each one faults."""

    def __init__(self, raw: RawClient, device: str) -> None:
        super().__init__(daemon=True)
        self.raw = raw
        self.stop = threading.Event()
        self.faults = 0
        self.error: BaseException | None = None
        fields = {"device": device, "iova": 0x7000_0000, "length": 8}
        self.batch = b"".join(frame(i, Command.DMA_READ, body(fields)) for i in range(256))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.raw.send_raw(self.batch)
                replies = 0
                while replies < 256:  # events may come too, once the device is ours again
                    replies += self.raw.recv().is_reply
                self.faults += 256
        except BaseException as exc:
            self.error = exc

    def finish(self) -> int:
        self.stop.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, repr(self.error)
        return self.faults


def dropped_logged(d: LoggedDaemon) -> bool:
    return any(
        e.get("event") == "client dropped" and "write timed out" in str(e.get("reason"))
        for e in d.log_entries()
    )


def test_a_client_that_stops_reading_events_is_dropped(daemon: LoggedDaemon) -> None:
    with siov.BlockingClient(daemon.path) as observer:
        fds, maps = daemon.fds(), daemon.memfd_maps()
        emu = RawClient(daemon.path, 10, negotiate=True)
        dev = emu.call(Command.BUS_REGISTER_DEVICE, {"name": "nic"})
        healthy = Healthy(daemon.path)
        healthy.start()
        settle(lambda: len(healthy.times) > 0, "the healthy client is up")
        base = observer.info().counts
        rss_before = daemon.rss_kib()

        # The stuck client owns the emulator's device and a domain, and some memory.
        stuck = RawClient(daemon.path, 10, negotiate=True, rcvbuf=4096)
        stuck.call(Command.DEVICE_CLAIM, {"uuid": dev["uuid"], "token": dev["token"]})
        mem = os.memfd_create("stuck", os.MFD_ALLOW_SEALING)
        os.ftruncate(mem, 2 * MiB)
        stuck.call(Command.MEM_REGISTER, {"size": 2 * MiB}, (mem,))
        os.close(mem)
        dom = stuck.call(Command.DOMAIN_ALLOC, {})["domain_id"]
        stuck.call(Command.ATTACH_DEVICE, {"domain": dom, "device": dev["uuid"]})
        # From here on it reads nothing.
        flooder = Flooder(emu, str(dev["uuid"]))
        flooder.start()
        settle(lambda: observer.stats().daemon.get("events_dropped", 0) > 0, "events dropped")
        settle(lambda: observer.info().counts == base, "the stuck client is dropped", 30)
        faults = flooder.finish()
        rounds, worst = healthy.finish()
        rss_after = daemon.rss_kib()

        stats = observer.stats().daemon
        assert stats["clients_dropped_stuck"] == 1
        assert stats["events_dropped"] > 0
        assert dropped_logged(daemon)
        settle(lambda: daemon.memfd_maps() == maps, "the stuck client's memory unmapped")
        emu.close()
        stuck.close()
        settle(lambda: daemon.fds() == fds, "fds back to the baseline")
    print(
        f"stuck on events: {faults} faults, {stats['events_dropped']} events dropped, "
        f"healthy PINGs {rounds} (worst {worst * 1000:.1f} ms), "
        f"RSS {rss_before} -> {rss_after} KiB"
    )
    assert worst < PING_BOUND_S
    assert rss_after - rss_before < 32 * 1024
    assert daemon.alive() and daemon.failures_logged() == []


def test_a_client_that_pipelines_without_reading_is_held_back_then_dropped(
    daemon: LoggedDaemon,
) -> None:
    with siov.BlockingClient(daemon.path) as observer:
        fds = daemon.fds()
        healthy = Healthy(daemon.path)
        healthy.start()
        settle(lambda: len(healthy.times) > 0, "the healthy client is up")
        base = observer.info().counts
        rss_before = daemon.rss_kib()

        stuck = RawClient(daemon.path, 10, negotiate=True, rcvbuf=4096)
        stuck.sock.setblocking(False)  # on the socket: the subject is a full send buffer
        ping = frame(7, Command.PING, body({"payload": b"r" * 60000}))  # a 60 KB reply each
        pushed = 0
        blocked_since: float | None = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pushed += stuck.sock.send(ping)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 0.5:
                    break  # the daemon stopped reading us: backpressure
                time.sleep(0.01)
        assert blocked_since is not None, "the daemon kept reading a client that reads nothing"
        settle(lambda: observer.info().counts == base, "the stuck client is dropped", 30)
        rounds, worst = healthy.finish()
        rss_after = daemon.rss_kib()
        assert observer.stats().daemon["clients_dropped_stuck"] == 1
        assert dropped_logged(daemon)
        stuck.close()
        settle(lambda: daemon.fds() == fds, "fds back to the baseline")
    print(
        f"stuck on replies: {pushed // 1024} KiB of requests accepted before backpressure, "
        f"healthy PINGs {rounds} (worst {worst * 1000:.1f} ms), "
        f"RSS {rss_before} -> {rss_after} KiB"
    )
    assert pushed < 16 * MiB
    assert worst < PING_BOUND_S
    assert rss_after - rss_before < 32 * 1024
    assert daemon.alive() and daemon.failures_logged() == []


async def test_the_event_queue_of_a_stuck_client_stays_bounded(
    nursery: trio.Nursery, sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """In process, so the stuck session's queue can be watched directly; on virtual time,
    so server.write_timeout_s passes while the faults keep coming, without a real wait."""
    limit = 16
    cfg = make_config(server={"write_timeout_s": 1.0}, limits={"event_queue": limit})
    running = await start_daemon(nursery, os.path.join(sock_dir, "q.sock"), cfg)
    stuck = await AsyncRawClient.connect(running.path, rcvbuf=4096)

    await stuck.call(Command.VERSION, {"major": 1, "minor": 0})
    me = int(dict(await stuck.call(Command.INFO, {}))["session"]["id"])
    session = running.daemon.sessions[me]
    async with siov.connect(running.path) as emu:
        dev = await emu.register_device("nic")
        await stuck.call(Command.DEVICE_CLAIM, {"uuid": dev.uuid, "token": dev.token})
        longest = 0
        with trio.fail_after(20):
            while me in running.daemon.sessions:
                with pytest.raises(siov.SiovError):
                    await emu.dma_read(dev.uuid, 0x7000_0000, 8)
                longest = max(longest, len(session.events))
                await trio.sleep(0.01)  # virtual: lets the write deadline come closer
        assert longest == limit  # it filled, and never went past the limit
        assert session.events_dropped > 0
        assert running.daemon.counters["clients_dropped_stuck"] == 1
        assert len(session.events) == 0  # released: nothing left queued
    stuck.close()
    running.server.nursery.cancel_scope.cancel()


async def test_a_burst_from_one_client_does_not_starve_anothers_events(
    nursery: trio.Nursery, sock_dir: str
) -> None:
    """Regression: a pipelined burst ran to its end without yielding, so the domain owner's
    event pump never ran and a reading client lost events past ``limits.event_queue``."""
    burst = 2000
    cfg = make_config(limits={"event_queue": 64})
    running = await start_daemon(nursery, os.path.join(sock_dir, "b.sock"), cfg)
    emu = await AsyncRawClient.connect(running.path)
    await emu.call(Command.VERSION, {"major": 1, "minor": 0})
    dev = await emu.call(Command.BUS_REGISTER_DEVICE, {"name": "nic"})
    fields = {"device": dev["uuid"], "iova": 0x7000_0000, "length": 8}
    faults = b"".join(frame(i, Command.DMA_READ, body(fields)) for i in range(burst))

    async def drain_replies() -> None:
        # Until every request's reply has come; events to the emulator may be among them.
        replies = 0
        while replies < burst:
            replies += (await emu.recv()).is_reply

    async with siov.connect(running.path) as owner:
        await owner.claim_device(dev["uuid"], dev["token"])
        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(drain_replies)
                await emu.send_raw(faults)  # the whole burst at once, as one client may
            # Every fault has been answered, so every event has been queued or dropped.
            assert (await owner.stats()).session["events_dropped"] == 0
            for _ in range(burst):
                event = await owner.next_event(Command.EVENT_FAULT)
                assert event.body["device"] == dev["uuid"]
    emu.close()
    running.server.nursery.cancel_scope.cancel()
