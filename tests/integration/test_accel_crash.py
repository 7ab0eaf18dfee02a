"""A client process SIGKILLed with descriptors in flight and page requests pending.

The victim (a real subprocess) takes a dedicated and a shared WQ (both block on faults), submits
block-on-fault descriptors that touch unmapped pages and never answers the page requests, fills
the WQs with more work behind them, says READY and waits to be killed. Within a second of the
SIGKILL everything it had is gone (INFO counts, every client's MDEV_LIST, outstanding work, page
requests, the daemon's fds), its blocked work is aborted, and a bystander client that keeps
submitting all along sees every descriptor complete correctly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import trio

import siov
from siov import dsa
from tests.daemonproc import LoggedDaemon, logged_siovd
from tests.integration.conftest import REPORT

MiB = 1 << 20
BLOCKED = 6  # block-on-fault descriptors per victim mdev, each a pending page request
# Issue #6 asks for cleanup within 1 s. The house rule keeps timing out of assertions (the CI
# machine is shared): the test waits with a liveness bound and reports the measured time in the
# summary, where it is judged (3-15 ms when measured).
CLEANUP_PATIENCE = 10.0

VICTIM = """
import sys, trio, siov
from siov import dsa

async def main(path, blocked):
    async with siov.connect(path, name="victim") as client:
        requests = client.page_requests()
        buf = await client.alloc(4 << 20)
        for type_id in ("dsa-1dwq", "dsa-1swq"):
            mdev = await client.create_dsa_mdev(type_id)
            await client.map(mdev.domain_id, buf.phys, 1 << 20, iova=0x70_0000)
            stuck = [
                dsa.crcgen(0x10_0000 + i * 4096, 64, completion=0x70_0000 + 32 * i,
                           flags=dsa.IDXD_OP_FLAG_BOF)
                for i in range(blocked)
            ]
            await mdev.submit(stuck)
            # more work behind the blocked descriptors: fences wait for them
            behind = [dsa.drain(completion=0x70_1000 + 32 * i) for i in range(8)]
            await mdev.submit(behind)
        for _ in range(2 * blocked):
            await requests.receive()  # never answered
        print("READY", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def snapshot(observer: siov.Client, daemon: LoggedDaemon) -> dict[str, Any]:
    stats = (await observer.stats()).accel
    return {
        "counts": (await observer.info()).counts,
        "devices": sorted(d.uuid for d in await observer.devices(everything=True)),
        "outstanding": stats["outstanding"],
        "page_requests": stats["page_requests_pending"],
        "fds": daemon.fds(),
    }


def aborted(stats: dict[str, Any]) -> int:
    return sum(wq["aborted"] for dev in stats["devices"].values() for wq in dev["wqs"].values())


async def bystander(path: str, stop: trio.Event, tally: list[int]) -> None:
    """Keeps copying pages through its own mdev and checks every result."""
    async with siov.connect(path, name="bystander") as client:
        mdev = await client.create_dsa_mdev("dsa-1swq")
        assert mdev.domain_id is not None
        buf = await client.alloc(2 * MiB)
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        mem = buf.view
        round_ = 0
        while not stop.is_set():
            data = os.urandom(4096)
            mem[0:4096] = data
            mem[0x10_0000 : 0x10_0000 + 32 * 8] = bytes(32 * 8)
            descriptors = [
                dsa.memmove(0x1000 * (1 + i), 0, 4096, completion=0x10_0000 + 32 * i)
                for i in range(8)
            ]
            result = await mdev.submit(descriptors)
            assert result.all_accepted, result
            with trio.fail_after(10):
                for i in range(8):
                    record = await mdev.wait(mem[0x10_0000 + 32 * i : 0x10_0000 + 32 * i + 32])
                    assert record.code == dsa.DSA_COMP_SUCCESS, dsa.status_name(record.status)
            for i in range(8):
                assert mem[0x1000 * (1 + i) : 0x1000 * (2 + i)] == data
            tally[0] += 8
            round_ += 1
            await trio.sleep(0.002)
        await mdev.remove()


async def test_killed_client_with_blocked_work_is_cleaned_up() -> None:
    with logged_siovd("[iommu]\npage_request_timeout_s = 60.0\n") as daemon:
        stop = trio.Event()
        tally = [0]
        async with (
            siov.connect(daemon.path, name="observer") as observer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(bystander, daemon.path, stop, tally)
            with trio.fail_after(10):
                while tally[0] < 16:  # noqa: ASYNC110 (the bystander is running)
                    await trio.sleep(0.01)
            baseline = await snapshot(observer, daemon)
            before = (await observer.stats()).accel

            victim = subprocess.Popen(  # noqa: ASYNC220 (a plain process to SIGKILL; starts at once)
                [sys.executable, "-c", VICTIM, daemon.path, str(BLOCKED)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                line = await trio.to_thread.run_sync(victim.stdout.readline)  # type: ignore[union-attr]
                assert line.strip() == b"READY", victim.stderr.read()  # type: ignore[union-attr]
                during = await snapshot(observer, daemon)
                assert during["page_requests"] == 2 * BLOCKED
                assert during["outstanding"] >= 2 * BLOCKED + 16
                assert len(during["devices"]) == len(baseline["devices"]) + 2
                assert during["fds"] > baseline["fds"]
                done_before_kill = tally[0]

                victim.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                await trio.to_thread.run_sync(victim.wait)
            finally:
                if victim.poll() is None:
                    victim.kill()
                    victim.wait()
            with trio.fail_after(CLEANUP_PATIENCE):
                while (now := await snapshot(observer, daemon)) != baseline:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            cleaned = time.monotonic() - killed
            assert now == baseline
            after = (await observer.stats()).accel
            # the victim's blocked descriptors and the drains behind them were aborted
            assert aborted(after) - aborted(before) >= 2 * BLOCKED
            # the bystander kept going through and after the kill
            with trio.fail_after(10):
                while tally[0] < done_before_kill + 32:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            stop.set()
            REPORT.setdefault("siov accelerator crash", []).append(
                f"victim SIGKILLed with {during['page_requests']} page requests pending and "
                f"{during['outstanding']} descriptors outstanding: everything gone in "
                f"{cleaned * 1000:.0f} ms, {aborted(after) - aborted(before)} aborted; "
                f"bystander completed {tally[0]} descriptors meanwhile"
            )
        assert daemon.alive() and not daemon.failures_logged()
