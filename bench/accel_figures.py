"""Accelerator figures, against baselines measured in the same run:
``python bench/accel_figures.py [NAME ...]``.

Socket figures run a real ``siovd`` subprocess and a client in this process:

- ``memmove_64m_vs_memcpy``: a 64 MiB MEMMOVE through the daemon, between two registered
  buffers mapped with 2 MiB pages, from SUBMIT to the completion record, against a memoryview
  copy of the same size in this process (target >= 0.9).
- ``desc_4k_vs_copyloop``: ``desc_4k_per_s`` over a bare Python loop of 4 KiB memoryview
  copies over 64 MiB (target >= 0.5); drops and retries are counted and reported.
- ``engines_2core_scaling``: two busy clients in their own processes, each on its own
  dedicated WQ, with the WQs on two groups of one engine each, over the same on one group
  of one engine (target >= 1.6).
- ``desc_4k_per_s``: 4 KiB MEMMOVE descriptors, 64 per SUBMIT, completions awaited in the
  records, a few SUBMITs in flight (target >= 150000; the daemon runs on one core).
- ``dif_check_4k_per_s``: the same, with DIF_CHECK descriptors of one 4 KiB block and its
  8-byte tuple each (no target: DSA's own DIF rate is not published).
- ``desc_4k_socket_vs_inproc``: that rate over the rate of the same descriptors submitted to the
  daemon's accelerator runtime in process (submit, engines, IOMMU, completion; no socket).
- ``crcgen_64m_vs_crc32c``: CRCGEN over 64 MiB through the daemon against the ``crc32c``
  package on the same bytes in this process (target >= 0.8).

In-process figures (``*_inproc*``) bound what the daemon can reach: the executor alone, over the
DMA space the daemon gives an mdev (an IOMMU paging domain behind the device TLB, warm), with
the native core when it is built (``SIOVD_NATIVE=0`` measures the Python executor):

- ``desc_4k_inproc_per_s``: 4 KiB MEMMOVEs with a completion record each, handed to the executor
  as one stream (``Executor.run_all``; its native core runs them in runs, the Python executor
  one by one).
- ``desc_4k_queued_inproc_vs_copyloop``: those descriptors queued and run the daemon's way
  (SUBMITs of 32 to its accelerator runtime, native runs of queued descriptors), no socket,
  over the same copy loop.
- ``desc_4k_inproc_vs_copyloop``: that rate over a bare Python loop of 4 KiB memoryview copies
  over 64 MiB measured in the same run (``bench.baselines.copyloop_4k_per_s``; target >= 1.0).
- ``compval_4k_batch128_per_s``: BATCHes of 128 COMPVALs of 4 KiB against a zero pattern, each
  with its record (QEMU's zero-page detection), in COMPVALs per second;
  ``compval_4k_batch128_vs_copyloop`` is that rate over the copy loop (target >= 0.5).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import crc32c
import trio

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio.lowlevel

import siov
from bench.baselines import copyloop_4k_per_s, run_inprocess, run_stream
from bench.common import Figure, daemon, figure
from siov import dsa as sdk
from siov_protocol import Command
from siov_protocol.messages_accel import SUBMIT_ACCEPTED
from siovd.model.accel import Completed, Executor, WorkItem, embedded_default
from siovd.model.dma import DmaFault

MIB = 1 << 20
RUNS = 5
PER_SUBMIT = 64
#: SUBMITs the rate figure keeps in flight (the dedicated WQ holds 64 descriptors; the daemon
#: runs each SUBMIT's descriptors before it reads the next message, so none is dropped).
IN_FLIGHT = 3


class FlatDma:
    """Identity translation over one bytearray: one view per range, as an IOMMU gives for a
    physically contiguous mapping."""

    def __init__(self, size: int) -> None:
        self.mem = bytearray(size)
        self.view = memoryview(self.mem)
        self.size = size
        self.view[:] = b"\x5a" * size  # touch every page before timing

    def runs(self, iova: int, length: int, write: bool) -> tuple[list[memoryview], DmaFault | None]:
        end = iova + length
        if end <= self.size:
            return [self.view[iova:end]], None
        good = max(self.size - iova, 0)
        views = [self.view[iova : iova + good]] if good else []
        return views, DmaFault(iova + good, write, 0x71, 0)


def _best(run: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed runs, after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


# ---- through the daemon ---------------------------------------------------------------------


def _rate_descriptors(base: int, records: int, task: int, op: str = "memmove") -> bytes:
    """64 MEMMOVEs of 4 KiB (from the first 2 MiB to the second) with their records, or
    (``op="dif_check"``) 64 DIF_CHECKs of one 4096-byte block and its tuple each, at 8 KiB
    strides in the first 2 MiB (see :func:`_dif_source`)."""
    out = []
    for i in range(PER_SUBMIT):
        page = (task * PER_SUBMIT + i) % 512
        if op == "dif_check":
            slot = page % 256
            out.append(
                sdk.dif_check(
                    base + slot * 8192,
                    4104,
                    block_size=4096,
                    ref_tag=DIF_REF,
                    app_tag=DIF_APP,
                    completion=records + 32 * i,
                )
            )
            continue
        out.append(
            sdk.memmove(
                base + 2 * MIB + page * 4096,
                base + page * 4096,
                4096,
                completion=records + 32 * i,
            )
        )
    return b"".join(out)


DIF_REF, DIF_APP = 0xABBA, 0xFACE


def _dif_source(view: memoryview) -> None:
    """Fill the first 2 MiB with 256 protected 4 KiB blocks (data, then guard, app tag, ref
    tag big-endian), one per 8 KiB slot; the guard comes from the SDK's bit-serial CRC."""
    data = bytes(range(256)) * 16
    block = data + struct.pack(">HHI", sdk.t10_crc16(data), DIF_APP, DIF_REF)
    for slot in range(256):
        view[slot * 8192 : slot * 8192 + len(block)] = block


