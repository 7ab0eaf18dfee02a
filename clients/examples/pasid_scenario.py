"""PASIDs on a shared WQ: a plain attach for the mdev's own DMA, a per-PASID attach for a
second address space, REPLACE_PASID to a third, and no stale translation afterwards.

Three domains map three different buffers at the *same* IOVA. A MEMFILL submitted with the
mdev's default PASID lands in the plainly attached domain's buffer; one submitted with PASID 5
lands in the per-PASID domain's; after REPLACE_PASID swaps PASID 5 to the third domain, the
same descriptor lands there, and the second buffer stays untouched: the IOTLB entries of the
old PASID entry went with the replace. Any mismatch exits non-zero.

    python clients/examples/pasid_scenario.py --socket /run/siovd/siovd.sock
"""

from __future__ import annotations

import argparse
import sys

import trio

import siov
from siov import dsa

MiB = 1 << 20
BUF = 0x10_0000_0000  # every domain maps its own buffer here
CR = 0x20_0000_0000  # and the shared records buffer here
PASID = 5
SIZE = 64 * 1024


async def main(socket_path: str | None) -> int:
    failures: list[str] = []

    def check(what: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    async with siov.connect(socket_path, name="pasid_scenario") as client:
        mdev = await client.create_dsa_mdev("dsa-1swq")
        records = await client.alloc(2 * MiB)
        domains = [await client.alloc_domain() for _ in range(3)]  # plain, per-PASID, third
        buffers = [await client.alloc(2 * MiB) for _ in domains]
        for domain, buf in zip(domains, buffers, strict=True):
            await client.map(domain, buf.phys, buf.size, iova=BUF)
            await client.map(domain, records.phys, records.size, iova=CR)
        await client.attach_device(domains[0], mdev)  # the default PASID's DMA
        await client.attach_pasid(domains[1], mdev, PASID)  # PASID 5's DMA
        print(f"mdev {mdev.uuid}: default PASID {mdev.default_pasid}, PASID {PASID} attached")

        async def fill(byte: int, pasid: int | None) -> dsa.CompletionRecord:
            desc = dsa.fill(BUF, int.from_bytes(bytes([byte]) * 8, "little"), SIZE, completion=CR)
            return await mdev.run(desc, records.view[:32], pasid=pasid)

        done = await fill(0xA1, None)
        check(
            "the default PASID writes the plainly attached domain's buffer",
            done.code == dsa.DSA_COMP_SUCCESS and buffers[0].view[:SIZE] == b"\xa1" * SIZE,
        )
        done = await fill(0xB2, PASID)
        check(
            "PASID 5 writes the per-PASID domain's buffer",
            done.code == dsa.DSA_COMP_SUCCESS
            and buffers[1].view[:SIZE] == b"\xb2" * SIZE
            and buffers[0].view[:SIZE] == b"\xa1" * SIZE,
        )
        cached = await client.iotlb_entries(domains[1], pasid=PASID)
        check("PASID 5's translations are cached", any(e.iova == BUF for e in cached))

        await client.replace_pasid(domains[2], mdev, PASID)
        check(
            "the replace dropped the old PASID entry's IOTLB entries",
            await client.iotlb_entries(domains[1], pasid=PASID) == [],
        )
        done = await fill(0xC3, PASID)
        check(
            "after REPLACE_PASID, PASID 5 writes the third domain's buffer",
            done.code == dsa.DSA_COMP_SUCCESS and buffers[2].view[:SIZE] == b"\xc3" * SIZE,
        )
        check(
            "no stale translation: the second buffer is untouched",
            buffers[1].view[:SIZE] == b"\xb2" * SIZE,
        )
        await client.detach_pasid(mdev, PASID)
        try:
            await fill(0xD4, PASID)
            check("a detached PASID's work cannot reach memory", False)
        except siov.RecordNotWritten as exc:  # its record too is behind no translation
            check("a detached PASID's work fails fast (RecordNotWritten)", exc.errno == 14)
        check("and writes nothing", buffers[2].view[:SIZE] == b"\xc3" * SIZE)
        await client.detach_device(mdev)
        check(
            "detach returns the mdev to its default domain",
            mdev.domain_id == mdev.default_domain_id,
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
