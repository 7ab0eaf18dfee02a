"""Figures of the host view: an unmodified-style DSA program submitting through its WQ portal.

``portal_bench.c`` (built here with cc) does back-to-back 4 KiB MEMMOVEs by MOVDIR64B
(dedicated WQ) or ENQCMD (shared WQ) under ``siov-run``, polling each completion record in its
own memory, with WINDOW descriptors in flight. Each figure is that rate as a ratio to the SDK
SUBMIT path doing the same (one descriptor per SUBMIT, WINDOW in flight, records polled)
against the same daemon in the same run.
Needs root, /dev/fuse and pyfuse3 (as siov-run does); otherwise the figure says why.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import trio

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import siov
from bench.common import Figure, daemon, figure
from siov import dsa as sdk
from siov_protocol import Command

RUNS = 3
SECONDS = 0.8
#: descriptors in flight (the embedded default's WQs hold 64 each)
WINDOW = 16
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (siov-run's mount namespace)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "needs pyfuse3"
    return None


@functools.cache
def _program() -> str:
    out = os.path.join(tempfile.mkdtemp(prefix="siov-bench-portal-"), "portal_bench")
    src = os.path.join(HERE, "portal_bench.c")
    subprocess.run(["cc", "-O2", "-Wall", "-o", out, src], check=True)
    return out


def _portal_rate(path: str, wq: str, mode: str) -> float:
    argv = [sys.executable, "-m", "siov_host.run", "--socket", path, "--"]
    argv += [_program(), f"/dev/dsa/{wq}", mode, str(SECONDS), str(WINDOW)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    count, seconds = out.stdout.split()
    return int(count) / float(seconds)


async def _sdk_rate(path: str, mdev_type: str, seconds: float) -> float:
    """The same work through the SDK: an mdev of ``mdev_type``, one 4 KiB MEMMOVE per SUBMIT,
    WINDOW in flight, each record polled in our memory before its descriptor goes again (a
    shared WQ's "retry" is submitted again, as ENQCMD's ZF=1 is)."""
    async with siov.connect(path, name="bench-sdk") as client:
        mdev = await client.create_dsa_mdev(mdev_type)
        assert mdev.domain_id is not None
        buf = await client.alloc(8 * MIB)
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        view = buf.view
        records = 4 * MIB
        bodies = [
            {
                "device": mdev.uuid,
                "descriptors": sdk.memmove(
                    2 * i * 4096 + 4096, 2 * i * 4096, 4096, completion=records + 32 * i
                ),
            }
            for i in range(WINDOW)
        ]

        async def submit(i: int) -> None:
            while (await client.call(Command.SUBMIT, bodies[i]))["accepted"] != 1:
                pass

        async def run(duration: float) -> float:
            done = 0
            start = time.perf_counter()
            for i in range(WINDOW):
                view[records + 32 * i] = 0
                await submit(i)
            i = 0
            while True:
                record = view[records + 32 * i : records + 32 * i + 32]
                done_record = await mdev.wait(record)
                if done_record.code != sdk.DSA_COMP_SUCCESS:
                    raise RuntimeError(f"MEMMOVE failed: {done_record}")
                done += 1
                view[records + 32 * i] = 0
                if time.perf_counter() - start >= duration:
                    break
                await submit(i)
                i = (i + 1) % WINDOW
            rate = done / (time.perf_counter() - start)
            for j in range(WINDOW):  # let the rest finish before the records are reused
                if j != i:
                    await mdev.wait(view[records + 32 * j : records + 32 * j + 32])
            return rate

        await run(0.2)  # warm up
        rate = await run(seconds)
        view.release()
        mdev.close()
        return rate


def _portal_figure(name: str, wq: str, mode: str) -> Figure:
    reason = _missing()
    if reason is not None:
        return figure(name, 0.0, "ratio", None, None, f"not measured: {reason}")
    pairs = []
    with daemon() as path:
        for _ in range(RUNS):  # interleaved, so both see the same machine noise
            mdev_type = "dsa-1dwq" if mode == "dedicated" else "dsa-1swq"
            sdk_rate = trio.run(_sdk_rate, path, mdev_type, SECONDS)
            pairs.append((_portal_rate(path, wq, mode), sdk_rate))
    portal = statistics.median(p[0] for p in pairs)
    sdk = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    insn = "MOVDIR64B" if mode == "dedicated" else "ENQCMD (retried while ZF=1)"
    mdev_type = "dsa-1dwq" if mode == "dedicated" else "dsa-1swq"
    return figure(
        name,
        round(ratio, 4),
        "ratio",
        round(sdk),
        None,
        f"portal {portal:.0f} desc/s ({insn} to {wq}, {WINDOW} in flight, trapped by "
        f"libsiov_portal, completion polled in the process) vs SDK SUBMIT {sdk:.0f} desc/s "
        f"(the baseline: one descriptor per SUBMIT to a {mdev_type} mdev, {WINDOW} in "
        f"flight, records polled); medians of {RUNS} interleaved runs",
    )


def portal_dwq_4k_per_s() -> Figure:
    return _portal_figure("portal_dwq_4k_per_s", "wq0.0", "dedicated")


def portal_swq_4k_per_s() -> Figure:
    return _portal_figure("portal_swq_4k_per_s", "wq0.1", "shared")


FIGURES: dict[str, Callable[[], Figure]] = {
    "portal_dwq_4k_per_s": portal_dwq_4k_per_s,
    "portal_swq_4k_per_s": portal_swq_4k_per_s,
}