class RateRun:
    """One timed run of :func:`_socket_rate`: the rate, and what the WQ did not take."""

    __slots__ = ("cpu", "dropped", "lost", "rate", "retried", "total")

    def __init__(self) -> None:
        self.rate = 0.0
        self.cpu = 0.0  # this process's CPU seconds per descriptor in the timed part
        self.total = 0  # descriptors completed, the warm-up's included
        self.dropped = 0  # SUBMIT_DROPPED: a full dedicated WQ lost the portal write
        self.retried = 0  # SUBMIT_RETRY: a full shared WQ refused it
        self.lost = 0  # accepted, yet no record within RECORD_WAIT_S (a daemon bug)


#: How long the rate loop waits for an accepted descriptor's record before it counts it lost
#: and moves on: the figure reports drops and losses, it never hangs on them.
RECORD_WAIT_S = 5.0


async def _socket_rate(
    path: str, seconds: float, op: str = "memmove", in_flight: int = IN_FLIGHT
) -> RateRun:
    async with siov.connect(path, name="bench") as client:
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        buf = await client.alloc(8 * MIB)
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        view = buf.view
        view[:] = b"\x5a" * buf.size
        if op == "dif_check":
            _dif_source(view)
        run = RateRun()
        done = 0

        async def submitter(task: int, until: float) -> None:
            nonlocal done
            records = 4 * MIB + task * PER_SUBMIT * 32
            body = {
                "device": mdev.uuid,
                "descriptors": _rate_descriptors(0, records, task, op),
            }
            clear = bytes(PER_SUBMIT * 32)
            statuses = view[records : records + PER_SUBMIT * 32 : 32]
            while time.perf_counter() < until:
                view[records : records + PER_SUBMIT * 32] = clear
                reply = await client.call(Command.SUBMIT, body)
                results = reply["results"]
                run.dropped += reply["dropped"]
                run.retried += reply["retry"]
                if 0 in statuses.tobytes():  # the records are the completion
                    for i in range(PER_SUBMIT):
                        if results[i] != SUBMIT_ACCEPTED:
                            continue  # never queued: its record stays zero
                        try:
                            await mdev.wait(
                                view[records + 32 * i : records + 32 * i + 32],
                                timeout=RECORD_WAIT_S,
                            )
                        except TimeoutError:
                            run.lost += 1
                if op == "dif_check":
                    got = bytes(statuses)
                    want = bytes(1 if r == SUBMIT_ACCEPTED else 0 for r in results)
                    if got != want:
                        raise RuntimeError(f"DIF_CHECK did not succeed: {got.hex()}")
                done += reply["accepted"]

        async def timed(duration: float) -> float:
            nonlocal done
            done = 0
            run.dropped = run.retried = run.lost = 0
            cpu = time.process_time()
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for task in range(in_flight):
                    nursery.start_soon(submitter, task, start + duration)
            run.cpu = (time.process_time() - cpu) / max(done, 1)
            run.total += done - run.lost
            return (done - run.lost) / (time.perf_counter() - start)

        await timed(0.3)  # warm up: page faults, IOTLB, device TLB
        run.rate = await timed(seconds)
        view.release()
        mdev.close()
        return run


