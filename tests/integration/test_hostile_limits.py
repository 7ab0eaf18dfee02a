"""Limits a hostile client runs into: each answers with its errno and names itself.

``server.max_clients`` (EAGAIN to the first message of a connection over it, then the close),
and the negotiated ``max_msg_size``, which no reply exceeds: TRANSLATE returns as many runs as
fit, DIRTY_BITMAP refuses before it reads (and maybe clears) D bits it could not send,
anything else too large is EMSGSIZE.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio

import siov
from siov_protocol import Command
from siov_protocol.replies import TranslateRun
from siovd.service.server import MAX_REFUSING
from tests.conftest import RunningDaemon, make_config, start_daemon
from tests.helpers import asettle
from tests.rawclient import HEADER_SIZE, AsyncRawClient, body

MiB = 1 << 20
PAGE = 4096


@pytest.fixture
async def small(nursery: trio.Nursery, sock_dir: str) -> AsyncIterator[RunningDaemon]:
    running = await start_daemon(nursery, os.path.join(sock_dir, "s.sock"))
    yield running
    running.server.nursery.cancel_scope.cancel()


async def negotiated(path: str, max_msg_size: int) -> AsyncRawClient:
    raw = await AsyncRawClient.connect(path)
    caps = {"max_msg_size": max_msg_size}
    reply = await raw.call(Command.VERSION, {"major": 1, "minor": 0, "capabilities": caps})
    assert reply["capabilities"]["max_msg_size"] == max_msg_size
    return raw


async def test_max_clients_answers_eagain_naming_the_limit(
    nursery: trio.Nursery, sock_dir: str
) -> None:
    cfg = make_config(server={"max_clients": 2})
    running = await start_daemon(nursery, os.path.join(sock_dir, "m.sock"), cfg)
    async with siov.connect(running.path) as a, siov.connect(running.path) as b:
        with pytest.raises(siov.SiovError) as info:
            async with siov.connect(running.path):
                pass
        assert info.value.errno == errno.EAGAIN
        assert "server.max_clients = 2" in info.value.message
        # A refused client's fds never reach the daemon; one that says nothing is closed.
        refused = await AsyncRawClient.connect(running.path)
        r, w = os.pipe()
        await refused.send(Command.VERSION, {"major": 1, "minor": 0}, (w,))
        os.close(w)
        _, err, reply = (await refused.recv()).parts()
        assert err == errno.EAGAIN and "server.max_clients" in reply["message"]
        assert await refused.sock.recv(1) == b""
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""
        os.close(r)
        silent = await AsyncRawClient.connect(running.path)
        with trio.fail_after(5):
            assert await silent.sock.recv(1) == b""
        # A storm of connections over the limit: answered or closed, never piling up.
        storm = [await AsyncRawClient.connect(running.path) for _ in range(3 * MAX_REFUSING)]
        assert running.server.refusing <= MAX_REFUSING
        with trio.fail_after(10):
            for s in storm:
                assert await s.sock.recv(1) == b""
                s.sock.close()
        assert await a.ping(b"a") == b"a" and await b.ping(b"b") == b"b"
        stats = await a.stats()
        assert stats.daemon["clients_refused"] == 3 + 3 * MAX_REFUSING
        refused.sock.close()
        silent.sock.close()
    await asettle(lambda: not running.server.connections, "every connection is gone", 5)
    async with siov.connect(running.path) as c:  # room again
        assert await c.ping(b"c") == b"c"
    running.server.nursery.cancel_scope.cancel()


async def scattered_mapping(raw: AsyncRawClient, pages: int) -> tuple[str, int, int]:
    """A device whose domain maps ``pages`` 4 KiB pages in reverse physical order, so each is
    its own run. Returns (device, domain, phys base)."""
    fd = os.memfd_create("scatter", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, pages * PAGE)
    try:
        region = await raw.call(Command.MEM_REGISTER, {"size": pages * PAGE}, (fd,))
    finally:
        os.close(fd)
    dev = await raw.call(Command.BUS_REGISTER_DEVICE, {"name": "scatter"})
    dom = (await raw.call(Command.DOMAIN_ALLOC, {}))["domain_id"]
    await raw.call(Command.ATTACH_DEVICE, {"domain": dom, "device": dev["uuid"]})
    for i in range(pages):
        phys = region["phys"] + (pages - 1 - i) * PAGE
        await raw.call(Command.MAP, {"domain": dom, "phys": phys, "size": PAGE, "iova": i * PAGE})
    return dev["uuid"], dom, region["phys"]


async def test_translate_returns_the_runs_one_reply_carries(small: RunningDaemon) -> None:
    raw = await negotiated(small.path, 4096)
    pages = 150
    dev, _, base = await scattered_mapping(raw, pages)
    fits = (4096 - 256) // 64
    iova = 0
    runs: list[dict[str, int]] = []
    while iova < pages * PAGE:
        msg_id = await raw.send(
            Command.TRANSLATE, {"device": dev, "iova": iova, "length": pages * PAGE - iova}
        )
        got_id, err, reply = (await raw.recv()).parts()
        assert got_id == msg_id and err == 0, reply
        assert reply["fault"] is None
        assert len(reply["runs"]) == min(fits, pages - iova // PAGE)
        assert len(body(reply)) + HEADER_SIZE <= 4096
        runs += reply["runs"]
        iova += reply["translated"]
    assert [r["phys"] for r in runs] == [base + (pages - 1 - i) * PAGE for i in range(pages)]
    raw.sock.close()


async def test_dirty_bitmap_too_large_for_a_reply_refuses_before_clearing(
    small: RunningDaemon,
) -> None:
    raw = await negotiated(small.path, 4096)
    dev, dom, _ = await scattered_mapping(raw, 4)
    await raw.call(Command.DMA_WRITE, {"device": dev, "iova": PAGE, "data": b"dirty"})
    fits = (4096 - 64) * 8
    await raw.send(
        Command.DIRTY_BITMAP, {"domain": dom, "iova": 0, "size": (fits + 1) * PAGE, "clear": True}
    )
    _, err, reply = (await raw.recv()).parts()
    assert err == errno.EMSGSIZE and "max_msg_size 4096" in reply["message"], reply
    bitmap = await raw.call(Command.DIRTY_BITMAP, {"domain": dom, "iova": 0, "size": 4 * PAGE})
    assert bitmap["bitmap"] == b"\x02"  # page 1 is still dirty: nothing was cleared
    raw.sock.close()


async def test_no_reply_exceeds_the_negotiated_size(small: RunningDaemon) -> None:
    raw = await negotiated(small.path, 4096)
    await raw.send(Command.PING, {"payload": b"p" * 4090})  # its echo would not fit
    _, err, reply = (await raw.recv()).parts()
    assert err == errno.EMSGSIZE and "exceeds the negotiated max_msg_size 4096" in reply["message"]
    for _ in range(40):
        await raw.call(Command.DOMAIN_ALLOC, {})
    await raw.send(Command.DOMAIN_LIST, {})
    _, err, reply = (await raw.recv()).parts()
    assert err == errno.EMSGSIZE, reply
    assert small.daemon.counters["replies_too_large"] == 2
    assert await raw.call(Command.PING, {"payload": b"small"}) == {"payload": b"small"}
    raw.sock.close()


async def test_translate_walks_a_bounded_number_of_pages(small: RunningDaemon) -> None:
    """Regression: TRANSLATE walked its whole length page by page in one request (a client
    could stall the daemon for a minute with 64 GiB of 4 KiB mappings)."""
    from siovd.service.handlers.dma import TRANSLATE_MAX_PAGES

    size = TRANSLATE_MAX_PAGES * PAGE + 16 * MiB
    async with siov.connect(small.path) as c:
        buf = await c.alloc(size)  # sparse: nothing here touches its pages
        dev = (await c.register_device("big")).uuid
        dom = (await c.alloc_domain()).domain_id
        await c.attach_device(dom, dev)
        await c.map(dom, buf.phys, size, iova=PAGE)  # iova 4 KiB-aligned only: 4 KiB pages
        first = await c.translate(dev, PAGE, size)
        assert first.fault is None and first.translated == TRANSLATE_MAX_PAGES * PAGE
        assert first.runs == [
            TranslateRun(iova=PAGE, phys=buf.phys, length=first.translated, prot=3, page_size=PAGE)
        ]
        rest = await c.translate(dev, PAGE + first.translated, size - first.translated)
        assert rest.fault is None and rest.translated == 16 * MiB
        buf.close()


async def test_registered_memory_is_capped_in_bytes(nursery: trio.Nursery, sock_dir: str) -> None:
    """A sparse memfd claims address space for nothing: the daemon counts registered bytes."""
    cfg = make_config(limits={"memory_bytes": 4 * MiB})
    running = await start_daemon(nursery, os.path.join(sock_dir, "b.sock"), cfg)
    async with siov.connect(running.path) as c:
        await c.alloc(2 * MiB)
        await c.alloc(2 * MiB)
        with pytest.raises(siov.SiovError) as info:
            await c.alloc(4096)
        assert info.value.errno == errno.ENOSPC
        assert "limits.memory_bytes = 4194304 (4194304 registered, 4096 asked)" in str(info.value)
    async with siov.connect(running.path) as c:  # a client's own budget, back when it leaves
        huge = os.memfd_create("huge", os.MFD_ALLOW_SEALING)
        os.ftruncate(huge, 1 << 40)  # a terabyte, all holes
        try:
            with pytest.raises(siov.SiovError) as info:
                await c.register(huge, 1 << 40)
            assert info.value.errno == errno.ENOSPC and "limits.memory_bytes" in str(info.value)
        finally:
            os.close(huge)
        await c.alloc(4 * MiB)
    running.server.nursery.cancel_scope.cancel()


async def test_a_connection_that_never_negotiates_is_closed(
    nursery: trio.Nursery, sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """On virtual time: the deadline passes as soon as every task waits, not after 0.3 s."""
    cfg = make_config(server={"handshake_timeout_s": 0.3})
    running = await start_daemon(nursery, os.path.join(sock_dir, "hs.sock"), cfg)
    # a bare socket: the subject is a connection that never sends a byte
    idle = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await idle.connect(running.path)
    async with siov.connect(running.path) as client:
        with trio.fail_after(10):
            assert await idle.recv(1) == b""  # the daemon closed the silent connection
        await trio.sleep(0.5)  # past the deadline: a negotiated client is left alone
        assert await client.ping(b"ok") == b"ok"
        assert (await client.stats()).daemon["handshake_timeouts"] == 1
    idle.close()
    running.server.nursery.cancel_scope.cancel()
