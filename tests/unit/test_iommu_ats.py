"""The device-TLB model (siovd.model.iommu.ats): what a device holds, what one change owes it,
and the answers (SPEC §8.21), without a socket."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siovd.model.errors import SiovError
from siovd.model.iommu.ats import MAX_AM, MAX_RANGES, DeviceTlbs, cover


def emulator(uuid: str) -> int | None:
    return 7  # every device is emulated by session 7


@given(st.integers(0, (1 << 48) - 1), st.integers(1, 1 << 40))
def test_cover_is_the_smallest_aligned_block(start: int, length: int) -> None:
    base, am = cover(start, start + length)
    size = 4096 << am
    assert base % size == 0 and base <= start and start + length <= base + size
    if am:  # one size smaller would not do
        half = size // 2
        assert (start // half) != ((start + length - 1) // half)


def test_an_unmap_takes_what_the_device_holds_there_and_keeps_the_rest() -> None:
    tlbs = DeviceTlbs()
    tlbs.record("d", 0, 1, [(0x10000, 0x4000)])
    (inv,) = tlbs.range_changed({1}, 0x11000, 0x1000, emulator)
    assert (inv.device, inv.pasid, inv.iova, inv.am, inv.everything) == ("d", 0, 0x11000, 0, False)
    assert tlbs.cached[("d", 0)][1] == [(0x10000, 0x11000), (0x12000, 0x14000)]
    # another domain's change, or a range it does not hold, owes nothing
    assert tlbs.range_changed({2}, 0x10000, 0x4000, emulator) == []
    assert tlbs.range_changed({1}, 0x11000, 0x1000, emulator) == []
    assert len(tlbs.pending) == 1


def test_an_entry_change_is_the_whole_pasid_and_only_for_holders() -> None:
    tlbs = DeviceTlbs()
    tlbs.record("d", 5, 1, [(0, 4096)])
    assert tlbs.entry_changed("d", {6}, emulator) == []
    (inv,) = tlbs.entry_changed("d", {5}, emulator)
    assert (inv.iova, inv.am, inv.everything) == (0, MAX_AM, True)
    assert not tlbs.holds("d")


def test_ranges_are_bounded_by_their_hull() -> None:
    tlbs = DeviceTlbs()
    tlbs.record("d", 0, 1, [(i * 0x2000, 0x1000) for i in range(MAX_RANGES + 1)])
    assert tlbs.cached[("d", 0)][1] == [(0, MAX_RANGES * 0x2000 + 0x1000)]
    # the hull can only invalidate more: a gap between two ranges now counts as held
    assert len(tlbs.range_changed({1}, 0x1000, 0x1000, emulator)) == 1


def test_answers_timeouts_and_the_fence() -> None:
    tlbs = DeviceTlbs()
    tlbs.record("d", 0, 1, [(0, 0x2000)])
    (first,) = tlbs.range_changed({1}, 0, 0x1000, emulator)
    (second,) = tlbs.range_changed({1}, 0x1000, 0x1000, emulator)
    with pytest.raises(SiovError) as info:
        tlbs.complete(8, "d", first.cookie)  # not the emulating session: like no cookie
    assert info.value.errno == errno.ENOENT
    tlbs.time_out(first)
    tlbs.fence_more(second)
    with pytest.raises(SiovError) as info:
        tlbs.check_not_fenced("d")
    assert info.value.errno == errno.ETIMEDOUT
    tlbs.complete(7, "d", first.cookie)  # late, accepted; the second still fences
    with pytest.raises(SiovError):
        tlbs.check_not_fenced("d")
    woken: list[int] = []
    second.wake = lambda: woken.append(second.cookie)
    tlbs.complete(7, "d", second.cookie)
    tlbs.check_not_fenced("d")
    assert woken == [second.cookie] and tlbs.timeouts == 1 and not tlbs.pending


def test_a_device_that_leaves_owes_nothing() -> None:
    tlbs = DeviceTlbs()
    tlbs.record("d", 0, 1, [(0, 0x1000)])
    (inv,) = tlbs.everything_changed({1}, emulator)
    tlbs.record("d", 0, 1, [(0, 0x1000)])
    tlbs.forget_device("d")
    assert inv.done and not tlbs.pending and not tlbs.holds("d")
    # no emulator left: nothing is issued at all
    tlbs.record("e", 0, 1, [(0, 0x1000)])
    assert tlbs.range_changed({1}, 0, 0x1000, lambda uuid: None) == []