def _refusals(runs: list[RateRun]) -> str:
    dropped = sum(r.dropped for r in runs)
    retried = sum(r.retried for r in runs)
    lost = sum(r.lost for r in runs)
    return f"{dropped} dropped, {retried} retried, {lost} lost over the runs"


def _inprocess_rate(seconds: float) -> float:
    """The same SUBMITs handed to the daemon's accelerator runtime in this process."""
    from siovd.host.config import from_dict
    from siovd.service.daemon import Daemon
    from siovd.service.session import Session

    model = Daemon(from_dict({}), state_dir="")  # no persistent definitions here
    session = Session()
    model.open_session(session)
    device = model.bus.create_mdev(session.id, "dsa0", "dsa-1dwq")
    memory = mmap.mmap(-1, 8 * MIB)
    region = model.memory.add_region(memoryview(memory), session.id)
    assert device.group is not None
    model.iommu.map(session.id, device.group.domain.id, 0, region.base, 8 * MIB, 3)
    runtime = model.accel_runtime
    state = runtime.state(session, device.uuid)
    blobs = [_rate_descriptors(0, 4 * MIB + t * PER_SUBMIT * 32, t) for t in range(IN_FLIGHT)]

    def rounds(duration: float) -> float:
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            for blob in blobs:
                accepted, _, _, _ = runtime.submit(state, blob)
                count += accepted
        return count / (time.perf_counter() - start)

    rounds(0.2)
    rate = rounds(seconds)
    model.release(session)
    return rate


def desc_4k_per_s() -> Figure:
    with daemon() as path:
        runs = [trio.run(_socket_rate, path, 1.0) for _ in range(RUNS)]
    rates = [r.rate for r in runs]
    rate = statistics.median(rates)
    return figure(
        "desc_4k_per_s",
        round(rate),
        "desc/s",
        None,
        ">= 150000",
        f"4 KiB MEMMOVEs, {PER_SUBMIT} per SUBMIT, {IN_FLIGHT} SUBMITs in flight, completion "
        f"records polled; median of {RUNS} runs of 1 s (min {min(rates):.0f}, "
        f"max {max(rates):.0f}); {_refusals(runs)}",
    )


def desc_4k_vs_copyloop() -> Figure:
    pairs = []
    runs = []
    with daemon() as path:
        for _ in range(RUNS):  # interleaved, so both see the same machine noise
            run = trio.run(_socket_rate, path, 1.0)
            runs.append(run)
            pairs.append((run.rate, copyloop_4k_per_s()))
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    rate = statistics.median(p[0] for p in pairs)
    loop = statistics.median(p[1] for p in pairs)
    return figure(
        "desc_4k_vs_copyloop",
        round(ratio, 3),
        "ratio",
        round(loop),
        ">= 0.5",
        f"desc_4k_per_s {rate:.0f} desc/s vs a bare Python loop of 4 KiB memoryview copies "
        f"over 64 MiB {loop:.0f}/s (the baseline); medians of {RUNS} interleaved runs; "
        f"{_refusals(runs)}",
    )


def dif_check_4k_per_s() -> Figure:
    with daemon() as path:
        # One SUBMIT in flight: 64 DIF_CHECKs are more than the 2 ms the daemon runs before
        # reading the next message, so a second SUBMIT would overrun the dedicated WQ.
        runs = [trio.run(_socket_rate, path, 1.0, "dif_check", 1) for _ in range(RUNS)]
    rates = [r.rate for r in runs]
    rate = statistics.median(rates)
    return figure(
        "dif_check_4k_per_s",
        round(rate),
        "desc/s",
        None,
        None,
        f"DIF_CHECK of one 4096-byte block + tuple each (guard, app and ref tag checked), "
        f"{PER_SUBMIT} per SUBMIT, one SUBMIT in flight, completion records polled; "
        f"median of {RUNS} runs of 1 s (min {min(rates):.0f}, max {max(rates):.0f}); "
        f"{_refusals(runs)}",
    )


