"""Work budgets: big transfers and batches stop mid-way and continue where they stopped, with
the result an uninterrupted run gives; the scheduler keeps them on their engine between turns."""

from __future__ import annotations

import os

from siov import dsa as sdk
from siov_protocol.dsa import (
    DSA_COMP_DR_ERANGE,
    DSA_COMP_SUCCESS,
    DSA_COMP_SUCCESS_PRED,
    IDXD_OP_FLAG_CR,
    IDXD_OP_FLAG_RCI,
    DsaOpcode,
)
from siovd.model.accel import Completed, Interrupt, Preempted
from siovd.model.accel.ranges import SLICE
from siovd.model.accel.scheduler import Scheduler
from siovd.model.budget import Budget
from tests.unit.dsa_fakes import Rig

MiB = 1 << 20
CR = Rig.CR
A = 1 * MiB
B = 5 * MiB
SIZE = 3 * MiB + 4096  # four slices


def big_rig() -> Rig:
    return Rig(size=10 * MiB)


def run_in_turns(rig: Rig, desc: bytes, work: int) -> tuple[Completed, int, list[object]]:
    """Submit ``desc`` and run it with a budget of ``work`` bytes per turn until it completes;
    returns the outcome, the number of turns and the events delivered on the way."""
    assert rig.dwq.submit(desc, None) is not None
    item = rig.device.engines[0].take()
    assert item is not None
    outcome = rig.executor.run(item, rig.dma, Budget(work))
    turns = 1
    events: list[object] = []
    while isinstance(outcome, Preempted):
        events.extend(outcome.events)
        outcome = rig.executor.proceed(outcome.state, Budget(work))
        turns += 1
    assert isinstance(outcome, Completed), outcome
    events.extend(outcome.events)
    return outcome, turns, events


def test_a_big_compare_stops_each_slice_and_finds_the_same_difference() -> None:
    rig = big_rig()
    data = os.urandom(SIZE)
    rig.put(A, data)
    rig.put(B, data)
    rig.dma.mem[B + 3 * MiB + 7] ^= 0xFF  # in the last slice
    desc = sdk.compare(A, B, SIZE, completion=CR)
    out, turns, _ = run_in_turns(rig, desc, 1)  # spent after every slice
    assert turns == 4
    record = rig.record()
    assert record.status == DSA_COMP_SUCCESS and record.result == 1
    assert record.bytes_completed == 3 * MiB + 7
    # Unbudgeted, the same record.
    raw = out.raw
    assert rig.run(desc).raw == raw


def test_a_budget_larger_than_the_transfer_never_preempts() -> None:
    rig = big_rig()
    _, turns, _ = run_in_turns(rig, sdk.compare(A, B, SIZE, completion=CR), 64 * MiB)
    assert turns == 1
    assert rig.record().status == DSA_COMP_SUCCESS


def test_overlapping_memmoves_in_slices_copy_like_memmove() -> None:
    for src, dst in ((A, A + 12345 * 8), (A + 12345 * 8, A)):  # descending, then ascending
        rig = big_rig()
        data = os.urandom(2 * SIZE)
        rig.put(A, data)
        expect = bytearray(rig.dma.mem)
        expect[dst : dst + SIZE] = expect[src : src + SIZE]
        _, turns, _ = run_in_turns(rig, sdk.memmove(dst, src, SIZE, completion=CR), 1)
        assert turns == 4
        assert rig.record().status == DSA_COMP_SUCCESS
        assert rig.dma.mem[A:] == expect[A:]


