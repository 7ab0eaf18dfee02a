"""The interrupt remapping model (siovd.model.iommu.irq_remap): decoding, lookups through the
IEC, its staleness until invalidation, and each fault reason."""

from __future__ import annotations

import errno

import pytest

from siovd.model.errors import SiovError
from siovd.model.iommu import irq_remap as ir
from siovd.model.iommu.faults import REASON_NAMES

A, B = "mdev-a", "mdev-b"


def blocked(table: ir.IrTable | None, address: int, data: int = 0) -> ir.IrFault:
    with pytest.raises(ir.IrBlocked) as info:
        ir.remap(table, address, data, A)
    return info.value.fault


def test_msi_address_round_trips_every_handle_bit() -> None:
    for handle in (0, 1, 0x7FFF, 0x8000, 0xFFFF):
        assert ir.decode_msi(ir.msi_address(handle), 0) == handle
    assert ir.decode_msi(ir.msi_address(4, shv=True), 3) == 7


def test_iec_keeps_the_old_entry_until_invalidated() -> None:
    table = ir.IrTable(16)
    table.set_entry(2, ir.IrEntry(present=True, vector=1, dest_id=7))
    assert ir.remap(table, ir.msi_address(2), 0, A) == ir.Remapped(1, 7, 2)
    assert (table.iec_misses, table.iec_hits) == (1, 0)
    table.set_entry(2, ir.IrEntry(present=True, vector=0, dest_id=7))
    assert ir.remap(table, ir.msi_address(2), 0, A).vector == 1
    assert table.iec_hits == 1
    assert table.invalidate(0, 1) == 0  # entries 0..1 do not cover 2
    assert table.iec == {2: ir.IrEntry(present=True, vector=1, dest_id=7)}
    assert table.invalidate(2, 1) == 1
    assert ir.remap(table, ir.msi_address(2), 0, A).vector == 0
    table.clear_entry(2)
    assert ir.remap(table, ir.msi_address(2), 0, A).vector == 0  # still cached
    assert table.invalidate(None) == 1
    assert blocked(table, ir.msi_address(2)).reason == ir.FR_IR_ENTRY_P
    assert table.iec == {}  # not-present entries are never cached


def test_every_fault_reason_and_fpd() -> None:
    assert blocked(None, ir.msi_address(0)).reason == ir.FR_IR_ROOT_INVAL
    table = ir.IrTable(4)
    assert blocked(table, 0xFED00010).reason == ir.FR_IR_REQ_RSVD
    assert blocked(table, 0xFEE00000).reason == ir.FR_IR_REQ_COMPAT
    assert blocked(table, ir.msi_address(4)) == ir.IrFault(ir.FR_IR_INDEX_OVER, 4)
    assert blocked(table, ir.msi_address(0)) == ir.IrFault(ir.FR_IR_ENTRY_P, 0)
    table.set_entry(1, ir.IrEntry(present=True, vector=0, dest_id=0, rsvd=1))
    assert blocked(table, ir.msi_address(1)) == ir.IrFault(ir.FR_IR_IRTE_RSVD, 1)
    table.set_entry(2, ir.IrEntry(present=True, vector=0, dest_id=0, source=B))
    assert blocked(table, ir.msi_address(2)) == ir.IrFault(ir.FR_IR_SID_ERR, 2)
    table.set_entry(3, ir.IrEntry(present=True, vector=0, dest_id=0, source=B, fpd=True))
    assert blocked(table, ir.msi_address(3)) == ir.IrFault(ir.FR_IR_SID_ERR, 3, record=False)
    assert ir.remap(table, ir.msi_address(2), 0, B).index == 2
    for reason in range(0x20, 0x27):
        assert REASON_NAMES[reason] == ir.IR_REASON_NAMES[reason]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: ir.IrTable(3), "power of two"),
        (lambda: ir.IrTable(1 << 17), "power of two"),
        (lambda: ir.IrTable(4).set_entry(4, ir.IrEntry(True, 0, 0)), "has 4 entries"),
        (lambda: ir.IrTable(4).invalidate(None, 1), "no mask"),
        (lambda: ir.IrTable(4).invalidate(1, 1), "not aligned"),
        (lambda: ir.IrTable(4).invalidate(0, 17), "at most 16"),
    ],
)
def test_bad_input_is_einval(call: object, words: str) -> None:
    with pytest.raises(SiovError) as info:
        call()  # type: ignore[operator]
    assert info.value.errno == errno.EINVAL and words in info.value.message
