"""A WQ keeps a SUBMIT's descriptors as one run of their bytes (issue 16): whatever the
engines then do (take one, run the head natively, retire, abort an owner), the WQ must behave
exactly as if each descriptor had been written to the portal on its own.

Hypothesis drives two WQs of the same configuration through the same operations, one fed with
``submit_many`` and one with ``submit`` per descriptor, and compares every answer: the items
taken (descriptor, PASID, sequence number, owner), what ``head_run`` offers, what
``retire_run`` returns, the aborted items, occupancy, descriptors in flight and statistics.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from siov import dsa
from siovd.model.accel import WorkQueue, embedded_default
from siovd.model.accel.wq import WorkItem

OWNERS = ("a", "b")
NATIVE = frozenset({0x00, 0x03})


def _descriptor(kind: int, n: int) -> bytes:
    if kind == 0:
        return dsa.drain(completion=0x1000 + 32 * n)
    if kind == 1:
        return dsa.noop(completion=0x1000 + 32 * n)
    return dsa.memmove(0x2000, 0x3000, 64 + n, completion=0x1000 + 32 * n)


def _shared_wq() -> WorkQueue:
    wq = embedded_default().wqs[1]  # shared: every submission carries its PASID
    assert not wq.dedicated
    return wq


def _item(item: WorkItem | None) -> tuple[object, ...] | None:
    if item is None:
        return None
    return (item.desc, item.pasid, item.seq, item.owner, item.irq_count, item.drain)


def _state(wq: WorkQueue) -> tuple[object, ...]:
    return (wq.occupancy, wq.inflight, wq.stats)


submission = st.tuples(
    st.lists(st.integers(0, 2), min_size=1, max_size=12),  # descriptor kinds (0: DRAIN)
    st.sampled_from(OWNERS),
    st.integers(1, 2),  # PASID
)
step = st.one_of(
    st.tuples(st.just("submit"), submission),
    st.tuples(st.just("take"), st.none()),
    st.tuples(st.just("run"), st.integers(1, 20)),
    st.tuples(st.just("retire"), st.none()),
    st.tuples(st.just("abort"), st.sampled_from((None, *OWNERS))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_a_submission_queued_as_one_run_behaves_as_descriptor_by_descriptor(
    steps: list[tuple[str, object]],
) -> None:
    runs, single = _shared_wq(), _shared_wq()
    taken: list[tuple[WorkItem, WorkItem]] = []
    written = 0
    for action, arg in steps:
        if action == "submit":
            assert isinstance(arg, tuple)
            kinds, owner, pasid = arg
            descs = [_descriptor(kind, written + i) for i, kind in enumerate(kinds)]
            written += len(descs)
            got = runs.submit_many(b"".join(descs), pasid, owner=owner, irq_count=4)
            want = bytearray(single.submit(desc, pasid, owner=owner, irq_count=4) for desc in descs)
            assert got == want
        elif action == "take":
            a, b = runs.take(), single.take()
            assert _item(a) == _item(b)
            if a is not None and b is not None:
                taken.append((a, b))
        elif action == "run":
            assert isinstance(arg, int)
            a_head, b_head = runs.head_run(arg, NATIVE), single.head_run(arg, NATIVE)
            assert (a_head is None) == (b_head is None)
            if a_head is not None and b_head is not None:
                assert _item(a_head[0]) == _item(b_head[0])
                assert bytes(a_head[1]) == bytes(b_head[1])
                count = len(a_head[1]) // 64
                assert _item(runs.retire_run(count)) == _item(single.retire_run(count))
        elif action == "retire" and taken:
            a, b = taken.pop(0)
            runs.retire(a)
            single.retire(b)
        elif action == "abort":
            got_items = [_item(item) for item in runs.abort(owner=arg)]
            assert got_items == [_item(item) for item in single.abort(owner=arg)]
        assert _state(runs) == _state(single)
    while True:  # what is left leaves in the same order
        a, b = runs.take(), single.take()
        assert _item(a) == _item(b)
        if a is None:
            break
        runs.retire(a)
        assert b is not None
        single.retire(b)
    assert _state(runs) == _state(single)


def test_a_submit_of_64_is_one_queue_entry_and_runs_from_its_own_bytes() -> None:
    wq = _shared_wq()
    blob = b"".join(dsa.noop(completion=0x1000 + 32 * i) for i in range(64))
    assert wq.submit_many(blob, 1, owner="a") == bytearray(64)
    assert wq.occupancy == 64
    assert len(wq._queue) == 1
    head = wq.head_run(64, NATIVE)
    assert head is not None
    first, descs = head
    assert first.desc == blob[:64] and first.seq == 1
    assert isinstance(descs, memoryview) and descs.obj is blob  # no copy of the SUBMIT
    last = wq.retire_run(64)
    assert last.desc == blob[-64:] and last.seq == 64
    assert wq.occupancy == 0 and wq.stats.completed == 64
