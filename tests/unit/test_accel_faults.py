"""Page faults: partial completion, block-on-fault, and resuming after the page response."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siov import dsa as sdk
from siov_protocol.dsa import (
    DSA_COMP_BATCH_FAIL,
    DSA_COMP_CRA_XLAT,
    DSA_COMP_PAGE_FAULT_IR,
    DSA_COMP_PAGE_FAULT_NOBOF,
    DSA_COMP_STATUS_WRITE,
    DSA_COMP_SUCCESS,
    IDXD_OP_FLAG_BOF,
    IDXD_OP_FLAG_RCI,
)
from siovd.model.accel import Blocked, Completed, PageResponse, SoftwareError
from tests.unit.dsa_fakes import PAGE, Rig

CR = Rig.CR
SRC = 0x10000
DST = 0x40000
BOF = IDXD_OP_FLAG_BOF


def finish(rig: Rig, outcome: Completed | Blocked) -> Completed:
    assert isinstance(outcome, Completed), outcome
    outcome.item.wq.retire(outcome.item)
    return outcome


def test_fault_reading_the_source_completes_partially() -> None:
    rig = Rig()
    data = os.urandom(4 * PAGE)
    rig.put(SRC, data)
    rig.dma.unmap(SRC + 2 * PAGE)
    out = rig.run(sdk.memmove(DST + 8, SRC, 4 * PAGE, completion=CR))  # no BOF flag
    record = rig.record()
    assert out.written
    assert record.status == DSA_COMP_PAGE_FAULT_NOBOF  # no write bit
    assert (record.bytes_completed, record.fault_addr, record.result) == (
        2 * PAGE,
        SRC + 2 * PAGE,
        0,
    )
    assert rig.get(DST + 8, 2 * PAGE) == data[: 2 * PAGE]
    assert rig.get(DST + 8 + 2 * PAGE, 16) == bytes(16)
    # software continues from the partial values, as accel-config's reprep does
    rig.dma.map(SRC + 2 * PAGE, SRC + 2 * PAGE)
    done = record.bytes_completed
    rig.run(sdk.memmove(DST + 8 + done, SRC + done, 4 * PAGE - done, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST + 8, 4 * PAGE) == data


def test_fault_writing_the_destination_sets_the_write_bit() -> None:
    rig = Rig()
    rig.dma.protect(DST + PAGE)  # read-only
    rig.run(sdk.fill(DST + 100, 0x55, 3 * PAGE, completion=CR))
    record = rig.record()
    assert record.status == DSA_COMP_PAGE_FAULT_NOBOF | DSA_COMP_STATUS_WRITE
    assert record.fault_on_write and record.code == DSA_COMP_PAGE_FAULT_NOBOF
    assert (record.bytes_completed, record.fault_addr) == (PAGE - 100, DST + PAGE)


def test_earlier_fault_of_two_ranges_is_reported() -> None:
    rig = Rig()
    rig.dma.unmap(SRC + 3 * PAGE)
    rig.dma.protect(DST + PAGE)
    rig.run(sdk.memmove(DST, SRC, 4 * PAGE, completion=CR))
    record = rig.record()
    assert (record.status, record.fault_addr) == (0x83, DST + PAGE)


def test_compare_difference_before_a_fault_wins() -> None:
    rig = Rig()
    rig.put(SRC, b"x")
    rig.dma.unmap(DST + PAGE)
    rig.run(sdk.compare(SRC, DST, 2 * PAGE, completion=CR))
    assert (rig.record().status, rig.record().result) == (DSA_COMP_SUCCESS, 1)
    rig.put(SRC, b"\0")
    rig.run(sdk.compare(SRC, DST, 2 * PAGE, completion=CR))
    record = rig.record()
    assert (record.status, record.bytes_completed, record.fault_addr) == (3, PAGE, DST + PAGE)


def test_block_on_fault_then_success_resumes_where_it_stopped() -> None:
    rig = Rig()
    data = os.urandom(6 * PAGE)
    rig.put(SRC, data)
    rig.dma.unmap(SRC + PAGE)
    rig.dma.unmap(DST + 4 * PAGE)
    outcome = rig.start(sdk.memmove(DST, SRC, 6 * PAGE, completion=CR, flags=BOF))
    assert isinstance(outcome, Blocked)
    assert (outcome.fault.iova, outcome.fault.write) == (SRC + PAGE, False)
    assert rig.get(DST, PAGE) == data[:PAGE]  # done before the fault
    assert rig.record().status == 0  # nothing completed yet
    assert rig.dwq.inflight == 1
    rig.dma.map(SRC + PAGE, SRC + PAGE)
    outcome = rig.executor.resume(outcome.state, PageResponse.SUCCESS)
    assert isinstance(outcome, Blocked)
    assert (outcome.fault.iova, outcome.fault.write) == (DST + 4 * PAGE, True)
    rig.dma.map(DST + 4 * PAGE, DST + 4 * PAGE)
    out = finish(rig, rig.executor.resume(outcome.state, PageResponse.SUCCESS))
    assert out.written and rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(DST, 6 * PAGE) == data
    assert rig.dwq.inflight == 0


def test_block_on_fault_then_invalid_completes_with_page_fault_ir() -> None:
    rig = Rig()
    rig.dma.protect(DST + 2 * PAGE)
    outcome = rig.start(sdk.fill(DST, 7, 3 * PAGE, completion=CR, flags=BOF | IDXD_OP_FLAG_RCI))
    assert isinstance(outcome, Blocked) and outcome.fault.write
    out = finish(rig, rig.executor.resume(outcome.state, PageResponse.INVALID))
    record = rig.record()
    assert record.status == DSA_COMP_PAGE_FAULT_IR | DSA_COMP_STATUS_WRITE
    assert (record.bytes_completed, record.fault_addr) == (2 * PAGE, DST + 2 * PAGE)
    assert out.interrupt


def test_invalid_response_keeps_the_partial_crc() -> None:
    rig = Rig()
    data = os.urandom(2 * PAGE)
    rig.put(SRC, data)
    rig.dma.unmap(SRC + PAGE)
    outcome = rig.start(sdk.crcgen(SRC, 2 * PAGE, completion=CR, flags=BOF))
    assert isinstance(outcome, Blocked)
    finish(rig, rig.executor.resume(outcome.state, PageResponse.INVALID))
    record = rig.record()
    assert (record.status, record.bytes_completed) == (DSA_COMP_PAGE_FAULT_IR, PAGE)
    from siovd.model.accel.crc import dsa_crc32c

    assert record.crc_val == dsa_crc32c([data[:PAGE]])


def test_bof_flag_without_wq_block_on_fault_does_not_block() -> None:
    rig = Rig(bof=False)
    rig.dma.unmap(SRC)
    out = rig.run(sdk.memmove(DST, SRC, 64, completion=CR, flags=BOF))
    assert out.written and rig.record().status == DSA_COMP_PAGE_FAULT_NOBOF


def test_shared_wq_faults_in_the_submitters_pasid() -> None:
    rig = Rig()
    rig.dma.unmap(DST)
    outcome = rig.start(sdk.memmove(DST, SRC, 64, completion=CR, flags=BOF), shared=True, pasid=42)
    assert isinstance(outcome, Blocked)
    assert rig.asked == [42] and outcome.item.pasid == 42


@pytest.mark.parametrize("response", [PageResponse.SUCCESS, PageResponse.INVALID])
def test_crc_resume_is_exact(response: PageResponse) -> None:
    from siovd.model.accel.crc import dsa_crc32c

    rig = Rig()
    data = os.urandom(3 * PAGE)
    rig.put(SRC, data)
    rig.put(DST, data)
    rig.dma.unmap(SRC + 2 * PAGE)
    rig.dma.unmap(DST + PAGE)
    outcome = rig.start(sdk.copy_crc(DST + 0x10000, SRC, 3 * PAGE, completion=CR, flags=BOF))
    assert isinstance(outcome, Blocked) and outcome.fault.iova == SRC + 2 * PAGE
    rig.dma.map(SRC + 2 * PAGE, SRC + 2 * PAGE)
    out = finish(rig, rig.executor.resume(outcome.state, response))
    assert out.written
    if response == PageResponse.SUCCESS:
        assert rig.record().crc_val == dsa_crc32c([data])
        assert rig.get(DST + 0x10000, 3 * PAGE) == data
    else:
        assert rig.record().crc_val == dsa_crc32c([data[: 2 * PAGE]])


def test_descending_copy_fault_reports_the_tail() -> None:
    """dst overlaps the end of src: the copy runs from the end, and a partial completion
    says so with result 1 and bytes completed counted from the end."""
    rig = Rig(bof=False)
    region = os.urandom(6 * PAGE)
    rig.put(SRC, region)
    size = 4 * PAGE
    src, dst = SRC, SRC + PAGE + 8
    rig.dma.unmap(SRC + PAGE)  # inside src only
    rig.run(sdk.memmove(dst, src, size, completion=CR))
    record = rig.record()
    assert record.status == DSA_COMP_PAGE_FAULT_NOBOF and record.result == 1
    assert record.fault_addr == SRC + PAGE
    tail = size - (2 * PAGE)  # source bytes from SRC + 2 pages on translate
    assert record.bytes_completed == tail
    assert rig.get(dst + size - tail, tail) == region[size - tail : size]
    # software resubmits with the size reduced (result 1: no advance of the addresses)
    rig.dma.map(SRC + PAGE, SRC + PAGE, writable=True)
    rig.put(SRC + PAGE, region[PAGE : 2 * PAGE])
    rig.run(sdk.memmove(dst, src, size - tail, completion=CR))
    assert rig.record().status == DSA_COMP_SUCCESS
    expect = bytearray(region)
    expect[dst - SRC : dst - SRC + size] = region[:size]
    assert rig.get(SRC, 6 * PAGE) == bytes(expect)


def test_descending_copy_blocks_and_resumes() -> None:
    rig = Rig()
    region = os.urandom(6 * PAGE)
    rig.put(SRC, region)
    size = 4 * PAGE
    src, dst = SRC, SRC + 100
    rig.dma.unmap(SRC + 3 * PAGE)
    outcome = rig.start(sdk.memmove(dst, src, size, completion=CR, flags=BOF))
    assert isinstance(outcome, Blocked)
    rig.dma.map(SRC + 3 * PAGE, SRC + 3 * PAGE)
    rig.put(SRC + 3 * PAGE, region[3 * PAGE : 4 * PAGE])
    finish(rig, rig.executor.resume(outcome.state, PageResponse.SUCCESS))
    assert rig.record().status == DSA_COMP_SUCCESS
    expect = bytearray(region)
    expect[100 : 100 + size] = region[:size]
    assert rig.get(SRC, 6 * PAGE) == bytes(expect)


def test_delta_create_and_apply_resume_across_faults() -> None:
    rig = Rig()
    old = bytearray(os.urandom(4 * PAGE))
    new = bytearray(old)
    for pos in range(5, 4 * PAGE, 777):
        new[pos] ^= 0xFF
    rig.put(SRC, bytes(old))
    rig.put(DST, bytes(new))
    rig.dma.unmap(DST + 2 * PAGE)
    rig.dma.unmap(0x80000)  # the delta record area's first page
    desc = sdk.create_delta(SRC, DST, 4 * PAGE, 0x80000, 2000, completion=CR, flags=BOF)
    outcome = rig.start(desc)
    assert isinstance(outcome, Blocked) and outcome.fault.iova == 0x80000 and outcome.fault.write
    rig.dma.map(0x80000, 0x80000)
    outcome = rig.executor.resume(outcome.state, PageResponse.SUCCESS)
    assert isinstance(outcome, Blocked) and outcome.fault.iova == DST + 2 * PAGE
    rig.dma.map(DST + 2 * PAGE, DST + 2 * PAGE)
    finish(rig, rig.executor.resume(outcome.state, PageResponse.SUCCESS))
    record = rig.record()
    assert (record.status, record.result) == (DSA_COMP_SUCCESS, 1)
    size = record.delta_rec_size
    assert size == 10 * len(range(5, 4 * PAGE, 777))
    rig.put(0xC0000, bytes(old))
    rig.dma.unmap(0xC0000 + 3 * PAGE)
    outcome = rig.start(sdk.apply_delta(0xC0000, 0x80000, size, 4 * PAGE, completion=CR, flags=BOF))
    assert isinstance(outcome, Blocked)
    first_in_page = next(p for p in range(5, 4 * PAGE, 777) if p >= 3 * PAGE) & ~7
    assert outcome.fault.iova == 0xC0000 + first_in_page  # the word being written
    rig.dma.map(0xC0000 + 3 * PAGE, 0xC0000 + 3 * PAGE)
    rig.put(0xC0000 + 3 * PAGE, bytes(old[3 * PAGE :]))
    finish(rig, rig.executor.resume(outcome.state, PageResponse.SUCCESS))
    assert rig.record().status == DSA_COMP_SUCCESS
    assert rig.get(0xC0000, 4 * PAGE) == bytes(new)


LIST = 0x30000


def test_batch_blocks_in_a_descriptor_and_resumes() -> None:
    rig = Rig()
    data = os.urandom(3 * PAGE)
    rig.put(SRC, data)
    rig.dma.unmap(DST + PAGE)
    descs = [
        sdk.memmove(DST + i * PAGE, SRC + i * PAGE, PAGE, completion=0xE000 + 32 * i, flags=BOF)
        for i in range(3)
    ]
    descs[0] = sdk.memmove(
        DST, SRC, PAGE, completion=0xE000, flags=BOF | IDXD_OP_FLAG_RCI, int_handle=1
    )
    rig.put(LIST, sdk.join_batch(descs))
    outcome = rig.start(sdk.batch(LIST, 3, completion=CR))
    assert isinstance(outcome, Blocked) and outcome.fault.iova == DST + PAGE
    assert [type(e).__name__ for e in outcome.events] == ["Interrupt"]  # from descriptor 0
    assert rig.record(0xE000).status == DSA_COMP_SUCCESS and rig.record(0xE020).status == 0
    rig.dma.map(DST + PAGE, DST + PAGE)
    out = finish(rig, rig.executor.resume(outcome.state, PageResponse.SUCCESS))
    assert out.events == ()
    assert (rig.record().status, rig.record().descs_completed) == (DSA_COMP_SUCCESS, 3)
    assert rig.get(DST, 3 * PAGE) == data


def test_batch_invalid_response_fails_one_descriptor_and_goes_on() -> None:
    rig = Rig()
    rig.dma.unmap(DST + PAGE)
    descs = [
        sdk.fill(DST + i * PAGE, 0x11, PAGE, completion=0xE000 + 32 * i, flags=BOF)
        for i in range(3)
    ]
    rig.put(LIST, sdk.join_batch(descs))
    outcome = rig.start(sdk.batch(LIST, 3, completion=CR))
    assert isinstance(outcome, Blocked)
    finish(rig, rig.executor.resume(outcome.state, PageResponse.INVALID))
    assert rig.record(0xE020).status == DSA_COMP_PAGE_FAULT_IR | DSA_COMP_STATUS_WRITE
    assert rig.record(0xE040).status == DSA_COMP_SUCCESS
    assert (rig.record().status, rig.record().descs_completed) == (DSA_COMP_BATCH_FAIL, 3)


def test_completion_record_fault_does_not_block() -> None:
    rig = Rig()
    rig.dma.unmap(CR)
    out = rig.run(sdk.noop(completion=CR, flags=BOF))
    (err,) = out.events
    assert isinstance(err, SoftwareError) and err.status == DSA_COMP_CRA_XLAT


REGION = 0x80000


@settings(max_examples=60, deadline=None)
@given(
    src_off=st.integers(0, 3 * PAGE),
    dst_off=st.integers(0, 3 * PAGE),
    size=st.integers(0, 4 * PAGE),
    layout=st.permutations(range(8)),
    holes=st.sets(st.integers(0, 7), max_size=3),
    readonly=st.sets(st.integers(0, 7), max_size=2),
    block=st.booleans(),
)
def test_memmove_with_faults_always_ends_as_a_memmove(
    src_off: int,
    dst_off: int,
    size: int,
    layout: list[int],
    holes: set[int],
    readonly: set[int],
    block: bool,
) -> None:
    """Whatever pages fault and however the pages lie in physical memory, answering the page
    requests (BOF) or resubmitting from the partial completion (no BOF) ends with exactly what
    memmove() would have produced."""
    rig = Rig(bof=block)
    phys = [0x20000 + page * PAGE for page in layout]  # IOVA page i lives at phys[i]
    region = bytes((i * 131 + 7) & 0xFF for i in range(8 * PAGE))
    for i in range(8):
        rig.dma.map(REGION + i * PAGE, phys[i])
        rig.put(phys[i], region[i * PAGE : (i + 1) * PAGE])
    for page in readonly:
        rig.dma.protect(REGION + page * PAGE)
    for page in holes:
        rig.dma.unmap(REGION + page * PAGE)
    expect = bytearray(region)
    expect[dst_off : dst_off + size] = region[src_off : src_off + size]

    def repair(addr: int) -> None:
        page = (addr - REGION) // PAGE
        rig.dma.map(REGION + page * PAGE, phys[page])

    src, dst, left = REGION + src_off, REGION + dst_off, size
    for _ in range(40):
        flags = BOF if block else 0
        outcome = rig.start(sdk.memmove(dst, src, left, completion=CR, flags=flags))
        while isinstance(outcome, Blocked):
            repair(outcome.fault.iova)
            outcome = rig.executor.resume(outcome.state, PageResponse.SUCCESS)
        finish(rig, outcome)
        record = rig.record()
        if record.status == DSA_COMP_SUCCESS:
            break
        assert record.code == DSA_COMP_PAGE_FAULT_NOBOF and not block
        repair(record.fault_addr)
        done = record.bytes_completed
        if record.result == 0:  # ascending: advance the addresses
            src, dst = src + done, dst + done
        left -= done
    else:
        raise AssertionError("the copy never finished")
    assert b"".join(rig.get(phys[i], PAGE) for i in range(8)) == bytes(expect)


def test_descending_copy_over_a_huge_range_translates_only_its_top() -> None:
    """A hostile 1 GiB descending copy whose top is unmapped faults at its highest page after
    a handful of translations (it once walked every page of the range: seconds of daemon time
    and a fault report per page, found by tests/fuzz/test_descriptor_fuzz.py)."""
    rig = Rig(bof=False)
    size = 1 << 30
    translations: list[int] = []
    runs = rig.dma.runs

    def counting(iova: int, length: int, write: bool) -> tuple[list[memoryview], object]:
        translations.append(iova)
        return runs(iova, length, write)

    rig.dma.runs = counting  # type: ignore[method-assign,assignment]
    rig.run(sdk.memmove(SRC + PAGE + 8, SRC, size, completion=CR))
    record = rig.record()
    assert record.status == DSA_COMP_PAGE_FAULT_NOBOF and record.result == 1
    assert record.bytes_completed == 0 and record.fault_addr == SRC + size - PAGE
    assert len(translations) < 10, len(translations)
