"""SVA figures: descriptors that carry this process's own virtual addresses, through the user-WQ
char device (WQ_OPEN/WQ_SUBMIT), against the SDK SUBMIT path measured in the same run.
``python bench/sva_figures.py [NAME ...]``.

- ``sva_desc_4k_per_s``: back-to-back 4 KiB MEMMOVEs between two ctypes buffers of this
  process, 64 per WQ_SUBMIT on the dedicated WQ, each batch's completion records polled in this
  process's memory before the next; the baseline is the same loop through SUBMIT on a
  ``dsa-1dwq`` mdev with registered memory (memfd, IOVA mappings).
- ``sva_desc_4k_vs_submit``: the ratio of the two (SVA moves data by pread/pwrite on the
  process's /proc/self/mem; SUBMIT by memoryview slices over shared mappings).
- ``sva_desc_4k_single_per_s``: one descriptor per WQ_SUBMIT (what one portal write costs when
  each store becomes a message), against SUBMIT of one descriptor.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import siov
from bench.common import Figure, daemon, figure
from siov import dsa as sdk
from siov_protocol import Command

PAGE = 4096
PAGES = 256  # 1 MiB of source, 1 MiB of destination
RUNS = 3
SECONDS = 1.0


def _poll(done: Callable[[], bool]) -> None:
    """Spin until ``done()`` (the daemon is another process: it is not held up)."""
    while not done():
        time.sleep(0)


def _descs(src: int, dst: int, records: int, per: int, round_: int) -> bytes:
    out = []
    for i in range(per):
        page = (round_ * per + i) % PAGES
        out.append(
            sdk.memmove(dst + page * PAGE, src + page * PAGE, PAGE, completion=records + 32 * i)
        )
    return b"".join(out)


async def _sva_rate(path: str, per: int, seconds: float) -> float:
    """WQ_SUBMIT on the dedicated WQ with this process's own buffers."""
    src = ctypes.create_string_buffer(b"\x5a" * (PAGES * PAGE), PAGES * PAGE)
    dst = ctypes.create_string_buffer(PAGES * PAGE)
    ctypes.memset(dst, 1, PAGES * PAGE)  # touched: no first-touch faults while timing
    raw = (ctypes.c_char * (per * 32 + 64))()
    records = (ctypes.addressof(raw) + 31) & ~31
    status = (ctypes.c_uint8 * (per * 32)).from_address(records)
    rounds = [
        _descs(ctypes.addressof(src), ctypes.addressof(dst), records, per, r)
        for r in range(PAGES // per or 1)
    ]
    async with siov.connect(path, name="bench-sva") as client:
        opened = await client.wq_open("dsa0", 0)
        handle = opened.handle

        async def timed(duration: float) -> float:
            done = 0
            start = time.perf_counter()
            index = 0
            while time.perf_counter() - start < duration:
                ctypes.memset(records, 0, per * 32)
                body = {"handle": handle, "descriptors": rounds[index % len(rounds)]}
                index += 1
                reply = await client.call(Command.WQ_SUBMIT, body)
                if reply["results"] != bytes(per):
                    raise RuntimeError(f"not accepted: {reply['results']!r}")
                _poll(lambda: all(status[32 * i] for i in range(per)))  # our own memory
                bad = [status[32 * i] for i in range(per) if status[32 * i] != 1]
                if bad:
                    raise RuntimeError(f"statuses {bad}")
                done += per
            return done / (time.perf_counter() - start)

        await timed(0.2)
        rate = await timed(seconds)
        await client.wq_close(handle)
        return rate


async def _submit_rate(path: str, per: int, seconds: float) -> float:
    """The same loop through SUBMIT on a dsa-1dwq mdev over registered, mapped memory."""
    async with siov.connect(path, name="bench-submit") as client:
        mdev = await client.create_dsa_mdev("dsa-1dwq")
        assert mdev.domain_id is not None
        size = 2 * PAGES * PAGE + 2 * (1 << 20)
        buf = await client.alloc(size)
        await client.map(mdev.domain_id, buf.phys, buf.size, iova=0)
        view = buf.view
        view[: PAGES * PAGE] = b"\x5a" * (PAGES * PAGE)
        records = 2 * PAGES * PAGE
        rounds = [_descs(0, PAGES * PAGE, records, per, r) for r in range(PAGES // per or 1)]
        statuses = view[records : records + per * 32 : 32]
        clear = bytes(per * 32)

        async def timed(duration: float) -> float:
            done = 0
            start = time.perf_counter()
            index = 0
            while time.perf_counter() - start < duration:
                view[records : records + per * 32] = clear
                body = {"device": mdev.uuid, "descriptors": rounds[index % len(rounds)]}
                index += 1
                reply = await client.call(Command.SUBMIT, body)
                if reply["accepted"] != per:
                    raise RuntimeError(f"not accepted: {reply}")
                _poll(lambda: 0 not in statuses.tobytes())
                done += per
            return done / (time.perf_counter() - start)

        await timed(0.2)
        rate = await timed(seconds)
        statuses.release()
        view.release()
        await mdev.remove()
        return rate


def _pairs(per: int) -> tuple[list[float], list[float]]:
    sva, base = [], []
    with daemon() as path:
        for _ in range(RUNS):  # interleaved: both see the same machine noise
            sva.append(trio.run(_sva_rate, path, per, SECONDS))
            base.append(trio.run(_submit_rate, path, per, SECONDS))
    return sva, base


_cache: dict[int, tuple[list[float], list[float]]] = {}


def _measured(per: int) -> tuple[float, float, str]:
    if per not in _cache:
        _cache[per] = _pairs(per)
    sva, base = _cache[per]
    ratios = [s / b for s, b in zip(sva, base, strict=True)]
    note = (
        f"{per} per message, 1 message in flight, records polled; median of {RUNS} interleaved "
        f"runs of {SECONDS:g} s; SVA {min(sva):.0f}..{max(sva):.0f}, SUBMIT "
        f"{min(base):.0f}..{max(base):.0f} desc/s; ratio {statistics.median(ratios):.2f}"
    )
    return statistics.median(sva), statistics.median(base), note


def sva_desc_4k_per_s() -> Figure:
    sva, base, note = _measured(64)
    return figure("sva_desc_4k_per_s", round(sva), "desc/s", round(base), None, note)


def sva_desc_4k_vs_submit() -> Figure:
    _, _, note = _measured(64)
    sva, base = _cache[64]
    ratio = statistics.median(s / b for s, b in zip(sva, base, strict=True))  # per run pair
    return figure("sva_desc_4k_vs_submit", round(ratio, 3), "x SUBMIT", 1.0, None, note)


def sva_desc_4k_single_per_s() -> Figure:
    sva, base, note = _measured(1)
    return figure("sva_desc_4k_single_per_s", round(sva), "desc/s", round(base), None, note)


FIGURES: dict[str, Callable[[], Figure]] = {
    "sva_desc_4k_per_s": sva_desc_4k_per_s,
    "sva_desc_4k_vs_submit": sva_desc_4k_vs_submit,
    "sva_desc_4k_single_per_s": sva_desc_4k_single_per_s,
}


def main(names: list[str]) -> None:
    for name in names or list(FIGURES):
        result: dict[str, Any] = FIGURES[name]()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