def test_crc_fill_dualcast_and_compval_continue_their_running_state() -> None:
    rig = big_rig()
    rig.put(A, os.urandom(SIZE))
    whole = rig.run(sdk.crcgen(A, SIZE, completion=CR)).raw
    _, turns, _ = run_in_turns(rig, sdk.crcgen(A, SIZE, completion=CR), 1)
    assert turns == 4
    assert rig.get(CR, 32) == whole
    _, turns, _ = run_in_turns(rig, sdk.fill(B, 0x1122334455667788, SIZE, completion=CR), 1)
    assert turns == 4
    assert rig.get(B, SIZE) == (0x1122334455667788).to_bytes(8, "little") * (SIZE // 8)
    flags = IDXD_OP_FLAG_CR
    desc = sdk.compval(B, 0x1122334455667788, SIZE, completion=CR, flags=flags)
    _, turns, _ = run_in_turns(rig, desc, 1)
    assert turns == 4 and rig.record().status == DSA_COMP_SUCCESS
    rig.dma.mem[B + SIZE - 1] ^= 1
    _, turns, _ = run_in_turns(rig, desc, 1)
    assert rig.record().status == DSA_COMP_SUCCESS_PRED
    assert rig.record().bytes_completed == SIZE - 8


def test_a_batch_stops_between_and_inside_entries_and_resumes_where_it_stopped() -> None:
    rig = big_rig()
    rig.put(A, os.urandom(2 * MiB))
    entries = [sdk.memmove(B + i * 4096, A + i * 4096, 4096) for i in range(6)]
    entries.append(sdk.memmove(B + 2 * MiB, A, 2 * MiB))  # two slices
    entries.append(sdk.noop(flags=IDXD_OP_FLAG_RCI, int_handle=3))
    rig.put(0x8000, b"".join(entries))
    desc = sdk.batch(0x8000, len(entries), completion=CR)
    _, turns, events = run_in_turns(rig, desc, 1)
    assert turns == 1 + 7 + 1  # a stop after each of 7 entries, one inside the big one
    record = rig.record()
    assert record.status == DSA_COMP_SUCCESS and record.bytes_completed == len(entries)
    assert rig.get(B, 6 * 4096) == rig.get(A, 6 * 4096)
    assert rig.get(B + 2 * MiB, 2 * MiB) == rig.get(A, 2 * MiB)
    assert events == [Interrupt(3, 7)]


def test_apply_delta_refuses_a_record_beyond_max_transfer_size() -> None:
    rig = big_rig()
    assert rig.dwq.max_transfer_size == 1 << 31
    for record_size in (0xFFFFFFFA, (1 << 31) + 10):
        desc = sdk.apply_delta(A, B, record_size, 4096, completion=CR)  # record above dst
        rig.run(desc)
        assert rig.record().status == DSA_COMP_DR_ERANGE, hex(record_size)
    rig.dwq.disable()
    rig.dwq.configure({"max_transfer_size": 4096})
    rig.dwq.enable()
    rig.run(sdk.apply_delta(B, A, 4100, 4096, completion=CR))
    assert rig.record().status == DSA_COMP_DR_ERANGE
    rig.put(A, (1).to_bytes(2, "little") + (7).to_bytes(8, "little"))
    rig.run(sdk.apply_delta(B, A, 10, 4096, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(B + 8, 8) == (7).to_bytes(8, "little")


def test_the_scheduler_keeps_a_preempted_compare_and_lets_other_work_pass() -> None:
    rig = big_rig()
    scheduler = Scheduler(rig.executor)
    group = rig.dwq.group
    assert group is not None
    swq = rig.swq
    assert swq.submit(sdk.compare(A, B, SIZE, completion=CR), 1) is not None
    assert swq.submit(sdk.noop(completion=CR + 64), 1) is not None
    assert swq.submit(sdk.drain(completion=CR + 128), 1) is not None
    turns = 0
    order: list[int] = []
    while True:
        turn = scheduler.run(group, Budget(1), lambda item: rig.dma)
        turns += 1
        for outcome in turn.outcomes:
            if isinstance(outcome, Completed):
                order.append(outcome.item.desc[7])  # the opcode byte
        if not turn.more:
            break
        assert turns < 100
    # The noop passed the compare still in progress; the drain waited for both.
    assert order == [int(DsaOpcode.NOOP), int(DsaOpcode.COMPARE), int(DsaOpcode.DRAIN)]
    assert scheduler.preemptions == 3 and scheduler.in_progress(group) == 0
    assert MiB == SLICE


def test_a_big_dif_insert_then_check_stop_between_slices_with_the_same_result() -> None:
    """The DIF family runs in slices of whole blocks (progress: blocks done) like the other
    transfers; the tags, the tuples and the record are those of an uninterrupted run."""
    size = 2 * MiB + 512 * 5  # three slices of 512-byte blocks
    protected = size + 8 * (size // 512)
    rig = big_rig()
    data = os.urandom(size)
    rig.put(A, data)
    ins = sdk.dif_insert(B, A, size, ref_tag=7, app_tag=9, completion=CR)
    out, turns, _ = run_in_turns(rig, ins, 1)
    assert turns == 3
    assert rig.record().status == DSA_COMP_SUCCESS
    written = bytes(rig.dma.mem[B : B + protected])
    raw = out.raw
    whole = big_rig()
    whole.put(A, data)
    assert whole.run(ins).raw == raw
    assert bytes(whole.dma.mem[B : B + protected]) == written
    chk = sdk.dif_check(B, protected, ref_tag=7, app_tag=9, completion=CR)
    out, turns, _ = run_in_turns(rig, chk, 1)
    assert turns > 1
    assert rig.record().status == DSA_COMP_SUCCESS
    assert whole.run(chk).raw == out.raw
