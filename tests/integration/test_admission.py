"""The server's admission table (ClientConnection.admitted): a READY connection's fd-less
requests skip the refusal checks it already judged; a change of role, features or handler
must reach the next request as if nothing were cached."""

from __future__ import annotations

import dataclasses
import errno

import pytest
import trio

import siov
from siov_protocol import Command
from siov_protocol.auth import Role
from siov_protocol.messages import PingReply
from siovd.service.handlers import registry
from tests.conftest import RunningDaemon


async def test_a_feature_dropped_after_ready_is_refused_at_once(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as client:
        # admitted: the body is judged (a missing field), not the feature
        with pytest.raises(siov.SiovError) as info:
            await client.call(Command.DMA_READ, {})
        assert info.value.errno == errno.EINVAL
        (session,) = siovd.daemon.sessions.values()
        session.features = frozenset(session.features - {"dma"})
        with pytest.raises(siov.SiovError) as info:
            await client.call(Command.DMA_READ, {})
        assert info.value.errno == errno.EOPNOTSUPP
        assert "needs the feature 'dma'" in info.value.message
        session.features = frozenset(session.features | {"dma"})
        with pytest.raises(siov.SiovError) as info:
            await client.call(Command.DMA_READ, {})
        assert info.value.errno == errno.EINVAL


async def test_a_role_lowered_after_ready_loses_the_admin_commands(
    siovd: RunningDaemon,
) -> None:
    async with siov.connect(siovd.path) as client:
        (session,) = siovd.daemon.sessions.values()
        assert session.role is Role.ADMIN  # auth mode "none"
        await client.call(Command.ACCEL_EVL_READ, {"device": "dsa0"})
        session.role = Role.USER
        with pytest.raises(siov.SiovError) as info:
            await client.call(Command.ACCEL_EVL_READ, {"device": "dsa0"})
        assert info.value.errno == errno.EPERM
        assert "ACCEL_EVL_READ needs the admin role" in info.value.message
        assert await client.ping(b"still") == b"still"


async def test_a_handler_replaced_after_ready_is_the_one_that_runs(
    siovd: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with siov.connect(siovd.path) as client:
        assert await client.ping(b"a") == b"a"  # PING is in the table now
        handler = registry.handlers[Command.PING]
        fake = dataclasses.replace(handler, fn=lambda ctx, req: PingReply(payload=b"fake"))
        monkeypatch.setitem(registry.handlers, Command.PING, fake)
        reply = await client.request(Command.PING, {"payload": b"a"})
        assert reply.body == {"payload": b"fake"}


async def test_fds_on_an_admitted_command_are_still_judged(siovd: RunningDaemon) -> None:
    """The table admits only fd-less requests: PING with an fd is refused as before."""
    r, w = trio.socket.socketpair()
    with r, w:
        async with siov.connect(siovd.path) as client:
            with pytest.raises(siov.SiovError) as info:
                await client.call(Command.PING, None, [r.fileno()])
            assert info.value.errno == errno.EINVAL
            assert info.value.message == "PING takes no file descriptors, got 1"
