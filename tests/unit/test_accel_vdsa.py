"""The guest-visible DSA of an mdev: registers, commands and their CMDSTS errors, interrupts,
and the portal's assembly of eight 8-byte writes (no event loop)."""

from __future__ import annotations

import struct

from siovd.model.accel import SubmitResult, embedded_default
from siovd.model.accel import vdsa as v
from siovd.model.accel.parent import DsaParent


class Harness:
    def __init__(self) -> None:
        parent = DsaParent(embedded_default())
        parent.mdev_create("dsa-1dwq", "u-1", 5)
        self.submitted: list[tuple[int, bytes]] = []
        self.irqs: list[int] = []
        self.aborts = 0
        self.result = SubmitResult.ACCEPTED
        self.dev = v.VirtualDsa(
            parent.mdev("u-1"),
            4,
            submit=self._submit,
            interrupt=self.irqs.append,
            drain=lambda: None,
            abort=self._abort,
        )

    def _submit(self, offset: int, desc: bytes) -> SubmitResult:
        self.submitted.append((offset, desc))
        return self.result

    def _abort(self) -> None:
        self.aborts += 1

    def r32(self, offset: int) -> int:
        return int(struct.unpack("<I", self.dev.read_bar0(offset, 4))[0])

    def w32(self, offset: int, value: int) -> None:
        self.dev.write_bar0(offset, struct.pack("<I", value))

    def w64(self, offset: int, value: int) -> None:
        self.dev.write_bar0(offset, struct.pack("<Q", value))

    def cmd(self, cmd: int, operand: int = 0, int_req: bool = True) -> int:
        self.w32(v.CMD_OFFSET, cmd << 20 | operand | (v.CMD_INT_REQ if int_req else 0))
        return self.r32(v.CMD_OFFSET + 8) & 0xFF

    def configure(self, size: int = 16, mode: int = 1, priority: int = 1) -> None:
        self.w64(v.GRPCFG_TABLE, 1)
        self.w64(v.GRPCFG_TABLE + 32, 1)
        self.w32(v.WQCFG_TABLE, size)
        self.w32(v.WQCFG_TABLE + 8, mode | priority << 4)


def test_capabilities_as_the_driver_reads_them() -> None:
    h = Harness()
    assert h.r32(0) == 0x100
    gencap = struct.unpack("<Q", h.dev.read_bar0(0x10, 8))[0]
    assert gencap & 1 << 31 and gencap & 1 << 4  # configurable, CMDCAP valid
    wqcap = struct.unpack("<Q", h.dev.read_bar0(0x20, 8))[0]
    assert wqcap & 0xFFFF == 64 and (wqcap >> 16) & 0xFF == 1  # the siov WQ's size, one WQ
    assert wqcap & 1 << 49 and not wqcap & 1 << 48  # dedicated only
    assert struct.unpack("<Q", h.dev.read_bar0(0x38, 8))[0] == 4
    assert struct.unpack("<Q", h.dev.read_bar0(0x40, 8))[0] & 1 << 3  # MEMMOVE
    table = struct.unpack("<Q", h.dev.read_bar0(0x60, 8))[0]
    assert (table & 0xFFFF, (table >> 16) & 0xFFFF) == (4, 5)
    cmdcap = h.r32(v.CMDCAP_OFFSET)
    assert cmdcap & 1 << v.CMD_ENABLE_WQ and not cmdcap & 1 << 13  # no int handles
    h.w32(0x10, 0)  # read-only
    assert struct.unpack("<Q", h.dev.read_bar0(0x10, 8))[0] == gencap


