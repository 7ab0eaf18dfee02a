"""An external device emulator on siovd's mdev bus, and the client that owns its DMA setup.

The emulator (one connection) registers a device and gets a claim token; it hands the token
to the owner (a second connection), which claims the device, registers memory and maps it
into the device's domain. The emulator then does what its device would: it reads a request
from the owner's memory through the IOMMU (DMA_READ), translates the buffer it names
(TRANSLATE, as ATS would: runs with their page size, to check the mapping; the data itself
moves by DMA_READ/DMA_WRITE, since the owner's memory is not the emulator's), computes a result
and writes it back (DMA_WRITE). A failed TRANSLATE is answered to the emulator only; a DMA to an
address the owner never mapped faults, the emulator gets a DmaFault with its fields and the
owner one EVENT_FAULT. The emulator hears when its device is claimed and released
(EVENT_DEVICE_OWNER). Any mismatch exits non-zero.

    python clients/examples/emulator.py --socket /run/siovd/siovd.sock
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys

import trio

import siov
from siov_protocol import Command

MiB = 1 << 20
IOVA = 0x1000_0000  # where the owner maps its buffer for the device
REQUEST = struct.Struct("<QQ")  # the device's "doorbell" request: data iova, length
RESULT_OFFSET = 0x1000  # the device writes its answer here (a SHA-256 of the data)
DATA_OFFSET = 0x10_0000


async def main(socket_path: str | None) -> int:
    failures: list[str] = []

    def check(what: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    data = os.urandom(300_000)
    async with siov.connect(socket_path, name="emulator") as emulator:
        registered = await emulator.register_device("hash-engine", pasid_bits=0)
        uuid, token = registered.uuid, registered.token
        print(f"registered device {uuid} (group {registered.group_id})")
        async with siov.connect(socket_path, name="owner") as owner:
            # -- the owner: claims the device with the token and sets up its DMA ----
            device = await owner.claim_device(uuid, token)
            with trio.fail_after(10):
                told = (await emulator.next_event("device_owner")).typed
            check(
                "the emulator is told its device was claimed, and by whom",
                (told.uuid, told.change, told.client) == (uuid, "claimed", "owner"),
            )
            listed = {d.uuid: d for d in await emulator.devices()}
            check("its device list keeps the claimed device", listed[uuid].claimed is True)
            buf = await owner.alloc(2 * MiB)
            await owner.map(device, buf.phys, buf.size, iova=IOVA)
            buf.view[DATA_OFFSET : DATA_OFFSET + len(data)] = data
            buf.view[: REQUEST.size] = REQUEST.pack(IOVA + DATA_OFFSET, len(data))

            # -- the emulator: the device at work, every access through the IOMMU ----
            address, length = REQUEST.unpack(await emulator.dma_read(uuid, IOVA, REQUEST.size))
            check(
                "request read through the IOMMU",
                (address, length) == (IOVA + DATA_OFFSET, len(data)),
            )
            translated = await emulator.translate(uuid, address, length)
            runs = translated.runs
            check(
                "TRANSLATE gives contiguous runs",
                translated.fault is None and translated.translated == length and len(runs) == 1,
            )
            check("each run names its leaf size (a 2 MiB page here)", runs[0].page_size == 2 * MiB)
            digest = hashlib.sha256()
            chunk = 64 * 1024
            for at in range(0, length, chunk):
                digest.update(await emulator.dma_read(uuid, address + at, min(chunk, length - at)))
            written = await emulator.dma_write(uuid, IOVA + RESULT_OFFSET, digest.digest())
            check("result written through the IOMMU", written == 32)
            expected = hashlib.sha256(data).digest()
            check(
                "the owner sees the device's result",
                buf.view[RESULT_OFFSET : RESULT_OFFSET + 32] == expected,
            )

            # -- an address the owner never mapped ----
            probe = await emulator.translate(uuid, IOVA + 3 * MiB, 4096)
            check(
                "a failed TRANSLATE answers the emulator with the reason",
                probe.translated == 0
                and probe.fault is not None
                and probe.fault.reason_name == "first-stage entry not present",
            )
            try:
                await emulator.dma_read(uuid, IOVA + 4 * MiB, 16)
                check("unmapped DMA faults", False)
            except siov.DmaFault as exc:
                check(
                    "unmapped DMA faults: DmaFault with its fields",
                    (exc.errno, exc.iova, exc.done, exc.write) == (14, IOVA + 4 * MiB, 0, False),
                )
            with trio.fail_after(10):
                fault = await owner.next_event(Command.EVENT_FAULT)
            check(
                "the owner receives one fault record, the DMA's (not the TRANSLATE's)",
                fault.body["device"] == uuid and fault.body["iova"] == IOVA + 4 * MiB,
            )
            # the owner unmaps: the device loses access at once (strict IOTLB invalidation)
            await owner.unmap(device, IOVA, buf.size)
            try:
                await emulator.dma_read(uuid, IOVA, 16)
                check("DMA after unmap faults", False)
            except siov.SiovError as exc:
                check("DMA after unmap faults", exc.errno == 14)
        # the owner has left: the device is reset and the emulator's again
        with trio.fail_after(10):
            told = (await emulator.next_event("device_owner")).typed
        check("the emulator is told of the release", (told.uuid, told.change) == (uuid, "released"))
        await emulator.unregister_device(uuid)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="siovd's socket (default: the SDK's default)")
    sys.exit(trio.run(main, parser.parse_args().socket))