def desc_4k_socket_vs_inproc() -> Figure:
    pairs = []
    with daemon() as path:
        for _ in range(RUNS):  # interleaved, so both see the same machine noise
            pairs.append((trio.run(_socket_rate, path, 0.6).rate, _inprocess_rate(0.6)))
    socket_rate = statistics.median(p[0] for p in pairs)
    inproc_rate = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    return figure(
        "desc_4k_socket_vs_inproc",
        round(ratio, 3),
        "ratio",
        round(inproc_rate),
        None,
        f"socket {socket_rate:.0f} desc/s vs the accelerator runtime in process "
        f"{inproc_rate:.0f} desc/s (the baseline); medians of {RUNS} interleaved runs (the "
        "value: the median of their ratios)",
    )


#: How long each busy client of the engine-scaling figure submits, per run.
SCALING_S = 1.0
SCALING_RUNS = 3


async def _layout(path: str, engines: int) -> None:
    """Two dedicated WQs of 64 (wq0.0, wq0.1) for two ``dsa-1dwq`` clients: on one group of
    one engine (``engines=1``), or each on its own group and engine (``engines=2``)."""
    async with siov.connect(path, name="bench-admin") as client:
        await client.accel_disable_device("dsa0")
        for number in range(4):
            group = number if number < engines else -1
            await client.accel_config_engine(f"dsa0/engine0.{number}", group_id=group)
        for number in range(2):
            await client.accel_config_wq(
                f"dsa0/wq0.{number}",
                group_id=number if engines == 2 else 0,
                mode="dedicated",
                size=64,
            )
        await client.accel_enable_device("dsa0")
        for number in range(2):
            await client.accel_enable_wq(f"dsa0/wq0.{number}")


def _busy_client(path: str, seconds: float) -> tuple[float, int, int, float, int]:
    """One busy client (its own process): rate, dropped, lost, its CPU seconds per
    descriptor while timed, and the descriptors it completed (its warm-up's included)."""
    run = trio.run(_socket_rate, path, seconds, "memmove", 1)
    return run.rate, run.dropped, run.lost, run.cpu, run.total


def _daemon_pid(path: str) -> int:
    """The pid of the daemon listening on ``path`` (SO_PEERCRED of a connection to it)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(path)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Pair:
    """Two busy clients at once: their summed rate, refusals and the CPU per descriptor."""

    __slots__ = ("client_cpu", "daemon_cpu", "rate", "refused")

    def __init__(self, rate: float, refused: int, client_cpu: float, daemon_cpu: float) -> None:
        self.rate = rate
        self.refused = refused
        self.client_cpu = client_cpu  # seconds per descriptor, the two clients together
        self.daemon_cpu = daemon_cpu


def _two_clients(path: str) -> Pair:
    """Two busy clients at once, each in its own process."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pid = _daemon_pid(path)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        list(pool.map(time.sleep, (0, 0)))  # both workers up before the clock starts
        before = _cpu_seconds(pid)
        futures = [pool.submit(_busy_client, path, SCALING_S) for _ in range(2)]
        results = [f.result() for f in futures]
        daemon_cpu = _cpu_seconds(pid) - before
    rate = sum(r[0] for r in results)
    return Pair(
        rate,
        sum(r[1] + r[2] for r in results),
        sum(r[3] * r[0] for r in results) / max(rate, 1.0),
        daemon_cpu / max(sum(r[4] for r in results), 1),  # its setup work included
    )


