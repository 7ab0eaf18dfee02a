"""The event log: accel-config's event_log_size rules, the ring, the registers.h entry."""

from __future__ import annotations

import errno
import struct

import pytest

from siov_protocol.dsa import DSA_COMP_CRA_XLAT, DSA_COMP_INVALID_FLAGS, DsaOpcode
from siovd.model.accel import SoftwareError, embedded_default
from siovd.model.accel.config import device_to_json
from siovd.model.accel.evl import EventLog, pack_entry, unpack_entry
from siovd.model.dma import DmaFault
from siovd.model.errors import SiovError


def error(**kw: object) -> SoftwareError:
    base: dict[str, object] = {
        "status": DSA_COMP_CRA_XLAT | 0x80,
        "opcode": DsaOpcode.MEMMOVE,
        "pasid": 0x12345,
        "wq": "dsa0/wq0.3",
        "completion_addr": 0x7000,
        "fault_addr": 0x7000,
        "batch_index": None,
        "fault": DmaFault(0x7000, True, 0x71, 0x12345),
        "record": bytes([DSA_COMP_CRA_XLAT]) + bytes(31),
    }
    base.update(kw)
    return SoftwareError(**base)  # type: ignore[arg-type]


def test_entry_layout_is_registers_h() -> None:
    entry = pack_entry(error(), 3)
    assert len(entry) == 64
    word = struct.unpack_from("<Q", entry)[0]
    # rsvd:2 desc_valid:1 wq_idx_valid:1 batch:1 fault_rw:1 priv:1 err_info_valid:1
    assert word & 0xFF == 0b1010_1100
    assert (word >> 8 & 0xFF, word >> 16 & 0xFF, word >> 32 & 0xFF) == (0x9A, 3, 0x03)
    assert word >> 40 & 0xFFFFF == 0x12345
    assert struct.unpack_from("<Q", entry, 16)[0] == 0x7000  # fault_addr @16
    assert entry[32:] == error().record
    fields = unpack_entry(entry)
    assert (fields["batch"], fields["fault_rw"], fields["wq_idx"]) == (0, 1, 3)


def test_entry_of_a_batch_member_and_invalid_flags() -> None:
    record = bytes([DSA_COMP_INVALID_FLAGS]) + bytes(15) + (0x420000).to_bytes(4, "little")
    entry = pack_entry(
        error(
            status=DSA_COMP_INVALID_FLAGS, batch_index=7, fault=None, fault_addr=0, record=record
        ),
        0,
    )
    fields = unpack_entry(entry)
    assert (fields["batch"], fields["batch_idx"], fields["invalid_flags"]) == (1, 7, 0x420000)
    assert (fields["fault_rw"], fields["err_info_valid"]) == (0, 0)


def test_ring_is_full_one_short_of_its_size_and_loses_what_does_not_fit() -> None:
    log = EventLog(64)
    for i in range(63):
        assert log.append(bytes([i]) * 64)
    assert log.count == 63 and log.int_pending
    assert not log.append(b"x" * 64) and log.lost == 1
    got = log.read(10)
    assert [e[0] for e in got] == list(range(10)) and not log.int_pending
    assert log.append(b"y" * 64)
    rest = log.read(1000)
    assert len(rest) == 54 and rest[-1] == b"y" * 64 and log.count == 0
    assert log.head == log.tail == 0  # wrapped around once: 64 entries in a ring of 64


def test_event_log_size_follows_sysfs_rules() -> None:
    device = embedded_default()
    assert device.event_log is not None and device.event_log.size == 64
    with pytest.raises(SiovError) as exc:
        device.configure({"event_log_size": 128})
    assert exc.value.errno == errno.EPERM
    device.disable()
    assert device.event_log is None
    for bad in (63, 0x10000, "many"):
        with pytest.raises(SiovError) as exc:
            device.configure({"event_log_size": bad})
        assert exc.value.errno == errno.EINVAL
    device.configure({"event_log_size": 4096})
    assert device_to_json(device)["event_log_size"] == 4096
    assert "event_log_size" not in device_to_json(device, save=True)  # 3.5.3 does not save it
    device.enable()
    assert device.event_log is not None and device.event_log.size == 4096
    assert int(device_to_json(device)["gen_cap"], 16) >> 13 & 3 == 1  # evl_support
