"""Load: many clients, each on its own connection and its own share of the shared WQ, submit
small MEMMOVE/FILL descriptors in batches. Every descriptor completes exactly once with
SUCCESS and the right data, and every client finishes (none starves); the per-client maximum
and median completion latency go to the test summary.

``SIOV_LOAD_CLIENTS`` (default 64, the number of ``dsa-1swq`` instances) and
``SIOV_LOAD_DESCRIPTORS`` (per client; default 10000, the full size of issue #6: about 21 s,
since daemon and clients share one trio thread) scale it.
"""

from __future__ import annotations

import os
import random
import statistics
import struct
import time

import trio

import siov
from siov import dsa
from tests.conftest import RunningDaemon
from tests.integration.conftest import REPORT

CLIENTS = int(os.environ.get("SIOV_LOAD_CLIENTS", "64"))
PER_CLIENT = int(os.environ.get("SIOV_LOAD_DESCRIPTORS", "10000"))
CHUNK = 16  # descriptors per SUBMIT
PAGE = 4096
SRC = 0x0  # one page of source data per client
DST = 0x1_0000  # CHUNK destination pages, reused chunk after chunk (checked in between)
RECORDS = 0x10_0000  # one record per descriptor of the whole run

SUMMARY = REPORT.setdefault("siov accelerator load", [])


async def load_client(path: str, index: int, out: dict[int, list[float]]) -> None:
    rng = random.Random(index)
    async with siov.connect(path, name=f"load-{index}") as client:
        mdev = await client.create_dsa_mdev("dsa-1swq")
        assert mdev.domain_id is not None
        records_size = (PER_CLIENT * 32 + PAGE - 1) // PAGE * PAGE
        buf = await client.alloc(RECORDS + records_size)
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        mem = buf.view
        mem[SRC : SRC + PAGE] = rng.randbytes(PAGE)
        mem[RECORDS:] = bytes(records_size)
        latencies: list[float] = []
        done = 0
        while done < PER_CLIENT:
            count = min(CHUNK, PER_CLIENT - done)
            expected: list[tuple[int, bytes]] = []
            descriptors = []
            for i in range(count):
                n = done + i
                dst = DST + i * PAGE
                size = rng.randrange(1, PAGE + 1)
                if rng.random() < 0.5:
                    offset = rng.randrange(PAGE - size + 1)
                    descriptors.append(
                        dsa.memmove(dst, SRC + offset, size, completion=RECORDS + 32 * n)
                    )
                    expected.append((dst, bytes(mem[SRC + offset : SRC + offset + size])))
                else:
                    word = rng.getrandbits(64)
                    descriptors.append(dsa.fill(dst, word, size, completion=RECORDS + 32 * n))
                    expected.append((dst, (struct.pack("<Q", word) * (size // 8 + 1))[:size]))
            started = trio.current_time()
            pending = list(range(count))
            while pending:  # the shared WQ answers "retry" when the other clients fill it
                try:
                    result = await mdev.submit([descriptors[i] for i in pending])
                except siov.TryAgain:
                    await trio.sleep(0.001)
                    continue
                pending = [pending[i] for i in result.retried()]
                if pending:
                    await trio.sleep(0.0005)
            with trio.fail_after(30):
                for i in range(count):
                    record = mem[RECORDS + 32 * (done + i) : RECORDS + 32 * (done + i + 1)]
                    await mdev.wait(record)
            latencies.append(trio.current_time() - started)
            for dst, data in expected:
                assert mem[dst : dst + len(data)] == data, f"client {index}: wrong data at {dst:#x}"
            done += count
        # exactly once: one record per descriptor, each SUCCESS; nothing past them written
        records = bytes(mem[RECORDS : RECORDS + 32 * PER_CLIENT])
        statuses = records[::32]
        assert statuses == bytes([dsa.DSA_COMP_SUCCESS]) * PER_CLIENT
        assert not any(mem[RECORDS + 32 * PER_CLIENT :])
        out[index] = latencies
        await mdev.remove()


async def test_many_clients_share_the_accelerator(siovd: RunningDaemon) -> None:
    async with siov.connect(siovd.path) as admin:
        swq = next(t for t in await admin.types() if t.type_id == "dsa-1swq")
        assert swq.available_instances >= CLIENTS
        before = (await admin.stats()).accel
    started = time.monotonic()
    latencies: dict[int, list[float]] = {}
    async with trio.open_nursery() as nursery:
        for index in range(CLIENTS):
            nursery.start_soon(load_client, siovd.path, index, latencies)
    elapsed = time.monotonic() - started
    assert sorted(latencies) == list(range(CLIENTS))  # every client finished: none starved
    async with siov.connect(siovd.path) as admin:
        after = (await admin.stats()).accel
    total = CLIENTS * PER_CLIENT
    assert after["completed"] - before["completed"] == total
    assert after["outstanding"] == 0
    maxima = {i: max(v) * 1000 for i, v in latencies.items()}
    medians = {i: statistics.median(v) * 1000 for i, v in latencies.items()}
    worst = max(maxima, key=lambda i: maxima[i])
    SUMMARY.append(
        f"{CLIENTS} clients x {PER_CLIENT} descriptors ({total} in all, {CHUNK} per SUBMIT) "
        f"in {elapsed:.1f} s, {total / elapsed:.0f}/s"
    )
    SUMMARY.append(
        "per-client chunk completion latency, ms: median of medians "
        f"{statistics.median(medians.values()):.1f}, worst median {max(medians.values()):.1f}, "
        f"worst max {maxima[worst]:.1f} (client {worst})"
    )
    SUMMARY.append(
        "per client (max/median ms): "
        + " ".join(f"{i}:{maxima[i]:.0f}/{medians[i]:.0f}" for i in sorted(latencies))
    )