def engines_2core_scaling() -> Figure:
    pairs = []
    ceilings = []
    cpus: list[tuple[float, float]] = []  # the one-engine runs' CPU seconds per descriptor
    refused = 0
    cores = os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        paths = {engines: stack.enter_context(daemon()) for engines in (1, 2)}
        for engines, path in paths.items():
            trio.run(_layout, path, engines)
        for _ in range(SCALING_RUNS):  # interleaved, so both see the same machine noise
            got = {engines: _two_clients(path) for engines, path in paths.items()}
            refused += got[1].refused + got[2].refused
            pairs.append((got[1].rate, got[2].rate))
            # What any split of the daemon's work over engines could reach here: every core
            # busy with the clients' and the daemon's CPU per descriptor of the one-engine run.
            base = got[1]
            ceilings.append(cores / (base.client_cpu + base.daemon_cpu) / base.rate)
            cpus.append((base.client_cpu, base.daemon_cpu))
    one = statistics.median(p[0] for p in pairs)
    two = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    return figure(
        "engines_2core_scaling",
        round(ratio, 3),
        "ratio",
        round(one),
        ">= 1.6",
        f"two busy clients (own processes, one SUBMIT of {PER_SUBMIT} 4 KiB MEMMOVEs in flight "
        f"each) on two engines {two:.0f} desc/s vs on one engine {one:.0f} desc/s (the "
        f"baseline); medians of {SCALING_RUNS} interleaved runs (the value: the median of "
        f"their ratios); {refused} dropped or lost; {cores} cores, which the clients share "
        f"with the daemon: the CPU they and the daemon spend per descriptor (clients "
        f"{statistics.median(c for c, _ in cpus) * 1e6:.2f} us, daemon "
        f"{statistics.median(d for _, d in cpus) * 1e6:.2f} us, its setup included) bounds the "
        f"ratio at {statistics.median(ceilings):.2f} on this machine",
    )


#: 64 MiB descriptors kept in flight by the big-operation figures (each its own SUBMIT): what
#: is measured is the daemon's throughput, not one round trip's wake-up latency.
BIG_IN_FLIGHT = 3
BIG_ROUNDS = 9


async def _big_op(path: str, op: str) -> tuple[float, float, float]:
    """Time BIG_IN_FLIGHT 64 MiB descriptors through the daemon (first SUBMIT to the last
    completion record) and the same work in this process, BIG_ROUNDS times, interleaved.
    Returns the median of the per-round ratios (local / daemon) and the two median times."""
    size = 64 * MIB
    async with siov.connect(path, name="bench") as client:
        mdev = await client.create_dsa_mdev()
        assert mdev.domain_id is not None
        src = await client.alloc(size)
        dst = await client.alloc(size)
        rec = await client.alloc(2 * MIB)
        # 2 MiB-aligned IOVAs over 2 MiB-aligned memory: the map uses 2 MiB pages.
        for iova, buf in ((0, src), (1 << 30, dst), (2 << 30, rec)):
            await client.map(mdev.domain_id, buf.phys, buf.size, iova=iova)
        src.view[:] = os.urandom(MIB) * 64
        dst.view[:] = bytes(size)
        bodies = []
        for k in range(BIG_IN_FLIGHT):
            record = (2 << 30) + 32 * k
            if op == "memmove":
                desc = sdk.memmove(1 << 30, 0, size, completion=record)
            else:
                desc = sdk.crcgen(0, size, completion=record)
            bodies.append({"device": mdev.uuid, "descriptors": desc})
        records = rec.view[: 32 * BIG_IN_FLIGHT]
        expected_crc = crc32c.crc32c(src.view)

        async def through_daemon() -> float:
            records[:] = bytes(len(records))
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for body in bodies:
                    nursery.start_soon(client.call, Command.SUBMIT, body)
            for k in range(BIG_IN_FLIGHT):  # written by now: the reply follows the work
                await mdev.wait(records[32 * k : 32 * k + 32])
            elapsed = time.perf_counter() - start
            for k in range(BIG_IN_FLIGHT):
                done = sdk.parse_completion(records[32 * k : 32 * k + 32])
                if done.code != sdk.DSA_COMP_SUCCESS:
                    raise RuntimeError(f"{op}: {sdk.status_name(done.status)}")
                if op == "crcgen" and done.crc_val != expected_crc:
                    raise RuntimeError("crcgen: wrong CRC")
            return elapsed

        def locally() -> float:
            start = time.perf_counter()
            for _ in range(BIG_IN_FLIGHT):
                if op == "memmove":
                    dst.view[:] = src.view
                else:
                    crc32c.crc32c(src.view)
            return time.perf_counter() - start

        await through_daemon()  # the first round faults the daemon's mappings in
        locally()
        ours, local = [], []
        for _ in range(BIG_ROUNDS):
            ours.append(await through_daemon())
            local.append(locally())
        if op == "memmove" and dst.view[:MIB] != src.view[:MIB]:
            raise RuntimeError("memmove: the destination does not match")
        records.release()
        mdev.close()
        ratio = statistics.median(mine / theirs for theirs, mine in zip(ours, local, strict=True))
        return ratio, statistics.median(ours), statistics.median(local)