def test_command_errors_and_interrupts() -> None:
    h = Harness()
    assert h.cmd(v.CMD_ENABLE_WQ) == v.CMDSTS_ERR_DEV_NOTEN
    assert h.cmd(v.CMD_DISABLE_DEVICE) == v.CMDSTS_ERR_DIS_DEV_EN
    assert h.cmd(13) == v.CMDSTS_INVAL_CMD  # REQUEST_INT_HANDLE: not offered
    h.configure(size=65)
    assert h.cmd(v.CMD_ENABLE_DEVICE) == v.CMDSTS_ERR_WQ_SIZE_ERANGE
    h.configure(size=16, mode=0)
    assert h.cmd(v.CMD_ENABLE_DEVICE) == v.CMDSTS_SUCCESS
    assert h.r32(0x90) & 3 == 1
    assert h.cmd(v.CMD_ENABLE_DEVICE) == v.CMDSTS_ERR_DEV_ENABLED
    assert h.cmd(v.CMD_ENABLE_WQ, 1) == v.CMDSTS_INVAL_WQIDX
    assert h.cmd(v.CMD_ENABLE_WQ) == v.CMDSTS_ERR_WQ_MODE  # shared: no ENQCMD in a guest
    h.w32(v.WQCFG_TABLE + 8, 1)  # dedicated, priority 0
    assert h.cmd(v.CMD_ENABLE_WQ) == v.CMDSTS_ERR_WQ_PRIOR
    h.w32(v.WQCFG_TABLE + 8, 1 | 3 << 4)
    assert h.cmd(v.CMD_ENABLE_WQ) == v.CMDSTS_SUCCESS
    assert h.cmd(v.CMD_ENABLE_WQ) == v.CMDSTS_ERR_WQ_ENABLED
    h.w32(v.WQCFG_TABLE, 8)  # WQCFG is read-only while the WQ is enabled
    assert h.dev.wqcfg()["size"] == 16
    h.w64(v.GRPCFG_TABLE + 32, 0)  # and GRPCFG while the device is
    assert h.dev.group_engines() == 1
    assert h.irqs == [0] * 11  # every command had int_req: vector 0 each time
    assert h.r32(v.INTCAUSE_OFFSET) == v.INTC_CMD
    assert h.cmd(v.CMD_DISABLE_WQ, 2) == v.CMDSTS_INVAL_WQIDX  # operand is a WQ bitmap
    assert h.cmd(v.CMD_DISABLE_WQ, 1, int_req=False) == v.CMDSTS_SUCCESS
    assert len(h.irqs) == 12
    assert h.cmd(v.CMD_RESET_DEVICE) == v.CMDSTS_SUCCESS
    assert h.r32(0x90) == 0 and h.dev.wqcfg()["size"] == 0 and h.aborts == 1


def test_portal_assembles_eight_ordered_writes() -> None:
    h = Harness()
    desc = bytes(range(64))
    for i in range(8):  # to a disabled WQ: dropped, as a device drops it
        h.dev.write_portal(0x1000 + 8 * i, desc[8 * i : 8 * i + 8])
    assert h.submitted == [] and h.dev.stats.portal_dropped == 1
    h.configure()
    h.cmd(v.CMD_ENABLE_DEVICE)
    h.cmd(v.CMD_ENABLE_WQ)
    for i in range(8):
        h.dev.write_portal(0x1040 + 8 * i, desc[8 * i : 8 * i + 8])
    h.dev.write_portal(0x2000, desc)  # one 64-byte write works too
    assert h.submitted == [(0x1040, desc), (0x2000, desc)]
    h.dev.write_portal(0x1000, desc[:8])
    h.dev.write_portal(0x1010, desc[16:24])  # skipped 0x1008: not a descriptor
    for i in range(1, 8):
        h.dev.write_portal(0x1000 + 8 * i, desc[8 * i : 8 * i + 8])
    h.dev.write_portal(0x1004, b"\0" * 4)  # a 4-byte write
    h.dev.write_portal(0x4000, desc[:8])  # past BAR2
    # each stray 8-byte write counts: the skip, the seven that follow it, the two odd ones
    assert len(h.submitted) == 2 and h.dev.stats.portal_dropped == 1 + 1 + 7 + 2
    h.result = SubmitResult.DROPPED
    h.dev.write_portal(0, desc)
    assert h.dev.stats.wq_dropped == 1 and h.dev.stats.descriptors == 2


def test_swerr_and_config_space() -> None:
    h = Harness()
    h.w32(0x88, 1)  # GENCTRL softerr_int_en
    h.dev.software_error(0x1A, 3, 0xDEAD000)
    assert h.r32(v.SWERR_OFFSET) & 1 and h.irqs == [0]
    assert h.r32(v.INTCAUSE_OFFSET) & v.INTC_ERR
    h.w64(v.SWERR_OFFSET, v.SWERR_ACK)
    assert h.r32(v.SWERR_OFFSET) & 3 == 0
    cfg = h.dev.config
    assert cfg.read(0, 4) == struct.pack("<HH", 0x8086, 0x0B25)
    cfg.write(0x04, struct.pack("<H", 0xFFFF))
    assert cfg.command == 0x0406  # memory, bus master, INTx disable: the writable bits
    cfg.write(0x80 + 2, struct.pack("<H", 0xFFFF))
    assert cfg.msix_enabled and cfg.read(0x82, 2) == struct.pack("<H", 0xC001)
    h.dev.reset()
    assert cfg.command == 0 and not cfg.msix_enabled
