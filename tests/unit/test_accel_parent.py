"""The DSA device as an mdev parent: types, instances, PASIDs, the mdev's own views."""

from __future__ import annotations

import errno
import struct

import pytest

from siov import dsa as sdk
from siovd.model.accel import (
    MDEV_IRQ_COUNT,
    TYPE_1DWQ,
    TYPE_1SWQ,
    Completed,
    DsaParent,
    Executor,
    SubmitResult,
    embedded_default,
)
from siovd.model.accel.registers import WQCFG_TABLE
from siovd.model.errors import SiovError
from siovd.model.parents import MdevParent
from tests.unit.dsa_fakes import FakeDma


def available(parent: DsaParent) -> dict[str, int]:
    return {t.type_id: t.available_instances for t in parent.mdev_types()}


@pytest.fixture
def parent() -> DsaParent:
    return DsaParent(embedded_default())


def test_parent_satisfies_the_protocol(parent: DsaParent) -> None:
    as_protocol: MdevParent = parent
    assert as_protocol.name == "dsa0"
    types = {t.type_id: t for t in parent.mdev_types()}
    assert set(types) == {TYPE_1DWQ, TYPE_1SWQ}
    assert types[TYPE_1DWQ].device_api == "vfio-pci" and types[TYPE_1DWQ].pasid_bits == 20


def test_dedicated_instances_are_exclusive(parent: DsaParent) -> None:
    assert available(parent) == {TYPE_1DWQ: 1, TYPE_1SWQ: 64}
    parent.mdev_create(TYPE_1DWQ, "d1", default_pasid=0x55)
    wq = parent.mdev("d1").wq
    assert (wq.dev_name, wq.pasid, wq.pasid_en, wq.clients) == ("wq0.0", 0x55, True, 1)
    assert available(parent)[TYPE_1DWQ] == 0
    with pytest.raises(SiovError) as exc:
        parent.mdev_create(TYPE_1DWQ, "d2", default_pasid=0x56)
    assert exc.value.errno == errno.ENOSPC and "dsa0" in exc.value.message
    parent.mdev_remove("d1")
    assert (wq.pasid_en, wq.clients) == (False, 0)
    assert available(parent)[TYPE_1DWQ] == 1


def test_shared_instances_share_the_shared_wq(parent: DsaParent) -> None:
    parent.mdev_create(TYPE_1SWQ, "s1", default_pasid=10)
    parent.mdev_create(TYPE_1SWQ, "s2", default_pasid=11)
    assert parent.mdev("s1").wq is parent.mdev("s2").wq
    assert parent.mdev("s1").wq.clients == 2
    assert available(parent) == {TYPE_1DWQ: 1, TYPE_1SWQ: 62}
    parent.mdev_remove("s1")
    assert available(parent)[TYPE_1SWQ] == 63


def test_shared_capacity_is_the_wq_size() -> None:
    device = embedded_default()
    device.disable()
    device.wqs[1].configure({"size": 2, "threshold": 1})
    device.enable()
    device.wqs[1].enable()
    parent = DsaParent(device)
    parent.mdev_create(TYPE_1SWQ, "a", 1)
    parent.mdev_create(TYPE_1SWQ, "b", 2)
    with pytest.raises(SiovError) as exc:
        parent.mdev_create(TYPE_1SWQ, "c", 3)
    assert exc.value.errno == errno.ENOSPC


def test_only_enabled_user_wqs_are_offered() -> None:
    device = embedded_default()
    device.wqs[0].disable()
    device.wqs[0].configure({"type": "kernel", "name": "k"})
    device.wqs[0].enable()
    device.wqs[1].disable()
    assert available(DsaParent(device)) == {TYPE_1DWQ: 0, TYPE_1SWQ: 0}


def test_create_and_remove_refusals(parent: DsaParent) -> None:
    parent.mdev_create(TYPE_1SWQ, "s1", 10)
    for call, code in (
        (lambda: parent.mdev_create(TYPE_1SWQ, "s1", 10), errno.EEXIST),
        (lambda: parent.mdev_create("dsa-2dwq", "x", 10), errno.EINVAL),
        (lambda: parent.mdev_create(TYPE_1DWQ, "x", 0), errno.EINVAL),
        (lambda: parent.mdev_remove("nope"), errno.ENODEV),
        (lambda: parent.mdev_submit("nope", sdk.noop()), errno.ENODEV),
    ):
        with pytest.raises(SiovError) as exc:
            call()
        assert exc.value.errno == code


