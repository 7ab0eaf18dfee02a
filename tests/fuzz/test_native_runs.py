"""Differential fuzzing of the scheduler's native runs against one-by-one Python execution.

Two worlds (the native differential fuzzer's memory and mappings) each get the embedded default
device (a group of two WQs of priority 10, four engines; or each WQ in a group of its own). The
same seeded descriptors are queued in both: runs of well-formed native descriptors with, in the
middle, descriptors that miss the IOTLB, fault, fail validation, ask for an interrupt, are
DRAINs or come from another submitter or PASID. One world's scheduler runs them natively in runs
(:meth:`Scheduler.run` with ``runs=True``, :class:`CompletedRun` outcomes), the other runs each
in the Python executor. Turn by turn the outcomes must say the same (a run counts as that many
plain completions of its submitter), with the same ``more``, and afterwards the memory
(completion records included), the IOTLB, device-TLB and fault counters, the WQ statistics,
occupancy and descriptors in flight, the engines' counts and the group's arbitration state.

``SIOV_FUZZ_NATIVE_RUNS`` sets the number of rounds per configuration (default 300).
"""

from __future__ import annotations

import os
import random

import pytest

from siov import dsa
from siovd.model.accel import Blocked, Completed, Executor, Group, Preempted, embedded_default
from siovd.model.accel.outcome import CompletedRun, PageResponse
from siovd.model.accel.scheduler import Outcome, Scheduler
from siovd.model.budget import Budget
from siovd.model.iommu import devtlb as devtlb_module
from tests.fuzz.conftest import SEED, SUMMARY
from tests.fuzz.test_descriptor_fuzz import PAGE
from tests.fuzz.test_native_differential import RECORD_PAGES, RECORDS, AliasingGenerator, World

ROUNDS = int(os.environ.get("SIOV_FUZZ_NATIVE_RUNS", "300"))
OWNERS = ("a", "b")


class QueueWorld(World):
    """A world with a device of its own and a scheduler, native runs or Python."""

    def __init__(self, native: bool, iotlb_entries: int, devtlb: bool, one_wq: bool) -> None:
        super().__init__(native, iotlb_entries, devtlb)
        self.dsa = embedded_default()
        self.dwq, self.swq = self.dsa.wqs[0], self.dsa.wqs[1]
        if one_wq:  # the shared WQ moves to a group of its own: the dedicated one is alone
            self.dsa.disable()
            self.swq.configure({"group_id": 1})
            self.dsa.engines[3].configure({"group_id": 1})
            self.dsa.enable()
            for wq in (self.dwq, self.swq):
                wq.enable()
        self.group = self.dwq.group
        self.scheduler = Scheduler(Executor(native=native), runs=native)
        #: the lengths of the native runs, and runs a descriptor run in Python came right after
        self.runs: list[int] = []
        self.cut = 0

    def turn(self, work: int, timed: bool) -> tuple[list[object], bool]:
        said: list[object] = []
        more = False
        for group in dict.fromkeys((self.dwq.group, self.swq.group)):
            assert group is not None
            told, left = self.turn_of(group, work, timed)
            said.extend(told)
            more = more or left
        return said, more

    def turn_of(self, group: Group, work: int, timed: bool) -> tuple[list[object], bool]:
        budget = Budget(work, (lambda: False) if timed else None)
        turn = self.scheduler.run(group, budget, lambda item: self.space)
        said: list[object] = []
        previous: object = None
        for outcome in turn.outcomes:
            if type(outcome) is CompletedRun:
                self.runs.append(outcome.count)
            elif type(previous) is CompletedRun:
                self.cut += 1
            previous = outcome
            said.extend(self.told(outcome, work))
        return said, turn.more

    def told(self, outcome: Outcome, work: int) -> list[object]:
        """What ``outcome`` tells the submitter, comparable across the worlds (a blocked one
        is answered INVALID at once and what follows is told too)."""
        if type(outcome) is CompletedRun:
            return [("plain", outcome.owner)] * outcome.count
        if isinstance(outcome, Completed) and not outcome.events and not outcome.interrupt:
            return [("plain", outcome.item.owner)]
        if isinstance(outcome, Blocked):
            resumed = self.scheduler.resume(outcome.state, PageResponse.INVALID, Budget(work))
            told = self.told(resumed, work)
            return [("blocked", outcome.item.seq, repr(outcome.events)), *told]
        if isinstance(outcome, Preempted):
            return [("preempted", outcome.item.seq, repr(outcome.events))]
        assert isinstance(outcome, Completed)
        return [
            (
                "completed",
                outcome.item.seq,
                outcome.raw,
                outcome.written,
                outcome.interrupt,
                outcome.int_handle,
                repr(outcome.events),
            )
        ]

    def state(self) -> list[object]:
        group = self.group
        assert group is not None
        wqs = [
            (wq.stats, wq.occupancy, sorted(wq._inflight), wq._queued_drains)
            for wq in (self.dwq, self.swq)
        ]
        other = self.swq.group
        assert other is not None
        engines = {engine.id: n for engine, n in self.scheduler.engine_runs.items()}
        return [
            self.counters(),
            wqs,
            engines,
            group._cursor,
            group._credits,
            other._cursor,
            other._credits,
            self.scheduler.preemptions,
            self.scheduler.in_progress(group),
        ]


