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
from siov_protocol.dsa import IDXD_OP_FLAG_BOF
from tests.attacks import attack, closing_fds, memfd, raw_session
from tests.daemonproc import LoggedDaemon
from tests.helpers import settle
from tests.rawclient import RawClient, Refused

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
        self.raw = raw_session(path)
        dev = self.raw.call(Command.MDEV_CREATE, {"parent": "dsa0", "type_id": type_id})
        self.uuid: str = dev["uuid"]
        self.domain: int = dev["domain_id"]
        self.default_pasid: int = dev["default_pasid"]
        self.fd = memfd(ALIAS)
        region = self.raw.call(Command.MEM_REGISTER, {"size": ALIAS}, [self.fd])
        self.phys: int = region["phys"]
        self.mem = mmap.mmap(self.fd, ALIAS)
        self.map(0, ALIAS)

    def map(self, iova: int, size: int) -> None:
        fields = {"domain": self.domain, "iova": iova, "phys": self.phys, "size": size, "prot": 3}
        self.raw.call(Command.MAP, fields)

    def alias(self, size: int, offset: int = 0) -> None:
        """Map the memfd (from byte ``offset`` on) at ``BIG``, ``BIG + 2 MiB - offset``, ...
        until ``size`` bytes, pipelined."""
        step = ALIAS - offset
        count = size // step
        for first in range(0, count, 64):  # 64 in flight: both sides' buffers hold them
            batch = range(first, min(first + 64, count))
            for i in batch:
                fields = {
                    "domain": self.domain,
                    "iova": BIG + i * step,
                    "phys": self.phys + offset,
                    "size": step,
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
        settle(lambda: self.mem[CR + 32 * index] != 0, f"completion record {index}", timeout)
        return self.record(index)

    def close(self) -> None:
        self.raw.close()
        self.mem.close()
        os.close(self.fd)

    def __enter__(self) -> AccelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- item 4: one BATCH of 8 x 1 GiB COMPARE ------------------------------------------------------

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


# ---- item 7: long requests -----------------------------------------------------------------------

HUGE_MAP = 64 * GiB
SMALL_PAGES_IOVA = (1 << 41) + 0x1000  # 4 KiB-aligned only: every page a 4 KiB leaf


def _sparse_region(raw: RawClient, size: int) -> tuple[int, int]:
    """A sparse memfd of ``size`` bytes registered (no page of it is ever touched)."""
    fd = memfd(size)
    with closing_fds(fd):
        region = raw.call(Command.MEM_REGISTER, {"size": size}, [fd])
    return region["phys"], region["region"]


@attack("map_unmap_64g")
def map_unmap_64g(d: LoggedDaemon) -> dict[str, Any]:
    """MAP then UNMAP of 64 GiB in 4 KiB pages, pipelined (16M entries each way)."""
    with raw_session(d.path) as raw:
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
    with raw_session(d.path) as raw:
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


# ---- item 8: an apply-delta record of gigabytes --------------------------------------------------

DELTA_DST = 0x8_0000  # 512 KiB of destination at IOVA 512 KiB (memfd bytes 512 KiB..1 MiB)
DELTA_XFER = 512 << 10
#: Record bytes the aliased gigabytes hold from memfd byte 1 MiB on: ~2 GiB, a multiple of 10.
DELTA_RECORD = 2146435070
DELTA_ENTRY = 10


@attack("ap_delta_record")
def ap_delta_record(d: LoggedDaemon) -> dict[str, Any]:
    """AP_DELTA with a 4 GiB record (over max_transfer_size) and a 2 GiB one (aliased), whose
    65537th entry points past the destination."""
    with AccelClient(d.path) as c:
        c.alias(DELTA_RECORD + MiB, offset=MiB)
        # 65536 increasing entries, then one past the 512 KiB destination.
        entries = b"".join(
            i.to_bytes(2, "little") + (i * 3).to_bytes(8, "little") for i in range(65536)
        )
        tail = (1).to_bytes(2, "little") + bytes(8)  # index 1 after 65535: not increasing
        c.mem[MiB : MiB + len(entries) + DELTA_ENTRY] = entries + tail
        rss_before = d.rss_kib()
        out: dict[str, Any] = {}
        for name, size in (("over_max", 0xFFFFFFFA), ("aliased_2g", DELTA_RECORD)):
            c.mem[CR : CR + 32] = bytes(32)
            desc = dsa.apply_delta(DELTA_DST, BIG, size, DELTA_XFER, completion=CR)
            c.raw.call(Command.SUBMIT, {"device": c.uuid, "descriptors": desc})
            record = c.wait()
            out[name] = (record.status, record.bytes_completed)
        out["rss_growth_kib"] = d.rss_kib() - rss_before
        out["applied"] = c.mem[DELTA_DST + 8 * 65535 : DELTA_DST + 8 * 65536] == (
            65535 * 3
        ).to_bytes(8, "little")
    return out


# ---- item 9: another client's PASID number -------------------------------------------------------

PASID_CONFIG = "[iommu]\npage_request_timeout_s = 30.0\n"
ATTACKER_BLOCKED = 8
UNMAPPED = 0x4000_0000


@attack("pasid_alias_drain", config=PASID_CONFIG)
def pasid_alias_drain(d: LoggedDaemon) -> dict[str, Any]:
    """An attacker on the shared WQ attaches the victim's default PASID number to its own
    mdev and leaves BOF descriptors of that PASID blocked; the victim then DRAINs."""
    with AccelClient(d.path, "dsa-1swq") as victim, AccelClient(d.path, "dsa-1swq") as attacker:
        number = victim.default_pasid
        domain = attacker.raw.call(Command.DOMAIN_ALLOC, {})["domain_id"]
        fields = {"domain": domain, "iova": 0, "phys": attacker.phys, "size": ALIAS, "prot": 3}
        attacker.raw.call(Command.MAP, fields)
        attach = {"device": attacker.uuid, "domain": domain, "pasid": number}
        attacker.raw.call(Command.ATTACH_PASID, attach)
        blocked = [
            dsa.memmove(0x10_0000, UNMAPPED, 4096, completion=CR + 32 * i, flags=IDXD_OP_FLAG_BOF)
            for i in range(ATTACKER_BLOCKED)
        ]
        submit = {"device": attacker.uuid, "descriptors": b"".join(blocked), "pasid": number}
        attacker.raw.call(Command.SUBMIT, submit)
        pending = attacker.raw.call(Command.STATS)["accel"]["page_requests_pending"]
        # The victim's DRAIN, with its own (the same) PASID number.
        victim.raw.call(
            Command.SUBMIT,
            {"device": victim.uuid, "descriptors": dsa.drain(completion=CR)},
        )
        record = victim.wait(0, timeout=60)
        after = attacker.raw.call(Command.STATS)
        still = after["accel"]["page_requests_pending"]
        attacker_done = [attacker.mem[CR + 32 * i] for i in range(ATTACKER_BLOCKED)]
        victim.raw.call(Command.PING)
        victim_events = [e.command for e in victim.raw.events]
    return {
        "pasid": number,
        "pending_before": pending,
        "pending_after_drain": still,
        "drain_status": record.status,
        "attacker_records": attacker_done,
        "victim_events": victim_events,
    }


# ---- item 10: what a client makes the daemon hold ------------------------------------------------

CAPS_BLOCKED = 64
CAPS_TABLES = 1024
CAPS_MAP = 32 * GiB
CAPS_CONFIG = (
    f"[limits]\nblocked_descriptors = {CAPS_BLOCKED}\npage_table_pages = {CAPS_TABLES}\n"
    "[iommu]\npage_request_timeout_s = 30.0\n"
)


@attack("client_caps", config=CAPS_CONFIG)
def client_caps(d: LoggedDaemon) -> dict[str, Any]:
    """Blocked descriptors never answered, and a 32 GiB map in 4 KiB pages, against
    limits.blocked_descriptors = 64 and limits.page_table_pages = 1024."""
    out: dict[str, Any] = {}
    with AccelClient(d.path) as c:
        batch = 48
        accepted = 0
        for first in (0, batch):
            descs = [
                dsa.memmove(
                    0x10_0000, UNMAPPED, 4096, completion=CR + 32 * i, flags=IDXD_OP_FLAG_BOF
                )
                for i in range(first, first + batch)
            ]
            got = c.raw.call(Command.SUBMIT, {"device": c.uuid, "descriptors": b"".join(descs)})
            accepted += got["accepted"]
        out["accepted"] = accepted
        refused = c.raw.request(
            Command.SUBMIT, {"device": c.uuid, "descriptors": dsa.noop(completion=CR)}
        )
        out["submit_refused"] = (refused.error, refused.body.get("message"))
        statuses = [c.mem[CR + 32 * i] & 0x7F for i in range(2 * batch)]
        out["completed_ir"] = statuses.count(4)  # DSA_COMP_PAGE_FAULT_IR
        out["still_blocked"] = statuses.count(0)
        phys, _ = _sparse_region(c.raw, CAPS_MAP)
        fields = {
            "domain": c.domain,
            "iova": SMALL_PAGES_IOVA,
            "phys": phys,
            "size": CAPS_MAP,
            "prot": 3,
        }
        big = c.raw.request(Command.MAP, fields)
        out["map_refused"] = (big.error, big.body.get("message"))
        # 1 GiB of 2 MiB pages needs a handful of tables: fine.
        ok = c.raw.call(Command.MAP, {**fields, "iova": 1 << 42, "size": GiB})
        out["map_ok"] = ok["size"]
        stats = c.raw.call(Command.STATS)
        out["costs"] = stats["session"]
        out["over_limit"] = stats["accel"]["page_requests_over_limit"]
    return out
