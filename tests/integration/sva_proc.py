"""A client process that hands its own memory to the device (SVA) and works on it.

Run as ``python sva_proc.py SOCKET SCENARIO [ARGS...]``; it prints one JSON object per line
(what the test checks) and exits 0 when the scenario ran. It uses only the SDK and ctypes: its
buffers are ctypes arrays and anonymous mappings of its own, its descriptors carry their
virtual addresses, and it polls each completion record in its own memory.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
import time
from typing import Any

import siov
from siov import dsa
from siov_protocol import Command
from siov_protocol.schema import plain

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_PRIVATE_ANON = 0x22
MAP_FIXED_NOREPLACE = 0x100000
PAGE = 4096
#: Polls of a completion record before giving up (a liveness bound, not a timing check).
POLLS = 200_000


def out(**fields: Any) -> None:
    print(json.dumps({k: plain(v) for k, v in fields.items()}), flush=True)


def anon(size: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE, at: int = 0) -> int:
    flags = MAP_PRIVATE_ANON | (MAP_FIXED_NOREPLACE if at else 0)
    addr = libc.mmap(at or None, size, prot, flags, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return int(addr)


class Records:
    """32-byte completion records in this process's memory."""

    def __init__(self, count: int) -> None:
        self.base = anon(max(count * 32, PAGE))
        self.count = count

    def addr(self, i: int) -> int:
        return self.base + 32 * i

    def clear(self) -> None:
        ctypes.memset(self.base, 0, self.count * 32)

    def raw(self, i: int) -> bytes:
        return ctypes.string_at(self.addr(i), 32)

    def wait(self, i: int) -> dsa.CompletionRecord:
        for n in range(POLLS):
            if ctypes.c_uint8.from_address(self.addr(i)).value:
                return dsa.parse_completion(self.raw(i))
            if n > 100:
                time.sleep(0.0005)
        raise SystemExit(f"record {i} never completed")


def record_dict(rec: dsa.CompletionRecord) -> dict[str, Any]:
    return {
        "status": rec.status,
        "result": rec.result,
        "bytes_completed": rec.bytes_completed,
        "fault_addr": rec.fault_addr,
        "crc": rec.crc_val,
    }


