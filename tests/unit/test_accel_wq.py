"""Work-queue submission (ENQCMD / MOVDIR64B rules) and the engines' side of the queue."""

from __future__ import annotations

import errno

import pytest

from siov import dsa as sdk
from siovd.model.accel import SubmitResult, embedded_default
from siovd.model.accel.device import DsaDevice
from siovd.model.errors import SiovError

NOOP = sdk.noop()


@pytest.fixture
def device() -> DsaDevice:
    return embedded_default()


def test_shared_wq_answers_retry_when_full(device: DsaDevice) -> None:
    swq = device.wqs[1]
    assert (swq.size, swq.threshold) == (64, 48)
    results = [swq.submit(NOOP, pasid=5) for _ in range(64)]
    assert results == [SubmitResult.ACCEPTED] * 64
    assert swq.submit(NOOP, pasid=5) == SubmitResult.RETRY
    assert swq.stats.retried == 1 and swq.occupancy == 64
    assert device.engines[0].take() is not None  # an engine frees one entry
    assert swq.submit(NOOP, pasid=5) == SubmitResult.ACCEPTED


def test_limited_portal_stops_at_the_threshold(device: DsaDevice) -> None:
    swq = device.wqs[1]
    for _ in range(48):
        assert swq.submit(NOOP, pasid=5, limited=True) == SubmitResult.ACCEPTED
    assert swq.submit(NOOP, pasid=5, limited=True) == SubmitResult.RETRY
    assert swq.submit(NOOP, pasid=5) == SubmitResult.ACCEPTED  # the unlimited portal goes on


def test_dedicated_wq_drops_past_its_size_and_counts(device: DsaDevice) -> None:
    dwq = device.wqs[0]
    for _ in range(64):
        assert dwq.submit(NOOP) == SubmitResult.ACCEPTED
    assert dwq.submit(NOOP) == SubmitResult.DROPPED
    assert dwq.submit(NOOP) == SubmitResult.DROPPED
    assert dwq.stats.dropped == 2 and dwq.occupancy == 64


def test_submission_refusals(device: DsaDevice) -> None:
    dwq, swq = device.wqs[0], device.wqs[1]
    with pytest.raises(SiovError) as exc:
        swq.submit(NOOP)
    assert exc.value.errno == errno.EINVAL and "dsa0/wq0.1" in exc.value.message
    for pasid in (0, 1 << 20):
        with pytest.raises(SiovError) as exc:
            swq.submit(NOOP, pasid=pasid)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(SiovError) as exc:
        dwq.submit(NOOP[:32])
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(SiovError) as exc:
        device.wqs[3].submit(NOOP)
    assert exc.value.errno == errno.ENXIO and "dsa0/wq0.3" in exc.value.message


def test_portal_write_to_a_disabled_wq_behaves_like_hardware(device: DsaDevice) -> None:
    dwq, swq = device.wqs[0], device.wqs[1]
    dwq.disable()
    swq.disable()
    assert dwq.portal_write(NOOP) == SubmitResult.DROPPED
    assert swq.portal_write(NOOP, pasid=3) == SubmitResult.RETRY
    assert (dwq.stats.dropped, swq.stats.retried) == (1, 1)


def test_pasid_tagging(device: DsaDevice) -> None:
    dwq, swq = device.wqs[0], device.wqs[1]
    dwq.submit(NOOP, pasid=99)  # MOVDIR64B carries no PASID: the WQ's is used
    item = dwq.take()
    assert item is not None and item.pasid == 0
    dwq.set_pasid(7)
    dwq.submit(NOOP)
    item = dwq.take()
    assert item is not None and item.pasid == 7
    swq.submit(NOOP, pasid=12, owner="mdev-a", irq_count=2)
    item = swq.take()
    assert item is not None and (item.pasid, item.owner, item.irq_count) == (12, "mdev-a", 2)
    with pytest.raises(SiovError) as exc:
        dwq.set_pasid(1 << 20)
    assert exc.value.errno == errno.EINVAL


def test_take_is_in_order_and_tracks_inflight(device: DsaDevice) -> None:
    dwq = device.wqs[0]
    for i in range(3):
        dwq.submit(sdk.memmove(0x1000 * i, 0, 8))
    items = [dwq.take() for _ in range(3)]
    assert [item.seq for item in items if item] == [1, 2, 3]
    assert dwq.take() is None
    assert dwq.inflight == 3
    for item in items:
        assert item is not None
        dwq.retire(item)
    assert dwq.inflight == 0 and dwq.stats.completed == 3


