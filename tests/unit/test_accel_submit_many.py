"""WorkQueue.submit_many (the SUBMIT fast path) keeps submit's rules descriptor by descriptor,
and WorkQueue.cancel gives up a taken descriptor without completing it."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siov import dsa as sdk
from siovd.model.accel import SubmitResult, embedded_default
from siovd.model.accel.device import DsaDevice
from siovd.model.errors import SiovError

NOOP = sdk.noop()
DRAIN = sdk.drain()


@pytest.fixture
def device() -> DsaDevice:
    return embedded_default()


def test_dedicated_overflow_drops_the_tail(device: DsaDevice) -> None:
    dwq = device.wqs[0]
    dwq.set_pasid(9)
    results = dwq.submit_many(NOOP * 70, owner="m")
    assert results == bytes([SubmitResult.ACCEPTED] * 64 + [SubmitResult.DROPPED] * 6)
    assert dwq.stats.submitted == 64 and dwq.stats.dropped == 6 and dwq.occupancy == 64
    item = dwq.take()
    assert item is not None and item.pasid == 9 and item.owner == "m" and item.seq == 1


def test_shared_retry_and_the_limited_portal(device: DsaDevice) -> None:
    swq = device.wqs[1]
    assert swq.submit_many(NOOP * 50, pasid=3, limited=True).count(SubmitResult.RETRY) == 2
    results = swq.submit_many(NOOP * 20, pasid=4)
    assert results.count(SubmitResult.ACCEPTED) == 16 and results[16:] == bytes([1] * 4)
    assert swq.stats.retried == 6 and swq.occupancy == 64


def test_refusals_match_submit(device: DsaDevice) -> None:
    dwq, swq = device.wqs[0], device.wqs[1]
    for call, err in (
        (lambda: swq.submit_many(NOOP), errno.EINVAL),  # ENQCMD needs a PASID
        (lambda: swq.submit_many(NOOP, pasid=1 << 20), errno.EINVAL),
        (lambda: dwq.submit_many(NOOP[:40]), errno.EINVAL),
        (lambda: dwq.submit_many(b""), errno.EINVAL),
    ):
        with pytest.raises(SiovError) as info:
            call()
        assert info.value.errno == err
    assert dwq.occupancy == swq.occupancy == 0
    dwq.disable()
    with pytest.raises(SiovError) as info:
        dwq.submit_many(NOOP)
    assert info.value.errno == errno.ENXIO  # not enabled


def test_drains_are_tracked(device: DsaDevice) -> None:
    swq = device.wqs[1]
    swq.submit_many(NOOP + DRAIN + NOOP, pasid=5)
    first = swq.take()
    assert first is not None
    second = swq.take()  # the drain waits for the first NOOP: the last NOOP passes it
    assert second is not None and second.seq == 3
    assert swq.take() is None
    swq.retire(first)
    drain = swq.take()
    assert drain is not None and drain.drain


def test_cancel_counts_an_abort_not_a_completion(device: DsaDevice) -> None:
    dwq = device.wqs[0]
    dwq.submit_many(NOOP * 2)
    item = dwq.take()
    assert item is not None and dwq.inflight == 1
    dwq.cancel(item)
    dwq.cancel(item)  # once only
    assert dwq.inflight == 0 and dwq.stats.aborted == 1 and dwq.stats.completed == 0


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 80)), max_size=12))
@settings(max_examples=60, deadline=None)
def test_submit_many_is_submit_in_a_loop(steps: list[tuple[bool, int]]) -> None:
    """Batches, with engines taking work in between, give what one submit per descriptor
    gives on an identical device."""
    many, one = embedded_default(), embedded_default()
    for shared, count in steps:
        wq_many, wq_one = many.wqs[int(shared)], one.wqs[int(shared)]
        pasid = 7 if shared else None
        got = wq_many.submit_many(NOOP * count, pasid)
        want = bytes(wq_one.submit(NOOP, pasid) for _ in range(count))
        assert got == want
        for _ in range(count // 2):  # engines take some
            a, b = many.engines[0].take(), one.engines[0].take()
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert (a.seq, a.pasid, a.wq.id) == (b.seq, b.pasid, b.wq.id)
    for a, b in zip(many.wqs, one.wqs, strict=True):
        assert a.stats == b.stats and a.occupancy == b.occupancy
