"""An application using the accelerator through siovd: copy, fill, CRC and diff buffers.

It registers its memory, creates a dedicated-WQ mdev, gives it a domain of its own (a plain
``attach_device``: no aux-domain API), maps its buffers there with 2 MiB pages, and runs
descriptors whose completion interrupts arrive on eventfds. Every result is checked against
the same work done locally; any mismatch exits non-zero.

    python clients/examples/dsa_app.py --socket /run/siovd/siovd.sock
"""

from __future__ import annotations

import argparse
import os
import sys

import crc32c
import trio

import siov
from siov import dsa

MiB = 1 << 20
SRC, DST, AUX, CR = 0x4000_0000, 0x4040_0000, 0x4080_0000, 0x40C0_0000  # 2 MiB aligned IOVAs
SIZE = 4 * MiB


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, what: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


async def main(socket_path: str | None) -> int:
    checker = Checker()
    async with siov.connect(socket_path, name="dsa_app") as client:
        src = await client.alloc(SIZE)
        dst = await client.alloc(SIZE)
        aux = await client.alloc(SIZE)
        records = await client.alloc(2 * MiB)
        mdev = await client.create_dsa_mdev("dsa-1dwq")
        domain = await client.alloc_domain()
        await client.attach_device(domain, mdev.uuid)
        for iova, buf in ((SRC, src), (DST, dst), (AUX, aux), (CR, records)):
            await client.map(domain, buf.phys, buf.size, iova=iova)
        await mdev.set_irqs()  # eventfds for both vectors, watched by the Mdev
        print(f"mdev {mdev.uuid} (PASID {mdev.default_pasid}), domain {domain.id}")

        slot = 0

        async def run(desc_for: object) -> dsa.CompletionRecord:
            """Run one descriptor whose record is the next slot; wait for its interrupt."""
            nonlocal slot
            address = CR + 32 * slot
            view = records.view[32 * slot : 32 * slot + 32]
            slot += 1
            desc = desc_for(address)  # type: ignore[operator]
            with trio.fail_after(30):
                return await mdev.run(desc, view)

        rci = {"flags": dsa.IDXD_OP_FLAG_RCI, "int_handle": 1}
        data = os.urandom(SIZE)
        src.view[:] = data

        done = await run(lambda cr: dsa.memmove(DST, SRC, SIZE, completion=cr, **rci))
        checker.check("MEMMOVE 4 MiB", done.code == dsa.DSA_COMP_SUCCESS and dst.view[:] == data)

        pattern = 0x0123_4567_89AB_CDEF
        done = await run(lambda cr: dsa.fill(AUX, pattern, SIZE, completion=cr, **rci))
        expected = pattern.to_bytes(8, "little") * (SIZE // 8)
        checker.check("FILL 4 MiB", done.code == dsa.DSA_COMP_SUCCESS and aux.view[:] == expected)

        done = await run(lambda cr: dsa.crcgen(SRC, SIZE, completion=cr, **rci))
        checker.check("CRCGEN = crc32c", done.crc_val == crc32c.crc32c(data))

        done = await run(lambda cr: dsa.copy_crc(AUX, SRC, SIZE, completion=cr, **rci))
        ok = done.crc_val == crc32c.crc32c(data) and aux.view[:] == data
        checker.check("COPY_CRC copies and CRCs", ok)

        done = await run(lambda cr: dsa.compare(SRC, DST, SIZE, completion=cr, **rci))
        checker.check("COMPARE of equal buffers", done.result == 0)
        offset = 1_234_567
        dst.view[offset] ^= 0x5A
        done = await run(lambda cr: dsa.compare(SRC, DST, SIZE, completion=cr, **rci))
        checker.check(
            "COMPARE finds the first difference",
            done.result == 1 and done.bytes_completed == offset,
        )

        # diff as a delta record and apply it: AUX (a copy of SRC) becomes DST
        delta_at, length = MiB, 64 * 1024  # the delta record goes in the records buffer
        done = await run(
            lambda cr: dsa.create_delta(
                SRC + offset // 8 * 8 - 4096,
                DST + offset // 8 * 8 - 4096,
                length,
                CR + delta_at,
                800,
                completion=cr,
            )
        )
        checker.check("CR_DELTA records one word", done.result == 1 and done.delta_rec_size == 10)
        target = AUX + offset // 8 * 8 - 4096
        done = await run(
            lambda cr: dsa.apply_delta(
                target, CR + delta_at, done.delta_rec_size, length, completion=cr
            )
        )
        checker.check("AP_DELTA makes the copy equal", aux.view[:] == dst.view[:])

        stats = (await client.stats()).accel or {}
        checker.check("every interrupt arrived", mdev.irq_counts[1] >= 1)
        print(f"descriptors completed: {stats['completed']}, interrupts: {mdev.irq_counts[1]}")
        await mdev.remove()
    if checker.failures:
        print(f"{len(checker.failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="siovd's socket (default: the SDK's default)")
    sys.exit(trio.run(main, parser.parse_args().socket))