def test_drain_waits_for_earlier_descriptors_of_its_pasid(device: DsaDevice) -> None:
    swq = device.wqs[1]
    swq.submit(NOOP, pasid=1)
    swq.submit(NOOP, pasid=2)
    first = swq.take()
    other = swq.take()
    assert first is not None and other is not None
    swq.submit(sdk.drain(), pasid=1)
    swq.submit(NOOP, pasid=3)
    after = swq.take()
    assert after is not None and after.pasid == 3  # passes the waiting drain
    assert swq.take() is None  # the drain still waits for pasid 1's descriptor
    swq.retire(other)  # pasid 2 does not matter
    assert swq.take() is None
    swq.retire(first)
    drain = swq.take()
    assert drain is not None and drain.drain and drain.pasid == 1


def test_drain_never_waits_for_another_mdevs_work_of_the_same_pasid_number(
    device: DsaDevice,
) -> None:
    # PASIDs are numbered per device (issue 9): mdev "b" tagging work with the number "a"
    # uses is another address space, so "a"'s drain does not order against it.
    swq = device.wqs[1]
    swq.submit(NOOP, pasid=5, owner="b")
    held = swq.take()  # b's descriptor stays in flight (a page request, say)
    assert held is not None
    swq.submit(NOOP, pasid=5, owner="b")  # and one more of b's, still queued
    swq.submit(sdk.drain(), pasid=5, owner="a")
    first = swq.take()
    assert first is not None and first.owner == "b"
    drain = swq.take()
    assert drain is not None and drain.drain and drain.owner == "a"
    # b's own drain still waits for b's work.
    swq.submit(sdk.drain(), pasid=5, owner="b")
    assert swq.take() is None
    swq.retire(held)
    swq.retire(first)
    last = swq.take()
    assert last is not None and last.drain and last.owner == "b"


def test_drain_waits_for_earlier_queued_descriptors(device: DsaDevice) -> None:
    dwq = device.wqs[0]
    dwq.submit(NOOP)
    dwq.submit(sdk.drain())
    first = dwq.take()
    assert first is not None and not first.drain
    assert dwq.take() is None
    dwq.retire(first)
    drain = dwq.take()
    assert drain is not None and drain.drain


def test_group_arbitration_follows_priorities(device: DsaDevice) -> None:
    dwq, swq = device.wqs[0], device.wqs[1]
    for wq, priority in ((dwq, 3), (swq, 1)):
        wq.disable()
        wq.configure({"priority": priority})
        wq.enable()
    for _ in range(12):
        dwq.submit(NOOP)
        swq.submit(NOOP, pasid=1)
    engine = device.engines[2]
    order = []
    for _ in range(16):
        item = engine.take()
        assert item is not None
        order.append(item.wq.id)
    assert order.count(0) == 12 and order.count(1) == 4
    assert order[:8] == [1, 0, 0, 0, 1, 0, 0, 0] or order[:8] == [0, 0, 0, 1, 0, 0, 0, 1]


def test_an_engine_outside_a_group_takes_nothing() -> None:
    device = DsaDevice()
    assert device.engines[0].take() is None


def test_abort_removes_queued_descriptors(device: DsaDevice) -> None:
    swq = device.wqs[1]
    swq.submit(NOOP, pasid=1, owner="a")
    swq.submit(sdk.drain(), pasid=2, owner="b")
    swq.submit(NOOP, pasid=1, owner="a")
    removed = swq.abort(owner="a")
    assert len(removed) == 2 and swq.occupancy == 1
    assert swq.stats.aborted == 2
    item = swq.take()
    assert item is not None and item.owner == "b"


def test_a_disabled_wq_still_hands_out_what_was_queued(device: DsaDevice) -> None:
    dwq = device.wqs[0]
    dwq.submit(NOOP)
    dwq.disable()
    assert dwq.take() is not None


def test_portal_offsets_select_the_wq_and_portal(device: DsaDevice) -> None:
    assert device.portal_size == 8 * 4 * 4096
    assert device.portal_write(0x0, NOOP) == SubmitResult.ACCEPTED
    assert device.wqs[0].occupancy == 1
    stride = 4 << 12
    for _ in range(48):
        device.portal_write(stride + 0x1000 + 64, NOOP, pasid=4)  # limited MSI-X portal
    assert device.portal_write(stride + 0x1000, NOOP, pasid=4) == SubmitResult.RETRY
    assert device.portal_write(stride + 0x2000, NOOP, pasid=4) == SubmitResult.ACCEPTED  # IMS
    assert device.portal_write(stride + 0x3000, NOOP, pasid=4) == SubmitResult.RETRY  # limited
    for offset, data in ((0x20, NOOP), (0, NOOP[:63]), (8 * stride, NOOP)):
        with pytest.raises(SiovError) as exc:
            device.portal_write(offset, data)
        assert exc.value.errno == errno.EINVAL