def memmove_64m_vs_memcpy() -> Figure:
    with daemon() as path:
        ratio, ours, local = trio.run(_big_op, path, "memmove")
    n = BIG_IN_FLIGHT
    return figure(
        "memmove_64m_vs_memcpy",
        round(ratio, 3),
        "ratio",
        round(n * 64 * MIB / local / 1e9, 2),
        ">= 0.9",
        f"{n} 64 MiB MEMMOVEs in flight through the daemon {ours * 1e3:.1f} ms (SUBMIT to the "
        f"last completion record) vs {n} memoryview copies {local * 1e3:.1f} ms; baseline: "
        f"copy GB/s; median of {BIG_ROUNDS} interleaved rounds' ratios",
    )


def crcgen_64m_vs_crc32c() -> Figure:
    with daemon() as path:
        ratio, ours, local = trio.run(_big_op, path, "crcgen")
    n = BIG_IN_FLIGHT
    return figure(
        "crcgen_64m_vs_crc32c",
        round(ratio, 3),
        "ratio",
        round(n * 64 * MIB / local / 1e9, 2),
        ">= 0.8",
        f"{n} CRCGENs over 64 MiB in flight through the daemon {ours * 1e3:.1f} ms vs "
        f"{n} crc32c.crc32c calls {local * 1e3:.1f} ms; baseline: crc32c GB/s; "
        f"median of {BIG_ROUNDS} interleaved rounds' ratios",
    )


# ---- in process -------------------------------------------------------------------------------


class _MdevSpace:
    """A dsa-1dwq mdev of an in-process daemon model with 16 MiB mapped at IOVA 0 in 4 KiB
    pages, and the DMA space the daemon's engines use for it (device TLB in front)."""

    def __init__(self) -> None:
        from siovd.host.config import from_dict
        from siovd.service.daemon import Daemon
        from siovd.service.session import Session

        self.model = Daemon(from_dict({}), state_dir="")
        self.session = Session()
        self.model.open_session(self.session)
        self.device = self.model.bus.create_mdev(self.session.id, "dsa0", "dsa-1dwq")
        self.memory = mmap.mmap(-1, 16 * MIB)
        self.memory[:] = b"\x5a" * (16 * MIB)  # touch every page before timing
        region = self.model.memory.add_region(memoryview(self.memory), self.session.id)
        assert self.device.group is not None
        for page in range(0, 16 * MIB, 4096):  # 4 KiB leaves: one IOTLB entry per page
            self.model.iommu.map(
                self.session.id, self.device.group.domain.id, page, region.base + page, 4096, 3
            )
        self.space = self.model.iommu.dma_space(self.device, self.device.default_pasid, devtlb=True)

    def close(self) -> None:
        self.model.release(self.session)


def _desc_4k_inproc_rate() -> float:
    """20,000 4 KiB MEMMOVEs, each with its completion record, handed to the executor as one
    stream (:func:`bench.baselines.run_stream`); every record must say SUCCESS."""
    count = 20_000
    world = _MdevSpace()
    try:
        records = 15 * MIB
        stream = b"".join(
            sdk.memmove(
                8 * MIB + (i % 512) * 4096,
                (i % 512) * 4096,
                4096,
                completion=records + (i % 512) * 32,
            )
            for i in range(count)
        )
        executor = Executor()
        elapsed = _best(lambda: run_stream(stream, world.space, executor=executor), 3)
        world.memory[records : records + 512 * 32] = bytes(512 * 32)
        assert run_stream(stream, world.space, executor=executor) == count
        statuses = world.memory[records : records + 512 * 32 : 32]
        assert statuses == bytes([sdk.DSA_COMP_SUCCESS]) * 512, "a MEMMOVE did not succeed"
    finally:
        world.close()
    return count / elapsed


