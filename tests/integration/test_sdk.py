"""The SDK against a daemon running in the test's own nursery."""

from __future__ import annotations

import dataclasses
import errno
import os

import pytest
import trio

import siov
from siov_protocol import Command
from tests.conftest import RunningDaemon, start_daemon


async def test_connect_ping_info_stats(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        assert client.version is not None and client.version.major == 1
        assert client.version.capabilities.max_fds == 8
        assert client.version.auth == "none"
        assert await client.ping(b"abc") == b"abc"
        info = await client.info()
        assert info.pid == os.getpid()
        assert info.counts["clients"] == 1
        assert info.socket == siovd.path
        stats = await client.stats()
        assert stats.session["requests"] >= 3


async def test_many_requests_in_flight(siovd: RunningDaemon) -> None:
    results: list[bytes | None] = []
    async with siov.connect(siovd.path) as client, trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(lambda i=i: _ping_into(client, i, results))
    assert sorted(results) == sorted(str(i).encode() for i in range(200))


async def _ping_into(client: siov.Client, i: int, out: list[bytes | None]) -> None:
    out.append(await client.ping(str(i).encode()))


async def test_typed_errors(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        with pytest.raises(siov.NotSupported) as info:
            await client.call(0x7777)
        assert info.value.errno == errno.ENOSYS and "0x7777" in info.value.message
        with pytest.raises(siov.InvalidArgument) as info2:
            await client.call(Command.PING, {"payload": 1})
        assert info2.value.errno == errno.EINVAL
        assert await client.ping() is None  # still fine


async def test_events_reach_the_client(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        await client.ping()
        (session,) = siovd.daemon.sessions.values()
        session.push_event(Command.EVENT_FAULT, {"iova": 0x1000, "reason": 0x71})
        event = await client.next_event()
        assert event.command is Command.EVENT_FAULT and event.body["iova"] == 0x1000


async def test_event_queue_is_bounded(nursery: trio.Nursery, sock_dir: str) -> None:
    from tests.conftest import make_config

    running = await start_daemon(
        nursery, os.path.join(sock_dir, "b.sock"), make_config(limits={"event_queue": 3})
    )
    async with siov.connect(running.path) as client:
        await client.ping()
        (session,) = running.daemon.sessions.values()
        accepted = [session.push_event(Command.EVENT_IRQ, {"n": i}) for i in range(10)]
        assert accepted.count(True) == 3 and session.events_dropped == 7
        got = [(await client.next_event()).body["n"] for _ in range(3)]
        assert got == [0, 1, 2]
        stats = await client.stats()
        assert stats.session["events_dropped"] == 7
    running.server.nursery.cancel_scope.cancel()


async def test_disconnect_releases_the_session(siovd: RunningDaemon) -> None:
    released: list[int] = []
    siovd.daemon.on_release(lambda s: released.append(s.id))
    async with siov.connect(siovd.path) as client:
        await client.ping()
        sid = next(iter(siovd.daemon.sessions))
    for _ in range(100):
        if released:
            break
        await trio.sleep(0.01)
    assert released == [sid]
    assert siovd.daemon.sessions == {}


async def test_a_failing_handler_costs_one_eio_reply(siovd: RunningDaemon) -> None:
    siovd.daemon.info_config = lambda: 1 / 0  # type: ignore[assignment,method-assign,misc]
    async with siov.connect(siovd.path) as client:
        with pytest.raises(siov.SiovError) as info:
            await client.info()
        assert info.value.errno == errno.EIO and "internal error in INFO" in info.value.message
        assert await client.ping(b"x") == b"x"


async def test_connect_to_nothing_is_a_clear_error(sock_dir: str) -> None:
    with pytest.raises(siov.ConnectionClosed) as info:
        async with siov.connect(os.path.join(sock_dir, "none.sock")):
            pass
    assert "cannot connect" in str(info.value)


def test_blocking_client_has_the_same_methods(siovd_proc: object) -> None:
    path = siovd_proc.path  # type: ignore[attr-defined]
    with siov.BlockingClient(path) as client:
        assert client.ping(b"z") == b"z"
        assert client.info().counts["clients"] >= 1
        assert client.stats().session["requests"] >= 1
        with pytest.raises(siov.NotSupported):
            client.call(0x7777)


async def test_events_and_replies_interleave(siovd: RunningDaemon) -> None:
    """Whichever task holds the read baton, events and replies all reach their owners."""
    async with siov.connect(siovd.path) as client:
        await client.ping()
        (session,) = siovd.daemon.sessions.values()
        got: list[int] = []

        async def listen() -> None:
            for _ in range(50):
                got.append((await client.next_event()).body["n"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            for i in range(50):
                session.push_event(Command.EVENT_IRQ, {"n": i})
                assert await client.ping(str(i).encode()) == str(i).encode()
                if i % 10 == 0:
                    await trio.sleep(0.01)  # idle: the background reader takes the baton
        assert got == list(range(50))


async def test_a_cancelled_request_does_not_wedge_the_client(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        for _ in range(20):
            with trio.move_on_after(0):
                await client.ping()
        assert await client.ping(b"still") == b"still"


async def test_a_handler_returning_a_map_instead_of_its_schema_is_an_eio(
    siovd: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under SIOVD_CHECK_REPLIES every reply must be its REPLIES schema's instance: a handler
    that builds a map by hand (the drift the schemas exist to stop) gets EIO, not a reply."""
    from siovd.service.handlers import registry

    handler = registry.handlers[Command.PING]
    fake = dataclasses.replace(handler, fn=lambda ctx, req: {"payload": b"x"})
    monkeypatch.setitem(registry.handlers, Command.PING, fake)
    async with siov.connect(siovd.path) as client:
        with pytest.raises(siov.SiovError) as info:
            await client.ping(b"x")
        assert info.value.errno == errno.EIO
        assert "is a dict, not PingReply" in info.value.message