def _descriptor(gen: AliasingGenerator, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.7:
        return gen.clean()
    if roll < 0.74:
        return dsa.drain(completion=RECORDS + 32 * gen.slot())
    if roll < 0.8:
        return dsa.noop()  # no record: a plain completion nothing is written for
    return gen.descriptor(0)[0]  # mostly faults and software errors, in Python


@pytest.mark.parametrize(
    ("work", "timed", "iotlb_entries", "devtlb", "devtlb_entries", "one_wq"),
    [
        (1 << 40, False, 8192, False, 0, False),
        (1 << 40, True, 8192, False, 0, False),
        (5 * 4096, False, 8192, False, 0, False),
        (1 << 40, False, 6, False, 0, False),
        (3 * 4096, True, 8192, True, 1024, False),
        (1 << 40, False, 8192, True, 5, False),
        (1 << 40, False, 8192, False, 0, True),
        (7 * 4096, True, 6, False, 0, True),
    ],
    ids=[
        "unlimited",
        "timed",
        "small-budget",
        "tiny-iotlb",
        "devtlb-timed",
        "full-devtlb",
        "one-wq",
        "one-wq-small-budget-tiny-iotlb",
    ],
)
def test_native_runs_match_one_by_one_python_execution(
    work: int,
    timed: bool,
    iotlb_entries: int,
    devtlb: bool,
    devtlb_entries: int,
    one_wq: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if devtlb_entries:
        monkeypatch.setattr(devtlb_module, "CAPACITY", devtlb_entries)
    rng = random.Random(SEED + work + timed + iotlb_entries + devtlb + devtlb_entries + one_wq)
    ref = QueueWorld(False, iotlb_entries, devtlb, one_wq)
    fast = QueueWorld(True, iotlb_entries, devtlb, one_wq)
    gen = AliasingGenerator(rng, RECORD_PAGES * PAGE // 32)
    try:
        for round_number in range(ROUNDS):
            if gen.next_slot + 120 >= gen.slots:
                gen.next_slot = 1
            # the dedicated WQ's queue, then a shared WQ queue of two submitters and PASIDs
            dwq_descs = [_descriptor(gen, rng) for _ in range(rng.randrange(1, 40))]
            swq_descs = [
                (_descriptor(gen, rng), rng.choice(OWNERS), rng.choice((1, 2)))
                for _ in range(rng.choice((0, 0, 3, 20)))
            ]
            for world in (ref, fast):
                for desc in dwq_descs:
                    assert world.dwq.submit_many(desc, owner="a", irq_count=4) == b"\0"
                for desc, owner, pasid in swq_descs:
                    got = world.swq.submit_many(desc, pasid, owner=owner, irq_count=4)
                    assert got == b"\0"
            for turns in range(10_000):
                said_ref, more_ref = ref.turn(work, timed)
                said_fast, more_fast = fast.turn(work, timed)
                assert said_fast == said_ref, (round_number, turns)
                assert more_fast == more_ref, (round_number, turns)
                assert fast.state() == ref.state(), (round_number, turns, said_ref)
                if not more_ref:
                    break
            assert fast.state() == ref.state(), round_number
            if round_number % 8 == 0:
                assert fast.snapshot() == ref.snapshot(), round_number
        assert fast.snapshot() == ref.snapshot()
        assert fast.state() == ref.state()
    finally:
        ref.env.close()
        fast.env.close()
    SUMMARY.append(
        f"native runs ({work=}, {timed=}, {iotlb_entries=}, {devtlb=}, {devtlb_entries=}, "
        f"{one_wq=}): "
        f"{ROUNDS} rounds, {len(fast.runs)} runs of {sum(fast.runs)} descriptors "
        f"(longest {max(fast.runs, default=0)}), {fast.cut} followed by Python work"
    )
    # runs of several descriptors really ran, and were cut by descriptors Python runs
    assert max(fast.runs, default=0) > 1 and fast.cut > 0