def _desc_4k_queued_rate() -> float:
    """The descriptors of :func:`_desc_4k_inproc_rate` submitted to the daemon's accelerator
    runtime in SUBMITs of 32 (queued in the mdev's WQ, run by its scheduler, settled), in this
    process: the daemon's own path without the socket."""
    count = 20_000
    world = _MdevSpace()
    try:
        runtime = world.model.accel_runtime
        state = runtime.state(world.session, world.device.uuid)
        blobs = [
            b"".join(
                sdk.memmove(
                    8 * MIB + (i % 512) * 4096,
                    (i % 512) * 4096,
                    4096,
                    completion=15 * MIB + (i % 512) * 32,
                )
                for i in range(start, start + 32)
            )
            for start in range(0, count, 32)
        ]

        def submit_all() -> None:
            for blob in blobs:
                accepted = runtime.submit(state, blob)[0]
                assert accepted == 32

        elapsed = _best(submit_all, 3)
    finally:
        world.close()
    return count / elapsed


def desc_4k_queued_inproc_vs_copyloop() -> Figure:
    rate = _desc_4k_queued_rate()
    loop = copyloop_4k_per_s()
    return figure(
        "desc_4k_queued_inproc_vs_copyloop",
        round(rate / loop, 3),
        "ratio",
        round(loop),
        ">= 1.0",
        f"SUBMITs of 32 through the daemon's runtime in-process {rate:.0f} desc/s over a Python "
        f"loop of 4 KiB memoryview copies (native core: {_native()})",
    )


def desc_4k_inproc_per_s() -> Figure:
    """4 KiB MEMMOVE descriptors with a completion record each, through the executor (no
    queue, no socket) over the daemon's DMA space for an mdev."""
    return figure(
        "desc_4k_inproc_per_s",
        round(_desc_4k_inproc_rate()),
        "desc/s",
        None,
        ">= 150000",
        f"the executor alone over an mdev's DMA space (native core: {_native()}); best of 3",
    )


def _native() -> str:
    from siovd.model.accel import fastpath

    return "on" if fastpath.ENABLED else "off"


def desc_4k_inproc_vs_copyloop() -> Figure:
    rate = _desc_4k_inproc_rate()
    loop = copyloop_4k_per_s()
    return figure(
        "desc_4k_inproc_vs_copyloop",
        round(rate / loop, 3),
        "ratio",
        round(loop),
        ">= 1.0",
        f"executor {rate:.0f} desc/s over a Python loop of 4 KiB memoryview copies over 64 MiB "
        f"(the baseline, copies/s; native core: {_native()})",
    )


BATCH = 128


def _compval_batch_rate() -> float:
    """COMPVALs per second, in BATCHes of 128 over zeroed 4 KiB pages (each entry with its
    own record, as QEMU's multifd zero-page detection submits them)."""
    world = _MdevSpace()
    try:
        world.memory[: 8 * MIB] = bytes(8 * MIB)  # the pages under test are zero pages
        lists = 12 * MIB
        batches = []
        flags = sdk.IDXD_OP_FLAG_CRAV | sdk.IDXD_OP_FLAG_RCR
        for b in range(16):  # 16 batches x 128 pages = 8 MiB
            entries = b"".join(
                sdk.compval(
                    (b * BATCH + i) * 4096,
                    0,
                    4096,
                    completion=14 * MIB + (b * BATCH + i) * 32,
                    flags=flags,
                )
                for i in range(BATCH)
            )
            world.memory[lists + b * BATCH * 64 : lists + (b + 1) * BATCH * 64] = entries
            batches.append(sdk.batch(lists + b * BATCH * 64, BATCH, completion=15 * MIB + b * 32))
        rounds = 20
        descs = batches * rounds
        elapsed = _best(lambda: run_inprocess(descs, world.space), 3)
        assert run_inprocess(batches, world.space) == len(batches)
        assert world.memory[14 * MIB] == 1  # an entry's record: SUCCESS, the page is zero
    finally:
        world.close()
    return len(descs) * BATCH / elapsed


def compval_4k_batch128_per_s() -> Figure:
    return figure(
        "compval_4k_batch128_per_s",
        round(_compval_batch_rate()),
        "desc/s",
        None,
        None,
        f"BATCHes of 128 x 4 KiB COMPVAL against zero, the executor alone over an mdev's DMA "
        f"space (native core: {_native()}); best of 3",
    )


