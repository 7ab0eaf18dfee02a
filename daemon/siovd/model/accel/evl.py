"""The DSA 2.0 event log (EVL): the device's ring of errors no completion record can carry.

accel-config sets its size in entries (``config-device --event-log-size``, sysfs
``event_log_size``: 64..65535 while the device is disabled; ``drivers/dma/idxd/sysfs.c``,
``IDXD_EVL_SIZE_MIN``/``MAX``). The ring is empty when head == tail and full when
``(tail + 1) % size == head``: the device then stops writing (Linux commit "dmaengine: idxd:
add event log support"), so a full log loses entries, counted here. Writing an entry sets the
interrupt-pending bit of EVLSTATUS; software reads entries from head to tail, moves head and
clears the bit.

An entry is ``struct dsa_evl_entry`` of ``drivers/dma/idxd/registers.h``: the 32-byte
``struct __evl_entry`` followed by the 32-byte completion record the descriptor could not get.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from siov_protocol.dsa import DSA_COMP_STATUS_WRITE, DsaCompStatus
from siovd.model.accel.outcome import SoftwareError

EVL_SIZE_MIN: Final = 64
EVL_SIZE_MAX: Final = 0xFFFF
EVL_SIZE_DEFAULT: Final = EVL_SIZE_MIN
ENTRY_SIZE: Final = 64  # DSA: 32-byte header + 32-byte completion record

# struct __evl_entry, first u64
_DESC_VALID: Final = 1 << 2
_WQ_IDX_VALID: Final = 1 << 3
_BATCH: Final = 1 << 4
_FAULT_RW: Final = 1 << 5
_ERR_INFO_VALID: Final = 1 << 7
_ERROR_SHIFT: Final = 8
_WQ_IDX_SHIFT: Final = 16
_BATCH_ID_SHIFT: Final = 24
_OPERATION_SHIFT: Final = 32
_PASID_SHIFT: Final = 40
# then u16 batch_idx, u16 rsvd3, u32 (invalid_flags | int_handle + flag bits), u64 fault_addr,
# u64 rsvd5
_HEADER = struct.Struct("<QHHIQQ")
_INVALID_FLAGS: Final = int(DsaCompStatus.INVALID_FLAGS)


def pack_entry(error: SoftwareError, wq_idx: int) -> bytes:
    """The 64 bytes the device writes for ``error`` of WQ ``wq_idx``."""
    status = error.status
    word = (
        _DESC_VALID
        | _WQ_IDX_VALID
        | (status & 0xFF) << _ERROR_SHIFT
        | (wq_idx & 0xFF) << _WQ_IDX_SHIFT
        | (error.opcode & 0xFF) << _OPERATION_SHIFT
        | (error.pasid & 0xFFFFF) << _PASID_SHIFT
    )
    if error.batch_index is not None:
        word |= _BATCH
    if status & DSA_COMP_STATUS_WRITE:
        word |= _FAULT_RW
    if error.fault is not None or error.fault_addr:
        word |= _ERR_INFO_VALID
    record = error.record.ljust(32, b"\0")[:32]
    info = 0
    if status & 0x7F == _INVALID_FLAGS:
        info = int.from_bytes(record[16:19], "little")  # the record's invalid_flags
    header = _HEADER.pack(
        word,
        error.batch_index or 0,
        0,
        info,
        error.fault_addr,
        0,
    )
    return header + record


def unpack_entry(entry: bytes) -> dict[str, int]:
    """The header fields of an entry, by their registers.h names (for tests and tools)."""
    word, batch_idx, _, info, fault_addr, _ = _HEADER.unpack_from(entry)
    return {
        "desc_valid": word >> 2 & 1,
        "wq_idx_valid": word >> 3 & 1,
        "batch": word >> 4 & 1,
        "fault_rw": word >> 5 & 1,
        "priv": word >> 6 & 1,
        "err_info_valid": word >> 7 & 1,
        "error": word >> _ERROR_SHIFT & 0xFF,
        "wq_idx": word >> _WQ_IDX_SHIFT & 0xFF,
        "batch_id": word >> _BATCH_ID_SHIFT & 0xFF,
        "operation": word >> _OPERATION_SHIFT & 0xFF,
        "pasid": word >> _PASID_SHIFT & 0xFFFFF,
        "batch_idx": batch_idx,
        "invalid_flags": info,
        "fault_addr": fault_addr,
    }


@dataclass
class EventLog:
    """One device's event log of ``size`` entries."""

    size: int
    head: int = 0
    tail: int = 0
    int_pending: bool = False
    #: entries the device could not write because the log was full
    lost: int = 0
    written: int = 0
    _slots: dict[int, bytes] = field(default_factory=dict)

    def append(self, entry: bytes) -> bool:
        """Write ``entry`` at tail; False (and counted in ``lost``) when the log is full."""
        if (self.tail + 1) % self.size == self.head:
            self.lost += 1
            return False
        self._slots[self.tail] = entry
        self.tail = (self.tail + 1) % self.size
        self.written += 1
        self.int_pending = True
        return True

    def read(self, limit: int) -> list[bytes]:
        """Consume up to ``limit`` entries from head, as the driver does, and clear the
        interrupt-pending bit."""
        out: list[bytes] = []
        while self.head != self.tail and len(out) < limit:
            out.append(self._slots.pop(self.head))
            self.head = (self.head + 1) % self.size
        self.int_pending = False
        return out

    @property
    def count(self) -> int:
        return (self.tail - self.head) % self.size
