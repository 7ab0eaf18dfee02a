"""Differential fuzzing: the native executor core against the Python reference executor.

Two identical worlds (memory, IOMMU, domain, mappings: the descriptor fuzzer's layout of data
windows between unmapped guard pages, read-only pages, a record area and read-only batch
lists, plus an alias window mapping the first window's pages again) run the same seeded
descriptors (the descriptor fuzzer's :class:`Generator`: every opcode, random flags, sizes and
addresses, and batches of generated entries), one world with the native core and one without.
After every descriptor the outcomes (type, completion record, whether it was written, the
interrupt, the events with their faults), the IOTLB counters and the fault records must be the
same, and the memory of both worlds is compared every few descriptors and at the end. Runs
go with an unlimited budget, with a small byte budget (preemption inside batches), and with a
tiny IOTLB (evictions drop the native page cache between descriptors).

``SIOV_FUZZ_NATIVE`` sets the number of descriptors per configuration (default 4,000).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from siov import dsa
from siov_protocol.dsa import DsaOpcode
from siovd.model.accel import (
    Blocked,
    Completed,
    Executor,
    Preempted,
    WorkItem,
    embedded_default,
    fastpath,
)
from siovd.model.accel.outcome import CompletedRun, PageResponse
from siovd.model.budget import Budget
from siovd.model.iommu import devtlb as devtlb_module
from tests.fuzz.conftest import SEED, SUMMARY
from tests.fuzz.test_descriptor_fuzz import (
    DATA_BASE,
    LISTS,
    PAGE,
    PAGES_PER_WINDOW,
    RECORDS,
    WINDOW_PAGES,
    WINDOW_STRIDE,
    WINDOWS,
    Generator,
    pattern,
)
from tests.unit.iommu_env import RO, RW, Env

CASES = int(os.environ.get("SIOV_FUZZ_NATIVE", "4000"))
ALIAS = DATA_BASE + WINDOWS * WINDOW_STRIDE  # maps window 0's data pages again
RECORD_PAGES = 64
NATIVE_OPS = {
    DsaOpcode.NOOP,
    DsaOpcode.MEMMOVE,
    DsaOpcode.MEMFILL,
    DsaOpcode.COMPARE,
    DsaOpcode.COMPVAL,
    DsaOpcode.CRCGEN,
}


class World:
    """One memory + IOMMU + mdev with the fuzzer's mappings, and an executor."""

    def __init__(self, native: bool, iotlb_entries: int, devtlb: bool) -> None:
        self.env = Env(iotlb_entries=iotlb_entries)
        env = self.env
        self.device = env.mdev(1, "5c1b7a2e-0000-4000-8000-00000000d1ff")
        dom = env.default_domain(self.device)
        pages = WINDOWS * PAGES_PER_WINDOW
        self.data = env.region(1, (pages + 511) // 512 * 512 * PAGE)
        self.records = env.region(1, (RECORD_PAGES + 2) * PAGE)
        self.lists = env.region(1, 512 * PAGE)
        self.data.buf[: pages * PAGE] = pattern(1, pages * PAGE)
        iommu = env.iommu
        for k in range(WINDOWS):
            first = k * PAGES_PER_WINDOW
            iova = DATA_BASE + k * WINDOW_STRIDE
            phys = self.data.base + (first + 1) * PAGE
            iommu.map(1, dom, iova, phys, WINDOW_PAGES * PAGE, RW)
            ro = self.data.base + (first + 6) * PAGE
            iommu.map(1, dom, iova + WINDOW_PAGES * PAGE, ro, PAGE, RO)
        iommu.map(1, dom, ALIAS, self.data.base + PAGE, WINDOW_PAGES * PAGE, RW)
        iommu.map(1, dom, RECORDS, self.records.base + PAGE, RECORD_PAGES * PAGE, RW)
        iommu.map(1, dom, LISTS, self.lists.base, PAGE, RO)
        self.space = iommu.dma_space(self.device, self.device.default_pasid, devtlb=devtlb)
        self.wq = embedded_default().wqs[0]
        self.executor = Executor(native=native)

    def snapshot(self) -> bytes:
        return bytes(self.data.buf) + bytes(self.records.buf) + bytes(self.lists.buf)

    def run(self, desc: bytes, seq: int, work: int | None) -> list[object]:
        """Run ``desc`` to its end; what happened, step by step, in comparable form."""
        ex = self.executor
        item = WorkItem(self.wq, desc, 0, seq, None, 4)
        budget = None if work is None else Budget(work)
        outcome = ex.run(item, self.space, budget)
        steps: list[object] = []
        while True:
            steps.append((type(outcome).__name__, repr(outcome.events)))
            if isinstance(outcome, Completed):
                steps.append((outcome.raw, outcome.written, outcome.interrupt, outcome.int_handle))
                return steps
            if isinstance(outcome, Blocked):
                outcome = ex.resume(outcome.state, PageResponse.INVALID, budget)
            else:
                assert isinstance(outcome, Preempted)
                budget = None if work is None else Budget(work)
                outcome = ex.proceed(outcome.state, budget)

    def counters(self) -> tuple[dict[str, int], int, int, list[object]]:
        iommu = self.env.iommu
        return iommu.iotlb.stats(), iommu.devtlb_hits, iommu.faults, list(self.env.faults)


class AliasingGenerator(Generator):
    """The fuzzer's descriptors, with some addresses in the alias window, and well-formed
    descriptors of the native opcodes inside the windows (most random ones fault or fail
    validation, which the Python executor handles)."""

    def address(self) -> int:
        if self.rng.random() < 0.15:
            return ALIAS + self.rng.randrange(WINDOW_PAGES * PAGE)
        return super().address()

    def inside(self, size: int) -> int:
        r = self.rng
        base = r.choice([DATA_BASE + r.randrange(WINDOWS) * WINDOW_STRIDE, ALIAS])
        return base + r.randrange(WINDOW_PAGES * PAGE - size + 1)

    def clean(self) -> bytes:
        r = self.rng
        size = r.choice([0, 8, 64, PAGE, 2 * PAGE, r.randrange(1, WINDOW_PAGES * PAGE)])
        op = r.choice(sorted(NATIVE_OPS))
        completion = RECORDS + 32 * self.slot()
        flags = dsa.IDXD_OP_FLAG_CRAV | (dsa.IDXD_OP_FLAG_RCR if r.random() < 0.7 else 0)
        flags |= dsa.IDXD_OP_FLAG_RCI if r.random() < 0.3 else 0
        flags |= dsa.IDXD_OP_FLAG_FENCE if r.random() < 0.1 else 0
        f16 = f24 = f40 = f48 = 0
        if op == DsaOpcode.NOOP:
            size = 0
        elif op == DsaOpcode.MEMMOVE:
            f16, f24 = self.inside(size), self.inside(size)
        elif op == DsaOpcode.MEMFILL:
            f16, f24 = r.getrandbits(64), self.inside(size)
            if r.random() < 0.5:
                flags |= dsa.IDXD_OP_FLAG_FILL_16B
                f40 = r.getrandbits(64)
        elif op in (DsaOpcode.COMPARE, DsaOpcode.COMPVAL):
            f16 = self.inside(size)
            f24 = self.inside(size) if op == DsaOpcode.COMPARE else r.choice([0, r.getrandbits(64)])
            if r.random() < 0.4:
                flags |= dsa.IDXD_OP_FLAG_CR
                f40 = r.randrange(2)
        else:  # CRCGEN
            f16 = self.inside(size)
            flags |= r.choice(
                [0, dsa.IDXD_OP_FLAG_BYPASS_CRC_INV_REF, dsa.IDXD_OP_FLAG_BYPASS_DATA_REF]
            )
            if r.random() < 0.3:
                flags |= dsa.IDXD_OP_FLAG_READ_CRC_SEED
                f48 = self.inside(4)
            else:
                f40 = r.getrandbits(32)
        return dsa.DESC_STRUCT.pack(
            0, flags | op << 24, completion, f16, f24, size, r.randrange(4), 0, f40, f48, 0
        )


@pytest.mark.parametrize(
    ("work", "iotlb_entries", "devtlb", "devtlb_entries"),
    [
        (None, 8192, False, 0),
        (3 * 4096, 8192, False, 0),
        (None, 6, False, 0),
        (None, 8192, True, 1024),
        (None, 8192, True, 5),
        (3 * 4096, 8192, True, 5),
        (3 * 4096, 6, True, 1024),
    ],
    ids=[
        "unlimited",
        "small-budget",
        "tiny-iotlb",
        "devtlb",
        "full-devtlb",
        "full-devtlb-small-budget",
        "devtlb-small-budget-tiny-iotlb",
    ],
)
def test_native_core_matches_the_python_executor(
    work: int | None,
    iotlb_entries: int,
    devtlb: bool,
    devtlb_entries: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fastpath.AVAILABLE, f"native core missing: {fastpath.IMPORT_ERROR}"
    if devtlb_entries:  # a small device TLB fills up: misses then only translate
        monkeypatch.setattr(devtlb_module, "CAPACITY", devtlb_entries)
    rng = random.Random(SEED + (work or 0) + iotlb_entries + devtlb + devtlb_entries)
    ref = World(False, iotlb_entries, devtlb)
    fast = World(True, iotlb_entries, devtlb)
    gen = AliasingGenerator(rng, RECORD_PAGES * PAGE // 32)
    native_by_op: Counter[int] = Counter()
    try:
        for seq in range(CASES):
            if gen.next_slot + 80 >= gen.slots:  # reuse the record area
                gen.next_slot = 1
            if rng.random() < 0.15:
                # a batch of generated entries (one in 4 is a zero-pattern COMPVAL of a page)
                entries = []
                for _ in range(rng.choice([2, 3, 8, 32, 64])):
                    if rng.random() < 0.3:
                        entries.append(gen.clean())
                    elif rng.random() < 0.25:
                        entries.append(
                            dsa.compval(
                                rng.choice([DATA_BASE, ALIAS, RECORDS]),
                                0,
                                PAGE,
                                completion=RECORDS + 32 * gen.slot(),
                            )
                        )
                    else:
                        entries.append(gen.descriptor(0, member=True)[0])
                blob = b"".join(entries)
                for world in (ref, fast):
                    world.lists.buf[: len(blob)] = blob
                desc = dsa.batch(
                    LISTS, len(entries), completion=RECORDS + 32 * gen.slot(), flags=gen.flags()
                )
            elif rng.random() < 0.3:
                desc = gen.clean()
            else:
                desc = gen.descriptor(0)[0]
            before = fast.executor.native_runs
            got_ref = ref.run(desc, seq, work)
            got_fast = fast.run(desc, seq, work)
            if fast.executor.native_runs > before:
                native_by_op[desc[7]] += 1
            assert got_fast == got_ref, (seq, desc.hex())
            assert fast.counters() == ref.counters(), (seq, desc.hex())
            if seq % 16 == 0:
                assert fast.snapshot() == ref.snapshot(), (seq, desc.hex())
        assert fast.snapshot() == ref.snapshot()
    finally:
        ref.env.close()
        fast.env.close()
    entries = fast.executor.native_entries
    SUMMARY.append(
        f"native differential ({work=}, {iotlb_entries=}, {devtlb=}, {devtlb_entries=}): "
        f"{CASES} descriptors, native "
        f"{dict(sorted(native_by_op.items()))} by opcode, {entries} batch entries natively"
    )
    # the native core really ran every opcode it claims, alone and in batches
    assert {int(op) for op in NATIVE_OPS} <= set(native_by_op), native_by_op
    assert entries > 0


def _plain_or_full(outcome: object) -> tuple[object, ...]:
    """A descriptor's outcome in comparable form: a plain completion (no interrupt, no
    event; its record is in memory, which is compared) is just "plain"."""
    if isinstance(outcome, Completed):
        if not outcome.events and not outcome.interrupt:
            return ("plain",)
        return ("Completed", outcome.raw, outcome.written, outcome.int_handle, repr(outcome.events))
    assert isinstance(outcome, Blocked | Preempted), outcome
    return (type(outcome).__name__, repr(outcome.events))


@pytest.mark.parametrize(
    ("iotlb_entries", "devtlb", "devtlb_entries"),
    [(8192, False, 0), (6, False, 0), (8192, True, 1024), (8192, True, 5)],
    ids=["iotlb", "tiny-iotlb", "devtlb", "full-devtlb"],
)
def test_executor_stream_matches_one_by_one_python_execution(
    iotlb_entries: int, devtlb: bool, devtlb_entries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Executor.run_all`` (a stream: native runs, Python where they stop) against the Python
    executor run one descriptor at a time: the same outcome for every descriptor (a
    CompletedRun counting as that many plain completions), the same IOTLB, device-TLB and
    fault counters, and the same memory after every stream."""
    assert fastpath.AVAILABLE, f"native core missing: {fastpath.IMPORT_ERROR}"
    if devtlb_entries:
        monkeypatch.setattr(devtlb_module, "CAPACITY", devtlb_entries)
    rng = random.Random(SEED + 7 + iotlb_entries + devtlb + devtlb_entries)
    ref = World(False, iotlb_entries, devtlb)
    fast = World(True, iotlb_entries, devtlb)
    gen = AliasingGenerator(rng, RECORD_PAGES * PAGE // 32)
    streamed = runs = 0
    try:
        for stream_no in range(max(CASES // 16, 20)):
            if gen.next_slot + 80 >= gen.slots:
                gen.next_slot = 1
            descs = [
                gen.clean() if rng.random() < 0.8 else gen.descriptor(0)[0]
                for _ in range(rng.choice([1, 2, 5, 16, 64]))
            ]
            want: list[tuple[object, ...]] = []
            for seq, desc in enumerate(descs):
                item = WorkItem(ref.wq, desc, 0, seq, None, 4)
                want.append(_plain_or_full(ref.executor.run(item, ref.space)))
            got: list[tuple[object, ...]] = []
            for outcome in fast.executor.run_all(fast.wq, b"".join(descs), fast.space, 0, None, 4):
                if isinstance(outcome, CompletedRun):
                    got.extend([("plain",)] * outcome.count)
                    runs += 1
                else:
                    got.append(_plain_or_full(outcome))
            streamed += len(descs)
            assert got == want, stream_no
            assert fast.counters() == ref.counters(), stream_no
            assert fast.snapshot() == ref.snapshot(), stream_no
    finally:
        ref.env.close()
        fast.env.close()
    assert runs, "no native run happened: the test would prove nothing"
    SUMMARY.append(
        f"executor stream ({iotlb_entries=}, {devtlb=}, {devtlb_entries=}): {streamed} "
        f"descriptors, {runs} native runs"
    )