def compval_4k_batch128_vs_copyloop() -> Figure:
    rate = _compval_batch_rate()
    loop = copyloop_4k_per_s()
    return figure(
        "compval_4k_batch128_vs_copyloop",
        round(rate / loop, 3),
        "ratio",
        round(loop),
        ">= 0.5",
        f"{rate:.0f} COMPVAL/s in BATCHes of 128 over a Python loop of 4 KiB memoryview copies "
        f"over 64 MiB (the baseline, copies/s; native core: {_native()})",
    )


def crcgen_64m_inproc_vs_crc32c() -> Figure:
    """CRCGEN over 64 MiB through the executor, as a fraction of crc32c's own speed."""
    size = 64 * MIB
    dma = FlatDma(size + MIB)
    desc = sdk.crcgen(0, size, completion=size)
    device = embedded_default()
    executor = Executor()
    item = WorkItem(device.wqs[0], desc, 0, 0, None, None)

    def through_executor() -> None:
        outcome = executor.run(item, dma)
        assert isinstance(outcome, Completed) and outcome.status == sdk.DSA_COMP_SUCCESS

    direct = _best(lambda: crc32c.crc32c(dma.view[:size]), 5)
    ours = _best(through_executor, 5)
    check = executor.run(item, dma)
    assert isinstance(check, Completed) and check.record.crc_val == crc32c.crc32c(dma.view[:size])
    return figure(
        "crcgen_64m_inproc_vs_crc32c",
        round(direct / ours, 3),
        "ratio",
        round(size / direct / 1e9, 2),
        ">= 0.8",
        "baseline: crc32c GB/s; best of 5",
    )


def memmove_64m_inproc_vs_memcpy() -> Figure:
    """MEMMOVE of 64 MiB through the executor, as a fraction of a memoryview copy."""
    size = 64 * MIB
    dma = FlatDma(2 * size + MIB)
    desc = sdk.memmove(size, 0, size, completion=2 * size)
    device = embedded_default()
    executor = Executor()
    item = WorkItem(device.wqs[0], desc, 0, 0, None, None)
    view = dma.view

    def memcpy() -> None:
        view[size : 2 * size] = view[:size]

    def through_executor() -> None:
        outcome = executor.run(item, dma)
        assert isinstance(outcome, Completed) and outcome.status == sdk.DSA_COMP_SUCCESS

    direct = _best(memcpy, 5)
    ours = _best(through_executor, 5)
    return figure(
        "memmove_64m_inproc_vs_memcpy",
        round(direct / ours, 3),
        "ratio",
        round(size / direct / 1e9, 2),
        ">= 0.9",
        "baseline: memcpy GB/s; best of 5",
    )


FIGURES: dict[str, Callable[[], Figure]] = {
    "memmove_64m_vs_memcpy": memmove_64m_vs_memcpy,
    "desc_4k_per_s": desc_4k_per_s,
    "desc_4k_vs_copyloop": desc_4k_vs_copyloop,
    "engines_2core_scaling": engines_2core_scaling,
    "dif_check_4k_per_s": dif_check_4k_per_s,
    "desc_4k_socket_vs_inproc": desc_4k_socket_vs_inproc,
    "crcgen_64m_vs_crc32c": crcgen_64m_vs_crc32c,
    "desc_4k_inproc_per_s": desc_4k_inproc_per_s,
    "desc_4k_inproc_vs_copyloop": desc_4k_inproc_vs_copyloop,
    "desc_4k_queued_inproc_vs_copyloop": desc_4k_queued_inproc_vs_copyloop,
    "compval_4k_batch128_per_s": compval_4k_batch128_per_s,
    "compval_4k_batch128_vs_copyloop": compval_4k_batch128_vs_copyloop,
    "crcgen_64m_inproc_vs_crc32c": crcgen_64m_inproc_vs_crc32c,
    "memmove_64m_inproc_vs_memcpy": memmove_64m_inproc_vs_memcpy,
}


def main(names: list[str]) -> None:
    for name in names or list(FIGURES):
        result: dict[str, Any] = FIGURES[name]()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
