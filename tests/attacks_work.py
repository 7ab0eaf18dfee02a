"""Attacks by long work (issue 9, items 4, 7, 8, 9, 10): requests and descriptors that cost
seconds of daemon time each, and the per-client caps on what a client makes the daemon hold.

Registered in :data:`tests.attacks.ATTACKS` on import, so ``tests/integration/
test_hostile_work.py`` and ``bench/hostile_figures.py`` run them with the bystander like the
others. Memory is aliased: one 2 MiB memfd mapped many times gives gigabytes of IOVA for the
price of 2 MiB, as an attacker would do.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Any

from siov import dsa
from siov_protocol import Command
from tests.attacks import Raw, Refused, attack, closing_fds, memfd
from tests.daemonproc import LoggedDaemon

MiB = 1 << 20
GiB = 1 << 30
ALIAS = 2 * MiB
LIST = 0x1000  # batch list, in the small window at IOVA 0
CR = 0x3000  # completion records, 32 bytes apart
BIG = 1 << 40  # where the aliased gigabytes start


class AccelClient:
    """A raw session with a dedicated-WQ mdev and one 2 MiB memfd: at IOVA 0, and aliased as
    many times as asked from IOVA :data:`BIG` on."""

    def __init__(self, path: str, type_id: str = "dsa-1dwq") -> None:
        self.raw = Raw(path)
        dev = self.raw.call(Command.MDEV_CREATE, {"parent": "dsa0", "type_id": type_id})
        self.uuid: str = dev["uuid"]
        self.domain: int = dev["domain_id"]
        self.fd = memfd(ALIAS)
        region = self.raw.call(Command.MEM_REGISTER, {"size": ALIAS}, [self.fd])
        self.phys: int = region["phys"]
        self.mem = mmap.mmap(self.fd, ALIAS)
        self.map(0, ALIAS)

    def map(self, iova: int, size: int) -> None:
        fields = {"domain": self.domain, "iova": iova, "phys": self.phys, "size": size, "prot": 3}
        self.raw.call(Command.MAP, fields)

    def alias(self, size: int) -> None:
        """Map the memfd at ``BIG``, ``BIG + 2 MiB``, ... until ``size`` bytes, pipelined."""
        count = size // ALIAS
        for first in range(0, count, 64):  # 64 in flight: both sides' buffers hold them
            batch = range(first, min(first + 64, count))
            for i in batch:
                fields = {
                    "domain": self.domain,
                    "iova": BIG + i * ALIAS,
                    "phys": self.phys,
                    "size": ALIAS,
                    "prot": 3,
                }
                self.raw.send(Command.MAP, fields)
            for _ in batch:
                got = self.raw.reply()
                if got.is_error:
                    raise Refused(got)

    def record(self, index: int = 0) -> dsa.CompletionRecord:
        return dsa.parse_completion(self.mem[CR + 32 * index : CR + 32 * index + 32])

    def wait(self, index: int = 0, timeout: float = 600.0) -> dsa.CompletionRecord:
        deadline = time.monotonic() + timeout
        while self.mem[CR + 32 * index] == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"completion record {index} not written in {timeout:.0f} s")
            time.sleep(0.005)
        return self.record(index)

    def close(self) -> None:
        self.raw.close()
        self.mem.close()
        os.close(self.fd)

    def __enter__(self) -> AccelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- item 4: one BATCH of 8 x 1 GiB COMPARE --------------------------------------------------

BATCH_ENTRIES = 8


@attack("batch_compare")
def batch_compare(d: LoggedDaemon) -> dict[str, Any]:
    """One BATCH of 8 x 1 GiB COMPARE over aliased 2 MiB mappings (8 GiB of work)."""
    with AccelClient(d.path) as c:
        c.alias(GiB)
        entries = [dsa.compare(BIG, BIG, GiB) for _ in range(BATCH_ENTRIES)]
        c.mem[LIST : LIST + 64 * BATCH_ENTRIES] = b"".join(entries)
        start = time.monotonic()
        desc = dsa.batch(LIST, BATCH_ENTRIES, completion=CR)
        reply = c.raw.call(Command.SUBMIT, {"device": c.uuid, "descriptors": desc})
        record = c.wait()
        seconds = time.monotonic() - start
        after = c.raw.call(Command.STATS)
    return {
        "accepted": reply["accepted"],
        "status": record.status,
        "entries_completed": record.bytes_completed,
        "seconds": round(seconds, 2),
        "preemptions": after["accel"]["preemptions"],
    }


# ---- item 7: long requests ---------------------------------------------------------------------

HUGE_MAP = 64 * GiB
SMALL_PAGES_IOVA = (1 << 41) + 0x1000  # 4 KiB-aligned only: every page a 4 KiB leaf


def _sparse_region(raw: Raw, size: int) -> tuple[int, int]:
    """A sparse memfd of ``size`` bytes registered (no page of it is ever touched)."""
    fd = memfd(size)
    with closing_fds(fd):
        region = raw.call(Command.MEM_REGISTER, {"size": size}, [fd])
    return region["phys"], region["region"]


@attack("map_unmap_64g")
def map_unmap_64g(d: LoggedDaemon) -> dict[str, Any]:
    """MAP then UNMAP of 64 GiB in 4 KiB pages, pipelined (16M entries each way)."""
    with Raw(d.path) as raw:
        dev = raw.call(Command.BUS_REGISTER_DEVICE, {"name": "hostile-map"})
        phys, _ = _sparse_region(raw, HUGE_MAP)
        fields = {
            "domain": dev["domain_id"],
            "iova": SMALL_PAGES_IOVA,
            "phys": phys,
            "size": HUGE_MAP,
            "prot": 3,
        }
        start = time.monotonic()
        raw.send(Command.MAP, fields)
        raw.send(
            Command.UNMAP, {"domain": dev["domain_id"], "iova": SMALL_PAGES_IOVA, "size": HUGE_MAP}
        )
        mapped = raw.reply()
        unmapped = raw.reply()
        seconds = time.monotonic() - start
        after = raw.call(Command.STATS)
    return {
        "map": mapped.error or mapped.body.get("size"),
        "unmap": unmapped.error or unmapped.body.get("unmapped"),
        "seconds": round(seconds, 2),
        "turns": after["daemon"].get("request_turns", 0),
    }


DIRTY_SIZE = 31 * GiB
DIRTY_CALLS = 2


@attack("dirty_bitmap_31g")
def dirty_bitmap_31g(d: LoggedDaemon) -> dict[str, Any]:
    """31 GiB mapped in 4 KiB pages, then DIRTY_BITMAP over all of it, 2 calls pipelined."""
    with Raw(d.path) as raw:
        dev = raw.call(Command.BUS_REGISTER_DEVICE, {"name": "hostile-dirty"})
        domain = dev["domain_id"]
        phys, _ = _sparse_region(raw, DIRTY_SIZE)
        fields = {"domain": domain, "iova": SMALL_PAGES_IOVA, "phys": phys, "size": DIRTY_SIZE}
        raw.call(Command.MAP, {**fields, "prot": 3})
        start = time.monotonic()
        ask = {"domain": domain, "iova": SMALL_PAGES_IOVA, "size": DIRTY_SIZE, "clear": True}
        for _ in range(DIRTY_CALLS):
            raw.send(Command.DIRTY_BITMAP, ask)
        pages = []
        for _ in range(DIRTY_CALLS):
            got = raw.reply()
            pages.append(got.error or got.body.get("pages"))
        seconds = time.monotonic() - start
    return {"pages": pages, "seconds": round(seconds, 2)}


PIPELINED_SUBMITS = 64
SUBMIT_COMPARE = 2 * GiB


@attack("submit_compare_64")
def submit_compare_64(d: LoggedDaemon) -> dict[str, Any]:
    """64 pipelined SUBMITs of a 2 GiB COMPARE each (aliased), on a dedicated WQ."""
    with AccelClient(d.path) as c:
        c.alias(SUBMIT_COMPARE)
        for i in range(PIPELINED_SUBMITS):
            desc = dsa.compare(BIG, BIG, SUBMIT_COMPARE, completion=CR + 32 * (i % 64))
            c.raw.send(Command.SUBMIT, {"device": c.uuid, "descriptors": desc})
        accepted = retry = 0
        for _ in range(PIPELINED_SUBMITS):
            got = c.raw.reply()
            assert not got.is_error, got
            accepted += got.body["accepted"]
            retry += got.body["retry"]
        start = time.monotonic()
        first = c.wait(0)
        seconds = time.monotonic() - start
        after = c.raw.call(Command.STATS)
        # Leaving with work queued: the daemon cancels it.
    return {
        "accepted": accepted,
        "retry": retry,
        "first_status": first.status,
        "first_seconds": round(seconds, 2),
        "outstanding": after["accel"]["outstanding"],
    }
