"""The daemon SIGKILLed under load and restarted: definitions come back, clients reconnect
with the SDK's helper and re-create their state, and their work completes."""

from __future__ import annotations

import os
import signal
from typing import Any

import trio

import siov
from tests.daemonproc import spawn_siovd

MiB = 1 << 20
ROUNDS = 600


async def test_daemon_killed_under_load_and_restarted(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "crash.sock")
    state = os.path.join(sock_dir, "state")
    procs = [spawn_siovd(path, "--state-dir", state)]
    async with siov.connect(path) as admin:
        defined = await admin.define("siov_test", "siov_test-1", start="auto")
        await admin.start(defined.uuid)  # auto: started at every daemon start from now on
    uuid = defined.uuid
    done = 0
    reconnects: list[int] = []

    async def setup(client: siov.Client) -> dict[str, Any]:
        mdev = await client.claim_device(uuid)  # the definition is back after every restart
        buf = await client.alloc(2 * MiB)
        dev = await client.register_device("nic")
        dom = (await client.alloc_domain()).domain_id
        await client.attach_device(dom, dev.uuid)
        await client.map(dom, buf.phys, 2 * MiB, iova=0)
        return {"mdev": mdev, "buf": buf, "dev": dev.uuid}

    async def work(client: siov.Client, st: dict[str, Any]) -> int:
        nonlocal done
        while done < ROUNDS:
            payload = done.to_bytes(4, "little") * 16
            await client.dma_write(st["dev"], (done % 256) * 4096, payload)
            assert await client.dma_read(st["dev"], (done % 256) * 4096, 64) == payload
            assert st["buf"].view[(done % 256) * 4096 : (done % 256) * 4096 + 64] == payload
            done += 1
        return done

    async def killer() -> None:
        for kill_at in (150, 350):
            while done < kill_at:  # noqa: ASYNC110  (a test poll, bounded by fail_after)
                await trio.sleep(0.005)
            procs[-1].send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(procs[-1].wait)
            procs.append(await trio.to_thread.run_sync(spawn_siovd, path, "--state-dir", state))

    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                result = await siov.run_with_reconnect(
                    path, setup, work, on_reconnect=lambda n, e: reconnects.append(n)
                )
        assert result == ROUNDS
        assert len(reconnects) == 2
        async with siov.connect(path) as admin:
            listing = (await admin.defined()).definitions
            assert [(d.uuid, d.running) for d in listing] == [(uuid, True)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


async def test_wait_for_daemon_gives_up(sock_dir: str) -> None:
    with trio.fail_after(10):
        try:
            await siov.wait_for_daemon(os.path.join(sock_dir, "never.sock"), patience=0.3)
        except siov.ConnectionClosed as exc:
            assert "no daemon answered" in exc.message
        else:
            raise AssertionError("wait_for_daemon returned without a daemon")
