"""siov_protocol.vfio_user: the spec's binary structs, framing and fd attribution."""

from __future__ import annotations

import errno
import struct

import pytest

from siov_protocol import vfio_user as vu


def test_header_layout_and_error_reply() -> None:
    data = vu.pack_message(7, vu.Cmd.DMA_MAP, b"x" * 32)
    assert struct.unpack("<HHIII", data[:16]) == (7, 2, 48, 0, 0)
    err = vu.pack_error(7, vu.Cmd.DMA_MAP, errno.EEXIST)
    assert err == struct.pack("<HHIII", 7, 2, 16, vu.TYPE_REPLY | vu.FLAG_ERROR, errno.EEXIST)


def test_framer_splits_joins_and_gives_fds_to_their_message() -> None:
    framer = vu.Framer()
    one = vu.pack_message(1, vu.Cmd.DMA_UNMAP, bytes(24))
    two = vu.pack_message(2, vu.Cmd.DMA_MAP, bytes(32))
    # the socket hands both at once, the fd having come with the second (its sendmsg)
    framer.feed(one + two[:5])
    assert [(m.msg_id, m.fds) for m in framer.messages()] == [(1, [])]
    framer.feed(two[5:], [42])
    assert [(m.msg_id, m.fds) for m in framer.messages()] == [(2, [42])]
    framer.feed(one + two, [43])
    got = list(framer.messages())
    assert [(m.msg_id, m.fds) for m in got] == [(1, []), (2, [43])]
    framer.feed(vu.pack_message(3, vu.Cmd.VERSION)[:10], [44])
    assert list(framer.messages()) == [] and framer.take_fds() == [44]


def test_framer_refuses_a_lying_header() -> None:
    framer = vu.Framer()
    framer.feed(struct.pack("<HHIII", 1, 1, 8, 0, 0))
    with pytest.raises(vu.FramingError):
        list(framer.messages())
    framer = vu.Framer(max_msg_size=64)
    framer.feed(struct.pack("<HHIII", 1, 1, 65, 0, 0))
    with pytest.raises(vu.FramingError):
        list(framer.messages())


def test_version_json_rules() -> None:
    good = vu.parse_version(vu.pack_version(0, 1, {"max_msg_fds": 16, "write_multiple": True}))
    assert (good.major, good.minor, good.capabilities["max_msg_fds"]) == (0, 1, 16)
    assert vu.parse_version(struct.pack("<HH", 0, 0)).capabilities == {}
    for bad in (
        b"{}",  # no NUL
        b"[]\0",
        b'{"capabilities":[]}\0',
        b'{"capabilities":{"max_msg_fds":-1}}\0',
        b'{"capabilities":{"max_msg_fds":1025}}\0',
        b'{"capabilities":{"max_data_xfer_size":"big"}}\0',
        b'{"capabilities":{"twin_socket":true}}\0',
        b"\xff\0",
    ):
        with pytest.raises(vu.VfioUserError) as info:
            vu.parse_version(struct.pack("<HH", 0, 0) + bad)
        assert info.value.errno == errno.EINVAL, bad


def test_region_info_sparse_mmap_capability_and_argsz() -> None:
    full = vu.pack_region_info(64, 0, vu.REGION_INFO_FLAG_READ, 0x10000, 0, [(0x1000, 0x1000)])
    argsz, flags, index, cap_offset, size, _ = struct.unpack_from("<IIIIQQ", full)
    assert index == 0
    assert argsz == len(full) == 32 + 8 + 8 + 16
    assert flags & vu.REGION_INFO_FLAG_CAPS and cap_offset == 32 and size == 0x10000
    assert vu.parse_sparse_mmap(full) == [(0x1000, 0x1000)]
    short = vu.pack_region_info(32, 0, vu.REGION_INFO_FLAG_READ, 0x10000, 0, [(0, 0x1000)])
    argsz, flags, _, cap_offset, _, _ = struct.unpack("<IIIIQQ", short)
    assert argsz == 64 and not flags & vu.REGION_INFO_FLAG_CAPS and cap_offset == 0


def test_dma_and_irq_structs() -> None:
    req = vu.parse_dma_map(struct.pack("<IIQQQ", 32, 3, 0x1000, 0x2000, 0x3000))
    assert (req.offset, req.addr, req.size) == (0x1000, 0x2000, 0x3000)
    for payload in (
        struct.pack("<IIQQQ", 16, 3, 0, 0, 0x1000),
        struct.pack("<IIQQQ", 32, 4, 0, 0, 0x1000),
        struct.pack("<IIQQQ", 32, 3, 0, 2**64 - 0x1000, 0x2000),
        b"short",
    ):
        with pytest.raises(vu.VfioUserError):
            vu.parse_dma_map(payload)
    with pytest.raises(vu.VfioUserError):
        vu.parse_dma_unmap(struct.pack("<IIQQ", 24, vu.UNMAP_ALL, 0x1000, 0))
    unmap = vu.parse_dma_unmap(struct.pack("<IIQQ", 24, 0, 0x1000, 0x1000))
    assert vu.pack_dma_unmap(unmap) == struct.pack("<IIQQ", 24, 0, 0x1000, 0x1000)
    irq = vu.parse_set_irqs(
        struct.pack("<IIIII", 22, vu.IRQ_SET_DATA_BOOL | vu.IRQ_SET_ACTION_TRIGGER, 2, 0, 2)
        + b"\1\0"
    )
    assert irq.data == b"\1\0" and irq.action == vu.IRQ_SET_ACTION_TRIGGER
    with pytest.raises(vu.VfioUserError):  # BOOL data of the wrong length
        vu.parse_set_irqs(
            struct.pack("<IIIII", 21, vu.IRQ_SET_DATA_BOOL | vu.IRQ_SET_ACTION_TRIGGER, 2, 0, 2)
            + b"\1"
        )
    access = vu.parse_region_access(vu.pack_region_access(8, 0, 4, b"abcd"), write=True)
    assert (access.offset, access.count, access.data) == (8, 4, b"abcd")
    with pytest.raises(vu.VfioUserError):
        vu.parse_region_access(vu.pack_region_access(8, 0, 4, b"ab"), write=True)
    assert vu.parse_dma_access(vu.pack_dma_write(0x1000, b"hi")) == vu.DmaAccess(0x1000, 2, b"hi")