def test_mdev_submissions_carry_the_right_pasid(parent: DsaParent) -> None:
    parent.mdev_create(TYPE_1DWQ, "d", 0x77)
    parent.mdev_create(TYPE_1SWQ, "s", 0x88)
    assert parent.mdev_submit("d", sdk.noop(), pasid=5) == SubmitResult.ACCEPTED
    assert parent.mdev_submit("s", sdk.noop()) == SubmitResult.ACCEPTED
    assert parent.mdev_submit("s", sdk.noop(), pasid=0x99) == SubmitResult.ACCEPTED
    items = [parent.device.engines[0].take() for _ in range(3)]
    tags = sorted((i.pasid, i.owner, i.irq_count) for i in items if i is not None)
    assert tags == [(0x77, "d", MDEV_IRQ_COUNT), (0x88, "s", 2), (0x99, "s", 2)]


def test_remove_drops_only_that_mdevs_queued_work(parent: DsaParent) -> None:
    parent.mdev_create(TYPE_1SWQ, "a", 1)
    parent.mdev_create(TYPE_1SWQ, "b", 2)
    parent.mdev_submit("a", sdk.noop())
    parent.mdev_submit("b", sdk.noop())
    parent.mdev_remove("a")
    wq = parent.device.wqs[1]
    assert wq.occupancy == 1
    item = wq.take()
    assert item is not None and item.owner == "b"


def test_mdev_portal_and_bar0(parent: DsaParent) -> None:
    parent.mdev_create(TYPE_1DWQ, "d", 0x1234)
    assert parent.mdev_portal_size("d") == 4 * 4096
    assert parent.mdev_portal_write("d", 0x40, sdk.noop()) == SubmitResult.ACCEPTED
    with pytest.raises(SiovError) as exc:
        parent.mdev_portal_write("d", 4 * 4096, sdk.noop())
    assert exc.value.errno == errno.EINVAL
    image = parent.mdev_bar0("d")
    wqcap = struct.unpack_from("<Q", image, 0x20)[0]
    assert (wqcap & 0xFFFF, (wqcap >> 16) & 0xFF) == (64, 1)  # one WQ of size 64
    assert struct.unpack_from("<Q", image, 0x38)[0] == 4  # the group's four engines
    dword2 = struct.unpack_from("<I", image, WQCFG_TABLE + 8)[0]
    assert dword2 & 1 and (dword2 >> 8) & 0xFFFFF == 0x1234 and dword2 >> 28 & 1


def test_mdev_work_runs_in_the_mdev_pasid(parent: DsaParent) -> None:
    parent.mdev_create(TYPE_1DWQ, "d", 0x21)
    dma = FakeDma()
    dma.mem[0x1000:0x1004] = b"data"
    parent.mdev_submit("d", sdk.memmove(0x2000, 0x1000, 4, completion=0x3000))
    item = parent.device.engines[1].take()
    assert item is not None
    seen: list[int] = []

    def dma_for(pasid: int) -> FakeDma:
        seen.append(pasid)
        return dma

    outcome = Executor().execute(item, dma_for)
    assert isinstance(outcome, Completed) and outcome.status == sdk.DSA_COMP_SUCCESS
    assert seen == [0x21] and dma.mem[0x2000:0x2004] == b"data"


def test_mdev_attributes_are_its_wqs(parent: DsaParent) -> None:
    # what mdevctl writes after creating the mdev (mdev.rs start: write_attr per attribute)
    parent.mdev_create(TYPE_1DWQ, "d1", default_pasid=0x55)
    parent.mdev_set_attr("d1", "priority", "3")
    parent.mdev_set_attr("d1", "block_on_fault", "0")
    wq = parent.mdev("d1").wq
    assert (wq.priority, wq.block_on_fault, wq.enabled, wq.pasid) == (3, False, True, 0x55)

    def refused(uuid: str, name: str, value: str) -> SiovError:
        with pytest.raises(SiovError) as exc:
            parent.mdev_set_attr(uuid, name, value)
        return exc.value

    err = refused("d1", "assign_adapter", "5")  # a vfio_ap attribute: no such file
    assert err.errno == errno.ENOENT and "Invalid attribute 'assign_adapter'" in err.message
    assert refused("d1", "threshold", "4").errno == errno.ENOENT  # dedicated: no threshold
    assert refused("d1", "size", "8").errno == errno.EPERM
    assert refused("d1", "priority", "16").errno == errno.EINVAL and wq.priority == 3
    parent.mdev_create(TYPE_1SWQ, "s1", default_pasid=10)
    parent.mdev_set_attr("s1", "threshold", "20")
    assert parent.mdev("s1").wq.threshold == 20
    parent.mdev_create(TYPE_1SWQ, "s2", default_pasid=11)
    err = refused("s1", "priority", "2")  # the shared WQ is not s1's alone any more
    assert err.errno == errno.EBUSY and "2 mdevs" in err.message
    parent.mdev_remove("s2")
    assert parent.mdev_submit("s1", sdk.noop()) == SubmitResult.ACCEPTED
    assert refused("s1", "priority", "2").errno == errno.EBUSY  # work queued
