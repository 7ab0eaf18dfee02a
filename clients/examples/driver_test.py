"""A driver test against siovd's DSA: a dedicated WQ on a domain of its own, 2 MiB maps, a
BATCH of 32 CRCGENs, an unmap that stops a descriptor part way, its partial-completion report
(record and EVENT_FAULT), and the resumed remainder.

What a driver developer checks on hardware, written with the SDK only: every CRC is compared
with ``siov.dsa.crc32c`` (the DSA rules in software), the fault event names the descriptor it
came from, and the IOTLB shows the 2 MiB leaves the maps made. Any mismatch exits non-zero.

    python clients/examples/driver_test.py --socket /run/siovd/siovd.sock
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import siov
from siov import dsa

MiB = 1 << 20
DATA = 0x4000_0000  # two 2 MiB maps: [DATA, DATA+2M) and [DATA+2M, DATA+4M)
RECORDS = 0x5000_0000  # completion records and the batch's descriptor list
LIST_OFFSET = 0x10_0000  # the descriptor list, inside the records buffer
CHUNK = 128 * 1024  # each CRCGEN of the batch covers one chunk: 32 x 128 KiB = 4 MiB
COUNT = 32


async def main(socket_path: str | None) -> int:
    failures: list[str] = []

    def check(what: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    async with siov.connect(socket_path, name="driver_test") as client:
        data = await client.alloc(4 * MiB)
        records = await client.alloc(2 * MiB)
        mdev = await client.create_dsa_mdev("dsa-1dwq")
        domain = await client.alloc_domain()
        await client.attach_device(domain, mdev)  # plain attach: the mdev's DMA goes there
        check("Mdev.domain_id follows the attach", mdev.domain_id == domain.domain_id)
        for half in (0, 1):
            await client.map(
                domain, data.phys + half * 2 * MiB, 2 * MiB, iova=DATA + half * 2 * MiB
            )
        await client.map(domain, records.phys, records.size, iova=RECORDS)
        leaf = await client.iova_leaf(domain, DATA + 12345)
        check("each map is one 2 MiB leaf", leaf.page_size == 2 * MiB)
        payload = os.urandom(4 * MiB)
        data.view[:] = payload
        # which WQ the mdev took: ACCEL_LIST names each WQ's mdevs and their PASIDs
        wq = next(
            f"{dev['dev']}/{w['dev']}"
            for dev in await client.accel_list()
            for group in dev["groups"]
            for w in group["grouped_workqueues"]
            if any(u["uuid"] == mdev.uuid for u in w.get("mdevs", []))
        )
        print(f"mdev {mdev.uuid} on {wq}, PASID {mdev.default_pasid}")

        # -- a BATCH of 32 CRCGENs, each with its own record ------------------------------------
        subs = [
            dsa.crcgen(DATA + i * CHUNK, CHUNK, completion=RECORDS + 32 * (i + 1))
            for i in range(COUNT)
        ]
        records.view[LIST_OFFSET : LIST_OFFSET + 64 * COUNT] = dsa.join_batch(subs)
        done = await mdev.run(
            dsa.batch(RECORDS + LIST_OFFSET, COUNT, completion=RECORDS), records.view[:32]
        )
        check(
            "the batch completed all 32",
            done.code == dsa.DSA_COMP_SUCCESS and done.descs_completed == COUNT,
        )
        crcs = [
            dsa.parse_completion(records.view[32 * (i + 1) : 32 * (i + 2)]) for i in range(COUNT)
        ]
        check(
            "each CRCGEN matches the reference CRC-32C",
            all(
                r.code == dsa.DSA_COMP_SUCCESS
                and r.crc_val == dsa.crc32c(payload[i * CHUNK : (i + 1) * CHUNK])
                for i, r in enumerate(crcs)
            ),
        )
        entries = await client.iotlb_entries(domain)
        check(
            "the IOTLB caches the data as two 2 MiB entries",
            [(e.iova, e.page_size) for e in entries if e.iova >= DATA and e.iova < RECORDS]
            == [(DATA, 2 * MiB), (DATA + 2 * MiB, 2 * MiB)],
        )

        # -- unmap the second half: a CRCGEN over 4 MiB stops at the hole -----------------------
        unmapped = await client.unmap(domain, DATA + 2 * MiB, 2 * MiB)
        check("unmap returns the bytes unmapped", unmapped == 2 * MiB)
        whole = dsa.crcgen(DATA, 4 * MiB, completion=RECORDS)
        partial = await mdev.run(whole, records.view[:32])
        print(
            f"  partial completion: status {dsa.status_name(partial.code)}, "
            f"bytes_completed {partial.bytes_completed:#x}, fault_addr {partial.fault_addr:#x}"
        )
        check(
            "the record reports a partial completion at the hole",
            partial.code == dsa.DSA_COMP_PAGE_FAULT_NOBOF
            and partial.bytes_completed == 2 * MiB
            and partial.fault_addr == DATA + 2 * MiB,
        )
        with trio.fail_after(10):
            fault = (await client.next_event("fault")).typed
        check(
            "EVENT_FAULT names the descriptor (its record, opcode, WQ)",
            fault.iova == DATA + 2 * MiB
            and fault.completion_addr == RECORDS
            and fault.opcode == dsa.DsaOpcode.CRCGEN
            and fault.batch_index is None
            and fault.wq == wq,
        )
        check(
            "the partial CRC is the first half's",
            partial.crc_val == dsa.crc32c(payload[: 2 * MiB]),
        )

        # -- map it back and resume the remainder, as DML would ---------------------------------
        await client.map(domain, data.phys + 2 * MiB, 2 * MiB, iova=DATA + 2 * MiB)
        rest = dsa.remainder(whole, records.view[:32])
        done = await mdev.run(rest, records.view[:32])
        check(
            "the resumed remainder gives the CRC of all 4 MiB",
            done.code == dsa.DSA_COMP_SUCCESS and done.crc_val == dsa.crc32c(payload),
        )
        await mdev.remove()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="siovd's socket (default: the SDK's default)")
    sys.exit(trio.run(main, parser.parse_args().socket))
