"""Per-uid fairness and what a client costs: every connection of these tests is the same uid
(the test's own), so the ``limits.uid_*`` ceilings bite across connections, each naming itself,
while the per-connection ones stay as they were. STATS shows each session's and uid's cost.
"""

from __future__ import annotations

import array
import errno
import os
import socket

import pytest
import trio

import siov
from siov_protocol import Command
from tests.conftest import make_config, start_daemon
from tests.fuzz.wire import HDR
from tests.rawclient import AsyncRawClient as Raw


async def test_uid_connections_caps_one_users_connections(
    nursery: trio.Nursery, sock_dir: str
) -> None:
    cfg = make_config(limits={"uid_connections": 2})
    running = await start_daemon(nursery, os.path.join(sock_dir, "u.sock"), cfg)
    async with siov.connect(running.path) as a, siov.connect(running.path) as b:
        with pytest.raises(siov.SiovError) as info:
            async with siov.connect(running.path):
                pass
        assert info.value.errno == errno.EAGAIN
        assert f"limits.uid_connections = 2 connections of uid {os.getuid()}" in info.value.message
        stats = await a.stats()
        assert stats.uid["connections"] == 2 and stats.uid["uid"] == os.getuid()
        assert stats.daemon["clients_refused"] == 1
        assert await b.ping(b"b") == b"b"
    running.server.nursery.cancel_scope.cancel()


async def test_uid_mdevs_and_regions_span_connections(nursery: trio.Nursery, sock_dir: str) -> None:
    cfg = make_config(limits={"uid_mdevs": 3, "uid_memory_regions": 3, "mdevs": 2})
    running = await start_daemon(nursery, os.path.join(sock_dir, "v.sock"), cfg)
    async with siov.connect(running.path) as a, siov.connect(running.path) as b:
        await a.register_device("a1")
        await a.register_device("a2")
        with pytest.raises(siov.SiovError) as per_conn:
            await a.register_device("a3")
        assert per_conn.value.errno == errno.ENOSPC
        assert per_conn.value.message == "limit reached: limits.mdevs = 2"
        await b.register_device("b1")
        with pytest.raises(siov.SiovError) as per_uid:
            await b.register_device("b2")
        assert per_uid.value.errno == errno.ENOSPC
        assert per_uid.value.message == (
            f"limit reached: limits.uid_mdevs = 3 (uid {os.getuid()} has 3)"
        )
        bufs = [await a.alloc(4096), await a.alloc(4096), await b.alloc(4096)]
        with pytest.raises(siov.SiovError) as regions:
            await b.alloc(4096)
        assert regions.value.errno == errno.ENOSPC
        assert f"limits.uid_memory_regions = 3 (uid {os.getuid()})" in regions.value.message
        cost = await a.stats()
        assert cost.session["mdevs"] == 2 and cost.session["memory_regions"] == 2
        assert cost.session["memory_bytes"] == 8192
        assert cost.uid["mdevs"] == 3 and cost.uid["memory_regions"] == 3
        for buf in bufs:
            buf.close()
    running.server.nursery.cancel_scope.cancel()


async def test_pending_fds_per_uid(nursery: trio.Nursery, sock_dir: str) -> None:
    """Each connection stays under limits.pending_fds; together they pass the uid's cap, and the
    connection that does gets ENOSPC naming limits.uid_pending_fds and is closed."""
    cfg = make_config(limits={"pending_fds": 10, "uid_pending_fds": 25})
    running = await start_daemon(nursery, os.path.join(sock_dir, "p.sock"), cfg)
    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(10)]
    try:
        raws = []
        for i in range(3):
            raw = await Raw.connect(running.path)
            await raw.call(Command.VERSION, {"major": 1, "minor": 0})
            head = HDR.pack(100 + i, Command.PING, 4096, 0, 0)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            await raw.sock.sendmsg([head], anc)
            raws.append(raw)
        with trio.fail_after(10):
            msg_id, err, reply = (await raws[2].recv()).parts()
        assert (msg_id, err) == (102, errno.ENOSPC)
        assert reply["message"] == (
            "limit reached: limits.uid_pending_fds = 25 "
            f"(30 fds of uid {os.getuid()} wait for unfinished messages)"
        )
        with trio.fail_after(10):
            assert await raws[2].sock.recv(1) == b""
        # The other two still hold theirs (20 fds) and are served.
        await raws[0].sock.send(b"\0" * (4096 - 16))
        _, err, _ = (await raws[0].recv()).parts()
        assert err == errno.EINVAL  # a PING with fds, once whole, is refused as ever
        async with siov.connect(running.path) as c:
            stats = await c.stats()
        assert stats.uid["pending_fds"] == 10
        assert stats.daemon["clients_dropped_pending_fds"] == 1
        for raw in raws:
            raw.sock.close()
    finally:
        for fd in fds:
            os.close(fd)
    running.server.nursery.cancel_scope.cancel()


