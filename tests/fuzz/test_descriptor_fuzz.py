"""Descriptor fuzzing through real WQs of a live daemon.

Seeded random 64-byte descriptors (every opcode and unknown ones, random flags, sizes, addresses
inside, outside and straddling mappings, random PASIDs on the shared WQ, batches pointing at
built and at random lists) go through a dedicated and a shared WQ. Every descriptor that asks
for a record (CRAV and RCR) at a good address gets exactly one, with a documented status; one
that only may get a record (CRAV alone, a batch's members) gets at most one. Nothing is written
outside the submitter's writable mappings: pages left unmapped between windows, pages mapped
read-only and the batch lists hold a pattern that must survive the run.

``SIOV_FUZZ_DESCRIPTORS`` sets the number of top-level descriptors (default 30,000);
``SIOV_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import time

import trio

import siov
from siov import dsa
from siov_protocol.dsa import DsaCompStatus, DsaOpcode
from siovd.model.accel.checks import SPECS
from tests.conftest import RunningDaemon
from tests.fuzz.conftest import SEED, SUMMARY

DESCRIPTORS = int(os.environ.get("SIOV_FUZZ_DESCRIPTORS", "30000"))
PAGE = 4096
CHUNK = 24  # descriptors per SUBMIT: below every WQ's size, so nothing is dropped
WINDOWS = 4  # data windows per domain
WINDOW_PAGES = 4
DATA_BASE = 0x10_0000
WINDOW_STRIDE = 0x1_0000
PAGES_PER_WINDOW = 1 + WINDOW_PAGES + 1 + 1  # guard, data..., guard, read-only
RECORDS = 0x80_0000  # record window IOVA (same in every domain)
LISTS = 0x4000_0000  # batch lists IOVA, mapped read-only
LIST_PAGES = 1
SHARED_PASID = 77
DOCUMENTED = {int(s) for s in DsaCompStatus} - {0}
FLAG_BITS = [
    dsa.IDXD_OP_FLAG_FENCE,
    dsa.IDXD_OP_FLAG_BOF,
    dsa.IDXD_OP_FLAG_CR,
    dsa.IDXD_OP_FLAG_RCI,
    dsa.IDXD_OP_FLAG_FILL_16B,
    dsa.IDXD_OP_FLAG_READ_CRC_SEED,
    dsa.IDXD_OP_FLAG_RDBACK_ADDR1,
    dsa.IDXD_OP_FLAG_RDBACK_ADDR2,
    dsa.IDXD_OP_FLAG_CC,
]
OPCODES = [int(op) for op in DsaOpcode]
IMPLEMENTED = sorted(int(op) for op in SPECS)
DIF_OPS = {
    DsaOpcode.DIF_CHECK,
    DsaOpcode.DIF_INS,
    DsaOpcode.DIF_STRP,
    DsaOpcode.DIF_UPDT,
    DsaOpcode.DIX_GEN,
}
DIF_CHECKED = {DsaOpcode.DIF_CHECK, DsaOpcode.DIF_STRP, DsaOpcode.DIF_UPDT}  # source has tuples


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class Domain:
    """One address space under test: data windows between guard pages, records and lists."""

    def __init__(self, domain_id: int, data: siov.Buffer, tag: int) -> None:
        self.domain_id = domain_id
        self.data = data
        self.tag = tag

    async def map(self, client: siov.Client, records: siov.Buffer, lists: siov.Buffer) -> None:
        buf = self.data
        buf.view[:] = pattern(self.tag, buf.size)
        for k in range(WINDOWS):
            first = k * PAGES_PER_WINDOW
            iova = DATA_BASE + k * WINDOW_STRIDE
            # page `first` and `first + 5` stay unmapped: their bytes are guards
            await client.map(
                self.domain_id, buf.phys + (first + 1) * PAGE, WINDOW_PAGES * PAGE, iova=iova
            )
            await client.map(
                self.domain_id,
                buf.phys + (first + 6) * PAGE,
                PAGE,
                iova=iova + WINDOW_PAGES * PAGE,
                write=False,
            )
        # the record buffer's first and last pages stay unmapped
        await client.map(self.domain_id, records.phys + PAGE, records.size - 2 * PAGE, iova=RECORDS)
        await client.map(self.domain_id, lists.phys, lists.size, iova=LISTS, write=False)

    def guards(self) -> list[tuple[int, bytes]]:
        """(offset, expected bytes) of every page the device must not write."""
        expected = pattern(self.tag, self.data.size)
        out = []
        for k in range(WINDOWS):
            for page in (k * PAGES_PER_WINDOW, k * PAGES_PER_WINDOW + 5, k * PAGES_PER_WINDOW + 6):
                out.append((page * PAGE, expected[page * PAGE : (page + 1) * PAGE]))
        return out


class Generator:
    """Random descriptors; hands out completion-record slots, each used once in the run."""

    def __init__(self, rng: random.Random, slots: int) -> None:
        self.rng = rng
        self.next_slot = 1  # slot 0 stays unused (a record there would be a stray write)
        self.slots = slots

    def slot(self) -> int:
        assert self.next_slot < self.slots, "record area too small for the run"
        self.next_slot += 1
        return self.next_slot - 1

    def address(self) -> int:
        r = self.rng
        k = r.randrange(WINDOWS)
        window = DATA_BASE + k * WINDOW_STRIDE
        choice = r.random()
        if choice < 0.55:  # inside a data window
            return window + r.randrange(WINDOW_PAGES * PAGE)
        if choice < 0.7:  # near an edge (straddles with most sizes)
            return window + WINDOW_PAGES * PAGE - r.randrange(1, 256)
        if choice < 0.78:
            return window - r.randrange(1, PAGE)  # the unmapped page before
        if choice < 0.85:
            return window + WINDOW_PAGES * PAGE + r.randrange(PAGE)  # the read-only page
        if choice < 0.9:
            return LISTS + r.randrange(LIST_PAGES * PAGE)  # read-only lists
        if choice < 0.95:
            return r.getrandbits(64)
        return r.choice([0, 1 << 63, (1 << 64) - 64, RECORDS - 64])

    def size(self) -> int:
        r = self.rng
        choice = r.random()
        if choice < 0.5:
            return r.randrange(1, 512)
        if choice < 0.75:
            return r.randrange(1, WINDOW_PAGES * PAGE + 2 * PAGE)
        if choice < 0.85:
            return r.choice([0, 8, 16, 64, PAGE, 10, 20, 80])
        return r.getrandbits(32)

    def flags(self) -> int:
        r = self.rng
        flags = 0
        for bit in FLAG_BITS:
            if r.random() < 0.12:
                flags |= bit
        if r.random() < 0.05:
            flags |= r.getrandbits(24)
        return flags

    def descriptor(self, pasid: int, member: bool = False) -> tuple[bytes, int | None, bool]:
        """(descriptor, its record slot or None, whether the record must be written)."""
        r = self.rng
        choice = r.random()
        if choice < 0.6:  # an operation the device implements
            opcode = r.choice(IMPLEMENTED)
        elif choice < 0.92:  # any opcode of the ABI
            opcode = r.choice(OPCODES)
        else:
            opcode = r.randrange(256)
        if member and opcode == DsaOpcode.BATCH and r.random() < 0.8:
            opcode = DsaOpcode.MEMMOVE
        flags = self.flags() & ~(dsa.IDXD_OP_FLAG_CRAV | dsa.IDXD_OP_FLAG_RCR)
        slot: int | None = None
        must = False
        completion = 0
        choice = r.random()
        if choice < 0.8:
            slot = self.slot()
            completion = RECORDS + 32 * slot
            flags |= dsa.IDXD_OP_FLAG_CRAV
            if r.random() < 0.85:
                flags |= dsa.IDXD_OP_FLAG_RCR
                must = not member
        elif choice < 0.92:  # a bad record address: misaligned, unmapped, read-only, guard
            flags |= dsa.IDXD_OP_FLAG_CRAV | dsa.IDXD_OP_FLAG_RCR
            completion = r.choice(
                [
                    RECORDS + 32 * self.slot() + r.choice([8, 16, 1]),
                    RECORDS - 32,
                    LISTS + 32 * r.randrange(64),
                    DATA_BASE + WINDOW_PAGES * PAGE,  # the read-only page
                    DATA_BASE - 64,
                    r.getrandbits(64) & ~31,
                ]
            )
        int_handle = r.randrange(4) if r.random() < 0.9 else r.getrandbits(16)
        src, dst, size = self.address(), self.address(), self.size()
        ops = [r.getrandbits(64), r.getrandbits(64), r.getrandbits(64)]
        if opcode == DsaOpcode.CR_DELTA and r.random() < 0.7:
            ops = [self.address(), r.choice([10, 20, 80, 160, r.randrange(200)]), ops[2]]
        if opcode == DsaOpcode.AP_DELTA and r.random() < 0.7:
            ops[0] = r.choice([10, 20, 80, r.randrange(200)])
        if opcode == DsaOpcode.DUALCAST and r.random() < 0.7:
            ops[0] = (self.address() & ~0xFFF) | (dst & 0xFFF)
        if opcode in DIF_OPS and r.random() < 0.7:
            # whole blocks, so the DIF engine runs rather than stopping at XFER_ERANGE
            block = dsa.DIF_BLOCK_SIZES[(ops[0] >> 16) & 3]
            step = block + 8 if opcode in DIF_CHECKED else block
            size = r.randrange(8) * step
        fields = [src, dst, size, *ops]
        spec = SPECS.get(opcode)
        if spec is not None and r.random() < 0.8:
            # well-formed: only the flags the opcode defines, reserved bits clear
            opflags, takes_cr, reserved, _ = spec
            allowed = dsa.IDXD_OP_FLAG_COMMON_MASK | opflags
            allowed |= dsa.IDXD_OP_FLAG_CR if takes_cr else 0
            flags &= allowed
            masks = list(reserved)
            if opcode == DsaOpcode.MEMFILL and flags & dsa.IDXD_OP_FLAG_FILL_16B:
                masks[3] = 0
            if opcode in (DsaOpcode.CRCGEN, DsaOpcode.COPY_CRC):
                masks[4] = 0 if flags & dsa.IDXD_OP_FLAG_READ_CRC_SEED else masks[4]
                if flags & dsa.IDXD_OP_FLAG_READ_CRC_SEED:
                    fields[4] = self.address()
            if opcode == DsaOpcode.DRAIN:
                masks[0] = 0 if flags & dsa.IDXD_OP_FLAG_RDBACK_ADDR1 else masks[0]
                masks[1] = 0 if flags & dsa.IDXD_OP_FLAG_RDBACK_ADDR2 else masks[1]
            fields = [f & ~m for f, m in zip(fields, masks, strict=True)]
            if r.random() < 0.9:
                fields[2] &= 0xFFFF  # sizes a window can hold, mostly
        if flags & dsa.IDXD_OP_FLAG_RCR and not flags & dsa.IDXD_OP_FLAG_CRAV:
            must = False
        fields = [f & (1 << 64) - 1 for f in fields]
        desc = dsa.DESC_STRUCT.pack(
            pasid,
            flags | opcode << 24,
            completion,
            fields[0],
            fields[1],
            fields[2] & 0xFFFF_FFFF,
            int_handle,
            0,
            fields[3],
            fields[4],
            fields[5],
        )
        return desc, slot, must


async def answer_page_requests(client: siov.Client) -> None:
    """Every page request is refused at once (INVALID): block-on-fault work completes."""
    async for request in client.page_requests():
        try:
            await client.page_response(request.body["request"], 1)
        except siov.NotFound:
            pass  # timed out or its work was aborted meanwhile


async def test_descriptor_fuzz(siovd: RunningDaemon) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    async with siov.connect(siovd.path) as client, trio.open_nursery() as nursery:
        client.page_requests()
        nursery.start_soon(answer_page_requests, client)
        dedicated = await client.create_dsa_mdev("dsa-1dwq")
        shared = await client.create_dsa_mdev("dsa-1swq")
        assert dedicated.domain_id is not None and shared.domain_id is not None
        data_pages = WINDOWS * PAGES_PER_WINDOW
        slots_needed = DESCRIPTORS * 4 + 1024
        records = await client.alloc((slots_needed * 32 // PAGE + 3) * PAGE)
        lists = await client.alloc(LIST_PAGES * PAGE)
        extra = (await client.alloc_domain()).id
        await client.attach_pasid(extra, shared.uuid, SHARED_PASID)
        domains = [
            Domain(dedicated.domain_id, await client.alloc(data_pages * PAGE), 1),
            Domain(shared.domain_id, await client.alloc(data_pages * PAGE), 2),
            Domain(extra, await client.alloc(data_pages * PAGE), 3),
        ]
        records.view[:] = bytes(records.size)
        for domain in domains:
            await domain.map(client, records, lists)
        slot_view = records.view[PAGE:]
        gen = Generator(rng, (records.size - 2 * PAGE) // 32)

        submitted = accepted = must_count = may_count = cross_checks = 0
        statuses: dict[int, int] = {}
        while submitted < DESCRIPTORS:
            # fresh batch lists for this round (read-only to the device)
            list_bytes = bytearray()
            list_slots: list[int] = []
            shared_round = rng.random() < 0.5
            pasid_choices = [shared.default_pasid, SHARED_PASID] if shared_round else [0]
            for _ in range(LIST_PAGES * PAGE // 64):
                desc, slot, _ = gen.descriptor(rng.choice(pasid_choices), member=True)
                list_bytes += desc
                if slot is not None:
                    list_slots.append(slot)
            lists.view[:] = list_bytes
            mdev = shared if shared_round else dedicated
            chunk: list[bytes] = []
            owed: list[tuple[int, bool]] = []  # (slot, must), for accepted descriptors
            entries: list[tuple[int | None, bool, bool]] = []  # slot, must, pasid attached
            # a shared WQ takes one PASID per SUBMIT (ENQCMD's comes from the submitter)
            chunk_pasid = rng.choice([shared.default_pasid, SHARED_PASID, rng.randrange(1 << 20)])
            attached = not shared_round or chunk_pasid in (shared.default_pasid, SHARED_PASID)
            for _ in range(min(CHUNK, DESCRIPTORS - submitted)):
                # the descriptor's own PASID field is random: the WQ must not use it
                pasid = rng.randrange(1 << 20) if rng.random() < 0.2 else 0
                if rng.random() < 0.12:  # a batch: a built list, an offset one or a random one
                    first = rng.randrange(LIST_PAGES * PAGE // 64)
                    count = rng.choice([0, 1, 2, 3, 8, rng.randrange(64), rng.getrandbits(32)])
                    where = rng.random()
                    if where < 0.7:
                        addr = LISTS + 64 * first
                    elif where < 0.85:
                        addr = LISTS + 64 * first + rng.choice([8, 32])
                    else:
                        addr = gen.address()
                    slot = gen.slot()
                    desc = dsa.batch(
                        addr,
                        count & 0xFFFF_FFFF,
                        completion=RECORDS + 32 * slot,
                        flags=gen.flags() & ~dsa.IDXD_OP_FLAG_BOF,
                        pasid=pasid,
                    )
                    entries.append((slot, True, attached))
                else:
                    desc, maybe_slot, must = gen.descriptor(pasid)
                    entries.append((maybe_slot, must, attached))
                chunk.append(desc)
            # the address space this chunk may write: the other domains' data must not change
            if not shared_round:
                writer: int | None = 0
            else:
                writer = {shared.default_pasid: 1, SHARED_PASID: 2}.get(chunk_pasid)
            untouched = [
                (domain, bytes(domain.data.view)) for i, domain in enumerate(domains) if i != writer
            ]
            result = await mdev.submit(chunk, pasid=chunk_pasid if shared_round else None)
            submitted += len(chunk)
            for (slot, must, attached), code in zip(entries, result.results, strict=True):
                if code == 0 and slot is not None:  # SUBMIT_ACCEPTED
                    owed.append((slot, must and attached))
            accepted += result.accepted
            # wait for the round: every owed record written, nothing outstanding
            with trio.fail_after(20):
                while True:
                    if all(slot_view[32 * s] != 0 for s, must in owed if must):
                        stats = (await client.stats()).accel or {}
                        if stats["outstanding"] == 0:
                            break
                    await trio.sleep(0.001)
            for slot, must in owed + [(s, False) for s in list_slots]:
                status = slot_view[32 * slot]
                if must:
                    must_count += 1
                    assert status & 0x7F in DOCUMENTED, (slot, status)
                elif status:
                    may_count += 1
                    assert status & 0x7F in DOCUMENTED, (slot, status)
                if status:
                    statuses[status & 0x7F] = statuses.get(status & 0x7F, 0) + 1
                # zeroed now: a second write of the record would show at the end
                slot_view[32 * slot : 32 * slot + 32] = bytes(32)
            assert bytes(lists.view) == bytes(list_bytes), "a read-only batch list was written"
            for domain, before in untouched:
                assert bytes(domain.data.view) == before, (
                    f"PASID {chunk_pasid} wrote into domain {domain.domain_id}"
                )
                cross_checks += 1
        nursery.cancel_scope.cancel()

        # every record was written once and then zeroed; no slot was written behind our back
        assert bytes(records.view) == bytes(records.size)
        for domain in domains:
            for offset, expected in domain.guards():
                assert bytes(domain.data.view[offset : offset + PAGE]) == expected, (
                    f"guard page at {offset:#x} of domain {domain.domain_id} written"
                )
    elapsed = time.monotonic() - started
    names = ", ".join(
        f"{DsaCompStatus(s).name}:{n}" for s, n in sorted(statuses.items(), key=lambda x: -x[1])
    )
    SUMMARY.append(
        f"descriptor fuzzer: {submitted} descriptors ({accepted} accepted), {must_count} "
        f"records owed and written once, {may_count} optional records, "
        f"{cross_checks} other address spaces checked unchanged, {elapsed:.1f} s; "
        f"statuses {names}"
    )
    assert submitted == DESCRIPTORS and must_count > DESCRIPTORS // 3