def ops(client: siov.BlockingClient, wq: int) -> None:
    """MEMMOVE, FILL, COMPARE (equal and not) and CRC over this process's own buffers."""
    opened = client.wq_open("dsa0", wq)
    out(opened=opened)
    handle = opened["handle"]
    recs = Records(8)
    src = ctypes.create_string_buffer(bytes(range(256)) * 16, 4096)
    dst = ctypes.create_string_buffer(4096)
    untouched = anon(64 * PAGE)  # never touched: the kernel has not populated it
    text = ctypes.create_string_buffer(b"123456789", 9)
    s, d = ctypes.addressof(src), ctypes.addressof(dst)
    recs.clear()
    descriptors = [
        dsa.memmove(d, s, 4096, completion=recs.addr(0)),
        dsa.fill(untouched, 0x1122334455667788, 64 * PAGE, completion=recs.addr(1)),
        dsa.compare(d, s, 4096, completion=recs.addr(2)),
        dsa.crcgen(ctypes.addressof(text), 9, completion=recs.addr(3)),
    ]
    results = client.wq_submit(handle, b"".join(descriptors))
    out(results=list(results))
    got = [record_dict(recs.wait(i)) for i in range(4)]
    filled = ctypes.string_at(untouched, 64 * PAGE)
    out(
        records=got,
        copied=dst.raw == src.raw,
        filled=filled == bytes.fromhex("8877665544332211") * (64 * PAGE // 8),
    )
    # A difference: COMPARE reports where.
    ctypes.memset(d + 1000, 0xEE, 1)
    recs.clear()
    client.wq_submit(handle, dsa.compare(s, d, 4096, completion=recs.addr(0)))
    out(differ=record_dict(recs.wait(0)))
    client.wq_close(handle)
    out(closed=True)


def readonly(client: siov.BlockingClient, wq: int) -> None:
    opened = client.wq_open("dsa0", wq)
    handle = opened["handle"]
    recs = Records(2)
    src = ctypes.create_string_buffer(b"S" * 4096, 4096)
    page = anon(PAGE)
    ctypes.memset(page, 0x5A, PAGE)
    libc.mprotect(page, PAGE, mmap.PROT_READ)
    client.invalidate("domain", domain=opened["domain"])  # what an mmu-notifier does
    recs.clear()
    client.wq_submit(
        handle, dsa.memmove(page, ctypes.addressof(src), 4096, completion=recs.addr(0))
    )
    rec = record_dict(recs.wait(0))
    unchanged = ctypes.string_at(page, PAGE) == b"\x5a" * PAGE
    event = client.next_event(timeout=10)
    out(record=rec, page=page, unchanged=unchanged, event=event.body)
    # Reading the same read-only page is fine.
    recs.clear()
    dst = ctypes.create_string_buffer(4096)
    client.wq_submit(
        handle, dsa.memmove(ctypes.addressof(dst), page, 4096, completion=recs.addr(1))
    )
    out(read=record_dict(recs.wait(1)), copied=dst.raw == b"\x5a" * PAGE)


def unmapped(client: siov.BlockingClient, wq: int) -> None:
    """A source whose second page is unmapped: partial completion; then with BOF the page
    request is answered after mapping the page, and the copy finishes."""
    opened = client.wq_open("dsa0", wq)
    handle = opened["handle"]
    recs = Records(2)
    area = anon(2 * PAGE)
    ctypes.memset(area, 0x61, 2 * PAGE)
    libc.munmap(area + PAGE, PAGE)
    dst = ctypes.create_string_buffer(2 * PAGE)
    d = ctypes.addressof(dst)
    recs.clear()
    client.wq_submit(handle, dsa.memmove(d, area, 2 * PAGE, completion=recs.addr(0)))
    out(nobof=record_dict(recs.wait(0)), hole=area + PAGE)
    client.next_event(timeout=10)  # the fault record
    recs.clear()
    ctypes.memset(d, 0, 2 * PAGE)
    desc = dsa.memmove(d, area, 2 * PAGE, completion=recs.addr(1), flags=dsa.IDXD_OP_FLAG_BOF)
    client.wq_submit(handle, desc)
    while True:
        event = client.next_event(timeout=10)
        if event.command == Command.EVENT_PAGE_REQUEST:
            break
    pending = ctypes.c_uint8.from_address(recs.addr(1)).value
    anon(PAGE, at=area + PAGE)  # map the missing page, then answer SUCCESS
    ctypes.memset(area + PAGE, 0x62, PAGE)
    client.page_response(event.body["request"], 0)
    rec = record_dict(recs.wait(1))
    copied = ctypes.string_at(d, 2 * PAGE) == b"a" * PAGE + b"b" * PAGE
    out(request=event.body, pending_before=pending, bof=rec, copied=copied)


def secret(client: siov.BlockingClient) -> None:
    """Holds a secret at a fixed address on the shared WQ and waits."""
    opened = client.wq_open("dsa0", 1)
    addr = anon(PAGE, at=0x7E00_0000_0000)
    ctypes.memmove(addr, b"secret!!" * 512, PAGE)
    out(pasid=opened["pasid"], addr=addr)
    sys.stdin.readline()
    out(intact=ctypes.string_at(addr, PAGE) == b"secret!!" * 512)


def snoop(client: siov.BlockingClient, other_pasid: int, addr: int) -> None:
    """On the same shared WQ: read and write ``addr`` (mapped only in the other process),
    with the other process's PASID written into the descriptors."""
    opened = client.wq_open("dsa0", 1)
    recs = Records(2)
    mine = ctypes.create_string_buffer(b"mine" * 1024, PAGE)
    m = ctypes.addressof(mine)
    recs.clear()
    descriptors = dsa.memmove(m, addr, PAGE, completion=recs.addr(0), pasid=other_pasid)
    descriptors += dsa.memmove(addr, m, PAGE, completion=recs.addr(1), pasid=other_pasid)
    client.wq_submit(opened["handle"], descriptors)
    out(
        pasid=opened["pasid"],
        read=record_dict(recs.wait(0)),
        write=record_dict(recs.wait(1)),
        mine_intact=mine.raw == b"mine" * 1024,
    )


def bind(client: siov.BlockingClient) -> None:
    """SVA_BIND on a shared-WQ mdev, then SUBMIT with that PASID and virtual addresses."""
    mdev = client.create_dsa_mdev("dsa-1swq")
    bound = client.sva_bind(mdev.uuid)
    recs = Records(1)
    src = ctypes.create_string_buffer(b"Z" * 8192, 8192)
    dst = ctypes.create_string_buffer(8192)
    recs.clear()
    desc = dsa.memmove(ctypes.addressof(dst), ctypes.addressof(src), 8192, completion=recs.addr(0))
    result = mdev.submit(desc, pasid=bound.pasid)
    out(bound=bound, accepted=result.all_accepted, record=record_dict(recs.wait(0)))
    out(copied=dst.raw == src.raw)
    client.sva_unbind(mdev.uuid, bound["pasid"])
    out(unbound=True)


def hold(client: siov.BlockingClient) -> None:
    """Opens both WQs, binds an mdev, leaves a page request pending, then waits to die."""
    first = client.wq_open("dsa0", 0)
    second = client.wq_open("dsa0", 1)
    mdev = client.create_dsa_mdev("dsa-1swq")
    bound = client.sva_bind(mdev.uuid)
    recs = Records(2)
    hole = anon(PAGE)
    libc.munmap(hole, PAGE)
    for i, opened in enumerate((first, second)):
        desc = dsa.fill(hole, 0, PAGE, completion=recs.addr(i), flags=dsa.IDXD_OP_FLAG_BOF)
        client.wq_submit(opened["handle"], desc)
    out(ready=True, pasids=[first["pasid"], second["pasid"], bound["pasid"]])
    sys.stdin.readline()


def main() -> None:
    path, scenario, *args = sys.argv[1:]
    with siov.BlockingClient(path, name=f"sva-{scenario}") as client:
        if scenario == "ops":
            ops(client, int(args[0]))
        elif scenario == "readonly":
            readonly(client, int(args[0]))
        elif scenario == "unmapped":
            unmapped(client, int(args[0]))
        elif scenario == "secret":
            secret(client)
        elif scenario == "snoop":
            snoop(client, int(args[0]), int(args[1]))
        elif scenario == "bind":
            bind(client)
        elif scenario == "hold":
            hold(client)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    os._exit(0)


if __name__ == "__main__":
    main()