async def test_event_queue_bytes_bound_a_sessions_events(
    nursery: trio.Nursery, sock_dir: str
) -> None:
    """Faults for a client that never reads its events stop queueing at
    limits.event_queue_bytes (dropped and counted, as at limits.event_queue)."""
    cfg = make_config(limits={"event_queue_bytes": 4096, "event_queue": 100000})
    running = await start_daemon(nursery, os.path.join(sock_dir, "e.sock"), cfg)
    async with siov.connect(running.path) as emu:
        dev = await emu.register_device("emu")
        session = next(
            s for s in running.daemon.sessions.values() if s.id == max(running.daemon.sessions)
        )
        # Stop the pump from draining: queue events straight into the session.
        for _ in range(200):
            session.push_event(Command.EVENT_FAULT, {"device": dev.uuid, "iova": 0})
        assert session.event_bytes <= 4096
        assert session.events_dropped_bytes > 0
        stats = await emu.stats()
        assert stats.session["events_dropped_bytes"] == session.events_dropped_bytes
    running.server.nursery.cancel_scope.cancel()


async def test_translate_queues_no_fault_to_anyone(nursery: trio.Nursery, sock_dir: str) -> None:
    """A failed TRANSLATE (an ATS translation request) is answered in the reply only, whoever
    asks: no EVENT_FAULT for the owner, so one bad access is one fault and no client can fill
    another's event queue."""
    running = await start_daemon(nursery, os.path.join(sock_dir, "t.sock"))
    async with siov.connect(running.path) as owner, siov.connect(running.path) as other:
        dev = await owner.register_device("emu")
        got = await other.translate(dev.uuid, 0x7000_0000, 4096)  # auth none: admin
        assert got.fault is not None and got.translated == 0
        mine = await owner.translate(dev.uuid, 0x7000_0000, 4096)
        assert mine.fault is not None and mine.translated == 0
        with pytest.raises(siov.DmaFault):
            await owner.dma_read(dev.uuid, 0x7000_0000, 8)  # a DMA fault: one event
        with trio.fail_after(10):
            event = await owner.next_event(Command.EVENT_FAULT)
        assert event.body["iova"] == 0x7000_0000
        stats = await owner.stats()
        assert stats.iommu["translate_failures"] == 2 and stats.iommu["faults"] == 1
        assert stats.session["events_sent"] == 1
    running.server.nursery.cancel_scope.cancel()


async def test_uid_event_queue_bytes_span_connections(nursery: trio.Nursery, sock_dir: str) -> None:
    cfg = make_config(limits={"event_queue_bytes": 8192, "uid_event_queue_bytes": 8192})
    running = await start_daemon(nursery, os.path.join(sock_dir, "q.sock"), cfg)
    async with siov.connect(running.path) as a, siov.connect(running.path) as b:
        sessions = sorted(running.daemon.sessions.values(), key=lambda s: s.id)
        first, second = sessions[-2], sessions[-1]
        body = {"device": "x" * 36, "iova": 0, "pad": b"\0" * 1000}
        while first.push_event(Command.EVENT_FAULT, body):
            pass  # the first fills the uid's 8 KiB alone ...
        assert first.events_dropped_bytes == 1
        assert not second.push_event(Command.EVENT_FAULT, body)  # ... so the second gets none
        assert second.events_dropped_bytes == 1 and second.event_bytes == 0
        usage = running.daemon.uid_usage(first.uid)
        assert usage.event_bytes == first.event_bytes <= 8192
        # Delivered events give their bytes back.
        with trio.fail_after(10):
            while first.events:  # noqa: ASYNC110  (a bounded test poll)
                await trio.sleep(0.01)
        assert usage.event_bytes == 0
        assert second.push_event(Command.EVENT_FAULT, body)
        assert await a.ping(b"a") == b"a" and await b.ping(b"b") == b"b"
    running.server.nursery.cancel_scope.cancel()
